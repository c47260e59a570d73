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
import subprocess

import pytest
from conftest import alive, is_gone, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    # Without /proc no process is looked at (_descendants): the group's fate alone.
    pytest.mark.linux_only("finding what a run started reads /proc"),
]

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


# Workers that left main's process group, each its own way: a session of its own, one
# that ignores SIGTERM, a double fork (setsid -f), a Python helper that daemonizes itself
# (double fork, setsid, every descriptor closed).  Each writes its pid to a file.
HELPER = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
os.closerange(0, 1024)
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
while True:
    time.sleep(1000)
"""

ESCAPING = f"""
here = os.path.dirname(__file__)
def pid_in(name):
    path = os.path.join(here, name)
    while not (os.path.exists(path) and open(path).read().strip()):
        time.sleep(0.01)
    return int(open(path).read())
for name in ("double", "helper"):
    if os.path.exists(os.path.join(here, name)):
        os.remove(os.path.join(here, name))
plain = subprocess.Popen(["sleep", "1000"], start_new_session=True)
stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 1003"], start_new_session=True)
subprocess.run(["setsid", "-f", "sh", "-c", f"echo $$ > {{here}}/double; exec sleep 1001"])
subprocess.run([sys.executable, "-c", {HELPER!r}, os.path.join(here, "helper")])
print("escaped", plain.pid, stubborn.pid, pid_in("double"), pid_in("helper"), flush=True)
ready()
while not should_stop():
    sleep(0.05)
"""


def escaped(text: str) -> list[int] | None:
    """The pids of the workers, once main printed them (plain, stubborn, double, helper)."""
    for line in text.splitlines():
        if line.startswith("escaped "):
            return [int(word) for word in line.split()[1:]]
    return None


def exec_done(pid: int, command: str) -> bool:
    """Whether ``pid`` runs ``command`` now (its shell set the trap and exec'd it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:2] == command.encode().split()
    except OSError:
        return False


@pytest.mark.scenario(
    "Faults",
    "stop of a service whose workers left its process group (new session, double fork, "
    "a self-daemonizing helper, one ignoring SIGTERM)",
    lost="nothing outlives the stop; one log line names the worker that needed SIGKILL",
)
@pytest.mark.parametrize("how", ["start", "run", "supervised"])
def test_workers_that_left_the_group_end_and_the_stubborn_one_is_named(make_service, how):
    svc = make_service(
        ESCAPING, stop_timeout=2.0, wait_ready=True,
        **({"restart": "always"} if how == "supervised" else {}),
    )  # fmt: skip
    if how == "run":
        # Its output to the log (a pipe would be held open by the workers main started).
        with open(svc.log, "w") as log:
            runner = svc.popen("run", stdout=log, stderr=subprocess.STDOUT)
        wait_for(svc.read_pid, timeout=20, what="run to take the pidfile")
    else:
        svc.start()
    pids = wait_for(lambda: escaped(svc.log_text()), timeout=20, what="the workers")
    stubborn = pids[1]
    wait_for(lambda: exec_done(stubborn, "sleep 1003"), what="the stubborn worker's trap")
    stop = svc.cli("stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout, (stop.stdout, stop.stderr)
    if how == "run":
        runner.communicate(timeout=30)
    assert all_gone(pids), [pid for pid in pids if alive(pid)]
    said = [line for line in svc.log_text().splitlines() if "left running" in line]
    assert len(said) == 1, svc.log_text()
    assert "ended 4 processes" in said[0], said
    named = f"SIGKILL to 1 of them (still running after SIGTERM): pid {stubborn} (sleep 1003)"
    assert named in said[0], said


# The first run leaves a worker that ignores SIGTERM and crashes; the next says when it began.
CRASH_LEAVING_A_STUBBORN_WORKER = """
ready()
if not os.path.exists(os.path.join(here, "crashed")):
    open(os.path.join(here, "crashed"), "w").close()
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 1004"],
                                start_new_session=True)
    # Crash only once the trap is set: the shell has exec'd sleep.
    while not open(f"/proc/{stubborn.pid}/cmdline", "rb").read().startswith(b"sleep"):
        time.sleep(0.01)
    print(f"crash at {time.time():.6f}", flush=True)
    raise SystemExit(1)
print(f"run began at {time.time():.6f}", flush=True)
while not should_stop():
    sleep(0.05)
"""


@pytest.mark.linux_only("finding what a run started reads /proc")
@pytest.mark.scenario(
    "Faults",
    "restart= with drain=8: a crashed run left a worker that ignores SIGTERM",
    lost="nothing: it is killed stop_timeout after its SIGTERM (no drain after a crash), "
    "and the next run starts then, not 8 s later",
)
def test_a_crashed_runs_leftover_is_given_stop_timeout_not_the_drain(make_service):
    svc = make_service(
        CRASH_LEAVING_A_STUBBORN_WORKER, prelude="here = os.path.dirname(__file__)",
        restart="always", restart_delay=0.1, stop_timeout=1.0, drain=8.0, wait_ready=True,
    )  # fmt: skip
    supervisor = svc.start()
    began = wait_for(
        lambda: re.search(r"run began at ([0-9.]+)", svc.log_text()), timeout=60,
        what="the next run",
    )  # fmt: skip
    crashed = float(re.search(r"crash at ([0-9.]+)", svc.log_text()).group(1))
    assert float(began.group(1)) - crashed < 6, svc.log_text()  # 9 s with the drain
    assert "SIGKILL to 1 of them" in svc.log_text()
    svc.stop_gracefully(supervisor)
