"""Keeping a service alive: restart= (a supervisor process) and watchdog= (a hung main)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import IDLE, is_gone, proc_stat, wait_for
from test_hooks import RELOAD_HOOK, with_hooks
from test_managers import NotifyListener

pytestmark = pytest.mark.timeout(90)

# main says which pid and when it began, then crashes once a file says so.
CRASH_ON_REQUEST = """
print('service', os.getpid(), time.monotonic(), flush=True)
ready()
while not should_stop():
    if os.path.exists(os.path.join(os.path.dirname(__file__), 'crash')):
        raise ValueError('boom')
    sleep(0.02)
"""

# main crashes as soon as it is up (after its first run, which must get ready).
CRASH_AFTER_FIRST = """
print('service', os.getpid(), time.monotonic(), flush=True)
ready()
marker = os.path.join(os.path.dirname(__file__), 'started-once')
if os.path.exists(marker):
    raise ValueError('boom')
open(marker, 'w').close()
while not should_stop():
    if os.path.exists(os.path.join(os.path.dirname(__file__), 'crash')):
        raise ValueError('boom')
    sleep(0.02)
"""

DEADLOCK_ON_REQUEST = """
print('service', os.getpid(), flush=True)
ready()
while not should_stop():
    if os.path.exists(os.path.join(os.path.dirname(__file__), 'hang')):
        os.remove(os.path.join(os.path.dirname(__file__), 'hang'))
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()  # deadlock: no heartbeat ever again
    sleep(0.05)
"""


def supervised(make_service, body: str = IDLE, **options):
    options.setdefault("restart", "on-failure")
    options.setdefault("wait_ready", True)
    return make_service(body=body, **options)


def status_json(svc) -> dict:
    return json.loads(svc.cli("status", "--json").stdout)


def service_pid(svc, other_than: int | None = None) -> int:
    """The pid of the supervised service (a new one, when ``other_than`` is given)."""

    def current() -> int | None:
        supervision = status_json(svc)["supervision"]
        pid = None if supervision is None else supervision["service_pid"]
        return pid if pid is not None and pid != other_than else None

    return wait_for(current, timeout=20, what="the supervised service's pid")


def services_started(svc) -> list[tuple[int, float]]:
    """(pid, monotonic time) of each service run, from the log."""
    found = re.findall(r"^service (\d+) ([\d.]+)$", svc.log_text(), re.MULTILINE)
    return [(int(pid), float(at)) for pid, at in found]


def test_start_detaches_a_supervisor_that_runs_the_service(make_service):
    svc = supervised(make_service, CRASH_ON_REQUEST)
    supervisor = svc.start()
    assert svc.read_pid() == supervisor
    child = service_pid(svc)
    assert child != supervisor
    assert int(proc_stat(child)[1]) == supervisor  # its parent
    status = svc.cli("status")
    assert status.returncode == 0
    assert f"supervisor pid {supervisor}; service pid {child}" in status.stdout
    assert "0 restarts" in status.stdout
    svc.stop_gracefully(supervisor)
    assert wait_for(lambda: is_gone(child), what="the service to end with the supervisor")
    assert not svc.pidfile.exists()
    assert "stopped by SIGTERM" in svc.cli("status").stdout


def test_a_crash_is_restarted_with_a_doubling_delay(make_service):
    svc = supervised(make_service, CRASH_AFTER_FIRST, restart_delay=0.2, restart_limit=(3, 60.0))
    supervisor = svc.start()
    first = service_pid(svc)
    (svc.dir / "crash").touch()
    wait_for(lambda: "giving up" in svc.log_text(), timeout=30, what="the supervisor giving up")
    delays = [float(d) for d in re.findall(r"restarting in ([\d.]+)s", svc.log_text())]
    assert delays == [0.2, 0.4, 0.8], delays
    starts = services_started(svc)
    assert len(starts) == 4 and starts[0][0] == first
    gaps = [later[1] - earlier[1] for earlier, later in itertools.pairwise(starts)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay, (gaps, delays)
    assert wait_for(lambda: is_gone(supervisor), what="the supervisor to give up and exit")


def test_giving_up_leaves_a_failed_status_and_start_works_again(make_service):
    svc = supervised(make_service, CRASH_AFTER_FIRST, restart_delay=0, restart_limit=(2, 60.0))
    supervisor = svc.start()
    (svc.dir / "crash").touch()
    assert wait_for(lambda: is_gone(supervisor), timeout=30, what="the supervisor to give up")
    status = svc.cli("status")
    assert status.returncode == 1, status.stdout
    assert status.stdout.startswith(
        "svc failed: 3 failures within 60s; last: raised ValueError: boom"
    )
    assert svc.pidfile.exists(), "left behind on purpose, as systemd's failed state"
    for name in ("crash", "started-once"):
        (svc.dir / name).unlink()
    again = svc.start()
    assert again != supervisor
    svc.stop_gracefully(again)


def test_a_run_longer_than_the_interval_resets_the_backoff(make_service):
    # Each run lasts 1.2 s, longer than the 1 s interval: the delay never doubles
    # and one allowed restart is never "more than one within 1 s".
    body = """
