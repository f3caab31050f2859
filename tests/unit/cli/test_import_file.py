"""Loading the user's app file, and finding what `ember run file.py::name` names in it."""

import re
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import ember
from ember import InvalidError
from ember.cli.import_file import find_runnable, import_app_file, single_app
from ember.sdk.app import LocalEntrypoint


@pytest.fixture
def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """`write_app(name, source)`: an app file; what importing it adds to sys.modules is undone."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    names: list[str] = []

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        names.append(name)
        return path

    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_an_app_file_is_imported_under_its_stem(write_app) -> None:
    path = write_app(
        "ember_cli_ok",
        """
        import ember
        app = ember.App("ok")

        @app.function()
        def square(x):
            return x * x
        """,
    )
    module = import_app_file(str(path))
    assert sys.modules["ember_cli_ok"] is module
    assert str(path.parent) == sys.path[0]
    assert list(single_app(module, str(path)).registered_functions) == ["square"]


def test_a_missing_file_is_invalid_and_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.py")
    with pytest.raises(InvalidError, match=re.escape(f"no such file: {missing}")):
        import_app_file(missing)


def test_a_file_that_is_not_python_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "app.txt").write_text("")
    with pytest.raises(InvalidError, match=re.escape("app.txt is not a Python file")):
        import_app_file(str(tmp_path / "app.txt"))


def test_a_syntax_error_names_the_file_and_line(write_app) -> None:
    path = write_app("ember_cli_syntax", "import ember\n\ndef broken(:\n    pass\n")
    with pytest.raises(InvalidError) as caught:
        import_app_file(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path} has a syntax error at line 3:")
    assert "def broken(:" in message


def test_an_exception_at_import_shows_the_traceback(write_app) -> None:
    path = write_app("ember_cli_raises", "x = 1\ny = x / 0\n")
    with pytest.raises(InvalidError, match=re.escape(f"importing {path} failed")) as caught:
        import_app_file(str(path))
    assert "ZeroDivisionError: division by zero" in str(caught.value)
    assert "line 2" in str(caught.value)


def test_an_ember_error_at_import_comes_through_as_it_is(write_app) -> None:
    path = write_app(
        "ember_cli_parens",
        """
        import ember
        app = ember.App("parens")

        @app.function
        def square(x):
            return x * x
        """,
    )
    with pytest.raises(InvalidError, match=r"^write @app.function\(\) with parentheses$"):
        import_app_file(str(path))


# ---- finding what to run


def square(x: int) -> int:
    return x * x


def cube(x: int) -> int:
    return x**3


def module_with(**apps: ember.App) -> types.SimpleNamespace:
    return types.SimpleNamespace(**apps)


def test_the_single_entrypoint_is_picked_over_functions() -> None:
    app = ember.App("a")
    app.function()(square)
    app.function()(cube)
    entrypoint = app.local_entrypoint()(lambda: None)
    found_app, runnable = find_runnable(module_with(app=app), "a.py", None)
    assert (found_app, runnable) == (app, entrypoint)


def test_the_single_function_is_picked_when_there_is_no_entrypoint() -> None:
    app = ember.App("a")
    function = app.function()(square)
    assert find_runnable(module_with(app=app), "a.py", None) == (app, function)


def test_several_entrypoints_are_ambiguous_and_listed() -> None:
    app = ember.App("a")

    @app.local_entrypoint()
    def main() -> None: ...

    @app.local_entrypoint()
    def other() -> None: ...

    with pytest.raises(
        InvalidError, match=re.escape("several things to run; name one: a.py::main, a.py::other")
    ):
        find_runnable(module_with(app=app), "a.py", None)


def test_several_functions_without_an_entrypoint_are_ambiguous_and_listed() -> None:
    app = ember.App("a")
    app.function()(square)
    app.function()(cube)
    with pytest.raises(InvalidError, match=re.escape("name one: a.py::cube, a.py::square")):
        find_runnable(module_with(app=app), "a.py", None)


def test_a_name_picks_that_function() -> None:
    app = ember.App("a")
    app.local_entrypoint()(lambda: None)
    function = app.function()(cube)
    assert find_runnable(module_with(app=app), "a.py", "cube") == (app, function)


def test_an_entrypoint_wins_a_name_clash_with_a_function() -> None:
    app = ember.App("a")
    app.function()(square)
    entrypoint = app.local_entrypoint(name="square")(lambda: None)
    _, runnable = find_runnable(module_with(app=app), "a.py", "square")
    assert isinstance(runnable, LocalEntrypoint) and runnable is entrypoint


def test_an_unknown_name_lists_what_exists() -> None:
    app = ember.App("a")
    app.function()(square)
    app.local_entrypoint(name="main")(lambda: None)
    with pytest.raises(
        InvalidError, match="no function or local entrypoint named 'sqare'; it has: main, square"
    ):
        find_runnable(module_with(app=app), "a.py", "sqare")


def test_a_file_without_apps_has_nothing_to_run() -> None:
    with pytest.raises(InvalidError, match=re.escape("a.py defines no ember.App")):
        find_runnable(module_with(), "a.py", None)


def test_single_app_requires_exactly_one_app() -> None:
    with pytest.raises(InvalidError, match=re.escape("exactly one ember.App")):
        single_app(module_with(one=ember.App("1"), two=ember.App("2")), "a.py")
