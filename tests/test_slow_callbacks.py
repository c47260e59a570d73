"""A slow callback holds nobody else up: a restart's handover, a reload, a stop, a fork in main."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from pathlib import Path

import pytest
from conftest import alive, is_gone, proc_stat, wait_for
from test_hooks import with_hooks
from test_kvserver import free_port
from test_listeners import ANSWER_WITH_PID, PRELUDE

pytestmark = pytest.mark.timeout(120)

# on_reload says it began, then holds until the test creates the file "go".
HELD_RELOAD = """
@main.on_reload
def held():
    here = os.path.dirname(__file__)
    print('reload begins', os.getpid(), flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(here, 'go')) and time.monotonic() < deadline:
        time.sleep(0.01)
    print('reload ends', os.getpid(), flush=True)
"""

MODES = [
    pytest.param({}, id="unsupervised"),
    pytest.param({"restart": "on-failure"}, id="supervised"),
]


class Connecting:
    """A client connecting in a loop, reading the pid that served it; counts the refusals."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.refused = 0
        self.served_by: list[int] = []
        self.errors: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def __enter__(self) -> Connecting:
        self.thread.start()
        wait_for(lambda: self.served_by, what="the first connection served")
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(30)

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    self.served_by.append(int(sock.makefile().readline()))
            except ConnectionRefusedError:
                self.refused += 1
            except (OSError, ValueError) as exc:
                self.errors.append(repr(exc))


def held_reload_service(make_service, **options):
    options.setdefault("stop_timeout", 30.0)
    port = free_port()
    svc = with_hooks(
        make_service,
        HELD_RELOAD,
        body=ANSWER_WITH_PID,
        prelude=PRELUDE,
        listen=[f"tcp://127.0.0.1:{port}"],
        wait_ready=True,
        **options,
    )
    return svc, port


def reload_begun(svc) -> None:
    wait_for(lambda: "reload begins" in svc.log_text(), what="on_reload to begin")


