"""How the CLI shows an exception from the user's code: the user's frames, not ember's.

An exception raised in a local entrypoint (or coming back from a remote function) travels up
through ember's SDK, its event-loop thread, `concurrent.futures` and typer before the CLI catches
it. Those frames say nothing to the user, so they are left out; the remote traceback ember
attaches as a note stays. `EMBER_TRACEBACK=1` shows everything, for debugging ember itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import traceback
from pathlib import Path

import click
import typer

import ember

FULL_TRACEBACK_VARIABLE = "EMBER_TRACEBACK"


def _package_dir(module: object) -> str:
    return str(Path(module.__file__).parent) + os.sep  # type: ignore[attr-defined]


# Code between the CLI's entry and the user's code, or between the user's call and the place a
# result's exception is raised again: ember itself, the command-line framework, and the parts of
# the standard library that carry a call to another thread or event loop.
_INTERNAL_DIRS = tuple(
    _package_dir(module) for module in (ember, typer, click, asyncio, concurrent.futures)
)
_INTERNAL_FILES = frozenset(
    module.__file__ for module in (threading, contextlib) if module.__file__ is not None
)


def full_tracebacks() -> bool:
    """Whether the user asked for every frame (`EMBER_TRACEBACK=1`)."""
    return os.environ.get(FULL_TRACEBACK_VARIABLE, "") not in ("", "0")


def is_internal(filename: str) -> bool:
    return (
        filename.startswith(_INTERNAL_DIRS)
        or filename in _INTERNAL_FILES
        or filename.startswith("<frozen importlib")
    )


def _trim(summary: traceback.TracebackException, seen: set[int]) -> int:
    """Drop internal frames from an exception, its causes and contexts and the members of a
    group, in place; returns how many frames are left."""
    if id(summary) in seen:
        return 0
    seen.add(id(summary))
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack if not is_internal(frame.filename)]
    )
    left = len(summary.stack)
    for linked in (summary.__cause__, summary.__context__, *(summary.exceptions or ())):
        if linked is not None:
            left += _trim(linked, seen)
    return left


def _has_remote_traceback(error: BaseException) -> bool:
    if isinstance(error, ember.RemoteError) and error.remote_traceback:
        return True
    return any("Remote traceback:" in note for note in getattr(error, "__notes__", ()))


def format_user_exception(error: BaseException) -> str:
    """The exception as Python prints it, less ember's, typer's and the standard library's frames
    that carried it (all of them with `EMBER_TRACEBACK=1`).

    An exception with no frame of the user's and no remote traceback is not the user's code
    failing but ember (a service such as `ember server`, say): it is shown whole.
    """
    full = "".join(traceback.format_exception(error))
    if full_tracebacks():
        return full
    summary = traceback.TracebackException.from_exception(error)
    if not _trim(summary, set()) and not _has_remote_traceback(error):
        return full
    text = "".join(summary.format())
    raised_at = traceback.extract_tb(error.__traceback__)
    if raised_at and is_internal(raised_at[-1].filename) and not _has_remote_traceback(error):
        # Raised inside ember from the user's code: the frames that explain it are hidden.
        text += f"(ember's own frames are hidden: {FULL_TRACEBACK_VARIABLE}=1 shows them)\n"
    return text
