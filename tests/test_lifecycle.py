"""start / stop / restart / status / run on real daemons, checked from outside."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest
from conftest import IDLE, alive, assert_wakes_zero_times, is_gone, proc_stat, proc_status, wait_for

pytestmark = pytest.mark.timeout(60)


def test_round_trip(make_service):
    svc = make_service()
    started = svc.cli("start")
    assert started.returncode == 0, started.stderr
    assert "svc started (pid " in started.stdout
    pid = svc.pid_from(started.stdout)
    assert svc.read_pid() == pid
    assert alive(pid)

    status = svc.cli("status")
    assert status.returncode == 0
    assert f"svc is running (pid {pid}, up " in status.stdout

    again = svc.cli("start")
    assert again.returncode == 0
    assert f"already running (pid {pid})" in again.stdout
    assert svc.daemons() == [pid]

    restarted = svc.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    assert f"svc stopped (pid {pid})" in restarted.stdout
    new_pid = svc.pid_from(restarted.stdout.split("started")[1])
    assert new_pid != pid
    assert is_gone(pid)
    assert svc.read_pid() == new_pid
    assert svc.daemons() == [new_pid]

    stopped = svc.cli("stop")
    assert stopped.returncode == 0
    assert f"svc stopped (pid {new_pid})" in stopped.stdout
    assert is_gone(new_pid), "stop returned before the process was gone"
    assert not svc.pidfile.exists()
    assert svc.log_text().count("stopping") == 2

    assert svc.cli("status").returncode == 3
    not_running = svc.cli("stop")
    assert not_running.returncode == 0
    assert "not running" in not_running.stdout


def test_restart_when_not_running_starts(make_service):
    svc = make_service()
    result = svc.cli("restart")
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout
    assert svc.daemons() == [svc.pid_from(result.stdout.split("started")[1])]
    assert svc.cli("stop").returncode == 0


def test_detached_process_properties(make_service, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    svc = make_service(workdir=str(workdir), umask=0o027)
    pid = svc.start()
    stat_fields = proc_stat(pid)
    assert stat_fields is not None
    ppid, pgrp, session, tty_nr = (int(x) for x in stat_fields[1:5])
    assert ppid != os.getpid()
    assert session != pid, "the daemon must not be a session leader"
    assert session != os.getsid(0), "the daemon must leave the caller's session"
    assert pgrp == session, "the daemon sits in its session's own process group"
    assert tty_nr == 0, "no controlling terminal"
    assert proc_status(pid)["Umask"] == "0027"
    assert os.readlink(f"/proc/{pid}/cwd") == str(workdir)
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == str(svc.log)
    assert os.readlink(f"/proc/{pid}/fd/2") == str(svc.log), "stderr follows stdout"
    assert svc.cli("stop").returncode == 0


@pytest.mark.scenario(
    "Security",
    "Pidfile and log modes",
    lost="pidfile 0644 whatever the umask, never world-writable; logs follow the configured umask",
)
def test_pidfile_is_0644_and_logs_follow_umask(make_service):
    svc = make_service(umask=0o077)
    old = os.umask(0o077)  # the launching shell's umask must not matter either
    try:
        svc.start()
    finally:
        os.umask(old)
    assert stat.S_IMODE(svc.pidfile.stat().st_mode) == 0o644
    assert stat.S_IMODE(svc.log.stat().st_mode) == 0o600
    assert svc.cli("stop").returncode == 0


def test_separate_stderr_and_no_stdout(make_service, tmp_path):
    err = tmp_path / "err.log"
    body = "print('to-out'); print('to-err', file=sys.stderr)\n" + IDLE
    svc = make_service(body=body, stderr=str(err))
    svc.start()
    wait_for(lambda: "to-err" in err.read_text(), what="stderr line")
    wait_for(lambda: "to-out" in svc.log_text(), what="stdout line")
    assert "to-out" not in err.read_text()
    assert svc.cli("stop").returncode == 0

    quiet = make_service(body=body, name="quiet", stdout=None, stderr=None)
    pid = quiet.start()
    assert os.readlink(f"/proc/{pid}/fd/1") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/2") == "/dev/null"
    assert quiet.cli("stop").returncode == 0


def test_print_reaches_log_without_pythonunbuffered(make_service):
    svc = make_service(body="print('hello from main')\n" + IDLE)
    svc.env.pop("PYTHONUNBUFFERED", None)
    svc.start()
    wait_for(lambda: "hello from main" in svc.log_text(), what="the unflushed print in the log")
    assert svc.cli("stop").returncode == 0


def test_start_under_capture_output_returns(make_service):
    """The daemon keeps none of the caller's pipes: run(capture_output) returns."""
    svc = make_service()
    result = svc.cli("start", timeout=15)  # TimeoutExpired here means a held pipe
    assert result.returncode == 0
    pid = svc.pid_from(result.stdout)
    for fd in (0, 1, 2):
        assert not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
    assert svc.cli("stop").returncode == 0