print('service', os.getpid(), time.monotonic(), flush=True)
ready()
sleep(1.2)
raise ValueError('boom')
"""
    svc = supervised(make_service, body, restart_delay=0.1, restart_limit=(1, 1.0))
    supervisor = svc.start()
    wait_for(lambda: len(services_started(svc)) >= 4, timeout=30, what="three restarts")
    delays = re.findall(r"restarting in ([\d.]+)s", svc.log_text())
    assert delays[:3] == ["0.1", "0.1", "0.1"], delays
    assert "giving up" not in svc.log_text()
    svc.stop_gracefully(supervisor)


@pytest.mark.scenario(
    "Faults",
    "SIGKILL of a supervised service",
    lost="restarted at once under the same supervisor pid; status names the signal",
)
def test_sigkill_of_the_service_is_restarted(make_service):
    svc = supervised(make_service, CRASH_ON_REQUEST, restart_delay=0)
    supervisor = svc.start()
    first = service_pid(svc)
    os.kill(first, signal.SIGKILL)
    second = service_pid(svc, other_than=first)
    status = svc.cli("status").stdout
    assert "1 restart; last failure: was killed by SIGKILL" in status, status
    assert svc.read_pid() == supervisor
    svc.stop_gracefully(supervisor)
    assert wait_for(lambda: is_gone(second))


@pytest.mark.scenario(
    "Faults",
    "SIGKILL of the supervisor (restart=)",
    lost="the service dies with it (PR_SET_PDEATHSIG): nothing runs that no pidfile names",
)
def test_sigkill_of_the_supervisor_takes_the_service_with_it(make_service):
    svc = supervised(make_service, CRASH_ON_REQUEST)
    supervisor = svc.start()
    child = service_pid(svc)
    os.kill(supervisor, signal.SIGKILL)
    assert wait_for(lambda: is_gone(child), what="PR_SET_PDEATHSIG to end the service")
    assert svc.cli("status").returncode == 1  # its pidfile is left, as after any SIGKILL


@pytest.mark.scenario(
    "Faults",
    "stop while the supervisor waits to restart",
    lost="stops at once, exit 0, nothing left",
)
def test_stop_during_a_backoff_wait(make_service):
    svc = supervised(make_service, CRASH_AFTER_FIRST, restart_delay=30.0)
    supervisor = svc.start()
    (svc.dir / "crash").touch()
    wait_for(lambda: "restarting in 30s" in svc.log_text(), what="the backoff wait")
    status = svc.cli("status")
    assert status.returncode == 0
    waiting = re.search(r"backing off, restarting in ([\d.]+)s; 1 restart", status.stdout)
    assert waiting and 0 < float(waiting[1]) <= 30, status.stdout  # counting down from 30 s
    assert status_json(svc)["supervision"]["phase"] == "backing-off"
    stop = svc.cli("stop", timeout=10)
    assert stop.returncode == 0 and f"svc stopped (pid {supervisor})" in stop.stdout
    assert is_gone(supervisor)


def test_reload_reaches_the_service_and_is_acknowledged(make_service):
    svc = with_hooks(make_service, RELOAD_HOOK, restart="always")
    supervisor = svc.start()
    child = service_pid(svc)
    result = svc.cli("reload")
    assert result.returncode == 0, result.stderr
    assert f"svc reloaded (pid {supervisor})" in result.stdout
    assert "reloaded" in svc.log_text()
    (svc.dir / "fail-reload").touch()
    failed = svc.cli("reload")
    assert failed.returncode == 1
    assert "config is broken" in failed.stderr
    assert service_pid(svc) == child, "a reload is not a restart"
    svc.stop_gracefully(supervisor)


def test_custom_signals_are_passed_to_the_service(make_service):
    hook = """
