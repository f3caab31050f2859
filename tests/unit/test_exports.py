"""`ember`'s public surface is exactly `ember.__all__`."""

import types

import ember


def test_all_is_sorted() -> None:
    assert ember.__all__ == sorted(ember.__all__)


def test_every_exported_name_exists() -> None:
    missing = [name for name in ember.__all__ if not hasattr(ember, name)]
    assert missing == []


def test_all_lists_every_public_name() -> None:
    # dir(), not vars(): the SDK's names are in the module's namespace only once used.
    public = {
        name
        for name in dir(ember)
        if not name.startswith("_") and not isinstance(getattr(ember, name), types.ModuleType)
    }
    assert set(ember.__all__) == public


def test_an_unknown_name_is_an_attribute_error() -> None:
    assert not hasattr(ember, "NoSuchThing")


def test_errors_are_exported_as_ember_errors() -> None:
    assert ember.NotFoundError is ember.errors.NotFoundError
    assert issubclass(ember.SerializationError, ember.InvalidError)
