"""The watchdog ends a hung main, and only that: a healthy service is never taken for hung.

Each test runs both ways: supervised (``restart="on-failure"``, the
supervisor reads the beats from outside) and unsupervised (the service's own
watchdog thread reads them).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import IDLE, alive, is_gone, wait_for
from test_hooks import with_hooks
from test_managers import NotifyListener
from test_supervisor import DEADLOCK_ON_REQUEST, service_pid, status_json

pytestmark = pytest.mark.timeout(90)

WATCHDOG = 0.5
WAYS = pytest.mark.parametrize("supervised", [True, False], ids=["supervised", "unsupervised"])

# main idles in sleep(5) while a worker thread beats once, when the test says.
WORKER_BEATS_WHILE_MAIN_SLEEPS = """
def worker():
    while not os.path.exists(os.path.join(os.path.dirname(__file__), 'beat')):
        time.sleep(0.01)
    heartbeat()
    print('worker beat', flush=True)

threading.Thread(target=worker, daemon=True).start()
while not should_stop():
    if not sleep(5):
        print('woke', flush=True)
"""

# After the stop, main returns while a non-daemon thread finishes its work.
DRAIN_AFTER_STOP = (
    IDLE
    + """
def drain():
    time.sleep(3)
    print('drained', flush=True)

threading.Thread(target=drain).start()
"""
)

SLOW_ON_STOP = """
@main.on_stop
def slow():
    time.sleep(3)
    print('on_stop done', flush=True)
"""

# main returns at once; its non-daemon thread works on for longer than the watchdog.
RETURN_WHILE_A_THREAD_WORKS = """
def work():
    time.sleep(3)
    print('worked', flush=True)

threading.Thread(target=work).start()
ready()
"""

# A child main forked beats on, in a loop of its own, until main is gone.
A_CHILD_BEATS = """
parent = os.getpid()
if os.fork() == 0:
    while os.getppid() == parent:
        heartbeat()
        time.sleep(0.02)
    os._exit(0)
"""


def make(make_service, body: str, *, supervised: bool, hooks: str = "", **options):
    options.setdefault("watchdog", WATCHDOG)
    options.setdefault("stop_timeout", 20.0)
    if supervised:
        options.setdefault("restart", "on-failure")
        options.setdefault("restart_delay", 0)
    prelude = "from daemonize_deco import heartbeat"
    return with_hooks(make_service, hooks, body=body, prelude=prelude, **options)


def the_service(svc, supervised: bool, started: int) -> int:
    """The pid that runs main: the supervisor's child, or the daemon itself."""
    return service_pid(svc) if supervised else started


def waits_in_poll(pid: int) -> bool:
    """Whether ``pid``'s main thread is blocked in poll (inside sleep())."""
    try:
        return "poll" in Path(f"/proc/{pid}/task/{pid}/wchan").read_text()
    except FileNotFoundError:
        return False


def assert_never_hung(svc) -> None:
    log = svc.log_text()
    assert "hung" not in log, log
    assert "Fatal Python error" not in log, log


@pytest.mark.scenario(
    "Promises under pressure",
    "a worker thread's heartbeat() while main waits in sleep(5) (watchdog=0.5)",
    lost="nothing: main waiting in sleep() stays alive, whoever else beats",
)
@WAYS
def test_a_worker_threads_heartbeat_keeps_main_waiting_in_sleep(make_service, supervised):
    svc = make(make_service, WORKER_BEATS_WHILE_MAIN_SLEEPS, supervised=supervised)
    started = svc.start()
    pid = the_service(svc, supervised, started)
    wait_for(lambda: waits_in_poll(pid), what="main to wait in sleep()")
    (svc.dir / "beat").touch()
    wait_for(lambda: "worker beat" in svc.log_text(), what="the worker's heartbeat")
    # main sleeps on, ten watchdog periods, and wakes up by itself.
    wait_for(
        lambda: "woke" in svc.log_text().partition("worker beat")[2],
        timeout=20,
        what="main to wake from its sleep(5)",
    )
    assert_never_hung(svc)
    assert alive(pid)
    if supervised:
        assert status_json(svc)["supervision"]["restarts"] == 0
    svc.stop_gracefully(started)


@pytest.mark.scenario(
    "Promises under pressure",
    "stop with 3 s of work left in a thread or on_stop (watchdog=0.5, stop_timeout=20)",
    lost="nothing: the watchdog stands down, the work finishes, the stop is graceful",
)
@WAYS
@pytest.mark.parametrize(
    ("body", "hooks", "finished"),
    [(DRAIN_AFTER_STOP, "", "drained"), (IDLE, SLOW_ON_STOP, "on_stop done")],
    ids=["a thread drains", "a slow on_stop"],
)
def test_a_graceful_stop_is_not_taken_for_a_hang(make_service, supervised, body, hooks, finished):
    svc = make(make_service, body, supervised=supervised, hooks=hooks)
    started = svc.start()
    pid = the_service(svc, supervised, started)
    svc.stop_gracefully(started)
    assert is_gone(pid)
    assert finished in svc.log_text(), svc.log_text()
    assert_never_hung(svc)
    assert "stopped by SIGTERM" in svc.cli("status").stdout