def test_main_returning_after_ready_removes_pidfile(make_service):
    svc = make_service(body="sleep(0.3)\nreturn 0")
    pid = svc.start()
    wait_for(lambda: is_gone(pid), what="main to return")
    wait_for(lambda: not svc.pidfile.exists(), what="pidfile removal")
    assert svc.cli("status").returncode == 3


@pytest.mark.scenario(
    "Faults",
    "Daemon crashes after ready (exception in main)",
    lost="traceback in the log, pidfile removed, status 3",
)
def test_crash_after_ready_logs_traceback_and_removes_pidfile(make_service):
    svc = make_service(body="sleep(0.3)\nraise RuntimeError('crashed late')")
    pid = svc.start()
    wait_for(lambda: is_gone(pid), what="the crash")
    wait_for(lambda: "RuntimeError: crashed late" in svc.log_text(), what="traceback")
    assert "Traceback (most recent call last)" in svc.log_text()
    assert not svc.pidfile.exists()
    assert svc.cli("status").returncode == 3


def test_graceful_stop_finishes_task_in_flight(make_service):
    body = """
        while not should_stop():
            print('task start', flush=True)
            time.sleep(1.0)          # a task that ignores signals until done
            print('task done', flush=True)
    """
    svc = make_service(body=body)
    pid = svc.start()
    wait_for(lambda: "task start" in svc.log_text(), what="a task in flight")
    svc.stop_gracefully(pid)
    log = svc.log_text()
    assert log.count("task start") == log.count("task done") >= 1


def test_stop_escalates_to_sigkill_of_the_group(make_service):
    body = """
        child = subprocess.Popen(['sleep', '300'])
        print('child', child.pid, flush=True)
        while True:
            time.sleep(0.2)          # never looks at should_stop()
    """
    svc = make_service(body=body, stop_timeout=1.0, stop_main="flag")  # no KeyboardInterrupt
    pid = svc.start()
    child = int(
        wait_for(lambda: "child" in svc.log_text() and svc.log_text(), what="child").split()[1]
    )
    result = svc.cli("stop")
    assert result.returncode == 0, result.stderr
    assert "killed" in result.stdout and f"pid {pid}" in result.stdout
    assert is_gone(pid)
    wait_for(lambda: is_gone(child), timeout=5, what="the daemon's child to die with its group")
    assert not svc.pidfile.exists(), "stop removes the pidfile SIGKILL left behind"


@pytest.mark.scenario(
    "Faults",
    "Ctrl-C to stop while it waits for the daemon to exit",
    lost="nothing: one line and status 130, no traceback; the daemon, asked already, stops",
)
def test_ctrl_c_to_a_waiting_stop_is_one_line(make_service):
    body = """
        while not should_stop():
            sleep(3600)
        print('asked to stop', flush=True)
        while not os.path.exists(os.path.join(os.path.dirname(__file__), 'finish')):
            time.sleep(0.02)     # a long last job
    """
    svc = make_service(body=body, stop_timeout=60.0)
    pid = svc.start()
    stop = svc.popen("stop")
    wait_for(lambda: "asked to stop" in svc.log_text(), what="stop's SIGTERM to arrive")
    stop.send_signal(signal.SIGINT)
    out, err = stop.communicate(timeout=30)
    assert stop.returncode == 130, (out, err)
    assert err.strip() == "svc: stop interrupted" and "Traceback" not in err
    assert alive(pid) and svc.read_pid() == pid, "the daemon still finishes its job"
    (svc.dir / "finish").touch()
    assert wait_for(lambda: is_gone(pid), what="the daemon to end its job and exit")
    assert not svc.pidfile.exists()


def test_stop_never_creates_pidfile_or_directory(make_service, tmp_path):
    missing = tmp_path / "missing" / "x.pid"
    svc = make_service(pidfile=str(missing))
    assert svc.cli("stop").returncode == 0
    assert svc.cli("status").returncode == 3
    assert not missing.parent.exists()


def test_idle_daemon_wakes_zero_times(make_service):
    svc = make_service()
    pid = svc.start()

    wait_for(lambda: proc_stat(pid)[0] == "S", what="the daemon to block")
    assert_wakes_zero_times(pid)
    assert svc.cli("stop").returncode == 0


# -- run: the foreground -----------------------------------------------------


def test_run_in_foreground_and_ctrl_c_stops_gracefully(make_service):
    svc = make_service(body="print('up', flush=True)\n" + IDLE + "\nreturn 5")
    proc = svc.popen("run")
    wait_for(lambda: svc.read_pid() == proc.pid, what="run to write its own pid")
    assert svc.cli("status").returncode == 0
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 5, err
    assert "up" in out and "stopping" in out, "run leaves stdout as it is"
    assert "Traceback" not in err
    assert not svc.pidfile.exists()


def test_run_second_ctrl_c_exits_at_once(make_service):
    body = """
        print('up', flush=True)
        while not should_stop():
            time.sleep(0.01)
        print('asked', flush=True)
        while True:
            time.sleep(0.05)     # ignores the request: only a second Ctrl-C ends it
    """
    svc = make_service(body=body)
    proc = svc.popen("run")
    assert proc.stdout.readline() == "up\n"
    os.kill(proc.pid, signal.SIGINT)
    assert proc.stdout.readline() == "asked\n"
    assert proc.poll() is None, "the first Ctrl-C only asks"
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=5)
    assert proc.returncode == 128 + signal.SIGINT
    assert not svc.pidfile.exists()


