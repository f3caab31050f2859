"""What the SDK shows while an app runs: progress, and the logs of its containers."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

_enabled = False
_waiting_shown = ""  # the reason a call waits that was shown last ("" once calls run)


@contextlib.contextmanager
def enable_output() -> Iterator[None]:
    """Show progress and container logs while apps run inside this block.

    with ember.enable_output(), app.run():
        square.remote(2)
    """
    global _enabled
    previous, _enabled = _enabled, True
    try:
        yield
    finally:
        _enabled = previous


def output_enabled() -> bool:
    return _enabled


def console() -> Any:
    """A rich console on stderr when output is enabled, else None (nothing is shown)."""
    if not _enabled:
        return None
    from rich.console import Console

    return Console(stderr=True)


def show_log(fd: int, data: str) -> None:
    stream = sys.stderr if fd == 2 else sys.stdout
    stream.write(data)
    stream.flush()


def note_waiting(reason: str) -> None:
    """Tell the caller why its call is waiting ("no worker connected"), once per reason; an empty
    reason (the inputs run) lets the next wait be told again. Shown on stderr with output
    enabled, else as a logged warning, so a call never waits without a word."""
    global _waiting_shown
    if reason == _waiting_shown:
        return
    _waiting_shown = reason
    if not reason:
        return
    if _enabled:
        sys.stderr.write(f"waiting: {reason}\n")
        sys.stderr.flush()
    else:
        import logging  # not at import: containers import the SDK and never wait

        logging.getLogger("ember").warning("waiting: %s", reason)
