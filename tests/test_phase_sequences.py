"""The supervisor phases: real sequences that cross phases.

A PhaseError in the supervisor would be a crash: each test drives a real
supervised service through a sequence of phases, then asks that the
supervisor ended as the command says, with no traceback in its log.
"""

from __future__ import annotations

import pytest
from conftest import is_gone, wait_for
from test_phases import phase_is, restarted_never_ready
from test_supervisor import CRASH_AFTER_FIRST, DEADLOCK_ON_REQUEST, service_pid, supervised

pytestmark = pytest.mark.timeout(120)


def no_crash_in(svc) -> None:
    log = svc.log_text()
    assert "PhaseError" not in log, log


def test_stop_while_a_never_ready_run_is_being_ended(make_service):
    svc, supervisor, second = restarted_never_ready(
        make_service, start_timeout=1.0, stop_timeout=4.0
    )
    wait_for(lambda: phase_is(svc, "ending-hung"), timeout=20, what="ending-hung")
    stop = svc.cli("stop", "--timeout", "30", timeout=60)
    assert stop.returncode == 0, (stop.stdout, stop.stderr)
    assert f"svc stopped (pid {supervisor})" in stop.stdout
    assert is_gone(supervisor) and is_gone(second)
    assert "ValueError: boom" in svc.log_text()
    no_crash_in(svc)


def test_reload_while_backing_off_then_the_restart_gets_ready(make_service):
    svc = supervised(make_service, CRASH_AFTER_FIRST, restart="always", restart_delay=2.0)
    supervisor = svc.start()
    first = service_pid(svc)
    (svc.dir / "crash").touch()
    wait_for(lambda: phase_is(svc, "backing-off"), timeout=20, what="backing-off")
    reload = svc.cli("reload", timeout=60)
    # The restarted run crashes at once (CRASH_AFTER_FIRST): whatever the reload says,
    # the supervisor goes on, and a stop ends it.
    assert reload.returncode in (0, 1), (reload.stdout, reload.stderr)
    assert "Traceback" not in reload.stderr
    assert not is_gone(supervisor)
    stop = svc.cli("stop", "--timeout", "30", timeout=60)
    assert stop.returncode == 0, (stop.stdout, stop.stderr)
    assert is_gone(supervisor) and is_gone(first)
    no_crash_in(svc)


def test_stop_while_the_watchdog_ends_a_hung_run(make_service):
    svc = supervised(
        make_service, DEADLOCK_ON_REQUEST, restart="always", watchdog=1.0, stop_timeout=4.0
    )
    supervisor = svc.start()
    child = service_pid(svc)
    (svc.dir / "hang").touch()
    # ending-hung lasts until faulthandler's SIGABRT ends the run: stop as soon as it began.
    wait_for(lambda: "hung; ending it" in svc.log_text(), timeout=20, what="the hang")
    stop = svc.cli("stop", "--timeout", "30", timeout=60)
    assert stop.returncode == 0, (stop.stdout, stop.stderr)
    assert is_gone(supervisor) and is_gone(child)
    no_crash_in(svc)


SLOW_TO_BE_READY = """
print('service', os.getpid(), flush=True)
while not os.path.exists(os.path.join(os.path.dirname(__file__), 'go')):
    if should_stop():
        return
    sleep(0.02)
ready()
while not should_stop():
    sleep(0.05)
"""


def test_stop_while_the_first_run_is_not_ready(make_service):
    svc = supervised(make_service, SLOW_TO_BE_READY, restart="always", start_timeout=60.0)
    start = svc.popen("start")
    supervisor = wait_for(svc.read_pid, timeout=20, what="the supervisor's pid")
    wait_for(lambda: "service " in svc.log_text(), timeout=20, what="the first run")
    stop = svc.cli("stop", "--timeout", "30", timeout=60)
    out, err = start.communicate(timeout=60)
    assert stop.returncode == 0, (stop.stdout, stop.stderr)
    assert is_gone(supervisor)
    assert start.returncode != 0 and "Traceback" not in err, (out, err)
    no_crash_in(svc)
    assert not svc.pidfile.exists()
    assert svc.cli("status").returncode == 3
