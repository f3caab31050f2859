"""The OCI runtime spec (config.json) for a container, built from a ContainerConfig.

The defaults follow `runc spec` and Docker, and are stricter: every namespace including a user
namespace (container root is an unprivileged host id, see `userns.py`), the same mounts and
masked and read-only paths, a smaller capability set, no new privileges, and the seccomp filter
of `seccomp.py`. There is no cgroup mount: runc 1.1 fails to set one up on hosts with a hybrid
cgroup hierarchy, and a function has no use for it. There are no rlimits either: the process
inherits the worker's, as Docker's inherit dockerd's, because raising one above the worker's
own needs CAP_SYS_RESOURCE, which not every host grants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ember.container import seccomp
from ember.container.runtime import ContainerConfig
from ember.container.userns import IdMapping

OCI_VERSION = "1.0.2"

CPU_PERIOD_US = 100_000

DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}

# What root inside needs to act as root on its own files and processes: Docker's default set
# less NET_RAW (raw sockets allow spoofing on shared networks), MKNOD (no device nodes),
# SETFCAP (no file capabilities), SYS_CHROOT (chroot is filtered anyway) and AUDIT_WRITE. Held
# in the container's user namespace, they reach nothing of the host's.
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
]

NAMESPACES = ["user", "pid", "network", "ipc", "uts", "mount"]

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]

READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

SYSTEM_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
]

# A user namespace may mount sysfs only for a network namespace it owns: a container on the
# host's network (a build step) sees the host's, read-only, as under Docker.
HOST_SYSFS: dict[str, Any] = {
    "destination": "/sys",
    "type": "bind",
    "source": "/sys",
    "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
}


def build_spec(
    config: ContainerConfig,
    rootfs: Path,
    cgroups_path: str,
    ids: IdMapping,
    *,
    limit_swap: bool = True,
) -> dict[str, Any]:
    """The config.json dict that runs `config` on the mounted `rootfs` in cgroup `cgroups_path`,
    its ids mapped by `ids`.

    `limit_swap=False` leaves swap out of the memory limit, for hosts that cannot limit it.
    """
    env = DEFAULT_ENV | config.env
    bind_mounts = [
        {
            "destination": mount.target,
            "type": "bind",
            "source": str(mount.source),
            "options": ["rbind", "ro" if mount.readonly else "rw", "nosuid", "nodev"],
        }
        for mount in config.mounts
    ]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(config.args),
            "env": [f"{key}={value}" for key, value in env.items()],
            "cwd": config.cwd,
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": config.hostname,
        "mounts": _system_mounts(config) + bind_mounts,
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": _resources(config, limit_swap),
            "namespaces": [
                {"type": kind}
                for kind in NAMESPACES
                if not (config.host_network and kind == "network")
            ],
            "uidMappings": ids.oci(),
            "gidMappings": ids.oci(),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp.profile(),
        },
    }


def _system_mounts(config: ContainerConfig) -> list[dict[str, Any]]:
    if not config.host_network:
        return SYSTEM_MOUNTS
    return [HOST_SYSFS if mount["destination"] == "/sys" else mount for mount in SYSTEM_MOUNTS]


def _resources(config: ContainerConfig, limit_swap: bool) -> dict[str, Any]:
    # Deny all devices; runc then allows the standard ones (null, zero, random, tty, ...).
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if config.memory_mb > 0:
        limit = config.memory_mb * 1024 * 1024
        resources["memory"] = {"limit": limit}
        if limit_swap:
            # runc's swap is memory plus swap, so equal to the limit means no swap at all.
            resources["memory"]["swap"] = limit
    if config.cpu > 0:
        resources["cpu"] = {"quota": round(config.cpu * CPU_PERIOD_US), "period": CPU_PERIOD_US}
    if config.pids_limit > 0:
        resources["pids"] = {"limit": config.pids_limit}
    return resources
