"""The default path as a new user meets it: honest starts, the last run, a deleted pidfile."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import time
from types import SimpleNamespace

import pytest
import reliability_report
from conftest import IDLE, REPO, is_gone, wait_for

from daemonize_deco import daemon
from daemonize_deco._claim import claim_address

pytestmark = pytest.mark.timeout(60)


def read_line_within(stream, seconds: float) -> str:
    """One line from a pipe, or '' if none came within ``seconds`` (never blocks longer)."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(seconds):
            return ""
    return stream.readline()


def test_run_prints_reach_a_pipe_at_once(make_service):
    """Under supervisord, svlogd or the journal stdout is a pipe: lines must not wait for 8 KiB."""
    svc = make_service(body="print('first line')\n" + IDLE, stdout=None)
    svc.env.pop("PYTHONUNBUFFERED", None)
    runner = svc.popen("run")
    assert runner.stdout is not None
    assert read_line_within(runner.stdout, 10).strip() == "first line"
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("where", "expected"),
    [("missing directory", 3), ("through a regular file", 4)],
)
def test_status_of_an_unusable_pidfile_path(make_service, tmp_path, where, expected):
    """A missing directory means not running (systemd removes RuntimeDirectory on stop)."""
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    parent = tmp_path / "gone" if where == "missing directory" else blocker
    svc = make_service(pidfile=str(parent / "svc.pid"))
    result = svc.cli("status")
    assert result.returncode == expected, result
    assert "Traceback" not in result.stderr


def test_pidfile_on_a_file_system_that_refuses_files(make_service):
    svc = make_service(pidfile="/proc/daemonize-deco-test.pid")
    result = svc.cli("start")
    assert result.returncode == 1
    assert "does not let files be created" in result.stderr, result.stderr
    assert "does not exist" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_reload_when_not_running_says_it_as_the_others_do(make_service):
    svc = make_service()
    result = svc.cli("reload")
    assert result.returncode == 7
    assert result.stderr.strip() == "svc is not running"
    assert svc.cli("stop").stdout.strip() == "svc is not running"


def test_help_lists_every_status_exit_status(make_service):
    result = make_service().cli("--help")
    assert result.returncode == 0
    status_line = next(line for line in result.stdout.splitlines() if "  status" in line)
    assert all(word in status_line for word in ("0 running", "1 dead", "3 not running", "4"))


def test_ticker_docstring_names_what_the_code_reads():
    source = (REPO / "examples" / "ticker.py").read_text()
    docstring = source.split('"""')[1]
    assert "ticker.interval" in docstring and "ticker.interval" in source.split('"""', 2)[2]
    assert "TICKER_INTERVAL" not in docstring.split("reload")[1].splitlines()[0]


@pytest.mark.parametrize("asked", [False, True])
def test_reliability_report_is_written_only_when_asked(monkeypatch, asked):
    written = []
    monkeypatch.setattr(reliability_report._collector, "write", lambda: written.append(1))
    monkeypatch.setattr(reliability_report._collector, "rows", {"a scenario": object()})
    option = SimpleNamespace(keyword="", markexpr="", lf=False, deselect=None, collectonly=False)
    config = SimpleNamespace(
        option=option,
        args=[str(REPO / "tests")],
        getoption=lambda name: asked if name == "--reliability-report" else None,
    )
    reliability_report.pytest_sessionfinish(SimpleNamespace(config=config), 0)
    assert written == ([1] if asked else [])


# -- 1. a service that dies while starting is never reported as started -------


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.scenario(
    "Defaults",
    "main raises on its first line (default readiness)",
    lost="start exits 1 with the exception, not 'started'; status tells the last run",
)
def test_main_raising_at_once_fails_the_start(make_service):
    svc = make_service(body="raise ValueError('bad port')")
    result = svc.cli("start")
    assert result.returncode == 1, result
    assert result.stderr.strip() == "svc: failed to start: ValueError: bad port"
    assert result.stdout == ""
    status = svc.cli("status")
    assert status.returncode == 3
    assert "svc is not running (last run: pid " in status.stdout
    assert "raised ValueError: bad port at " in status.stdout, status.stdout


