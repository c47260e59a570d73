"""The supervisor's named phases: checked changes in-process; what status says of each, for real.

The real services are supervised (restart=), driven by files in their folder
as in test_supervisor.py, and looked at through ``status``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
from conftest import is_gone, proc_stat, wait_for
from test_supervisor import CRASH_ON_REQUEST, service_pid, status_json, supervised

from daemonize_deco import _phases
from daemonize_deco._phases import Phase, PhaseError, check

pytestmark = pytest.mark.timeout(90)

PHASES = [value for name, value in vars(Phase).items() if name.isupper()]


# -- in-process: the changes allowed -------------------------------------------------


def documented_changes() -> dict[str, set[str]]:
    """The table in _phases' docstring, as {phase: the phases it may go to}."""
    table = re.findall(r"^ {4}([A-Z_]+) -> ([A-Z_, ]+)$", _phases.__doc__ or "", re.MULTILINE)
    return {
        getattr(Phase, left): {getattr(Phase, name) for name in right.split(", ")}
        for left, right in table
    }


def test_every_documented_change_is_allowed_and_no_other():
    documented = documented_changes()
    assert documented, "the table in _phases' docstring"
    for current in PHASES:
        for new in PHASES:
            if new in documented.get(current, set()):
                assert check(current, new) == new
            else:
                with pytest.raises(PhaseError, match=f"from phase '{current}' to '{new}'"):
                    check(current, new)


def test_the_ends_lead_nowhere_and_every_phase_is_reached_from_starting():
    documented = documented_changes()
    assert Phase.DONE not in documented and Phase.GAVE_UP not in documented
    reached, frontier = {Phase.STARTING}, [Phase.STARTING]
    while frontier:
        for new in documented.get(frontier.pop(), set()) - reached:
            reached.add(new)
            frontier.append(new)
    assert reached == set(PHASES)


def test_an_unknown_phase_is_refused():
    with pytest.raises(PhaseError):
        check("napping", Phase.RUNNING)
    with pytest.raises(PhaseError):
        check(Phase.RUNNING, "napping")


# -- for real: what status reads ---------------------------------------------------------

# The first run gets ready; it crashes when a file says so.  Later runs wait
# for a "go" file before they are ready.
WAITS_TO_BE_READY_AGAIN = """
print('service', os.getpid(), time.monotonic(), flush=True)
here = os.path.dirname(__file__)
if os.path.exists(os.path.join(here, 'started-once')):
    while not os.path.exists(os.path.join(here, 'go')):
        if should_stop():
            return
        sleep(0.02)
open(os.path.join(here, 'started-once'), 'w').close()
ready()
while not should_stop():
    if os.path.exists(os.path.join(here, 'crash')):
        os.remove(os.path.join(here, 'crash'))
        raise ValueError('boom')
    sleep(0.02)
"""

# Later runs never get ready, and do not hear a stop either (only SIGKILL ends them).
NEVER_READY_AGAIN = """
print('service', os.getpid(), time.monotonic(), flush=True)
here = os.path.dirname(__file__)
if os.path.exists(os.path.join(here, 'started-once')):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.05)
open(os.path.join(here, 'started-once'), 'w').close()
ready()
while not should_stop():
    if os.path.exists(os.path.join(here, 'crash')):
        raise ValueError('boom')
    sleep(0.02)
"""


def phase_is(svc, phase: str) -> dict | None:
    """The status JSON, once its supervisor is in ``phase``."""
    found = status_json(svc)
    supervision = found["supervision"]
    return found if supervision is not None and supervision.get("phase") == phase else None


def restarted_never_ready(make_service, *, start_timeout: float, stop_timeout: float):
    """A supervised service whose restarted run never gets ready: (svc, supervisor, that run)."""
    svc = supervised(
        make_service,
        NEVER_READY_AGAIN,
        restart="always",
        restart_delay=0,
        start_timeout=start_timeout,
        stop_timeout=stop_timeout,
    )
    supervisor = svc.start()
    first = service_pid(svc)
    (svc.dir / "crash").touch()
    return svc, supervisor, service_pid(svc, other_than=first)


def cpu_seconds(pid: int) -> float:
    stat = proc_stat(pid)
    assert stat is not None
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_status_says_a_restarted_service_is_not_ready_yet(make_service):
    svc = supervised(make_service, WAITS_TO_BE_READY_AGAIN, restart_delay=0, start_timeout=60.0)
    supervisor = svc.start()
    first = service_pid(svc)
    assert phase_is(svc, Phase.RUNNING)
    (svc.dir / "crash").touch()
    second = service_pid(svc, other_than=first)
    wait_for(lambda: phase_is(svc, Phase.RESTARTING), what="the restarted run's phase")
    status = svc.cli("status")
    assert status.returncode == 0
    assert re.search(
        rf"supervisor pid {supervisor}; service pid {second}, up [^;]+, restarted, not ready yet; "
        r"1 restart; last failure: raised ValueError: boom",
        status.stdout,
    ), status.stdout
    (svc.dir / "go").touch()
    wait_for(lambda: phase_is(svc, Phase.RUNNING), what="the restarted run to be ready")
    status = svc.cli("status").stdout
    assert re.search(rf"service pid {second}, up [^;,]+; 1 restart", status), status
    svc.stop_gracefully(supervisor)
    assert is_gone(second)


