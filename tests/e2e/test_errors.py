"""Errors a user can cause, or that user code raises: one clear message each."""

import threading
from typing import Any

import pytest

import ember

from .conftest import APPS, ember_cli


def test_remote_exception_keeps_type_message_and_traceback(basics: Any) -> None:
    with pytest.raises(ValueError, match="bad input 7") as raised:
        basics.fail.remote(7)
    notes = "".join(getattr(raised.value, "__notes__", []))
    assert "Remote traceback" in notes
    assert 'raise ValueError(f"bad input {x}")' in notes


def test_user_defined_exception_class(basics: Any) -> None:
    with pytest.raises(basics.CustomError, match="a custom failure"):
        basics.fail_custom.remote()


def test_exception_that_cannot_be_rebuilt_here(basics: Any) -> None:
    with pytest.raises(ember.RemoteError, match="Problem: made inside the container") as raised:
        basics.fail_with_container_only_class.remote()
    assert "container_only.py" not in str(raised.value)
    assert "raise importlib.import_module" in raised.value.remote_traceback


def test_unpicklable_argument(basics: Any) -> None:
    with pytest.raises(ember.SerializationError, match="cannot be pickled"):
        basics.size_of.remote(threading.Lock())


def test_calling_a_function_whose_app_is_not_running(load_app: Any) -> None:
    limits = load_app("limits")
    with pytest.raises(ember.ExecutionError, match="its app is not running"):
        limits.allocate.remote(1)


def test_from_name_unknown_app(cluster: Any) -> None:
    with pytest.raises(ember.NotFoundError, match="no running or deployed app named 'no-such-app'"):
        ember.Function.from_name("no-such-app", "f").remote()


def test_from_name_unknown_function(basics: Any) -> None:
    with pytest.raises(ember.NotFoundError, match="has no function named 'nope'"):
        ember.Function.from_name("e2e-basics", "nope").remote()


def test_syntax_error_in_the_users_file(cluster: Any, tmp_path: Any) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import ember\napp = ember.App('x')\ndef f(:\n    pass\n")
    result = ember_cli("run", str(broken))
    assert result.returncode == 1
    assert "syntax error at line 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_function_in_run_target(cluster: Any) -> None:
    result = ember_cli("run", f"{APPS / 'basics.py'}::nope")
    assert result.returncode == 1
    assert "no function or local entrypoint named 'nope'" in " ".join(result.stderr.split())


def test_import_failure_inside_the_container(cluster: Any, tmp_path: Any) -> None:
    app_file = tmp_path / "needs_missing.py"
    app_file.write_text(
        "import ember\n"
        "app = ember.App('needs-missing')\n"
        "with open(__file__) as f:\n"
        "    pass\n"
        "import os\n"
        "if os.environ.get('EMBER_CONTAINER_ID'):\n"
        "    import package_that_is_not_in_the_image\n"
        "@app.function()\n"
        "def f():\n"
        "    return 1\n"
    )
    result = ember_cli("run", f"{app_file}::f")
    assert result.returncode == 1
    assert "No module named 'package_that_is_not_in_the_image'" in result.stderr


def test_a_function_no_worker_can_hold_fails_with_the_reason(load_app: Any) -> None:
    limits = load_app("limits")
    with limits.app.run(), pytest.raises(ember.ExecutionError, match="more than any worker has"):
        limits.too_big.remote()
