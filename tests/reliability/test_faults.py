"""Faults that happen to daemons in real life: kills, crashes, stuck code, full disks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
from conftest import IDLE, alive, is_gone, marked_pids, wait_for
from platform_simulation import simulated

pytestmark = pytest.mark.timeout(90)

SPAWN_CHILDREN = """
import multiprocessing

def worker_loop():
    while True:
        time.sleep(1)
"""


def child_pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"child (\d+)", log)]


@pytest.mark.scenario(
    "Faults",
    "Daemon ignores SIGTERM",
    lost="stop escalates to SIGKILL of the whole group after stop_timeout and says so; no orphan",
)
@pytest.mark.parametrize(
    "stuck",
    [
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)",
        # It asks, so the stop is the flag only (a main that never asks gets
        # KeyboardInterrupt, README "How a stop reaches main").
        "while not should_stop():\n    subprocess.run(['sleep', '300'])  # blocked in C (waitpid)",
    ],
    ids=["catches and ignores SIGTERM", "blocked in C code"],
)
def test_stop_escalates_when_sigterm_is_ignored(make_service, stuck):
    body = "child = subprocess.Popen(['sleep', '300'])\nprint('child', child.pid, flush=True)\n"
    svc = make_service(body=body + stuck, stop_timeout=1.0)
    pid = svc.start()
    child = child_pids(
        wait_for(lambda: "child" in svc.log_text() and svc.log_text(), what="child")
    )[0]
    started = time.monotonic()
    result = svc.cli("stop")
    assert result.returncode == 0, result.stderr
    assert f"killed (pid {pid})" in result.stdout
    assert time.monotonic() - started >= 1.0, "it waited stop_timeout before killing"
    assert is_gone(pid)
    wait_for(lambda: is_gone(child), timeout=5, what="the child to die with the group")
    wait_for(lambda: svc.daemons() == [], timeout=5, what="no orphan")
    assert not svc.pidfile.exists()


@pytest.mark.scenario(
    "Faults",
    "The daemon's children (multiprocessing and subprocess)",
    lost="after stop, no worker survives: the service ends what main left running as it ends",
)
def test_children_do_not_survive_stop(make_service):
    body = """
        worker = multiprocessing.Process(target=worker_loop)
        worker.start()
        spawned = subprocess.Popen(['sleep', '300'])
        print('child', worker.pid, 'child', spawned.pid, flush=True)
        while not should_stop():
            sleep(3600)
        # returns without stopping its children, as careless code does
    """
    svc = make_service(body=body, prelude=SPAWN_CHILDREN, stop_timeout=5.0)
    pid = svc.start()
    children = child_pids(
        wait_for(lambda: "child" in svc.log_text() and svc.log_text(), what="kids")
    )
    assert len(children) == 2 and all(alive(c) for c in children)
    result = svc.cli("stop")
    assert result.returncode == 0, result.stderr
    assert f"svc stopped (pid {pid})" in result.stdout
    if simulated() is None:  # the service finds what it started through /proc
        assert "ended 2 processes (pids " in svc.log_text(), svc.log_text()
    else:  # the stop ends its group
        assert "ended the processes it left running in its group" in result.stdout
    for child in children:
        assert is_gone(child), f"child {child} survived the stop"
    wait_for(lambda: marked_pids(svc.mark) == [], timeout=5, what="no marked process left")


@pytest.mark.scenario(
    "Faults",
    "A forked worker's SIGTERM does not stop the daemon",
    lost="the worker dies by the default action; the daemon keeps serving",
)
def test_forked_worker_gets_default_signal_handling(make_service):
    body = (
        "worker = multiprocessing.Process(target=worker_loop)\n"
        "worker.start()\n"
        "print('child', worker.pid, flush=True)\n"
        "worker.join()\n"
        "print('worker exit code', worker.exitcode, flush=True)\n"
    ) + IDLE
    svc = make_service(body=body, prelude=SPAWN_CHILDREN)
    pid = svc.start()
    child = child_pids(
        wait_for(lambda: "child" in svc.log_text() and svc.log_text(), what="child")
    )[0]
    os.kill(child, signal.SIGTERM)
    wait_for(lambda: "worker exit code -15" in svc.log_text(), what="the worker to die of SIGTERM")
    assert alive(pid) and "stopping" not in svc.log_text()
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Faults",
    "Log file deleted while running",
    lost="the daemon keeps running; after reload it writes to a new file",
)
def test_log_deleted_then_reload(make_service):
    body = "while not should_stop():\n    print('tick', flush=True)\n    sleep(0.02)\n"
    svc = make_service(body=body)
    pid = svc.start()
    wait_for(lambda: "tick" in svc.log_text(), what="ticks")
    svc.log.unlink()
    assert os.readlink(f"/proc/{pid}/fd/1") == f"{svc.log} (deleted)"
    assert alive(pid) and not svc.log.exists()
    assert svc.cli("reload").returncode == 0
    wait_for(lambda: "tick" in svc.log_text(), what="ticks in the new log")
    svc.stop_gracefully(pid)


@pytest.mark.scenario(
    "Faults",
    "Log writes fail (stdout is /dev/full)",
    lost="no silent loop: print raises ENOSPC in main; before ready start reports it, "
    "after ready the daemon exits 1 and removes its pidfile",
)
@pytest.mark.parametrize("after_ready", [False, True], ids=["before ready", "after ready"])
def test_log_on_dev_full(make_service, after_ready):
    # Calling should_stop() means main reached its loop: ready by default.
    body = ("should_stop()\n" if after_ready else "") + "print('hello')\n" + IDLE
    svc = make_service(body=body, stdout="/dev/full")
    result = svc.cli("start")
    if not after_ready:
        assert result.returncode == 1
        assert "OSError: [Errno 28] No space left on device" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        pid = svc.pid_from(result.stdout)
        wait_for(lambda: is_gone(pid), timeout=10, what="the daemon to exit, not loop")
    wait_for(lambda: not svc.pidfile.exists(), timeout=5, what="pidfile removal")
    assert svc.cli("status").returncode == 3
    assert svc.daemons() == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mountpoint)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.mark.scenario(
    "Faults",
    "Disk full (a 16 KiB tmpfs holds the log)",
    lost="the log keeps every line written before the disk filled; the daemon exits 1 "
    "with the pidfile removed instead of spinning",
)
def test_disk_full(make_service, tiny_tmpfs):
    body = "should_stop()  # ready\nfor n in range(10**6):\n    print('line', n, 'x' * 100)\n"
    svc = make_service(body=body, stdout=str(tiny_tmpfs / "svc.log"))
    svc.env.pop("PYTHONUNBUFFERED", None)
    pid = svc.start()
    wait_for(lambda: is_gone(pid), timeout=10, what="the daemon to exit when the disk is full")
    numbers = [int(x) for x in re.findall(r"^line (\d+) ", svc.log_text(), re.M)]
    assert numbers == list(range(len(numbers))) and len(numbers) > 50, "lines before are intact"
    wait_for(lambda: not svc.pidfile.exists(), timeout=5, what="pidfile removal")
    assert svc.cli("status").returncode == 3


@pytest.mark.scenario(
    "Faults",
    "start while the previous instance is still stopping",
    lost="start says 'already running' instead of a second copy; restart waits for the exit",
)
def test_start_while_stopping(make_service):
    body = IDLE.replace("'stopping'", "'stopping slowly'") + "\ntime.sleep(1.0)"
    svc = make_service(body=body)
    pid = svc.start()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: "stopping slowly" in svc.log_text(), what="the slow stop to begin")
    result = svc.cli("start")
    assert result.returncode == 0
    assert f"already running (pid {pid})" in result.stdout
    os.kill(pid, signal.SIGTERM)  # harmless: already stopping
    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    new_pid = svc.pid_from(restarted.stdout.split("started")[1])
    assert is_gone(pid) and new_pid != pid
    assert svc.daemons() == [new_pid]
    svc.stop_gracefully(new_pid)