def test_status_says_a_service_that_never_gets_ready_again_is_being_ended(make_service):
    # start_timeout after the restart, the supervisor sends SIGTERM, which this
    # service does not hear: SIGKILL comes stop_timeout later.  Meanwhile the
    # supervisor has nothing to do until then, and must not spin.
    svc, supervisor, second = restarted_never_ready(
        make_service, start_timeout=2.0, stop_timeout=30.0
    )
    found = wait_for(lambda: phase_is(svc, Phase.ENDING_HUNG), timeout=20, what="ending-hung")
    assert found["supervision"]["service_pid"] == second
    status = svc.cli("status")
    assert status.returncode == 0
    assert f"service pid {second}, up" in status.stdout
    assert ", hung: being ended; 1 restart" in status.stdout, status.stdout
    before = cpu_seconds(supervisor)
    time.sleep(1.0)  # not a synchronisation: the window the supervisor's CPU is measured over
    spent = cpu_seconds(supervisor) - before
    assert spent < 0.3, f"the supervisor spent {spent:.2f}s of CPU in 1s, waiting for a deadline"
    os.kill(supervisor, signal.SIGKILL)
    assert wait_for(lambda: is_gone(second), what="PR_SET_PDEATHSIG to end the service")


def test_status_of_a_supervised_service_loads_nothing_of_the_supervisor(make_service):
    svc = supervised(make_service, CRASH_ON_REQUEST)
    supervisor = svc.start()
    service_pid(svc)
    original = svc.script.read_text()
    probe = original.replace(
        "    main()",
        "    main.cli(['status'])\n"
        "    print(' '.join(m for m in sys.modules if m.startswith('daemonize_deco')))",
    )
    svc.script.write_text(probe)
    try:
        result = subprocess.run(svc.argv(), capture_output=True, text=True, env=svc.env, timeout=30)
    finally:
        svc.script.write_text(original)
    assert f"supervisor pid {supervisor}; service pid" in result.stdout, result.stdout
    loaded = {name.rpartition(".")[2] for name in result.stdout.splitlines()[-1].split()}
    assert not loaded & {"_supervisor", "_watchdog", "_runtime"}, sorted(loaded)
    assert "_phases" in loaded, sorted(loaded)
    svc.stop_gracefully(supervisor)


def test_status_reads_the_file_of_a_supervisor_older_than_the_phases(make_service):
    # During an upgrade, the supervisor that runs is the previous version's: its
    # file has no phase.  What it wrote, in each of its two shapes:
    svc = supervised(make_service, CRASH_ON_REQUEST)
    supervisor = svc.start()
    child = service_pid(svc)
    state_file = svc.dir / "svc.pid.supervisor"
    wait_for(state_file.exists)
    started = time.time() - 65
    shapes = {
        f"restarts=2\nservice={child}\nservice_started={started}\nsupervisor={supervisor}\n": (
            Phase.RUNNING,
            rf"supervisor pid {supervisor}; service pid {child}, up [^;]+; 2 restarts$",
        ),
        (
            f"failure=raised ValueError: boom at 12:00:00\nrestart_at={time.time() + 30}\n"
            f"restarts=1\nsupervisor={supervisor}\n"
        ): (
            Phase.BACKING_OFF,
            rf"supervisor pid {supervisor}; backing off, restarting in (\d+\.\d)s; 1 restart; "
            r"last failure: raised ValueError: boom at 12:00:00$",
        ),
        # A newer version's phase this one does not know: read as the older shape.
        f"phase=napping\nrestarts=0\nservice={child}\nsupervisor={supervisor}\n": (
            Phase.RUNNING,
            rf"supervisor pid {supervisor}; service pid {child}; 0 restarts$",
        ),
    }
    for text, (phase, line) in shapes.items():
        (svc.dir / "planted").write_text(text)
        os.replace(svc.dir / "planted", state_file)  # whole, as the supervisor writes it
        status = svc.cli("status")
        assert status.returncode == 0 and not status.stderr, status.stderr
        assert re.search(line, status.stdout, re.MULTILINE), status.stdout
        assert status_json(svc)["supervision"]["phase"] == phase
    svc.stop_gracefully(supervisor)
