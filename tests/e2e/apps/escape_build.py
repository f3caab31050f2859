"""A build step that tries to get out of its build container and writes down what happened; a
function on the image it built hands the report back (tests/e2e/test_escape.py)."""

import json
import shlex

import ember

PROBE = r"""
import ctypes, json, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(result):
    return 0 if result >= 0 else ctypes.get_errno()
child = subprocess.Popen(["sleep", "30"])
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
try:
    open("/etc/resolv.conf", "a").close()
    resolv_writable = True
except OSError:
    resolv_writable = False
open("/written-in-build", "w").write("x")
report = {
    "uid_map": open("/proc/self/uid_map").read().split(),
    "seccomp": status["Seccomp"].strip(),
    "unshare_user": errno_of(libc.syscall(272, 0x10000000)),
    "mount_tmpfs": errno_of(libc.syscall(165, b"none", b"/mnt", b"tmpfs", 0, b"")),
    "keyctl": errno_of(libc.syscall(250, 0, -2, 0)),
    "bpf": errno_of(libc.syscall(321, 0, ctypes.create_string_buffer(64), 48)),
    "ptrace": errno_of(libc.syscall(101, 16, child.pid, 0, 0)),
    "host_resolv_conf_writable": resolv_writable,
}
child.kill()
json.dump(report, open("/build-report.json", "w"))
"""

image = ember.Image.debian_slim().run_commands(f"python3 -c {shlex.quote(PROBE)}")
app = ember.App("e2e-escape-build", image=image)


@app.function()
def build_report() -> dict:
    import os

    with open("/build-report.json") as file:
        report = json.load(file)
    report["written_owner"] = os.stat("/written-in-build").st_uid
    return report
