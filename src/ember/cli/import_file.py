"""Loading the user's app file, and finding what `ember run file.py::name` names in it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ember import errors
from ember.cli.tracebacks import format_user_exception
from ember.sdk.app import App, LocalEntrypoint
from ember.sdk.function import Function

Runnable = Function | LocalEntrypoint


def _exec_file(path_text: str) -> object:
    path = Path(path_text).resolve()
    if not path.is_file():
        raise errors.InvalidError(f"no such file: {path_text}")
    if path.suffix != ".py":
        raise errors.InvalidError(f"{path_text} is not a Python file")
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]  # no half-imported module is left behind
        raise
    return module


def import_app_file(path_text: str) -> object:
    """Import `path_text` as a module named after the file, its directory first on sys.path;
    what goes wrong becomes one InvalidError naming the file."""
    try:
        return _exec_file(path_text)
    except SyntaxError as error:
        raise errors.InvalidError(
            f"{path_text} has a syntax error at line {error.lineno}: {error.msg}\n"
            f"    {(error.text or '').rstrip()}"
        ) from None
    except errors.Error:
        raise
    except Exception as error:
        raise errors.InvalidError(
            f"importing {path_text} failed:\n{format_user_exception(error).rstrip()}"
        ) from error


def find_apps(module: object) -> list[App]:
    return [value for value in vars(module).values() if isinstance(value, App)]


def find_runnable(module: object, path_text: str, name: str | None) -> tuple[App, Runnable]:
    """The entrypoint or function to run: the one named, or the only one there is."""
    candidates: dict[str, tuple[App, Runnable]] = {}
    for app in find_apps(module):
        for entry_name, entrypoint in app.registered_entrypoints.items():
            candidates[entry_name] = (app, entrypoint)
    entrypoints = dict(candidates)
    for app in find_apps(module):
        for function_name, function in app.registered_functions.items():
            candidates.setdefault(function_name, (app, function))
    if not candidates:
        raise errors.InvalidError(f"{path_text} defines no ember.App with functions to run")
    if name is not None:
        if name not in candidates:
            raise errors.InvalidError(
                f"{path_text} has no function or local entrypoint named {name!r}; "
                f"it has: {', '.join(sorted(candidates))}"
            )
        return candidates[name]
    for choices in (entrypoints, candidates):
        if len(choices) == 1:
            return next(iter(choices.values()))
        if choices:
            raise errors.InvalidError(
                f"{path_text} has several things to run; name one: "
                + ", ".join(f"{path_text}::{choice}" for choice in sorted(choices))
            )
    raise AssertionError("unreachable")


def single_app(module: object, path_text: str) -> App:
    apps = find_apps(module)
    if len(apps) != 1:
        raise errors.InvalidError(f"{path_text} must define exactly one ember.App to deploy")
    return apps[0]
