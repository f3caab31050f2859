"""What `ember run` and `ember app` tell the user: async entrypoints run, unknown apps are named,
failures show the user's code and not ember's."""

import re
from typing import Any

import pytest

from .conftest import APPS, ember_cli

APP = (APPS / "cli_messages.py").resolve()

# Frames of the machinery between `ember run` and the user's code.
INTERNAL_FRAMES = ("typer", "click", "_sync.py", "concurrent/futures", "asyncio", "src/ember/")


def run(entrypoint: str, env: dict[str, str] | None = None) -> Any:
    return ember_cli("run", f"{APP}::{entrypoint}", env={"EMBER_TRACEBACK": "", **(env or {})})


def test_an_async_local_entrypoint_runs_its_aio_calls(cluster: Any) -> None:
    result = run("async_main")
    assert result.returncode == 0, result.stderr
    assert "never awaited" not in result.stderr
    lines = result.stdout.splitlines()
    assert "remote 42" in lines
    assert "map [0, 2, 4]" in lines
    assert "gen [0, 1, 2]" in lines
    assert "blocking 10" in lines


def test_an_async_local_entrypoint_takes_its_options(cluster: Any) -> None:
    result = ember_cli("run", f"{APP}::async_main", "--n", "2")
    assert result.returncode == 0, result.stderr
    assert "gen [0, 1]" in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("command", "app_id"),
    [("stop", "ap-garbage"), ("logs", "ap-garbage"), ("logs", "ap-0000000000000000")],
)
def test_an_unknown_app_id_is_an_error_naming_it(cluster: Any, command: str, app_id: str) -> None:
    # A timeout here (`logs` used to follow an unknown app forever) fails the test.
    result = ember_cli("app", command, app_id, timeout=60)
    assert result.returncode == 1
    assert f"no app {app_id}; see `ember app list --all`" in result.stderr
    assert "stopped" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["stop", "logs"])
def test_an_app_name_with_no_live_app_is_an_error_naming_it(cluster: Any, command: str) -> None:
    result = ember_cli("app", command, "e2e-no-such-app", timeout=60)
    assert result.returncode == 1
    assert "no running or deployed app named 'e2e-no-such-app'" in result.stderr
    assert "`ember app list --all`" in result.stderr


def test_logs_of_a_stopped_app_end_after_its_lines(cluster: Any) -> None:
    ran = run("async_main")
    assert ran.returncode == 0, ran.stderr
    started = re.search(r"app (ap-[0-9a-f]+) running", ran.stderr)
    assert started is not None, ran.stderr
    # Following (the default) a stopped app: its lines, then the end, not a wait for more.
    result = ember_cli("app", "logs", started.group(1), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "doubling 21" in result.stdout.splitlines()


def test_a_remote_failure_shows_the_users_frames_and_the_remote_traceback(cluster: Any) -> None:
    result = run("fails_remotely")
    assert result.returncode == 1
    error = result.stderr
    assert f'File "{APP}", line' in error
    assert "in fails_remotely" in error and "in check_input" in error
    assert "Remote traceback:" in error
    assert 'File "/app/cli_messages.py"' in error and "in reject" in error
    assert error.rstrip().endswith("ValueError: rejected 7")
    for internal in INTERNAL_FRAMES:
        assert internal not in error, internal


def test_a_remote_failure_in_an_async_entrypoint_shows_the_users_frames(cluster: Any) -> None:
    result = run("fails_remotely_async")
    assert result.returncode == 1
    assert "in fails_remotely_async" in result.stderr
    assert "ValueError: rejected 8" in result.stderr
    for internal in INTERNAL_FRAMES:
        assert internal not in result.stderr, internal


def test_a_local_failure_shows_the_users_frame(cluster: Any) -> None:
    result = run("fails_locally")
    assert result.returncode == 1
    assert "in fails_locally" in result.stderr
    assert result.stderr.rstrip().endswith("LookupError: nothing to look up here")
    for internal in INTERNAL_FRAMES:
        assert internal not in result.stderr, internal


def test_ember_traceback_shows_every_frame(cluster: Any) -> None:
    result = run("fails_remotely", env={"EMBER_TRACEBACK": "1"})
    assert result.returncode == 1
    assert "in fails_remotely" in result.stderr
    assert "typer" in result.stderr and "concurrent/futures" in result.stderr


def test_an_unpicklable_argument_is_one_message_saying_so(cluster: Any) -> None:
    result = run("sends_a_lock")
    assert result.returncode == 1
    assert result.stderr.count("Error:") == 1
    assert "Traceback" not in result.stderr
    assert (
        "Error: the arguments of the call cannot be pickled to send to the function's container: "
        "_thread.lock at args[0]"
    ) in result.stderr


def test_an_unpicklable_return_value_says_it_came_from_the_container(cluster: Any) -> None:
    result = run("gets_a_lock")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        "the function returned a value that cannot be pickled to send back from its container: "
        "_thread.lock"
    ) in result.stderr
    assert "to the function's container" not in result.stderr


def test_an_unpicklable_yielded_item_says_it_came_from_the_container(cluster: Any) -> None:
    result = run("gets_a_yielded_lock")
    assert result.returncode == 1
    assert "the function yielded an item that cannot be pickled" in result.stderr
    assert "to the function's container" not in result.stderr