def waiting_for_an_answer(pid: int) -> bool:
    """``pid`` (a command) has its request queued and sleeps reading the answer."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    with open("/proc/net/unix") as table:
        rows = [line.split() for line in table][1:]
    connected = any(row[6] in inodes and row[5] == "03" for row in rows)
    stat = proc_stat(pid)
    return connected and stat is not None and stat[0] == "S"


@pytest.mark.scenario(
    "Promises under pressure",
    "restart with listen= while on_reload is slow (held past the handover)",
    lost="nothing: the sockets are handed over at once, no connection is refused, "
    "and the reload is still acknowledged",
)
@pytest.mark.parametrize("mode", MODES)
def test_restart_hands_over_while_a_reload_runs(make_service, mode):
    svc, port = held_reload_service(make_service, **mode)
    old = svc.start()
    with Connecting(port) as clients:
        reload = svc.popen("reload")
        reload_begun(svc)
        restart = svc.popen("restart")
        # Named in the pidfile once ready: the handover did not wait for on_reload.
        new = wait_for(
            lambda: (pid := svc.read_pid()) not in (None, old) and alive(old) and pid,
            timeout=30,
            what="the restart to hand over while on_reload runs",
        )
        assert reload.poll() is None and "reload ends" not in svc.log_text()
        (svc.dir / "go").touch()
        out, err = restart.communicate(timeout=60)
        assert restart.returncode == 0, (out, err)
        assert f"svc restarted (pid {new}; pid {old} stopped, its sockets kept)" in out, out
        assert "restarting by stop and start" not in err, err
        reload_out, reload_err = reload.communicate(timeout=30)
        assert reload.returncode == 0, (reload_out, reload_err)
        assert f"svc reloaded (pid {old})" in reload_out
        assert is_gone(old)
        count = len(clients.served_by)
        wait_for(lambda: len(clients.served_by) > count + 5, what="connections after the restart")
    assert clients.refused == 0 and clients.errors == []
    assert svc.cli("stop").returncode == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_reload_during_a_reload_gets_its_own(make_service, mode):
    svc, _ = held_reload_service(make_service, **mode)
    pid = svc.start()
    first = svc.popen("reload")
    reload_begun(svc)
    second = svc.popen("reload")
    wait_for(lambda: waiting_for_an_answer(second.pid), what="the second reload to be queued")
    assert first.poll() is None
    (svc.dir / "go").touch()
    for proc in (first, second):
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, (out, err)
        assert f"svc reloaded (pid {pid})" in out
    # The second began after the first had ended: its answer is from a reload of its own.
    log = svc.log_text()
    assert log.count("reload begins") == 2 and log.count("reload ends") == 2, log
    assert log.index("reload ends") < log.rindex("reload begins"), log
    svc.stop_gracefully(pid)


@pytest.mark.parametrize("mode", MODES)
def test_a_stop_during_a_slow_reload_waits_for_it(make_service, mode):
    svc, _ = held_reload_service(make_service, **mode)
    pid = svc.start()
    reload = svc.popen("reload")
    reload_begun(svc)
    stop = svc.popen("stop")
    # main heard the stop while on_reload still runs (a supervisor passed it on).
    wait_for(lambda: "stopping" in svc.log_text(), timeout=20, what="main to stop")
    assert reload.poll() is None and stop.poll() is None
    (svc.dir / "go").touch()
    out, err = reload.communicate(timeout=30)
    assert reload.returncode == 0, (out, err)
    out, err = stop.communicate(timeout=30)
    assert stop.returncode == 0 and f"svc stopped (pid {pid})" in out, (out, err)
    assert is_gone(pid) and not svc.pidfile.exists()


@pytest.mark.scenario(
    "Faults",
    "the supervised service is SIGKILLed while its on_reload runs (restart=on-failure)",
    lost="reload exits 1 saying so (it had said 'reloaded'); the service is restarted",
)
def test_a_service_killed_during_its_reload_fails_the_reload(make_service):
    svc, _ = held_reload_service(make_service, restart="on-failure", restart_delay=0.1)
    supervisor = svc.start()
    reload = svc.popen("reload")
    reload_begun(svc)
    child = int(re.findall(r"reload begins (\d+)", svc.log_text())[-1])
    os.kill(child, signal.SIGKILL)
    out, err = reload.communicate(timeout=30)
    assert reload.returncode == 1, (out, err)
    ended = f"the service (pid {child}) ended before it answered"
    assert err == f"svc: reload failed in pid {supervisor}: {ended}\n"
    wait_for(lambda: svc.log_text().count("sockets") == 2, what="the service restarted")
    svc.stop_gracefully(supervisor)


# main forks (three children that exit at once) each time a file "fork" appears.
FORK_ON_REQUEST = """
here = os.path.dirname(__file__)
while not should_stop():
    if os.path.exists(os.path.join(here, 'fork')):
        os.remove(os.path.join(here, 'fork'))
        for _ in range(3):
            child = os.fork()
            if child == 0:
                os._exit(0)
            os.waitpid(child, 0)
        print('forked', flush=True)
    sleep(0.02)
print('stopping', flush=True)
"""


@pytest.mark.linux_only("it waits for the claim's thread by its name, written through /proc")
def test_a_fork_in_main_during_a_slow_reload(make_service):
    """The claim's thread is the parent's only; the dispatcher carries on after the fork."""
    svc = with_hooks(make_service, HELD_RELOAD, body=FORK_ON_REQUEST, stop_timeout=30.0)
    pid = svc.start()
    reload = svc.popen("reload")
    reload_begun(svc)
    wait_for(lambda: _has_thread(pid, "daemonize_claim"), what="the claim's own thread")
    (svc.dir / "fork").touch()
    wait_for(lambda: "forked" in svc.log_text(), what="main to fork")
    svc.pidfile.unlink()  # found through the claim, answered while on_reload runs
    status = svc.cli("status")
    assert status.returncode == 0 and f"pid {pid}" in status.stdout, status
    assert svc.read_pid() == pid, "put back while on_reload runs"
    (svc.dir / "go").touch()
    out, err = reload.communicate(timeout=30)
    assert reload.returncode == 0, (out, err)
    wait_for(lambda: not _has_thread(pid, "daemonize_claim"), what="the claim's thread to end")
    assert svc.cli("reload", timeout=20).returncode == 0, "the dispatcher carries on"
    assert re.search(r"reload ends \d+\n(.|\n)*reload ends", svc.log_text())
    svc.stop_gracefully(pid)


def _has_thread(pid: int, name: str) -> bool:
    names = []
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            names.append(comm.read_text().strip())
        except OSError:
            pass  # a thread that has just ended
    return name in names