def test_run_refuses_while_a_daemon_holds_the_pidfile(make_service):
    marker = "open(os.path.join(os.path.dirname(__file__), 'main-called'), 'w').close()\n"
    svc = make_service(body=marker + IDLE)
    pid = svc.start()
    # wait_ready=False: start may return before main's first line has run
    wait_for((svc.dir / "main-called").exists, what="the daemon's main to run")
    (svc.dir / "main-called").unlink()
    result = svc.cli("run")
    assert result.returncode != 0
    assert f"already running (pid {pid})" in result.stderr
    assert not (svc.dir / "main-called").exists(), "main must not be called"
    assert svc.read_pid() == pid
    assert svc.cli("stop").returncode == 0


@pytest.mark.parametrize(
    ("body", "status"), [("return 3", 3), ("sys.exit(4)", 4), ("return None", 0)]
)
def test_run_exits_with_mains_status(make_service, body, status):
    svc = make_service(body=body)
    result = svc.cli("run")
    assert result.returncode == status, result.stderr
    assert not svc.pidfile.exists()


def test_sleep_wakes_every_thread(make_service):
    body = """
        woke = []
        def sleeper():
            started = time.monotonic()
            woke.append((sleep(3600), time.monotonic() - started))
        threads = [threading.Thread(target=sleeper) for _ in range(3)]
        for t in threads:
            t.start()
        print('sleeping', flush=True)
        sleep(3600)
        for t in threads:
            t.join()
        print('woke', woke, 'again', sleep(3600), should_stop(), flush=True)
    """
    svc = make_service(body=body)
    proc = svc.popen("run")
    wait_for(lambda: svc.read_pid() == proc.pid, what="run to start")
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    line = next(x for x in out.splitlines() if x.startswith("woke"))
    woke = eval(line.split("woke ", 1)[1].split(" again")[0])
    assert [flag for flag, _ in woke] == [True, True, True]
    assert line.endswith("again True True"), "later sleeps return at once"


def test_start_from_a_long_lived_program(make_service):
    """cli(['start']) inside a program: no zombie, no duplicated output, host code not rerun."""
    svc = make_service()
    host = svc.dir / "host.py"
    host.write_text(
        "import atexit, os, sys\n"
        "sys.path.insert(0, os.path.dirname(__file__))\n"
        "from svc import main\n"
        "atexit.register(lambda: print('host-atexit'))\n"
        "print('host-buffered', end='')\n"
        "try:\n"
        "    status = main.cli(['start'])\n"
        "    try:\n"
        "        os.waitpid(-1, os.WNOHANG)\n"
        "        zombies = 'child left'\n"
        "    except ChildProcessError:\n"
        "        zombies = 'no children'\n"
        "    print('', status, zombies)\n"
        "finally:\n"
        "    print('host-finally')\n"
    )
    env = dict(svc.env)
    env.pop("PYTHONUNBUFFERED", None)
    result = subprocess.run(
        [sys.executable, str(host)], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("host-buffered") == 1
    assert out.count("host-finally") == 1
    assert out.count("host-atexit") == 1
    assert " 0 no children" in out
    assert "host-" not in svc.log_text()
    assert len(svc.daemons()) == 1
    assert svc.cli("stop").returncode == 0


def test_sighup_never_kills(make_service):
    svc = make_service()
    pid = svc.start()
    for _ in range(3):
        os.kill(pid, signal.SIGHUP)
    assert svc.cli("status").returncode == 0  # a command round trip after the signals
    assert alive(pid)
    assert svc.cli("stop").returncode == 0
    assert "stopping" in svc.log_text(), "SIGHUP must not count as a stop request"
    assert svc.log_text().count("stopping") == 1


def test_stop_of_a_foreground_run_spares_the_callers_group(make_service):
    """run shares our process group: escalation kills the process, not the group."""
    body = "print('up', flush=True)\nwhile True:\n    time.sleep(0.1)"
    svc = make_service(body=body, stop_timeout=0.5, stop_main="flag")  # no KeyboardInterrupt
    proc = svc.popen("run")
    assert proc.stdout.readline() == "up\n"
    assert os.getpgid(proc.pid) == os.getpgrp()
    result = svc.cli("stop")
    assert result.returncode == 0, result.stderr
    assert "killed" in result.stdout
    proc.communicate(timeout=5)
    assert proc.returncode == -signal.SIGKILL  # and this test process is still here


def test_interrupted_start_stops_the_daemon(make_service):
    svc = make_service(body="print('up', flush=True)\n" + IDLE, wait_ready=True)
    proc = svc.popen("start")
    wait_for(lambda: "up" in svc.log_text(), what="the daemon to be up, not ready")
    pid = svc.read_pid()
    assert pid is not None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert "interrupted before it was ready; stopped it" in err
    assert is_gone(pid)
    assert not svc.pidfile.exists()
