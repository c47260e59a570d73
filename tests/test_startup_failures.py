"""A failed start exits 1 with a one-line reason and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import IDLE, marked_pids

pytestmark = pytest.mark.timeout(60)


def assert_failed_cleanly(svc, result, *fragments: str) -> None:
    """Exit 1, one line on stderr naming the reason, no process, no pidfile."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""
    assert marked_pids(svc.mark) == [], "a failed start left a process behind"
    assert not os.path.lexists(svc.pidfile), "a failed start left its pidfile behind"


def test_exception_before_ready(make_service):
    svc = make_service(body="raise ValueError('bad config value')", wait_ready=True)
    result = svc.cli("start")
    assert_failed_cleanly(svc, result, "svc: failed to start: ValueError: bad config value")
    log = svc.log_text()
    assert "Traceback (most recent call last)" in log and "ValueError: bad config value" in log


def test_crash_after_entering_main_with_no_start_grace_is_not_a_failed_start(make_service):
    # start_grace=0: the daemon is ready on entering main, so a crash after
    # that is the daemon's, not start's.
    svc = make_service(body="raise ValueError('after ready')", start_grace=0)
    assert svc.cli("start").returncode == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("return 0", "main returned before it called ready()"),
        ("sys.exit(3)", "main exited with status 3"),
        ("os._exit(7)", "exited before it was ready"),
        ("os.kill(os.getpid(), signal.SIGKILL)", "exited before it was ready"),
    ],
    ids=["return", "sys.exit", "os._exit", "SIGKILL"],
)
def test_ending_before_ready(make_service, body, reason):
    svc = make_service(body=body, wait_ready=True)
    assert_failed_cleanly(svc, svc.cli("start"), reason)


def test_start_timeout_stops_the_daemon(make_service):
    svc = make_service(body=IDLE, wait_ready=True, start_timeout=1.0)
    assert_failed_cleanly(svc, svc.cli("start"), "not ready within 1s; stopped it")


def test_start_timeout_kills_a_daemon_that_ignores_sigterm(make_service):
    body = "while True:\n    time.sleep(0.1)"
    svc = make_service(
        body=body, wait_ready=True, start_timeout=0.5, stop_timeout=0.5, stop_main="flag"
    )
    assert_failed_cleanly(svc, svc.cli("start"), "not ready within 0.5s; killed it")


def test_ready_called_from_main(make_service):
    svc = make_service(body="sleep(0.2)\nready()\n" + IDLE, wait_ready=True)
    result = svc.cli("start")
    assert result.returncode == 0, result.stderr
    assert svc.cli("stop").returncode == 0


def test_bad_log_path_is_found_before_forking(make_service, tmp_path):
    svc = make_service(stdout=str(tmp_path / "no-such-dir" / "x.log"))
    assert_failed_cleanly(svc, svc.cli("start"), "cannot open log file", "does not exist")
    assert not (tmp_path / "no-such-dir").exists()


def test_log_path_that_is_a_directory(make_service, tmp_path):
    svc = make_service(stdout=str(tmp_path))
    assert_failed_cleanly(svc, svc.cli("start"), f"log file {tmp_path}: it is a directory")


def test_missing_workdir(make_service, tmp_path):
    svc = make_service(workdir=str(tmp_path / "gone"))
    assert_failed_cleanly(svc, svc.cli("start"), "cannot change directory", "gone")


def test_missing_pidfile_directory(make_service, tmp_path):
    missing = tmp_path / "no-dir" / "svc.pid"
    svc = make_service(pidfile=str(missing))
    assert_failed_cleanly(svc, svc.cli("start"), f"pidfile {missing}", "does not exist")
    assert not missing.parent.exists(), "no command creates a missing directory"


def test_unwritable_pidfile_directory(make_service, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    svc = make_service(pidfile=str(locked / "svc.pid"))
    command = svc.argv("start")
    if os.geteuid() == 0:
        # root writes anywhere: take away the capability that lets it
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    result = subprocess.run(command, capture_output=True, text=True, env=svc.env, timeout=30)
    assert_failed_cleanly(svc, result, f"pidfile {locked}/svc.pid", "permission denied")


@pytest.mark.parametrize("dangling", [False, True])
def test_symlink_pidfile_is_refused(make_service, tmp_path, dangling):
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_text("precious\n")
    link = tmp_path / "svc.pid"
    link.symlink_to(victim)
    svc = make_service(pidfile=str(link))
    result = svc.cli("start")
    assert result.returncode == 1
    assert "symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert marked_pids(svc.mark) == []
    assert link.is_symlink(), "the link is left as it was"
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_text() == "precious\n"


def test_pidfile_that_is_a_fifo_does_not_hang(make_service, tmp_path):
    fifo = tmp_path / "svc.pid"
    os.mkfifo(fifo)
    svc = make_service(pidfile=str(fifo))
    result = svc.cli("start", timeout=10)
    assert result.returncode == 1 and "FIFO" in result.stderr
    status = svc.cli("status", timeout=10)
    assert status.returncode == 4 and "FIFO" in status.stderr


def test_pidfile_that_is_a_directory(make_service, tmp_path):
    folder = tmp_path / "svc.pid"
    folder.mkdir()
    svc = make_service(pidfile=str(folder))
    assert svc.cli("status").returncode == 4
    assert svc.cli("start").returncode == 1
    assert svc.cli("stop").returncode == 1
    assert marked_pids(svc.mark) == []
