"""The tenant-escape suite: each test makes one attempt from inside a function (or a build step)
to get out of its container, and asserts that it was refused.

A function's code is the attacker here: it shares the harness's process and its socket to the
worker, runs as the container's root, and may call any system call its filter lets through.
"""

import errno
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ember
from ember import config
from ember.client import local_cluster
from ember.container.userns import IdMapping

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def escape(load_app: Any) -> Iterator[Any]:
    module = load_app("escape")
    with module.app.run():
        yield module


def worker_pid() -> int:
    cluster = local_cluster.running()
    assert cluster is not None
    return cluster.worker_pid


# ---- forged and malformed harness frames


def test_a_pickle_frame_is_never_unpickled_on_the_host(escape: Any) -> None:
    """The frame's pickle would run `touch` on the worker's host, as the worker's root."""
    marker = Path("/tmp") / f"ember-escape-{uuid.uuid4().hex}"
    worker = worker_pid()
    with pytest.raises(ember.ExecutionError, match="broke the harness protocol"):
        escape.send_pickle_frame.remote(str(marker))
    assert not marker.exists()
    assert worker_pid() == worker  # the worker lived on
    assert escape.hostname.remote()  # and the next call gets a fresh container


def test_a_result_for_an_input_the_container_does_not_run_is_refused(escape: Any) -> None:
    victim = escape.slow_square.spawn(7, 3.0)
    victim_input = "in-" + victim.object_id.removeprefix("fc-") + "-0"
    with pytest.raises(ember.ExecutionError, match="which it was not running"):
        escape.send_result_for_another_input.remote(victim_input)
    assert victim.get(timeout=60) == 49  # its own result, not the forged one


def test_a_frame_claiming_4_gib_is_refused_before_its_body(escape: Any) -> None:
    with pytest.raises(ember.ExecutionError, match="over the 1024 MiB a frame may hold"):
        escape.send_oversized_frame.remote()
    assert escape.hostname.remote()


def test_a_malformed_frame_ends_the_container_not_the_worker(escape: Any) -> None:
    worker = worker_pid()
    with pytest.raises(ember.ExecutionError, match="broke the harness protocol"):
        escape.send_garbage.remote()
    assert worker_pid() == worker
    assert escape.hostname.remote()


# ---- privileges


def test_container_root_is_an_unprivileged_host_id(escape: Any) -> None:
    seen = escape.identity.remote()
    assert seen["uid"] == 0
    host_base = str(IdMapping().host_base)
    assert seen["uid_map"] == ["0", host_base, "65536"]
    assert seen["gid_map"] == ["0", host_base, "65536"]
    cap_sys_admin, cap_sys_ptrace, cap_net_raw, cap_mknod = 21, 19, 13, 27
    for capability in (cap_sys_admin, cap_sys_ptrace, cap_net_raw, cap_mknod):
        assert not seen["cap_eff"] & (1 << capability)
    assert seen["no_new_privs"] == "1"
    assert seen["seccomp"] == "2"  # a filter
    # Image files still look root-owned inside.
    assert seen["image_file_owner"] == 0 and seen["etc_owner"] == 0


def test_dangerous_system_calls_are_refused(escape: Any) -> None:
    outcome = escape.system_calls.remote()
    assert outcome and all(code != 0 for code in outcome.values()), outcome
    # The filter answers EPERM; `clone3`-style fallbacks aside, nothing reaches the kernel.
    assert {name: code for name, code in outcome.items() if code != errno.EPERM} == {}


def test_unshare_cannot_make_namespaces_or_mount(escape: Any) -> None:
    done = escape.unshare_command.remote()
    assert done["returncode"] != 0
    assert "mounted" not in done["stdout"]
    assert "Operation not permitted" in done["stderr"]


def test_kernel_files_in_proc_and_sys_are_read_only(escape: Any) -> None:
    outcome = escape.write_kernel_files.remote()
    refusals = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EINVAL)
    assert {path: code for path, code in outcome.items() if code not in refusals} == {}
    assert outcome["/proc/sys/kernel/hostname"] == errno.EROFS


def test_the_source_and_ember_bound_in_are_read_only(escape: Any) -> None:
    outcome = escape.write_read_only_mounts.remote()
    # EACCES where the file is the host's (no owner inside), EROFS where the mount says so first.
    assert outcome and set(outcome.values()) <= {errno.EROFS, errno.EACCES}, outcome
    assert outcome["/app/new_file"] == errno.EROFS


# ---- the host and other tenants


def test_host_paths_and_other_containers_are_invisible(escape: Any) -> None:
    data_dir = config.data_dir()
    host_only = [
        str(data_dir),  # the control plane's database and blobs, the worker's state
        str(data_dir / "worker" / "apps"),  # every container's source
        str(data_dir / "worker" / "sockets"),  # every container's socket to the worker
        str(data_dir / "imagefs" / "daemon.sock"),
        "/etc/ember-host-marker-" + uuid.uuid4().hex,
    ]
    seen = escape.read_host_paths.remote(host_only)
    assert not any(seen.values()), seen
    inside = escape.identity.remote()
    assert inside["processes"] == [1]  # only its own process tree: the harness
    assert inside["run_ember"] == ["harness.sock", "stderr", "stdout"]  # its own socket only


def test_signals_cannot_reach_host_processes(escape: Any) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert escape.signal_host_process.remote(bystander.pid) == errno.ESRCH
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()


# ---- resources


def test_writing_past_the_disk_limit_fails_with_enospc_and_spares_the_host(escape: Any) -> None:
    assert 48 <= escape.disk_size.remote() <= 64  # `df /` shows the limit, less ext4's own
    free_before = shutil.disk_usage(config.data_dir()).free
    with pytest.raises(OSError, match="No space left on device") as raised:
        escape.fill_disk.remote()
    assert raised.value.errno == errno.ENOSPC
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert "its limit is 64 MiB" in notes and "ephemeral_disk" in notes
    # The container wrote at most its 64 MiB; 1 GiB was asked for.
    assert free_before - shutil.disk_usage(config.data_dir()).free < 256 << 20


def test_a_fork_bomb_stops_at_the_pids_limit(escape: Any) -> None:
    outcome = escape.many_tasks.remote()
    assert outcome["refused"], outcome
    assert 100 < outcome["started"] <= 4096
    assert escape.hostname.remote()


# ---- build steps


def test_a_build_step_gets_the_same_isolation(load_app: Any) -> None:
    module = load_app("escape_build")
    with module.app.run():
        report = module.build_report.remote()
    host_base = str(IdMapping().host_base)
    assert report["uid_map"] == ["0", host_base, "65536"], report
    assert report["seccomp"] == "2"
    for name in ("unshare_user", "mount_tmpfs", "keyctl", "bpf", "ptrace"):
        assert report[name] == errno.EPERM, (name, report)
    assert report["host_resolv_conf_writable"] is False
    # What the step wrote is the image's root's, not a host id.
    assert report["written_owner"] == 0


def test_files_a_container_writes_on_the_host_are_not_host_roots(escape: Any) -> None:
    name = escape.write_file.remote()  # the container stays up for its scaledown window
    upper = config.data_dir() / "worker" / "runtime" / "containers" / name / "disk" / "upper"
    written = (upper / "written-by-root").stat()
    assert (written.st_uid, written.st_gid) == (IdMapping().root, IdMapping().root)
    assert written.st_uid != os.geteuid() == 0