@pytest.mark.scenario(
    "Promises under pressure",
    "SIGTERM to a supervised service itself, with 3 s of work left (watchdog=0.5)",
    lost="nothing: the supervisor, which did not ask, sees the stop and stands down",
)
@pytest.mark.parametrize(
    ("body", "hooks", "finished"),
    [(DRAIN_AFTER_STOP, "", "drained"), (IDLE, SLOW_ON_STOP, "on_stop done")],
    ids=["a thread drains", "a slow on_stop"],
)
def test_sigterm_to_the_supervised_service_itself_is_not_a_hang(
    make_service, body, hooks, finished
):
    svc = make(make_service, body, supervised=True, hooks=hooks)
    supervisor = svc.start()
    pid = service_pid(svc)
    os.kill(pid, signal.SIGTERM)
    # It ended with status 0: restart=on-failure lets it go, and the supervisor ends.
    assert wait_for(lambda: is_gone(supervisor), timeout=20, what="the supervisor to end")
    log = svc.log_text()
    assert finished in log, log
    assert f"the service (pid {pid}) exited with status 0; not restarting" in log, log
    assert_never_hung(svc)
    assert not svc.pidfile.exists()


@pytest.mark.scenario(
    "Promises under pressure",
    "main returns while its thread works 3 s more (watchdog=0.5, stop_timeout=20)",
    lost="nothing: the thread finishes, the run ends with status 0 and its pidfile removed",
)
@WAYS
def test_main_returning_while_a_thread_works_is_not_a_hang(make_service, supervised):
    svc = make(make_service, RETURN_WHILE_A_THREAD_WORKS, supervised=supervised)
    started = svc.start()
    assert wait_for(lambda: is_gone(started), timeout=20, what="the run to end")
    log = svc.log_text()
    assert "worked" in log, log
    assert_never_hung(svc)
    assert not svc.pidfile.exists()
    if supervised:
        assert "exited with status 0; not restarting" in log, log
    else:
        assert "exited with status 0" in svc.cli("status").stdout


@pytest.mark.scenario(
    "Promises under pressure",
    "main deadlocks while a child it forked calls heartbeat() (watchdog=0.5, supervised)",
    lost="nothing: a child's beats are not main's progress; the hang is caught and restarted",
)
def test_heartbeats_from_a_child_process_do_not_hide_a_hung_main(make_service):
    svc = make(make_service, A_CHILD_BEATS + DEADLOCK_ON_REQUEST, supervised=True)
    supervisor = svc.start()
    first = service_pid(svc)
    (svc.dir / "hang").touch()
    second = service_pid(svc, other_than=first)
    assert f"main made no progress for {WATCHDOG:g}s (pid {first}): hung" in svc.log_text()
    svc.stop_gracefully(supervisor)
    assert is_gone(second)


# An async main that never awaits stopped(): an idle loop, until a task blocks it.
AN_IDLE_LOOP_UNTIL_A_TASK_BLOCKS_IT = """
async def stall_on_request():
    hang = os.path.join(os.path.dirname(__file__), 'hang')
    while not os.path.exists(hang):
        await asyncio.sleep(0.05)
    os.remove(hang)
    time.sleep(3600)  # blocks the loop

asyncio.get_running_loop().create_task(stall_on_request())
await asyncio.Event().wait()
"""


def pings_within(listener: NotifyListener, seconds: float) -> int:
    """How many WATCHDOG=1 came in the next ``seconds``."""
    count = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        listener.sock.settimeout(left)
        try:
            count += "WATCHDOG=1" in listener.next()
        except TimeoutError:
            break
    listener.sock.settimeout(10)
    return count


@pytest.mark.scenario(
    "asyncio",
    "systemd WatchdogSec=0.8s: an async main idle in its own Event().wait(), then its loop blocked",
    lost="nothing: pings go on while the loop runs, and stop once it is blocked",
)
def test_systemd_pings_follow_an_async_mains_event_loop(make_service, tmp_path):
    listener = NotifyListener(str(tmp_path / "notify"))
    svc = make_service(
        AN_IDLE_LOOP_UNTIL_A_TASK_BLOCKS_IT, prelude="import asyncio", start_grace=0.2
    )
    svc.script.write_text(svc.script.read_text().replace("def main():", "async def main():"))
    env = dict(svc.env, NOTIFY_SOCKET=listener.env_value, WATCHDOG_USEC="800000")
    proc = svc.popen("run", env=env)
    try:
        listener.until("READY=1")
        # Ten ping intervals (0.4 s) of an idle loop: its beats keep the pings going.
        assert pings_within(listener, 4.0) >= 5
        (svc.dir / "hang").touch()
        wait_for(lambda: not (svc.dir / "hang").exists(), what="the task to block the loop")
        listener.drain()  # pings sent before the stall
        # Fresh for WatchdogSec after the last beat: at most two pings follow it.
        assert pings_within(listener, 3.0) <= 2
    finally:
        proc.kill()
        proc.communicate(timeout=10)
        listener.sock.close()
