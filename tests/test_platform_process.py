"""The process handle's fallbacks (``_platform_process``), with real processes on Linux.

Where there is no pidfd and no kqueue, a handle polls ``kill(pid, 0)`` and
checks the process's start time again before every signal; one's own child
is watched with ``waitpid``, its exit status kept.  These run the fallbacks
on Linux: pids are really reused (a pid namespace of our own, its
``ns_last_pid`` set back), and a child's status is really reaped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import alive, wait_for

from daemonize_deco import _platform_process
from daemonize_deco._platform_polled import _ps
from daemonize_deco._platform_process import ProcessHandle, start_time

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
SIMULATION = Path(__file__).resolve().parent / "simulated_platform"

# Run in a pid namespace of its own: a pid there is reused by setting ns_last_pid back.
_REUSE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    if hasattr(os, "pidfd_open"):
        del os.pidfd_open  # as where there is none: the polling handle
    from daemonize_deco._platform_process import ProcessHandle, start_time

    def sleeper():
        return subprocess.Popen(["sleep", "60"])

    def reuse(pid):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        again = sleeper()
        assert again.pid == pid, (again.pid, pid)
        return again

    # It waits, and signals the process it pinned.
    first = sleeper()
    handle = ProcessHandle.open(first.pid)
    assert type(handle).__name__ == "PollingHandle", type(handle)
    assert handle.fileno() is None
    assert not handle.wait(0.05), "a running process taken for exited"
    assert handle.send(signal.SIGTERM)
    first.wait()  # reaped: its pid is free
    assert handle.wait(10), "its exit not seen"
    assert not handle.send(signal.SIGTERM)

    # Pinned, exited, reaped, and its pid taken by a later process unseen:
    # that process is never signalled.
    old = sleeper()
    handle = ProcessHandle.open(old.pid)
    born = time.time()
    old.kill()
    old.wait()
    deadline = time.monotonic() + 10
    while start_time(os.getpid()) is not None and time.time() < born + SECONDS:
        assert time.monotonic() < deadline
        time.sleep(0.01)  # a later start time, as the clock that tells it counts
    later = reuse(old.pid)
    try:
        assert not handle.send(signal.SIGTERM), "signalled the process that reused the pid"
        assert handle.has_exited()
        assert later.poll() is None, "the process that reused the pid was signalled"
    finally:
        later.kill()
        later.wait()
    print("ok")
    """
)


def _in_own_pid_namespace(seconds: float, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = f"SECONDS = {seconds}\n{_REUSE}"
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=50,
        env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])},
        check=False,
    )


needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare"
)


@needs_unshare
def test_polling_handle_never_signals_a_process_that_reused_the_pid():
    # /proc's start time (clock ticks) tells the two apart.
    env = {k: v for k, v in os.environ.items() if k != "DAEMONIZE_DECO_SIMULATE"}
    done = _in_own_pid_namespace(0.05, env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr


@needs_unshare
def test_polling_handle_without_proc_never_signals_a_process_that_reused_the_pid():
    # No /proc for the library (as on macOS): ``ps -o lstart=`` tells, to the second.
    env = {**os.environ, "DAEMONIZE_DECO_SIMULATE": "freebsd14"}
    env["PYTHONPATH"] = os.pathsep.join([str(SIMULATION), os.environ.get("PYTHONPATH", "")])
    done = _in_own_pid_namespace(1.5, env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr


def _spawn(*argv: str) -> int:
    return os.posix_spawnp(argv[0], argv, os.environ)


def test_child_handle_keeps_the_exit_status_it_reaped(monkeypatch):
    monkeypatch.setattr(_platform_process, "HAS_PIDFD", False)
    pid = _spawn("sh", "-c", "exit 7")
    handle = ProcessHandle.of_child(pid)
    try:
        assert handle.fileno() is None
        assert handle.wait(10), "its exit not seen"
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped by the handle: nothing left to wait for
        assert handle.reap() == 7 << 8, "the exit status was lost"
        assert not handle.send(signal.SIGTERM)
    finally:
        handle.close()


def test_child_handle_signals_its_child_and_reaps_it(monkeypatch):
    monkeypatch.setattr(_platform_process, "HAS_PIDFD", False)
    pid = _spawn("sleep", "60")
    handle = ProcessHandle.of_child(pid)
    try:
        assert not handle.has_exited()
        assert handle.send(signal.SIGTERM)
        assert handle.wait(10)
        assert os.WIFSIGNALED(handle.reap()) and os.WTERMSIG(handle.reap()) == signal.SIGTERM
    finally:
        if not handle.has_exited():
            os.kill(pid, signal.SIGKILL)
            handle.reap()
        handle.close()


def test_ps_tells_the_start_time_and_a_zombie():
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        wait_for(lambda: alive(sleeper.pid), what="sleep running")
        from_proc = start_time(sleeper.pid)
        look = _ps(sleeper.pid)
        assert from_proc is not None and look is not None
        state, from_ps = look
        assert state == "S"
        assert abs(from_proc - from_ps) < 2.0, (from_proc, from_ps)
        assert abs(from_ps - time.time()) < 30
        sleeper.kill()
        wait_for(lambda: (_ps(sleeper.pid) or ("",))[0] == "Z", what="a zombie")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _ps(sleeper.pid) is None  # gone: nothing to tell


# -- who holds the pidfile, where there is no /proc ---------------------------

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"%d\\n" % os.getpid())
if sys.argv[2] == "written-before-it-started":
    past = time.time() - 3600
    os.utime(fd, (past, past))
print("locked", flush=True)
sys.stdin.readline()
"""

LOOKER = """
import sys
from daemonize_deco._pidfile import PidFile
state = PidFile(sys.argv[1]).inspect(settle=0.5)
print(state.running, state.pid, PidFile(sys.argv[1]).is_held_by(int(sys.argv[2])))
"""


def _without_proc() -> dict[str, str]:
    env = {**os.environ, "DAEMONIZE_DECO_SIMULATE": "freebsd14"}
    parts = [str(SIMULATION), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _look_while_held(pidfile: Path, how: str) -> tuple[str, int]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(pidfile), how],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        looked = subprocess.run(
            [sys.executable, "-c", LOOKER, str(pidfile), str(holder.pid)],
            capture_output=True, text=True, timeout=30, env=_without_proc(), check=False,
        )  # fmt: skip
        assert looked.returncode == 0, looked.stderr
        return looked.stdout.strip(), holder.pid
    finally:
        holder.communicate("\n", timeout=10)


def test_without_proc_the_pidfile_names_its_holder(tmp_path):
    said, pid = _look_while_held(tmp_path / "svc.pid", "by-itself")
    assert said == f"True {pid} True", "the lock's holder not named (status: 'pid unknown')"


def test_without_proc_a_pid_that_started_after_the_write_is_not_believed(tmp_path):
    # As if the pid were reused: the process it names now started after the file was written.
    said, _ = _look_while_held(tmp_path / "svc.pid", "written-before-it-started")
    assert said == "True None False", said
