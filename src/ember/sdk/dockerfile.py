"""`Image.from_dockerfile`: a Dockerfile's common instructions as image steps.

FROM (a registry image), RUN, ENV, WORKDIR, COPY and ADD of local files, and ARG (with `$NAME`
and `${NAME}` substitution) become steps; instructions that only describe how a container runs
(CMD, ENTRYPOINT, EXPOSE, LABEL, ...) are skipped, because ember decides how its containers run.
Anything else is refused with the line that holds it.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from pathlib import Path

from ember import errors
from ember.sdk.image import Image

_SKIPPED = {"CMD", "ENTRYPOINT", "EXPOSE", "LABEL", "MAINTAINER", "HEALTHCHECK", "STOPSIGNAL"}
_SKIPPED |= {"VOLUME", "USER", "SHELL", "ONBUILD"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def image_from_dockerfile(path: Path, context_dir: Path | None, force_build: bool) -> Image:
    if not path.is_file():
        raise errors.InvalidError(f"Dockerfile {str(path)!r} not found")
    context = context_dir or path.parent
    image: Image | None = None
    args: dict[str, str] = {}
    workdir = "/"  # relative paths in WORKDIR and COPY are relative to it
    for number, instruction, rest in _instructions(path.read_text()):
        where = f"{path}:{number}"
        rest = _VARIABLE.sub(lambda m: args.get(m.group(1) or m.group(2), m.group(0)), rest)
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            args.setdefault(name.strip(), default.strip())
            continue
        if instruction == "FROM":
            if image is not None:
                raise errors.InvalidError(f"{where}: multi-stage Dockerfiles are not supported")
            reference = rest.split()[0]
            if reference == "scratch":
                raise errors.InvalidError(f"{where}: FROM scratch is not supported")
            image = Image.from_registry(reference, force_build=force_build)
            continue
        if image is None:
            raise errors.InvalidError(f"{where}: the first instruction must be FROM")
        if instruction in _SKIPPED:
            continue
        if instruction == "RUN":
            image = image.run_commands(_shell_form(rest))
        elif instruction == "ENV":
            image = image.env(_env_pairs(rest, where))
        elif instruction == "WORKDIR":
            workdir = posixpath.join(workdir, rest.strip())
            image = image.workdir(workdir)
        elif instruction in ("COPY", "ADD"):
            image = _copy(image, rest, context, workdir, where)
        else:
            raise errors.InvalidError(f"{where}: {instruction} is not supported")
    if image is None:
        raise errors.InvalidError(f"{path} has no FROM instruction")
    return image


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments), with continuation lines joined."""
    found = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        instruction, _, rest = whole.partition(" ")
        found.append((start, instruction.upper(), rest.strip()))
    return found


def _shell_form(rest: str) -> str:
    if rest.startswith("["):  # exec form: ["cmd", "arg"]
        return " ".join(shlex.quote(part) for part in json.loads(rest))
    return rest


def _env_pairs(rest: str, where: str) -> dict[str, str]:
    parts = shlex.split(rest)
    if parts and "=" not in parts[0]:  # the old form: ENV NAME value with spaces
        return {parts[0]: " ".join(parts[1:])}
    pairs = {}
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep:
            raise errors.InvalidError(f"{where}: ENV expects NAME=value, got {part!r}")
        pairs[name] = value
    return pairs


def _copy(image: Image, rest: str, context: Path, workdir: str, where: str) -> Image:
    parts = [p for p in shlex.split(rest) if not p.startswith("--")]
    if any(p.startswith("--from") for p in shlex.split(rest)):
        raise errors.InvalidError(f"{where}: COPY --from is not supported")
    if len(parts) < 2:
        raise errors.InvalidError(f"{where}: COPY needs a source and a destination")
    *sources, destination = parts
    is_folder = destination.endswith(("/", "/.")) or destination == "." or len(sources) > 1
    destination = posixpath.normpath(posixpath.join(workdir, destination))
    for source in sources:
        if "://" in source:
            raise errors.InvalidError(f"{where}: ADD of URLs is not supported; RUN curl instead")
        local = _in_context(source, context, where)
        if local.is_dir():
            image = image.add_local_dir(local, destination)
        elif local.is_file():
            into = destination.rstrip("/") + "/" if is_folder else destination
            image = image.add_local_file(local, into)
        else:
            raise errors.InvalidError(f"{where}: {source!r} not found in {context}")
    return image


def _in_context(source: str, context: Path, where: str) -> Path:
    """The real path of a COPY source, which must lie inside the build context both by its name
    and once the symlinks on its way are followed: a Dockerfile copies only what the context
    holds, never another file of the machine it is built on."""
    shown = str(context)
    if source.startswith("/"):
        raise errors.InvalidError(
            f"{where}: COPY source {source!r} is an absolute path; sources are relative to the "
            f"build context {shown!r}: write it relative to that folder"
        )
    if posixpath.normpath(source).split("/")[0] == "..":
        raise errors.InvalidError(
            f"{where}: COPY source {source!r} is outside the build context {shown!r}: move it "
            "into the context, or pass context_dir= a folder that holds both"
        )
    local = (context / source).resolve()
    if not local.is_relative_to(context.resolve()):
        raise errors.InvalidError(
            f"{where}: COPY source {source!r} is a symlink (or lies below one) to {str(local)!r}, "
            f"outside the build context {shown!r}: put the file itself in the context instead "
            "of a link to it, or pass context_dir= a folder that holds both"
        )
    return local
