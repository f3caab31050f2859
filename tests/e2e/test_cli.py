"""The command line, as a user types it."""

import contextlib
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ember

from .conftest import APPS, ember_cli

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_run_local_entrypoint_with_options(cluster: Any) -> None:
    result = ember_cli("run", str(EXAMPLES / "hello.py"), "--n", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "9 16" in lines
    assert "30" in lines  # sum of squares of 0..4
    assert "25" in lines
    assert "squaring 4" in lines  # printed inside the container, shown here


def test_run_one_function(cluster: Any) -> None:
    result = ember_cli("run", f"{APPS / 'basics.py'}::add", "--a", "3", "--b", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "7"


def test_run_rejects_a_bad_option_value(cluster: Any) -> None:
    result = ember_cli("run", str(EXAMPLES / "hello.py"), "--n", "many")
    assert result.returncode == 2
    assert "'many' is not a valid integer" in result.stderr


def test_deploy_then_call_by_name_from_another_process(cluster: Any) -> None:
    first = ember_cli("deploy", str(APPS / "deployed.py"))
    assert first.returncode == 0, first.stderr
    assert "version 1" in first.stderr
    second = ember_cli("deploy", str(APPS / "deployed.py"))
    assert "version 2" in second.stderr

    call = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ember; print(ember.Function.from_name('e2e-deployed', 'triple').remote(7))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert call.stdout.strip() == "21", call.stderr

    listed = ember_cli("app", "list")
    assert "e2e-deployed" in listed.stdout and "deployed" in listed.stdout

    logs = ember_cli("app", "logs", "e2e-deployed", "--no-follow")
    assert "tripling 7" in logs.stdout

    stopped = ember_cli("app", "stop", "e2e-deployed")
    assert stopped.returncode == 0, stopped.stderr
    gone = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ember; ember.Function.from_name('e2e-deployed', 'triple').remote(1)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "no running or deployed app named 'e2e-deployed'" in gone.stderr


def _lines_of(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The lines `process` prints, as it prints them, then None when its output ends."""
    lines: queue.Queue[str | None] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str | None], wanted: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(queue.Empty):
            line = lines.get(timeout=left)
            assert line is not None, f"the output ended before {wanted!r}"
            if line.strip() == wanted:
                return
    raise AssertionError(f"{wanted!r} not printed within {timeout} s")


def test_app_logs_follows_live(cluster: Any) -> None:
    assert ember_cli("deploy", str(APPS / "deployed.py")).returncode == 0
    triple = ember.Function.from_name("e2e-deployed", "triple")
    before, after = random.sample(range(10**12, 10**13), 2)  # printed by this test only
    assert triple.remote(before) == 3 * before  # a line in the log before the follower starts
    follower = subprocess.Popen(
        [sys.executable, "-m", "ember", "app", "logs", "e2e-deployed"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines_of(follower)
        _wait_for_line(lines, f"tripling {before}", timeout=60)  # it has read the stored log
        # A line that did not exist when the follower read the log: only following shows it.
        assert triple.remote(after) == 3 * after
        _wait_for_line(lines, f"tripling {after}", timeout=20)
        assert follower.poll() is None  # still following
    finally:
        follower.kill()
        follower.wait()
        ember_cli("app", "stop", "e2e-deployed")


def test_detach_keeps_the_app_running(cluster: Any) -> None:
    result = ember_cli("run", "--detach", f"{APPS / 'deployed.py'}::triple", "--x", "2")
    assert result.returncode == 0, result.stderr
    assert "keeps running" in result.stderr
    assert "detached" in ember_cli("app", "list").stdout
    assert ember_cli("app", "stop", "e2e-deployed").returncode == 0


# `python -m ember run ...`, but with Ctrl-C handled: started in the background, the suite may
# have inherited SIGINT ignored, and Python then leaves it ignored (a preexec_fn cannot reset it:
# forking with gRPC's threads running crashes the child).
_INTERRUPTIBLE_EMBER = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'ember'; runpy.run_module('ember', run_name='__main__', alter_sys=True)"
)


def test_ctrl_c_stops_the_ephemeral_app(cluster: Any) -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTIBLE_EMBER, "run", str(APPS / "long_entrypoint.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stdout is not None
    assert run.stdout.readline().strip() == "pong"
    assert "e2e-long" in ember_cli("app", "list").stdout
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130
    assert "e2e-long" not in ember_cli("app", "list").stdout


def test_cluster_status_shows_the_worker(cluster: Any) -> None:
    result = ember_cli("cluster", "status")
    assert result.returncode == 0, result.stderr
    assert "wk-" in result.stdout


def test_a_plain_script_runs_its_app_with_output(cluster: Any) -> None:
    result = subprocess.run(
        [sys.executable, str(APPS / "script.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "result 16" in result.stdout.splitlines()
    assert "squaring 4 in a container" in result.stdout  # the container's log, shown here
    assert "running: square" in result.stderr  # progress
    assert "stopped" in result.stderr
