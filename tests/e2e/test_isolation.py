"""Each function runs in its own container: its own pid namespace, hostname, files and limits."""

import os
from pathlib import Path
from typing import Any

import pytest

import ember


def test_own_pid_namespace_and_hostname(basics: Any) -> None:
    seen = basics.inside.remote()
    assert seen["pid"] == 1  # the harness is the container's first process
    # The runtime's name for the container: its id, or the name of the standby it started as.
    assert seen["hostname"].startswith(("ta-", "sb-"))
    assert seen["hostname"] != os.uname().nodename


def test_host_files_outside_the_image_are_invisible(basics: Any) -> None:
    marker = Path("/tmp") / f"ember-host-marker-{os.getpid()}"
    marker.write_text("host only")
    try:
        seen = basics.inside.remote(str(marker))
        assert seen["host_path_visible"] is False
        assert (
            basics.inside.remote("/usr/bin/python3")["host_path_visible"] is True
        )  # the image's own
        assert seen["etc_hostname_exists"] is False  # the host's /etc/hostname is not there
    finally:
        marker.unlink()


def test_app_source_is_read_only(basics: Any) -> None:
    assert basics.inside.remote()["source_writable"] is False


def test_memory_limit_fails_the_input_and_the_next_call_works(limits: Any) -> None:
    with pytest.raises(ember.OutOfMemoryError, match=r"ran out of memory.*128 MiB"):
        limits.allocate.remote(400)
    assert limits.allocate.remote(8)  # a fresh container serves the next call
