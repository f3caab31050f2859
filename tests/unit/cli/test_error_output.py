"""How `ember` ends on an error: the user's frames of their exception, or one line for ember's."""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer

import ember
import ember.cli.main as cli_main
from ember import errors
from ember.proto import api_pb2
from ember.sdk._calls import decode_error
from ember.sdk._sync import iterate_blocking, synchronize

REMOTE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/shop.py", line 9, in price\n'
    "    raise ValueError('no price for 7')\n"
    "ValueError: no price for 7\n"
)

# What typer, click, the SDK's thread hand-off and concurrent.futures leave in a traceback.
INTERNAL = ("typer", "click", "_sync.py", "concurrent/futures", "cli/main.py")


class Remote:
    """Stands in for a remote function: its failure comes back through the SDK's loop."""

    @synchronize
    async def call(self) -> None:
        raise await decode_error(
            None,  # type: ignore[arg-type]  # no payload to fetch: the class is unknown here
            api_pb2.Result(
                status=api_pb2.RESULT_STATUS_FAILURE,
                exception_text="ValueError: no price for 7",
                traceback=REMOTE_TRACEBACK,
            ),
        )


def look_up_prices() -> None:
    Remote().call()


def run_ember(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: Callable[[], Any]
) -> tuple[int, str]:
    """Run `ember` with one command standing in for `ember run`; its exit code and stderr."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(command)
    monkeypatch.setattr(cli_main, "cli", app)
    monkeypatch.setattr(sys, "argv", ["ember"])
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    return exited.value.code, capsys.readouterr().err  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def no_full_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_TRACEBACK", raising=False)


def test_a_remote_failure_shows_the_users_frames_and_the_remote_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def entrypoint() -> None:
        look_up_prices()

    code, stderr = run_ember(monkeypatch, capsys, entrypoint)
    assert code == 1
    assert stderr.startswith("Traceback (most recent call last):\n")
    assert "in entrypoint\n" in stderr and "in look_up_prices\n" in stderr
    assert "ember.errors.RemoteError: ValueError: no price for 7" in stderr
    assert stderr.endswith(f"Remote traceback:\n{REMOTE_TRACEBACK}")
    for internal in INTERNAL:
        assert internal not in stderr, internal
    assert "EMBER_TRACEBACK" not in stderr  # the remote traceback explains it


def test_a_chained_local_failure_keeps_both_parts_without_internal_frames(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def entrypoint() -> None:
        try:
            look_up_prices()
        except errors.RemoteError as error:
            raise KeyError("price") from error

    code, stderr = run_ember(monkeypatch, capsys, entrypoint)
    assert code == 1
    assert "The above exception was the direct cause of the following exception" in stderr
    assert "in look_up_prices\n" in stderr
    assert stderr.rstrip().endswith("KeyError: 'price'")
    for internal in INTERNAL:
        assert internal not in stderr, internal


def test_ember_traceback_shows_every_frame(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EMBER_TRACEBACK", "1")
    code, stderr = run_ember(monkeypatch, capsys, look_up_prices)
    assert code == 1
    assert "in look_up_prices\n" in stderr
    for internal in INTERNAL:
        assert internal in stderr, internal


def test_a_failure_inside_ember_says_how_to_see_its_frames(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def entrypoint() -> None:
        list(iterate_blocking(object()))  # type: ignore[arg-type]  # not an async iterator

    code, stderr = run_ember(monkeypatch, capsys, entrypoint)
    assert code == 1
    assert "in entrypoint\n" in stderr
    assert "AttributeError" in stderr
    assert stderr.endswith("(ember's own frames are hidden: EMBER_TRACEBACK=1 shows them)\n")


def test_a_failure_of_ember_alone_is_shown_whole(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A command whose code is ember's own (as `ember server` is), failing with no user code in it.
    inside_ember = str(Path(ember.__file__).parent / "cli" / "a_service.py")
    namespace: dict[str, Any] = {}
    exec(compile("def serve():\n    raise RuntimeError('lost')\n", inside_ember, "exec"), namespace)
    code, stderr = run_ember(monkeypatch, capsys, namespace["serve"])
    assert code == 1
    assert f'File "{inside_ember}", line 2, in serve' in stderr
    assert "typer" in stderr
    assert stderr.endswith("RuntimeError: lost\n")


def test_an_ember_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def entrypoint() -> None:
        raise errors.NotFoundError("no app ap-garbage; see `ember app list --all`")

    code, stderr = run_ember(monkeypatch, capsys, entrypoint)
    assert code == 1
    assert stderr == "Error: no app ap-garbage; see `ember app list --all`\n"
