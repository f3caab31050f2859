"""OCI runtime driver: runs containers on this host (runc, overlay root file systems, cgroups)."""

from ember.container.runc import RuncRuntime
from ember.container.runtime import BindMount, ContainerConfig, ExitStatus, Runtime

__all__ = ["BindMount", "ContainerConfig", "ExitStatus", "RuncRuntime", "Runtime"]
