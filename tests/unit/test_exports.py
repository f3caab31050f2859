"""`ember`'s public surface is exactly `ember.__all__`."""

import types

import ember


def test_all_is_sorted() -> None:
    assert ember.__all__ == sorted(ember.__all__)


def test_every_exported_name_exists() -> None:
    missing = [name for name in ember.__all__ if not hasattr(ember, name)]
    assert missing == []


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(ember).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(ember.__all__) == public


def test_errors_are_exported_as_ember_errors() -> None:
    assert ember.NotFoundError is ember.errors.NotFoundError
    assert issubclass(ember.SerializationError, ember.InvalidError)