@main.on_signal(signal.SIGUSR1)
def rotate():
    print('usr1 in', os.getpid(), flush=True)
"""
    svc = with_hooks(make_service, hook, restart="on-failure")
    supervisor = svc.start()
    child = service_pid(svc)
    os.kill(supervisor, signal.SIGUSR1)
    wait_for(lambda: f"usr1 in {child}" in svc.log_text(), what="the service's on_signal")
    svc.stop_gracefully(supervisor)


@pytest.mark.scenario(
    "Faults",
    "main deadlocks (watchdog=1, restart=on-failure)",
    lost="seen within the watchdog period, stacks in the log, ended and restarted",
)
def test_a_hung_service_is_caught_by_the_watchdog_and_restarted(make_service):
    svc = supervised(make_service, DEADLOCK_ON_REQUEST, watchdog=1.0, restart_delay=0)
    supervisor = svc.start()
    first = service_pid(svc)
    (svc.dir / "hang").touch()
    second = service_pid(svc, other_than=first)
    log = svc.log_text()
    assert f"main made no progress for 1s (pid {first}): hung" in log
    # faulthandler's dump, on SIGABRT: every thread, main's deadlock in it.
    assert "Fatal Python error: Aborted" in log
    assert re.search(r'File ".*svc\.py", line \d+ in main', log), log
    status = svc.cli("status").stdout
    assert "last failure: hung: no heartbeat for 1s" in status, status
    svc.stop_gracefully(supervisor)
    assert is_gone(second)


def test_a_hung_service_without_a_supervisor_is_ended(make_service):
    svc = make_service(DEADLOCK_ON_REQUEST, watchdog=1.0, wait_ready=True)
    pid = svc.start()
    (svc.dir / "hang").touch()
    assert wait_for(lambda: is_gone(pid), timeout=10, what="the watchdog to end it")
    log = svc.log_text()
    assert f"main made no progress for 1s (pid {pid}): hung" in log
    assert re.search(r'File ".*svc\.py", line \d+ in main', log), log


@pytest.mark.scenario(
    "Faults",
    "systemd WatchdogSec: a deadlocked main, a 1.5 s on_reload",
    lost="pings stop for the deadlock and continue through the slow reload",
)
def test_systemd_pings_stop_for_a_hung_main_but_not_for_a_slow_reload(make_service, tmp_path):
    listener = NotifyListener(str(tmp_path / "notify"))
    hook = """
@main.on_reload
def slow():
    time.sleep(1.5)
