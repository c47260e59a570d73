"""A run's descendants end with the run: workers, subprocesses in new sessions, forked children.

Each test starts real workers from main, ends the run in one of the ways a run
ends (a crash under a supervisor, kill -9 of the supervisor, the watchdog, stop,
main returning), and looks for the workers from outside.  Each failed before its fix.
"""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from conftest import alive, is_gone, wait_for

pytestmark = pytest.mark.timeout(120)

# main starts three workers: a plain subprocess, one in a session of its own, and a
# shell in a new session whose own child (a grandchild) sleeps; each logs its pid.
# A file "crash" makes main raise; a file "hang" deadlocks it.
WORKERS = """
here = os.path.dirname(__file__)
procs = [
    subprocess.Popen(["sleep", "1000"]),
    subprocess.Popen(["sleep", "1001"], start_new_session=True),
    subprocess.Popen(
        ["sh", "-c", f"sleep 1002 & echo $! > {here}/grandchild-{os.getpid()}; wait"],
        start_new_session=True,
    ),
]
forked = os.fork()
if forked == 0:
    while True:
        time.sleep(1000)  # a forked child that never execs
print("workers", os.getpid(), *[p.pid for p in procs], forked, flush=True)
ready()
while not should_stop():
    if os.path.exists(os.path.join(here, "crash")):
        os.remove(os.path.join(here, "crash"))
        raise ValueError("boom")
    if os.path.exists(os.path.join(here, "hang")):
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()  # deadlocked: the watchdog's to end
    sleep(0.05)
"""


def workers_of(svc) -> dict[int, list[int]]:
    """service pid -> its workers (and the grandchild), from the log and the files."""
    found = {}
    for line in svc.log_text().splitlines():
        if line.startswith("workers "):
            service, *pids = map(int, line.split()[1:])
            grandchild = svc.dir / f"grandchild-{service}"
            wait_for(lambda g=grandchild: g.exists() and g.read_text().strip(), what="grandchild")
            found[service] = [*pids, int(grandchild.read_text())]
    return found


def all_gone(pids: list[int]) -> bool:
    return all(is_gone(pid) for pid in pids)


def make(make_service, **options):
    options.setdefault("wait_ready", True)
    options.setdefault("stop_timeout", 3.0)
    return make_service(WORKERS, **options)


@pytest.mark.scenario(
    "Faults",
    "a supervised service crashes four times, leaving workers (new sessions too)",
    lost="nothing piles up: each run's workers are ended before the next run",
)
def test_a_crashed_runs_workers_are_ended_before_the_restart(make_service):
    svc = make(make_service, restart="on-failure", restart_delay=0.05)
    supervisor = svc.start()
    for crash in range(4):
        wait_for(lambda n=crash: len(workers_of(svc)) == n + 1, what="the run's workers")
        (svc.dir / "crash").touch()
    wait_for(lambda: len(workers_of(svc)) == 5, what="the fifth run")
    runs = workers_of(svc)
    current = max(runs, key=lambda service: list(runs).index(service))
    for service, pids in runs.items():
        if service != current:
            assert wait_for(lambda p=pids: all_gone(p), what=f"the workers of run {service}")
    assert all(alive(pid) for pid in runs[current])
    stop = svc.cli("stop")
    assert stop.returncode == 0 and f"svc stopped (pid {supervisor})" in stop.stdout
    assert all_gone(runs[current])


@pytest.mark.scenario(
    "Faults",
    "kill -9 of the supervisor while the service has workers",
    lost="status names the workers still running; stop ends them",
)
def test_workers_left_by_a_killed_supervisor_are_reported_and_stopped(make_service):
    svc = make(make_service, restart="on-failure")
    supervisor = svc.start()
    wait_for(lambda: workers_of(svc), what="the workers")
    ((service, pids),) = workers_of(svc).items()
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: is_gone(supervisor) and is_gone(service), what="supervisor and service")
    status = svc.cli("status")
    assert status.returncode == 1, status.stdout
    assert "5 processes" in status.stdout and "stop ends them" in status.stdout, status.stdout
    assert sorted(json.loads(svc.cli("status", "--json").stdout)["leftovers"]) == sorted(pids)
    stop = svc.cli("stop")
    assert stop.returncode == 0, stop.stderr
    assert "ended 5 processes" in stop.stdout, stop.stdout
    assert all_gone(pids)
    assert svc.cli("status").returncode == 3


@pytest.mark.scenario(
    "Faults",
    "the watchdog ends a hung service (no supervisor) that has workers",
    lost="stop ends the workers the aborted service could not",
)
def test_workers_of_a_service_the_watchdog_ended_are_stopped(make_service):
    svc = make(make_service, watchdog=1.0)
    pid = svc.start()
    wait_for(lambda: workers_of(svc), what="the workers")
    pids = workers_of(svc)[pid]
    (svc.dir / "hang").touch()
    wait_for(lambda: is_gone(pid), timeout=20, what="the watchdog to end it")
    assert "stop ends them" in svc.cli("status").stdout
    stop = svc.cli("stop")
    assert stop.returncode == 0 and "ended 5 processes" in stop.stdout, stop.stdout
    assert all_gone(pids)


@pytest.mark.scenario(
    "Faults",
    "stop of a service whose workers run in sessions of their own",
    lost="nothing outlives the stop: the service ends its workers when it ends",
)
@pytest.mark.parametrize("supervised", [False, True], ids=["plain", "supervised"])
def test_stop_leaves_no_worker_running(make_service, supervised):
    svc = make(make_service, **({"restart": "on-failure"} if supervised else {}))
    pid = svc.start()
    wait_for(lambda: workers_of(svc), what="the workers")
    (pids,) = workers_of(svc).values()
    stop = svc.cli("stop")
    assert stop.returncode == 0 and f"svc stopped (pid {pid})" in stop.stdout
    assert all_gone(pids)


@pytest.mark.scenario(
    "Faults",
    "main returns by itself while its workers run",
    lost="the service ends its workers before it exits",
)
def test_main_returning_ends_its_workers(make_service):
    done = "while not os.path.exists(os.path.join(here, 'done')):"
    body = WORKERS.replace("while not should_stop():", done)
    svc = make_service(body, wait_ready=True, stop_timeout=3.0)
    pid = svc.start()
    wait_for(lambda: workers_of(svc), what="the workers")
    pids = workers_of(svc)[pid]
    (svc.dir / "done").touch()
    wait_for(lambda: is_gone(pid), what="main to return")
    assert all_gone(pids)
    assert re.search(r"ended 5 processes", svc.log_text()), svc.log_text()
