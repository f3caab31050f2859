"""Image definitions: the steps each builder method records, checks, and Dockerfile parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

import ember
from ember.sdk.image import _Step


def steps(image: ember.Image) -> list[_Step]:
    return list(image._steps)


def test_each_method_adds_one_step_and_leaves_the_original_alone() -> None:
    base = ember.Image.debian_slim()
    longer = base.apt_install("curl").pip_install("numpy<3", ["torch==2.13.0"])
    assert len(steps(base)) == 1 and len(steps(longer)) == 3
    apt, pip = steps(longer)[1:]
    assert "apt-get install -y -q --no-install-recommends curl" in apt.commands[0]
    assert pip.commands == ("python3 -m pip install --no-cache-dir 'numpy<3' torch==2.13.0",)


def test_equal_definitions_are_equal_images() -> None:
    first = ember.Image.debian_slim().env({"A": "1"}).workdir("/w")
    second = ember.Image.debian_slim().env({"A": "1"}).workdir("/w")
    assert first == second and hash(first) == hash(second)
    assert first != ember.Image.debian_slim().env({"A": "2"}).workdir("/w")


def test_bad_arguments_fail_at_definition_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ember.InvalidError, match=r"Python '2\.7'"):
        ember.Image.debian_slim(python_version="2.7")
    with pytest.raises(ember.InvalidError, match="absolute"):
        ember.Image.debian_slim().workdir("relative")
    with pytest.raises(ember.InvalidError, match="not found"):
        ember.Image.debian_slim().add_local_file(tmp_path / "missing", "/x")
    with pytest.raises(ember.InvalidError, match="not found"):
        ember.Image.debian_slim().add_local_dir(tmp_path / "missing", "/x")
    with pytest.raises(ember.InvalidError, match="str names and values"):
        ember.Image.debian_slim().env({"A": 1})  # type: ignore[dict-item]


def test_add_local_file_into_a_folder_keeps_its_name(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"w")
    step = steps(ember.Image.debian_slim().add_local_file(tmp_path / "w.bin", "/data/"))[1]
    assert step.target == "/data" and step.sources == ((tmp_path / "w.bin", "w.bin"),)


def test_imports_skips_missing_packages_except_in_the_images_own_containers(monkeypatch) -> None:
    image = ember.Image.debian_slim()
    with image.imports():
        import ember_no_such_package
    monkeypatch.setenv("EMBER_CONTAINER_ID", "ta-test")
    monkeypatch.setenv(
        "EMBER_IMAGE_KEY", ember.Image.debian_slim().pip_install("x").definition_key()
    )
    with image.imports():  # a container of another image: skipped
        import ember_no_such_package
    monkeypatch.setenv("EMBER_IMAGE_KEY", image.definition_key())
    with pytest.raises(ImportError), image.imports():
        import ember_no_such_package  # noqa: F401


def test_a_dockerfile_becomes_steps(tmp_path: Path) -> None:
    (tmp_path / "local.txt").write_text("local")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.ini").write_text("a")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "# a comment\n"
        "ARG BASE=python:3.11-slim\n"
        "FROM $BASE AS build\n"
        "ARG GREETING=hi\n"
        "RUN echo ${GREETING} > /greeting && \\\n"
        "    echo done\n"
        'ENV A=1 B="two words"\n'
        "ENV OLD style value\n"
        "WORKDIR /app\n"
        "COPY local.txt ./\n"
        "COPY conf /etc/conf\n"
        'RUN ["python3", "-c", "print(1)"]\n'
        'CMD ["python3"]\n'
    )
    image = ember.Image.from_dockerfile(dockerfile)
    kinds = [
        (s.kind, s.reference or s.commands or s.env or s.workdir or s.target) for s in steps(image)
    ]
    assert kinds == [
        ("registry", "python:3.11-slim"),
        ("run", ("echo hi > /greeting &&  echo done",)),
        ("config", (("A", "1"), ("B", "two words"))),
        ("config", (("OLD", "style value"),)),
        ("config", "/app"),
        ("copy", "/app"),
        ("copy", "/etc/conf"),
        ("run", ("python3 -c 'print(1)'",)),
    ]
    assert steps(image)[5].sources == ((tmp_path / "local.txt", "local.txt"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN echo\n", "first instruction must be FROM"),
        ("FROM a\nFROM b\n", "multi-stage"),
        ("FROM scratch\n", "FROM scratch"),
        ("FROM a\nCOPY missing.txt /x\n", "not found"),
        ("FROM a\nCOPY --from=build /a /b\n", "COPY --from"),
        ("FROM a\nFOO bar\n", "FOO is not supported"),
    ],
)
def test_unsupported_dockerfiles_are_refused_with_the_line(
    tmp_path: Path, text: str, message: str
) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(text)
    with pytest.raises(ember.InvalidError, match=message):
        ember.Image.from_dockerfile(dockerfile)