@pytest.mark.parametrize("ending", ["return 2", "sys.exit(2)"])
def test_main_ending_non_zero_before_ready_fails_the_start(make_service, ending):
    svc = make_service(body=ending)
    result = svc.cli("start")
    assert result.returncode == 1, result
    assert result.stderr.strip() == "svc: failed to start: main exited with status 2"
    said = "svc: main returned 2" if ending == "return 2" else "svc: main exited with status 2"
    assert said in svc.log_text(), "the log is never empty after a failure"
    assert "exited with status 2" in svc.cli("status").stdout


def test_one_shot_job_ran_and_finished(make_service):
    svc = make_service(body="print('job done')\nreturn 0")
    result = svc.cli("start")
    assert result.returncode == 0, result.stderr
    pid = svc.pid_from(result.stdout)
    assert result.stdout.strip() == f"svc ran and finished (pid {pid}, status 0)"
    assert "job done" in svc.log_text()
    assert not svc.pidfile.exists()
    status = svc.cli("status")
    assert status.returncode == 3
    assert f"(last run: pid {pid} exited with status 0 at " in status.stdout


def test_main_failing_after_some_work_within_the_grace_fails_the_start(make_service):
    # A blocking start (no should_stop/sleep) that fails 0.3s in, well within the 1s grace.
    svc = make_service(body="time.sleep(0.3)\nraise RuntimeError('db unreachable')")
    result = svc.cli("start")
    assert result.returncode == 1
    assert "failed to start: RuntimeError: db unreachable" in result.stderr


def test_main_that_never_loops_is_ready_after_the_grace(make_service):
    svc = make_service(body="time.sleep(3600)", start_grace=0.2)
    pid = svc.start()
    assert svc.cli("status").returncode == 0
    stopped = svc.cli("stop")  # main never looks at the flag: KeyboardInterrupt, as on Ctrl-C
    assert f"svc stopped (pid {pid})" in stopped.stdout
    assert is_gone(pid)


def test_reaching_the_loop_is_ready_without_waiting_for_the_grace(make_service):
    svc = make_service(start_grace=20.0, start_timeout=60.0)
    began = time.monotonic()
    pid = svc.start()
    assert time.monotonic() - began < 15, "start waited for the grace, not for the loop"
    svc.stop_gracefully(pid)


def test_another_threads_sleep_is_not_mains_loop(make_service):
    body = """
        threading.Thread(target=sleep, args=(0,)).start()
        time.sleep(0.3)
        raise ValueError('still starting')
    """
    svc = make_service(body=body)
    result = svc.cli("start")
    assert result.returncode == 1
    assert "ValueError: still starting" in result.stderr


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("1", TypeError)],
)
def test_start_grace_is_checked_at_decoration(value, error):
    with pytest.raises(error, match="start_grace"):
        daemon(pidfile="/tmp/x.pid", start_grace=value)(lambda: None)


def test_start_grace_never_outlasts_start_timeout():
    service = daemon(pidfile="/tmp/x.pid", start_timeout=0.5)(lambda: None)
    assert service.config.start_grace == 0.25


# -- 2. the last run is remembered ---------------------------------------------


@pytest.mark.scenario(
    "Defaults",
    "status after the service ended (stopped, crashed, killed)",
    lost="status says how the last run ended, from a record the service wrote beside its pidfile",
)
def test_status_tells_the_last_run(make_service):
    svc = make_service()
    pid = svc.start()
    svc.stop_gracefully(pid)
    record = svc.pidfile.with_name("svc.pid.last-run")
    fields = dict(line.split("=", 1) for line in record.read_text().splitlines())
    assert fields["pid"] == str(pid) and fields["status"] == "0"
    assert fields["signal"] == "SIGTERM"
    assert float(fields["ended"]) >= float(fields["started"])
    status = svc.cli("status")
    assert status.returncode == 3
    assert re.fullmatch(
        rf"svc is not running \(last run: pid {pid} stopped by SIGTERM and exited with status 0 "
        r"at \d\d:\d\d:\d\d after \d+s\)",
        status.stdout.strip(),
    ), status.stdout

    pid = svc.start()
    assert not record.exists(), "a new run forgets the previous one's record"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), what="the SIGKILL")
    status = svc.cli("status")
    assert status.returncode == 1
    assert status.stdout.strip().endswith(f"(pid {pid}): it died without cleaning up (killed?)")


