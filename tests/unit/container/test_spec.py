from dataclasses import replace
from pathlib import Path
from typing import Any

from ember.container import BindMount, ContainerConfig
from ember.container.spec import build_spec

CONFIG = ContainerConfig(
    container_id="c-1",
    image_root=Path("/images/base/rootfs"),
    args=["python3", "-c", "pass"],
    env={"A": "1"},
    hostname="fn-host",
)


def spec_for(limit_swap: bool = True, **changes: Any) -> dict[str, Any]:
    config = replace(CONFIG, **changes)
    rootfs = Path("/state/containers/c-1/rootfs")
    return build_spec(config, rootfs, "/ember/c-1", limit_swap=limit_swap)


def test_process_runs_the_args_in_cwd_with_env_over_defaults() -> None:
    process = spec_for(cwd="/app", env={"PATH": "/opt/bin", "A": "1"})["process"]
    assert process["args"] == ["python3", "-c", "pass"]
    assert process["cwd"] == "/app"
    assert "PATH=/opt/bin" in process["env"]
    assert "A=1" in process["env"]
    assert "HOME=/root" in process["env"]
    assert process["terminal"] is False
    assert process["noNewPrivileges"] is True


def test_root_is_the_writable_overlay_and_hostname_is_set() -> None:
    spec = spec_for()
    assert spec["root"] == {"path": "/state/containers/c-1/rootfs", "readonly": False}
    assert spec["hostname"] == "fn-host"


def test_namespaces_isolate_everything_but_users() -> None:
    kinds = {ns["type"] for ns in spec_for()["linux"]["namespaces"]}
    assert kinds == {"pid", "network", "ipc", "uts", "mount"}


def test_capabilities_are_dockers_default_without_net_raw() -> None:
    capabilities = spec_for()["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert "CAP_NET_RAW" not in capabilities[kind]
        assert "CAP_SYS_ADMIN" not in capabilities[kind]
        assert "CAP_CHOWN" in capabilities[kind]
    assert "ambient" not in capabilities


def test_standard_mounts_without_a_cgroup_mount() -> None:
    mounts = {m["destination"]: m for m in spec_for()["mounts"]}
    assert set(mounts) == {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"}
    assert all(m["type"] != "cgroup" for m in mounts.values())
    assert "ro" in mounts["/sys"]["options"]


def test_masked_and_readonly_paths() -> None:
    linux = spec_for()["linux"]
    assert "/proc/kcore" in linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"]


def test_bind_mounts_are_rbind_and_readonly_when_asked() -> None:
    mounts = (
        BindMount(Path("/host/socket-dir"), "/run/ember"),
        BindMount(Path("/host/volume"), "/data", readonly=False),
    )
    by_target = {m["destination"]: m for m in spec_for(mounts=mounts)["mounts"]}
    assert by_target["/run/ember"]["source"] == "/host/socket-dir"
    assert by_target["/run/ember"]["type"] == "bind"
    assert {"rbind", "ro"} <= set(by_target["/run/ember"]["options"])
    assert {"rbind", "rw"} <= set(by_target["/data"]["options"])
    assert "ro" not in by_target["/data"]["options"]


def test_limits() -> None:
    linux = spec_for(cpu=1.5, memory_mb=512, pids_limit=100)["linux"]
    resources = linux["resources"]
    assert linux["cgroupsPath"] == "/ember/c-1"
    assert resources["memory"] == {"limit": 512 * 2**20, "swap": 512 * 2**20}
    assert resources["cpu"] == {"quota": 150_000, "period": 100_000}
    assert resources["pids"] == {"limit": 100}
    assert resources["devices"] == [{"allow": False, "access": "rwm"}]


def test_memory_limit_without_swap_limit() -> None:
    resources = spec_for(memory_mb=64, limit_swap=False)["linux"]["resources"]
    assert resources["memory"] == {"limit": 64 * 2**20}


def test_zero_means_unlimited() -> None:
    resources = spec_for(cpu=0, memory_mb=0, pids_limit=0)["linux"]["resources"]
    assert "memory" not in resources
    assert "cpu" not in resources
    assert "pids" not in resources
