"""The pidfile under stale files, foreign pids and concurrent commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import alive, is_gone, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.mark.scenario(
    "Faults",
    "Daemon SIGKILLed",
    lost="status says dead (1), never running; the next start succeeds; never two daemons",
)
def test_stale_pidfile_after_sigkill(make_service):
    svc = make_service()
    pid = svc.start()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), what="the daemon to die")
    assert svc.pidfile.exists()
    status = svc.cli("status")
    assert status.returncode == 1, status.stdout
    assert "left behind" in status.stdout
    new_pid = svc.start()
    assert new_pid != pid
    assert svc.read_pid() == new_pid
    assert svc.daemons() == [new_pid]
    assert svc.cli("stop").returncode == 0


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"-5\n", b"0\n", b"18446744073709551616\n"])
def test_garbage_pidfile_is_stale_not_a_traceback(make_service, content):
    svc = make_service()
    svc.pidfile.write_bytes(content)
    status = svc.cli("status")
    assert status.returncode == 1 and "Traceback" not in status.stderr
    stop = svc.cli("stop")
    assert stop.returncode == 0 and "not running" in stop.stdout
    assert not svc.pidfile.exists(), "stop removes a stale pidfile"
    svc.pidfile.write_bytes(content)
    svc.start()
    assert svc.cli("stop").returncode == 0


@pytest.fixture
def bystander():
    """An unrelated live process, as a pid reused from a dead daemon would be."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("whose", ["bystander", "test process"])
def test_stop_never_signals_the_pid_in_a_stale_pidfile(make_service, bystander, whose):
    pid = bystander.pid if whose == "bystander" else os.getpid()
    svc = make_service()
    svc.pidfile.write_text(f"{pid}\n")
    assert svc.cli("status").returncode == 1
    stop = svc.cli("stop")
    assert stop.returncode == 0 and "not running" in stop.stdout
    assert bystander.poll() is None and alive(pid), "an unrelated process was signalled"


@pytest.mark.scenario(
    "Load",
    "20 concurrent starts",
    lost="exactly one daemon; every command exits 0 naming it",
)
def test_twenty_concurrent_starts_make_one_daemon(make_service):
    svc = make_service()
    procs = [svc.popen("start") for _ in range(20)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    assert all(code == 0 for code, _, _ in results), results
    pids = {svc.pid_from(out) for _, out, _ in results}
    assert len(pids) == 1, results
    (pid,) = pids
    assert svc.daemons() == [pid]
    assert svc.read_pid() == pid
    assert sum("started" in out for _, out, _ in results) == 1
    assert svc.cli("stop").returncode == 0


@pytest.mark.scenario(
    "Load",
    "100 back-to-back restarts",
    lost="status always names the live daemon; one daemon at the end",
)
def test_a_hundred_tight_restarts(make_service):
    svc = make_service()
    previous = svc.start()
    for _ in range(100):
        result = svc.cli("restart")
        assert result.returncode == 0, result.stderr
        pid = svc.pid_from(result.stdout.split("started")[1])
        assert is_gone(previous)
        assert svc.read_pid() == pid
        previous = pid
    status = svc.cli("status")
    assert status.returncode == 0 and f"pid {previous}," in status.stdout
    assert svc.daemons() == [previous]
    assert svc.cli("stop").returncode == 0


@pytest.mark.scenario(
    "Load",
    "starts racing an exiting daemon",
    lost="never two daemons, never an orphaned pidfile",
)
def test_starts_racing_an_exiting_daemon(make_service):
    # A slow graceful stop widens the window in which the old daemon exits.
    body = "while not should_stop():\n    sleep(3600)\ntime.sleep(0.05)"
    svc = make_service(body=body)
    for _ in range(8):
        if not svc.daemons():
            svc.start()
        racers = [svc.popen("stop")] + [svc.popen("start") for _ in range(4)]
        for proc in racers:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        running = svc.daemons()
        assert len(running) <= 1, f"two daemons at once: {running}"
        status = svc.cli("status")
        if running:
            assert status.returncode == 0 and f"pid {running[0]}," in status.stdout
            assert svc.read_pid() == running[0]
        else:
            assert status.returncode == 3, status.stdout
            assert not svc.pidfile.exists(), "an orphaned pidfile"
    svc.cli("stop")


def test_status_probes_do_not_confuse_stop_or_run(make_service):
    """status probes the lock by taking it briefly; stop and run must see through that."""
    svc = make_service()
    for _ in range(5):
        pid = svc.start()
        probes = [svc.popen("status") for _ in range(8)]
        stop = svc.popen("stop")
        out, err = stop.communicate(timeout=60)
        assert stop.returncode == 0, err
        assert f"stopped (pid {pid})" in out
        assert is_gone(pid)
        for probe in probes:
            probe.communicate(timeout=60)
            assert probe.returncode in (0, 3)


# A starter the scheduler stops between creating the pidfile and locking it:
# the file is there, empty and unlocked, for longer than a moment.
SLOW_STARTER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
print("created", flush=True)
sys.stdin.readline()
"""


@pytest.mark.scenario(
    "Load",
    "a start held up (a loaded machine) between creating its pidfile and locking it",
    lost="nothing: status does not call the empty file 'left behind' while its creator has "
    "it open to write; once the creator is gone, it does",
)
@pytest.mark.linux_only("who has a file open to write is read off /proc/PID/fdinfo")
def test_an_empty_pidfile_its_starter_still_holds_is_no_stale_one(make_service):
    svc = make_service()
    starter = subprocess.Popen(
        [sys.executable, "-c", SLOW_STARTER, str(svc.pidfile)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert starter.stdout.readline() == "created\n"
        created = svc.pidfile.stat().st_ctime
        wait_for(lambda: time.time() - created > 1.5, what="the file to be older than a moment")
        status = svc.cli("status")
        assert status.returncode == 0 and "running (pid unknown)" in status.stdout, status.stdout
    finally:
        starter.communicate("\n", timeout=10)
    status = svc.cli("status")
    assert status.returncode == 1 and "left behind" in status.stdout, status.stdout


# A starter whose lock attempt met a looker's probing lock: it closed the file
# and comes back to lock it, holding nothing open in between.
RETURNING_STARTER = """
import fcntl, os, sys
sys.stdin.readline()
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
sys.stdin.readline()
"""


def _has_open(pid: int, path: str) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


@pytest.mark.scenario(
    "Load",
    "status looks while a start, back from a collision with another look, is about to lock",
    lost="nothing: status waits out the moment an empty file nobody holds may be a start's, "
    "and says running (0), not 'left behind' (1)",
)
@pytest.mark.linux_only("it waits to see status hold the file open: status looks through /proc")
def test_an_empty_pidfile_a_starter_comes_back_to_is_no_stale_one(make_service):
    svc = make_service()
    svc.pidfile.write_bytes(b"")
    created = svc.pidfile.stat().st_ctime
    wait_for(lambda: time.time() - created > 1.5, what="the file to be older than a moment")
    starter = subprocess.Popen(
        [sys.executable, "-c", RETURNING_STARTER, str(svc.pidfile)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    status = svc.popen("status")
    try:
        wait_for(lambda: _has_open(status.pid, str(svc.pidfile)) or status.poll() is not None,
                 what="status to look at the pidfile")  # fmt: skip
        starter.stdin.write("\n")
        starter.stdin.flush()
        assert starter.stdout.readline() == "locked\n"
        out, _ = status.communicate(timeout=30)
        assert status.returncode == 0, out
        assert f"running (pid {starter.pid}," in out, out
    finally:
        status.kill()
        starter.communicate("\n", timeout=10)
