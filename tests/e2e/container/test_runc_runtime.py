import asyncio
import os
import signal
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ember.container import BindMount, ContainerConfig, ExitStatus, RuncRuntime, cgroups, overlay
from ember.errors import ExecutionError

pytestmark = pytest.mark.e2e

SLEEP_FOREVER = "import time; time.sleep(600)"


def python(base_image: Path, code: str, **changes: Any) -> ContainerConfig:
    config = ContainerConfig(
        container_id=f"test-{uuid.uuid4().hex[:12]}",
        image_root=base_image,
        args=["python3", "-c", code],
        env={},
        hostname="ember-test",
    )
    return replace(config, **changes)


async def run(runtime: RuncRuntime, config: ContainerConfig) -> tuple[ExitStatus, str, str]:
    await runtime.start(config)
    status = await runtime.wait(config.container_id)
    stdout, stderr = (path.read_text() for path in runtime.log_paths(config.container_id))
    return status, stdout, stderr


def leftovers(state_dir: Path, container_id: str) -> list[str]:
    """Everything of a container still on the host."""
    directory = state_dir / "containers" / container_id
    found = [f"mount {path}" for path in overlay.mounts_under(directory)]
    path = cgroups.container_cgroup(container_id)
    found += [f"cgroup {directory}" for directory in cgroups.directories(path)]
    listed = subprocess.run(
        ["runc", "--root", str(state_dir / "runc"), "list", "-q"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if container_id in listed.split():
        found.append(f"runc state of {container_id}")
    if directory.exists():
        found.append(f"directory of {container_id}")
    return found


async def test_stdout_and_stderr_reach_the_log_files(
    runtime: RuncRuntime, base_image: Path
) -> None:
    code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"
    status, stdout, stderr = await run(runtime, python(base_image, code))
    assert status == ExitStatus(exit_code=0, signal=None, oom_killed=False)
    assert stdout == "to stdout\n"
    assert stderr == "to stderr\n"


@pytest.mark.parametrize("code", [0, 3, 101])
async def test_exit_code(runtime: RuncRuntime, base_image: Path, code: int) -> None:
    status, _, _ = await run(runtime, python(base_image, f"raise SystemExit({code})"))
    assert status == ExitStatus(exit_code=code, signal=None, oom_killed=False)


async def test_own_pid_namespace_and_hostname(runtime: RuncRuntime, base_image: Path) -> None:
    code = (
        "import os, socket; "
        "print(os.getpid(), sorted(p for p in os.listdir('/proc') if p.isdigit()), "
        "socket.gethostname())"
    )
    status, stdout, _ = await run(runtime, python(base_image, code, hostname="fn-7"))
    assert status.exit_code == 0
    assert stdout.split() == ["1", "['1']", "fn-7"]


async def test_host_files_outside_the_image_are_invisible(
    runtime: RuncRuntime, base_image: Path
) -> None:
    marker = Path("/tmp") / f"ember-marker-{uuid.uuid4().hex}"
    marker.write_text("host only")
    try:
        code = f"import os; print(os.path.exists({str(marker)!r}))"
        _, stdout, _ = await run(runtime, python(base_image, code))
    finally:
        marker.unlink()
    assert stdout == "False\n"


async def test_writes_go_to_the_container_layer_not_the_image(
    runtime: RuncRuntime, base_image: Path
) -> None:
    code = "open('/etc/ember-written', 'w').write('x'); print(open('/etc/ember-written').read())"
    status, stdout, _ = await run(runtime, python(base_image, code))
    assert (status.exit_code, stdout) == (0, "x\n")
    assert not (base_image / "etc" / "ember-written").exists()


async def test_capabilities_are_dropped(runtime: RuncRuntime, base_image: Path) -> None:
    code = (
        "fields = dict(line.split(':\\t') for line in open('/proc/self/status').read().splitlines()"
        " if ':\\t' in line); print(int(fields['CapEff'], 16), fields['NoNewPrivs'])"
    )
    _, stdout, _ = await run(runtime, python(base_image, code))
    effective, no_new_privileges = stdout.split()
    cap_net_raw, cap_sys_admin = 13, 21
    assert not int(effective) & (1 << cap_net_raw | 1 << cap_sys_admin)
    assert no_new_privileges == "1"


async def test_only_loopback_network(runtime: RuncRuntime, base_image: Path) -> None:
    _, stdout, _ = await run(
        runtime, python(base_image, "import socket; print(socket.if_nameindex())")
    )
    assert "'lo'" in stdout
    assert "eth" not in stdout


async def test_limits_reach_the_cgroup(runtime: RuncRuntime, base_image: Path) -> None:
    config = python(base_image, SLEEP_FOREVER, cpu=0.5, memory_mb=128, pids_limit=64)
    await runtime.start(config)
    path = cgroups.container_cgroup(config.container_id)
    relative = path.strip("/")
    root = cgroups.CGROUP_ROOT
    if cgroups.is_unified():
        assert (root / relative / "memory.max").read_text().strip() == str(128 * 2**20)
        assert (root / relative / "cpu.max").read_text().split() == ["50000", "100000"]
        assert (root / relative / "pids.max").read_text().strip() == "64"
    else:
        memory = root / "memory" / relative / "memory.limit_in_bytes"
        assert memory.read_text().strip() == str(128 * 2**20)
        assert (root / "cpu" / relative / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (root / "pids" / relative / "pids.max").read_text().strip() == "64"
    await runtime.kill(config.container_id)
    await runtime.wait(config.container_id)


async def test_memory_limit_kills_with_oom(runtime: RuncRuntime, base_image: Path) -> None:
    code = "data = b'x' * (200 * 2**20); print('survived')"
    status, stdout, _ = await run(runtime, python(base_image, code, memory_mb=64))
    assert status.oom_killed
    assert status.signal == signal.SIGKILL
    assert stdout == ""


async def test_kill(runtime: RuncRuntime, base_image: Path) -> None:
    config = python(base_image, SLEEP_FOREVER)
    await runtime.start(config)
    await runtime.kill(config.container_id)
    status = await asyncio.wait_for(runtime.wait(config.container_id), 10)
    assert status == ExitStatus(exit_code=None, signal=signal.SIGKILL, oom_killed=False)
    await runtime.kill(config.container_id)  # already gone: no error
    await runtime.remove(config.container_id)
    await runtime.kill(config.container_id)  # removed: no error


async def test_kill_with_sigterm_reaches_a_handler(runtime: RuncRuntime, base_image: Path) -> None:
    code = (
        "import signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7)); "
        "print('ready', flush=True); time.sleep(600)"
    )
    config = python(base_image, code)
    await runtime.start(config)
    stdout_path, _ = runtime.log_paths(config.container_id)
    while "ready" not in stdout_path.read_text():
        await asyncio.sleep(0.01)
    await runtime.kill(config.container_id, signal.SIGTERM)
    status = await asyncio.wait_for(runtime.wait(config.container_id), 10)
    assert status.exit_code == 7


async def test_readonly_bind_mount(runtime: RuncRuntime, base_image: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "input.txt").write_text("from the host")
    code = (
        "print(open('/data/input.txt').read())\n"
        "try:\n"
        "    open('/data/new.txt', 'w')\n"
        "except OSError as error:\n"
        "    print(error.errno)\n"
    )
    config = python(base_image, code, mounts=(BindMount(shared, "/data"),))
    _, stdout, _ = await run(runtime, config)
    assert stdout.splitlines() == ["from the host", "30"]  # EROFS
    assert not (shared / "new.txt").exists()


async def test_writable_bind_mount(runtime: RuncRuntime, base_image: Path, tmp_path: Path) -> None:
    """A directory the container may write must belong to its root, an unprivileged host id;
    what it writes there belongs to that id, not to the host's root."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, runtime.ids.root, runtime.ids.root)
    code = "open('/data/out.txt', 'w').write('from the container')"
    config = python(base_image, code, mounts=(BindMount(shared, "/data", readonly=False),))
    status, _, _ = await run(runtime, config)
    assert status.exit_code == 0
    assert (shared / "out.txt").read_text() == "from the container"
    assert (shared / "out.txt").stat().st_uid == runtime.ids.root != 0


async def test_a_host_directory_of_root_is_not_writable_by_container_root(
    runtime: RuncRuntime, base_image: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    code = "open('/data/out.txt', 'w')"
    config = python(base_image, code, mounts=(BindMount(shared, "/data", readonly=False),))
    status, _, stderr = await run(runtime, config)
    assert status.exit_code == 1
    assert "PermissionError" in stderr
    assert not (shared / "out.txt").exists()


async def test_remove_leaves_nothing(
    runtime: RuncRuntime, base_image: Path, state_dir: Path
) -> None:
    finished = python(base_image, "pass")
    await run(runtime, finished)
    running = python(base_image, SLEEP_FOREVER)
    await runtime.start(running)
    assert set(runtime.list()) == {finished.container_id, running.container_id}

    for config in (finished, running):
        await runtime.remove(config.container_id)
        await runtime.remove(config.container_id)  # idempotent
        assert leftovers(state_dir, config.container_id) == []
    assert runtime.list() == []
    assert overlay.mounts_under(state_dir) == []


async def test_start_errors(runtime: RuncRuntime, base_image: Path, state_dir: Path) -> None:
    with pytest.raises(ExecutionError, match="not a directory"):
        await runtime.start(python(base_image / "missing", "pass"))
    with pytest.raises(ExecutionError, match="invalid container id"):
        await runtime.start(python(base_image, "pass", container_id="Bad_ID"))
    with pytest.raises(ExecutionError, match="invalid container id"):
        await runtime.start(python(base_image, "pass", container_id="-help"))

    config = python(base_image, "pass")
    bad = replace(config, args=["/no/such/program"])
    with pytest.raises(ExecutionError, match="/no/such/program"):
        await runtime.start(bad)
    assert leftovers(state_dir, bad.container_id) == []

    await runtime.start(config)
    with pytest.raises(ExecutionError, match="already exists"):
        await runtime.start(config)


async def test_cleanup_stale_after_a_crash(base_image: Path, state_dir: Path) -> None:
    crashed = RuncRuntime(state_dir)
    configs = [python(base_image, SLEEP_FOREVER) for _ in range(2)]
    for config in configs:
        await crashed.start(config)
    del crashed  # the worker died: no Runtime remembers these containers

    restarted = RuncRuntime(state_dir)
    ids = sorted(config.container_id for config in configs)
    assert restarted.list() == ids
    assert await restarted.cleanup_stale() == ids
    for container_id in ids:
        assert leftovers(state_dir, container_id) == []
    assert restarted.list() == []
    assert overlay.mounts_under(state_dir) == []


async def test_wait_after_a_restart(base_image: Path, state_dir: Path) -> None:
    crashed = RuncRuntime(state_dir)
    config = python(base_image, SLEEP_FOREVER)
    await crashed.start(config)
    del crashed

    restarted = RuncRuntime(state_dir)
    try:
        waiting = asyncio.create_task(restarted.wait(config.container_id))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await restarted.kill(config.container_id)
        status = await asyncio.wait_for(waiting, 10)
        assert status == ExitStatus(exit_code=None, signal=None, oom_killed=False)
        # An unknown container has nothing to wait for.
        assert (await restarted.wait("never-started")).exit_code is None
    finally:
        await restarted.cleanup_stale()
