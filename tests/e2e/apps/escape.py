"""What an attacker's function tries from inside its container. Each function makes one kind of
attempt and reports what happened, as plain data; tests/e2e/test_escape.py asserts refusals."""

import ctypes
import gc
import os
import socket
import struct
import threading
from pathlib import Path

import ember

app = ember.App("e2e-escape")

libc = ctypes.CDLL(None, use_errno=True)

# x86_64 system call numbers.
SYSCALLS = {
    "ptrace": 101,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "setns": 308,
    "bpf": 321,
    "kexec_load": 246,
    "init_module": 175,
    "pivot_root": 155,
    "chroot": 161,
    "io_uring_setup": 425,
    "userfaultfd": 323,
    "mount": 165,
}
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000


def _errno_of(result: int) -> int:
    return 0 if result >= 0 else ctypes.get_errno()


@app.function()
def system_calls() -> dict:
    """The errno each dangerous call fails with (0: it succeeded)."""
    import subprocess

    buffer = ctypes.create_string_buffer(256)
    child = subprocess.Popen(["sleep", "30"])  # its own child: ptrace would allow this one
    attempts = {
        "ptrace": lambda: libc.syscall(SYSCALLS["ptrace"], 16, child.pid, 0, 0),  # ATTACH
        "add_key": lambda: libc.syscall(SYSCALLS["add_key"], b"user", b"k", b"v", 1, -2),
        "request_key": lambda: libc.syscall(SYSCALLS["request_key"], b"user", b"k", 0, -2),
        "keyctl": lambda: libc.syscall(SYSCALLS["keyctl"], 0, -2, 0),  # GET_KEYRING_ID
        "unshare_user": lambda: libc.syscall(SYSCALLS["unshare"], CLONE_NEWUSER),
        "unshare_mount": lambda: libc.syscall(SYSCALLS["unshare"], CLONE_NEWNS),
        "setns": lambda: libc.syscall(SYSCALLS["setns"], 0, 0),
        "bpf": lambda: libc.syscall(SYSCALLS["bpf"], 0, buffer, 48),  # BPF_MAP_CREATE
        "perf_event_open": lambda: libc.syscall(SYSCALLS["perf_event_open"], buffer, 0, -1, -1, 0),
        "kexec_load": lambda: libc.syscall(SYSCALLS["kexec_load"], 0, 0, 0, 0),
        "init_module": lambda: libc.syscall(SYSCALLS["init_module"], buffer, 0, b""),
        "pivot_root": lambda: libc.syscall(SYSCALLS["pivot_root"], b"/tmp", b"/tmp"),
        "chroot": lambda: libc.syscall(SYSCALLS["chroot"], b"/tmp"),
        "io_uring_setup": lambda: libc.syscall(SYSCALLS["io_uring_setup"], 8, buffer),
        "userfaultfd": lambda: libc.syscall(SYSCALLS["userfaultfd"], 0),
        "mount_tmpfs": lambda: libc.syscall(SYSCALLS["mount"], b"none", b"/mnt", b"tmpfs", 0, b""),
        "remount_app_rw": lambda: libc.syscall(
            SYSCALLS["mount"],
            b"none",
            b"/app",
            None,
            0x20 | 0x1000,
            None,  # MS_REMOUNT|MS_BIND
        ),
    }
    try:
        return {name: _errno_of(attempt()) for name, attempt in attempts.items()}
    finally:
        child.kill()
        child.wait()


@app.function()
def unshare_command() -> dict:
    """What `unshare -Urm` (nested user and mount namespaces) does, as a shell user would try."""
    import subprocess

    done = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs none /mnt && echo mounted"],
        capture_output=True,
        text=True,
    )
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


@app.function()
def identity() -> dict:
    """Who the container's root is, as the kernel sees it."""
    with open("/proc/self/status") as file:
        status = dict(line.split(":\t", 1) for line in file.read().splitlines() if ":\t" in line)
    return {
        "uid": os.getuid(),
        "uid_map": Path("/proc/self/uid_map").read_text().split(),
        "gid_map": Path("/proc/self/gid_map").read_text().split(),
        "cap_eff": int(status["CapEff"], 16),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "seccomp": status["Seccomp"].strip(),
        "image_file_owner": os.stat("/usr/bin/python3").st_uid,
        "etc_owner": os.stat("/etc").st_uid,
        "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "run_ember": sorted(os.listdir("/run/ember")),
    }


