from dataclasses import replace
from pathlib import Path
from typing import Any

from ember.container import BindMount, ContainerConfig
from ember.container.spec import build_spec
from ember.container.userns import IdMapping

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
    return build_spec(config, rootfs, "/ember/c-1", IdMapping(), limit_swap=limit_swap)


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


def test_namespaces_isolate_everything_users_included() -> None:
    kinds = {ns["type"] for ns in spec_for()["linux"]["namespaces"]}
    assert kinds == {"user", "pid", "network", "ipc", "uts", "mount"}


def test_container_ids_map_to_an_unprivileged_host_range() -> None:
    ids = IdMapping(host_base=0x7F000000, size=65536)
    linux = build_spec(CONFIG, Path("/r"), "/ember/c-1", ids)["linux"]
    expected = [{"containerID": 0, "hostID": 0x7F000000, "size": 65536}]
    assert linux["uidMappings"] == linux["gidMappings"] == expected
    assert IdMapping().host_base > 65536  # no host user or service id


def test_capabilities_are_a_small_set_without_admin_raw_sockets_or_devices() -> None:
    capabilities = spec_for()["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        for dropped in (
            "CAP_NET_RAW",
            "CAP_SYS_ADMIN",
            "CAP_MKNOD",
            "CAP_SYS_PTRACE",
            "CAP_SETFCAP",
        ):
            assert dropped not in capabilities[kind]
        assert "CAP_CHOWN" in capabilities[kind]
    assert "ambient" not in capabilities and "inheritable" not in capabilities


def test_seccomp_allows_a_list_and_refuses_the_rest() -> None:
    seccomp = spec_for()["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {
        name
        for rule in seccomp["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
        for name in rule["names"]
    }
    assert {"read", "write", "mmap", "futex", "execve", "socketpair"} <= allowed
    for refused in (
        "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "keyctl", "add_key",
        "request_key", "bpf", "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load",
        "init_module", "perf_event_open", "io_uring_setup", "userfaultfd", "open_by_handle_at",
        "clone3", "swapon", "reboot", "settimeofday", "quotactl", "syslog",
    ):  # fmt: skip
        assert refused not in allowed, refused


def test_clone_is_allowed_only_without_namespace_flags() -> None:
    rules = spec_for()["linux"]["seccomp"]["syscalls"]
    (clone,) = [rule for rule in rules if rule["names"] == ["clone"]]
    (condition,) = clone["args"]
    assert condition["op"] == "SCMP_CMP_MASKED_EQ" and condition["valueTwo"] == 0
    clone_newuser, clone_newns, clone_newnet = 0x10000000, 0x00020000, 0x40000000
    for flag in (clone_newuser, clone_newns, clone_newnet):
        assert condition["value"] & flag
    (clone3,) = [rule for rule in rules if rule["names"] == ["clone3"]]
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38  # ENOSYS


def test_standard_mounts_without_a_cgroup_mount() -> None:
    mounts = {m["destination"]: m for m in spec_for()["mounts"]}
    assert set(mounts) == {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"}
    assert all(m["type"] != "cgroup" for m in mounts.values())
    assert "ro" in mounts["/sys"]["options"]


def test_a_container_on_the_host_network_sees_the_hosts_sysfs_read_only() -> None:
    mounts = {m["destination"]: m for m in spec_for(host_network=True)["mounts"]}
    assert mounts["/sys"]["type"] == "bind" and "ro" in mounts["/sys"]["options"]


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