def test_main_returning_non_zero_after_ready(make_service):
    svc = make_service(body="should_stop()\nreturn 2")
    pid = svc.start()
    wait_for(lambda: is_gone(pid), what="main to return")
    wait_for(lambda: svc.cli("status").returncode == 3, what="the pidfile's removal")
    assert "svc: main returned 2" in svc.log_text()
    assert f"pid {pid} exited with status 2 at" in svc.cli("status").stdout


def test_run_records_its_end_too(make_service):
    svc = make_service(body="should_stop()\nraise KeyError('missing')")
    assert svc.cli("run").returncode == 1
    assert "raised KeyError: 'missing' at" in svc.cli("status").stdout


def test_a_kill_by_stop_is_recorded_by_stop(make_service):
    body = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + IDLE
    svc = make_service(body=body, stop_timeout=0.3)
    pid = svc.start()
    assert "killed" in svc.cli("stop").stdout
    status = svc.cli("status").stdout
    assert f"pid {pid} was killed (SIGKILL by stop, still running 0.3s after SIGTERM)" in status


def test_a_record_that_is_not_one_is_ignored(make_service):
    svc = make_service()
    svc.pidfile.with_name("svc.pid.last-run").mkdir()
    status = svc.cli("status")
    assert (status.returncode, status.stdout.strip()) == (3, "svc is not running")


# -- 3. a deleted pidfile does not make a running daemon invisible -------------


@pytest.mark.scenario(
    "Defaults",
    "pidfile deleted while the daemon runs",
    lost="status, start, run, reload and stop still find the daemon (its claim on the path) "
    "and the pidfile is put back, locked; no second copy",
)
def test_deleted_pidfile_is_found_and_put_back(make_service):
    svc = make_service()
    pid = svc.start()
    svc.pidfile.unlink()
    status = svc.cli("status")
    assert status.returncode == 0
    assert status.stdout.startswith(f"svc is running (pid {pid}, up ")
    assert "was missing or wrong: put back" in status.stdout
    assert svc.read_pid() == pid
    lockers = subprocess.run(["pgrep", "-F", str(svc.pidfile), "-L"], capture_output=True)
    assert lockers.returncode == 0, "the pidfile put back is locked by the daemon"

    svc.pidfile.unlink()
    again = svc.cli("start")
    assert again.returncode == 0
    assert again.stdout.startswith(f"svc is already running (pid {pid}; its pidfile")
    assert svc.daemons() == [pid], "no second copy"
    assert svc.read_pid() == pid

    svc.pidfile.unlink()
    run = svc.cli("run")
    assert run.returncode == 1 and f"already running (pid {pid}; its pidfile" in run.stderr
    assert svc.daemons() == [pid]

    svc.pidfile.unlink()
    assert svc.cli("reload").returncode == 0
    svc.pidfile.unlink()
    stopped = svc.cli("stop")
    assert stopped.returncode == 0
    assert f"svc stopped (pid {pid})" in stopped.stdout
    assert is_gone(pid) and not svc.pidfile.exists()


def test_pidfile_replaced_by_another_file_is_put_back(make_service):
    svc = make_service()
    pid = svc.start()
    svc.pidfile.unlink()
    svc.pidfile.write_text("999999\n")
    assert svc.cli("status").returncode == 0
    assert svc.read_pid() == pid
    svc.stop_gracefully(pid)


@pytest.mark.linux_only(
    "any process may bind an abstract name; a socket file is in the service's own directory"
)
def test_a_claim_squatted_by_another_process_is_not_trusted(make_service, tmp_path):
    svc = make_service()
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(claim_address(str(svc.pidfile)))
    squatter.listen(1)
    with squatter:
        assert svc.cli("status").returncode == 3, "a process without the pidfile is not the service"
        pid = svc.start()
        wait_for(lambda: "another process holds the claim" in svc.log_text(), what="the warning")
        svc.stop_gracefully(pid)


def test_a_long_pidfile_path_has_a_claim_too(make_service, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    svc = make_service(pidfile=str(deep / "svc.pid"))
    pid = svc.start()
    svc.pidfile.unlink()
    assert svc.cli("status").returncode == 0
    assert svc.read_pid() == pid
    svc.stop_gracefully(pid)
