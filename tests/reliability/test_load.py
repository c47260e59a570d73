"""Load: many commands at once against one service, and many services at once."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
from conftest import marked_pids, proc_stat, wait_for
from platform_simulation import simulated

DURATION = 30.0
WORKERS = 50


def lock_holders(pidfile: Path, name: str) -> list[int]:
    """Live processes named ``name`` that hold the file now at ``pidfile`` open.

    An exiting daemon that has already unlinked its pidfile no longer counts:
    it is past main and only tearing down.
    """
    holders = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if not _is_named(int(entry), name):
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
            targets = {os.readlink(f"/proc/{entry}/fd/{fd}") for fd in fds}
        except OSError:
            continue
        stat = proc_stat(int(entry))
        if str(pidfile) in targets and stat is not None and stat[0] not in ("Z", "X"):
            holders.append(int(entry))
    return holders


def _is_named(pid: int, name: str) -> bool:
    """Whether ``pid`` is the daemon called ``name``.

    By its name, which the library sets through /proc.  Where it cannot (a
    simulated platform: the name is the interpreter's), by its script, in a
    session of another's making: the start's intermediate process, which
    holds the pidfile for a moment too, leads that session (its parent, once
    adopted, may be anyone: a subreaper in our own session, say).
    """
    if Path(f"/proc/{pid}/comm").read_text().strip() == name:
        return True
    stat = proc_stat(pid)
    if simulated() is None or stat is None:
        return False
    script = f"{name}.py".encode()
    runs_it = any(
        arg.endswith(script) for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    )
    session = int(stat[3])
    return runs_it and session not in (os.getsid(0), pid)


@pytest.mark.timeout(180)
@pytest.mark.scenario(
    "Load",
    f"{WORKERS} concurrent start/stop/status/restart in random order for {DURATION:.0f} s",
    lost="at every sampled moment at most one daemon; status tells the truth at the end; "
    "no zombie, orphan or stray pidfile",
)
def test_random_commands_under_load(make_service):
    svc = make_service(name="loadsvc", stop_timeout=10.0, start_timeout=30.0)
    deadline = time.monotonic() + DURATION
    outcomes: list[tuple[str, int, str]] = []
    most_holders = [0]
    done = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            command = rng.choice(["start", "stop", "status", "restart"])
            result = svc.cli(command, timeout=120)
            outcomes.append((command, result.returncode, result.stderr + result.stdout))

    def monitor() -> None:
        while not done.is_set():
            most_holders[0] = max(most_holders[0], len(lock_holders(svc.pidfile, "loadsvc")))
            time.sleep(0.02)  # sampling period of the monitor, not synchronisation

    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()

    print(f"{len(outcomes)} commands; at most {most_holders[0]} daemon(s) at once")
    assert most_holders[0] <= 1, "two daemons held the pidfile at the same moment"
    assert all("Traceback" not in err for _, _, err in outcomes)
    allowed = {"start": {0}, "stop": {0}, "restart": {0}, "status": {0, 3}}
    wrong = [(c, rc, err) for c, rc, err in outcomes if rc not in allowed[c]]
    assert not wrong, wrong[:5]

    status = svc.cli("status")
    holders = lock_holders(svc.pidfile, "loadsvc")
    if status.returncode == 0:
        assert holders == [svc.pid_from(status.stdout)]
    else:
        assert status.returncode == 3 and holders == [] and not svc.pidfile.exists()
    assert svc.cli("stop").returncode == 0
    wait_for(lambda: marked_pids(svc.mark) == [], timeout=15, what="no process left")
    left = sorted(p.name for p in svc.dir.iterdir())
    assert left == ["loadsvc.log", "loadsvc.pid.last-run", "loadsvc.py"], "no temporary file"


@pytest.mark.timeout(180)
@pytest.mark.scenario(
    "Load",
    "100 different daemons started and stopped in parallel",
    lost="all up, all down, no leaked process, no pidfile left",
)
def test_a_hundred_daemons_in_parallel(make_service):
    services = [make_service(name=f"many{i:03d}", start_timeout=60.0) for i in range(100)]
    starts = [svc.popen("start") for svc in services]
    pids = []
    for svc, proc in zip(services, starts, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        pids.append(svc.pid_from(out))
    assert len(set(pids)) == 100
    for svc, pid in zip(services, pids, strict=True):
        assert svc.read_pid() == pid
        if simulated() is None:  # elsewhere the process keeps the interpreter's name
            assert Path(f"/proc/{pid}/comm").read_text().strip() == svc.name
    stops = [svc.popen("stop") for svc in services]
    for proc in stops:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "stopped" in out, err
    wait_for(lambda: marked_pids(services[0].mark) == [], timeout=15, what="all gone")
    assert not any(svc.pidfile.exists() for svc in services)


@pytest.mark.timeout(180)
@pytest.mark.scenario(
    "Load",
    "20 services whose main never asks (blocked in time.sleep), stopped at once",
    lost="nothing: each main gets its KeyboardInterrupt, even when the dispatcher looks while "
    "main's thread still runs the SIGTERM handler; none is SIGKILLed",
)
def test_blocked_mains_stopped_at_once_each_get_the_stop(make_service):
    services = [
        make_service(name=f"blocked{i:02d}", body="time.sleep(3600)", start_grace=0.2)
        for i in range(20)
    ]
    for svc in services:
        svc.start()
    stops = [svc.popen("stop") for svc in services]
    outputs = [proc.communicate(timeout=60)[0] for proc in stops]
    killed = [out for out in outputs if "stopped (pid" not in out]
    assert not killed, killed