"""
    svc = with_hooks(make_service, hook, body=DEADLOCK_ON_REQUEST, stdout=None)
    env = dict(svc.env, NOTIFY_SOCKET=listener.env_value, WATCHDOG_USEC="400000")
    proc = svc.popen("run", env=env)
    try:
        listener.until("READY=1")
        listener.until("WATCHDOG=1")
        reload = svc.popen("reload")
        listener.until("RELOADING=1")
        during = listener.until("READY=1")  # the reload's end, 1.5 s later
        assert sum("WATCHDOG=1" in d for d in during) >= 4, during  # every 0.2 s
        assert reload.wait(timeout=10) == 0
        (svc.dir / "hang").touch()
        wait_for(lambda: not (svc.dir / "hang").exists(), what="main to deadlock")
        listener.drain()  # pings sent before the deadlock
        listener.sock.settimeout(1.5)
        silent = []
        with pytest.raises(TimeoutError):
            silent.extend(listener.next() for _ in range(100))
        # Fresh for twice the ping interval (WatchdogSec), so at most two pings
        # follow the last beat; a healthy main gets seven in 1.5 s.
        assert sum("WATCHDOG=1" in d for d in silent) <= 2, silent
    finally:
        proc.kill()
        proc.communicate(timeout=10)
        listener.sock.close()


def test_under_a_manager_there_is_no_supervisor(make_service, tmp_path):
    listener = NotifyListener(str(tmp_path / "notify"))
    body = "print('service', os.getpid(), flush=True)\n" + IDLE
    svc = make_service(body, restart="on-failure", stdout=None)
    proc = svc.popen("start", env=dict(svc.env, NOTIFY_SOCKET=listener.env_value))
    try:
        listener.until("READY=1")
        assert svc.read_pid() == proc.pid, "start acts as run: the manager restarts"
        assert status_json(svc)["supervision"] is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        listener.sock.close()


def test_the_systemd_unit_follows_restart_and_watchdog(make_service):
    svc = make_service(restart="always", restart_delay=0.5, restart_limit=(3, 20.0), watchdog=5)
    unit = svc.cli("systemd-unit").stdout
    fields = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    assert fields["Restart"] == "always"
    assert fields["RestartSec"] == "0.5s"
    assert fields["StartLimitBurst"] == "3"
    assert fields["StartLimitIntervalSec"] == "20"
    assert fields["WatchdogSec"] == "5s"


@pytest.mark.parametrize(
    ("keywords", "message"),
    [("restart='sometimes'", "restart must be one of"),
     ("restart_delay=-1", "restart_delay must be"),
     ("restart_limit=5", "restart_limit must be a tuple"),
     ("watchdog=0", "watchdog must be a positive")],
)  # fmt: skip
def test_bad_restart_keywords_are_refused_at_import(make_service, keywords, message):
    svc = make_service()
    script = svc.script.read_text().replace("@daemon(", f"@daemon({keywords}, ", 1)
    svc.script.write_text(script)
    result = subprocess.run(
        svc.argv("status"), capture_output=True, text=True, env=svc.env, timeout=30
    )
    assert result.returncode != 0
    assert message in result.stderr


def uptime_of(pid: int) -> float:
    ticks = int(proc_stat(pid)[19])  # starttime, in clock ticks after boot
    with open("/proc/uptime") as boot:
        return float(boot.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")


def test_awaiting_stopped_and_heartbeat_keep_a_service_alive(make_service):
    # Neither waits in should_stop()/sleep(): an idle event loop beats while
    # it awaits stopped(), and a main blocked elsewhere calls heartbeat().
    prelude = "import asyncio\nfrom daemonize_deco import heartbeat, stopped"
    waiting = make_service(name="aio", prelude=prelude, watchdog=0.5)
    script = waiting.script.read_text().replace("def main():", "async def main():")
    waiting.script.write_text(
        script.replace("while not should_stop():\n        sleep(3600)", "await stopped()")
    )
    beating = make_service(
        "while not os.path.exists(os.path.join(os.path.dirname(__file__), 'done')):\n"
        "    heartbeat()\n    time.sleep(0.1)",
        name="beat", prelude=prelude, watchdog=0.5, start_grace=0.2,
    )  # fmt: skip
    pids = [waiting.start(), beating.start()]
    wait_for(lambda: min(map(uptime_of, pids)) > 2.0, what="four watchdog periods to pass")
    assert not any(map(is_gone, pids))
    assert "hung" not in waiting.log_text() + beating.log_text()
    waiting.stop_gracefully(pids[0])
    (beating.dir / "done").touch()
    assert wait_for(lambda: is_gone(pids[1]))


def test_a_stalled_event_loop_is_hung(make_service):
    prelude = "import asyncio\nfrom daemonize_deco import stopped"
    body = """
async def stall_on_request():
    while True:
        await asyncio.sleep(0.05)
        if os.path.exists(os.path.join(os.path.dirname(__file__), 'hang')):
            time.sleep(3600)  # blocks the loop: stopped() waits on, but nothing runs

asyncio.get_running_loop().create_task(stall_on_request())
await stopped()
"""
    svc = make_service(body, prelude=prelude, watchdog=0.5)
    svc.script.write_text(svc.script.read_text().replace("def main():", "async def main():"))
    pid = svc.start()
    (svc.dir / "hang").touch()
    assert wait_for(lambda: is_gone(pid), timeout=10, what="the watchdog to end it")
    assert re.search(r"line \d+ in stall_on_request", svc.log_text()), svc.log_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_a_supervised_service_drops_privileges(make_service):
    """The service imports what it needs for PDEATHSIG before the drop (/root may hold Python)."""
    svc = supervised(make_service, user="nobody", wait_ready=False)
    supervisor = svc.start()
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    (child,) = map(int, wait_for(lambda: children.read_text().split(), what="the service"))
    status = Path(f"/proc/{child}/status").read_text().splitlines()
    assert {line.split()[1] for line in status if line.startswith("Uid:")} == {"65534"}
    svc.stop_gracefully(supervisor)
