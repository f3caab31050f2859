"""The app's source, as containers see it: the entry file and the local modules it imports.

Modal mounts these automatically; so does ember. "Local" means a module whose file lies under the
entry file's directory and not inside an installed environment. The files travel as one tar
(sorted, with fixed times, so unchanged source makes the same blob) and are mounted read-only
at `/app` in every container of the app.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

from ember import errors

_ENVIRONMENT_PARTS = {"site-packages", "dist-packages", ".venv", "venv", "__pycache__"}


def module_file(name: str) -> Path:
    module = sys.modules.get(name) or sys.modules["__main__"]
    file = getattr(module, "__file__", None)
    if file is None:
        raise errors.InvalidError(f"module {name!r} has no source file to send to containers")
    return Path(file).resolve()


def _is_local(path: Path, root: Path) -> bool:
    return path.is_relative_to(root) and not _ENVIRONMENT_PARTS.intersection(
        path.relative_to(root).parts
    )


def source_root(entry: Path, module: str) -> Path:
    """The directory the module's import name starts from (`a.b` in `/x/a/b.py` -> `/x`)."""
    return entry.parents[module.count(".")]


def local_files(entry: Path, root: Path) -> list[Path]:
    """The entry file plus every imported module (or package) that lives under `root`."""
    ember_package = Path(__file__).resolve().parents[1]  # mounted into containers on its own
    files = {entry}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        if not _is_local(path, root) or path.suffix != ".py" or path.is_relative_to(ember_package):
            continue
        if path.name == "__init__.py":
            files.update(p for p in path.parent.rglob("*.py") if _is_local(p, root))
        else:
            files.add(path)
    return sorted(files)


def source_archive(entry: Path, module: str) -> bytes:
    """A reproducible tar of the app's local files, paths relative to its source root."""
    root = source_root(entry, module)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in local_files(entry, root):
            data = path.read_bytes()
            info = tarfile.TarInfo(str(path.relative_to(root)))
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
