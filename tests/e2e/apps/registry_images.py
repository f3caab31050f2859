"""A function that reports what it finds inside its container, for images from a registry.

The images name a registry that tests/e2e/test_registry_images.py starts on a free port, so the
test makes them and an app around `inspect` with `app_on`. Containers import this file by name
and find `inspect` at its top level, as they find any app's functions.
"""

import os
from pathlib import Path

import ember


def inspect(paths: list[str], variables: list[str]) -> dict:
    def read(path: str) -> str | None:
        return Path(path).read_text() if Path(path).is_file() else None

    return {
        "files": {path: read(path) for path in paths},
        "env": {name: os.environ.get(name) for name in variables},
        "cwd": os.getcwd(),
    }


def app_on(image: ember.Image, name: str) -> tuple[ember.App, ember.Function]:
    """An app whose one function, `inspect`, runs on `image`."""
    app = ember.App(name)
    return app, app.function(image=image)(inspect)