@app.function()
def write_kernel_files() -> dict:
    """Writes to /proc and /sys: the errno of each (0: it was written)."""
    outcome = {}
    for path, data in (
        ("/proc/sys/kernel/hostname", "escaped"),
        ("/proc/sysrq-trigger", "h"),
        ("/proc/sys/vm/drop_caches", "3"),
        ("/sys/kernel/mm/transparent_hugepage/enabled", "never"),
        ("/sys/fs/cgroup/cgroup.procs", "1"),
        ("/proc/1/attr/current", "unconfined"),
    ):
        try:
            with open(path, "w") as file:
                file.write(data)
            outcome[path] = 0
        except OSError as error:
            outcome[path] = error.errno
    return outcome


@app.function()
def write_read_only_mounts() -> dict:
    """Writes to what the worker binds in read-only: the app's source and ember itself."""
    outcome = {}
    for path in ("/app/escape.py", "/app/new_file", "/opt/ember/ember/__init__.py"):
        try:
            with open(path, "a") as file:
                file.write("# changed from inside a container\n")
            outcome[path] = 0
        except OSError as error:
            outcome[path] = error.errno
    return outcome


@app.function()
def read_host_paths(paths: list[str]) -> dict:
    """Whether each host path can be seen from inside."""
    return {path: os.path.exists(path) for path in paths}


@app.function()
def signal_host_process(pid: int) -> int:
    """The errno of sending SIGKILL to a process of the host (0: it was sent)."""
    try:
        os.kill(pid, 9)
        return 0
    except OSError as error:
        return error.errno


@app.function(ephemeral_disk=64)
def fill_disk() -> dict:
    """Write past the container's 64 MiB disk; what `df /` said first."""
    stats = os.statvfs("/")
    reported = stats.f_blocks * stats.f_frsize >> 20
    written = 0
    with open("/big", "wb") as file:
        block = b"\0" * (1 << 20)
        while written < 1024:  # at most 1 GiB: 16 times the limit
            file.write(block)
            file.flush()
            written += 1
    return {"size_mib": reported, "written_mib": written}


@app.function(ephemeral_disk=64)
def disk_size() -> int:
    stats = os.statvfs("/")
    return stats.f_blocks * stats.f_frsize >> 20


@app.function()
def many_tasks() -> dict:
    """A bounded fork bomb: start threads (each a task the pids limit counts) until refused."""
    release = threading.Event()
    started = []
    refused = ""
    try:
        while len(started) < 100_000:
            thread = threading.Thread(target=release.wait)
            thread.start()
            started.append(thread)
    except RuntimeError as error:  # can't start new thread: the kernel said EAGAIN
        refused = str(error)
    finally:
        release.set()
        for thread in started:
            thread.join()
    return {"started": len(started), "refused": refused}


def _harness_socket() -> socket.socket:
    """The harness's own connection to its worker, as user code can find it."""
    for thing in gc.get_objects():
        if type(thing).__name__ == "WorkerLink":
            return thing._socket
    raise AssertionError("no WorkerLink in this process")


def _send_raw(frame: bytes) -> None:
    _harness_socket().sendall(frame)


@app.function()
def send_pickle_frame(marker: str) -> str:
    """The old protocol's frame: a pickle whose loading would run a command on the worker's host."""
    import pickle

    class OnTheHost:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    body = pickle.dumps(("result", OnTheHost()))
    _send_raw(struct.pack(">I", len(body)) + body)
    return "forged"


@app.function()
def send_result_for_another_input(input_id: str) -> str:
    """A well-formed result for an input this container does not run."""
    from ember.proto import harness_frames as frames
    from ember.sdk.serialization import serialize

    _send_raw(
        frames.encode(frames.Result(input_id, 0, frames.SUCCESS, serialize("forged"), "", ""))
    )
    return "honest"


@app.function()
def send_oversized_frame() -> str:
    """A header claiming 4 GiB, then nothing: the worker must not wait for or hold it."""
    _send_raw(struct.pack(">I", 0xFFFFFFFF))
    return "after the header"


@app.function()
def send_garbage() -> str:
    body = os.urandom(64)
    _send_raw(struct.pack(">I", len(body)) + body)
    return "after the garbage"


@app.function()
def hostname() -> str:
    return socket.gethostname()


@app.function()
def slow_square(x: int, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return x * x


@app.function()
def write_file() -> str:
    """Write a file into the container's root; the container's name (its runtime id)."""
    Path("/written-by-root").write_text("x")
    return socket.gethostname()
