"""workers=N: an arbiter holds the pidfile and keeps N copies of main behind one set of sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import pytest
from conftest import children_of, is_gone, wait_for
from test_health import get
from test_kvserver import free_port
from test_managers import NotifyListener

from daemonize_deco import daemon, worker_id

pytestmark = pytest.mark.timeout(90)

PRELUDE = "from daemonize_deco import listeners, worker_id"

# Each worker answers every connection with its worker_id and pid; it says in the
# log which port the shared socket has (bound to port 0 by start: no port race),
# in one write: unbuffered (PYTHONUNBUFFERED), print() writes its pieces apart, and
# the workers share the log.
SERVER = """
sock = listeners()[0]
sys.stdout.write(f'worker {worker_id()} {os.getpid()} {sock.getsockname()[1]}\\n')
sys.stdout.flush()
sock.settimeout(0.1)
while not should_stop():
    if os.path.exists(os.path.join(os.path.dirname(__file__), f'hang-{worker_id()}')):
        os.remove(os.path.join(os.path.dirname(__file__), f'hang-{worker_id()}'))
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()  # deadlock: no heartbeat ever again
    try:
        conn, _ = sock.accept()
    except (TimeoutError, BlockingIOError):
        continue
    with conn:
        conn.sendall(f'{worker_id()} {os.getpid()}\\n'.encode())
sys.stdout.write(f'stopping {worker_id()}\\n')
sys.stdout.flush()
"""


def with_workers(make_service, workers: int = 3, body: str = SERVER, **options):
    options.setdefault("listen", "tcp://127.0.0.1:0")
    return make_service(body=body, prelude=PRELUDE, workers=workers, **options)


def port_of(svc) -> int:
    try:
        found = wait_for(
            lambda: re.search(r"^worker \d+ \d+ (\d+)$", svc.log_text(), re.MULTILINE),
            what="a worker's port in the log",
        )
    except AssertionError as exc:
        status = svc.cli("status").stdout
        raise AssertionError(f"{exc}; log: {svc.log_text()!r}; status: {status}") from None
    return int(found.group(1))


def ask(port: int) -> tuple[int, int]:
    """(worker_id, pid) of the worker that answered one connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        words = conn.makefile().readline().split()
    return int(words[0]), int(words[1])


def answering(port: int, wanted: dict[int, int] | None = None, count: int = 3) -> dict[int, int]:
    """worker_id -> pid of the workers seen answering, polled until ``count`` (or ``wanted``) did.

    The kernel does not hand connections out in turn: keep asking, with a deadline.
    """
    seen: dict[int, int] = {}

    def enough() -> bool:
        number, pid = ask(port)
        seen[number] = pid
        if wanted is not None:
            return all(seen.get(n) == p for n, p in wanted.items())
        return len(seen) >= count

    wait_for(enough, timeout=20, what=f"answers from {wanted or count} workers")
    return seen


def status_json(svc) -> dict:
    return json.loads(svc.cli("status", "--json").stdout)


def worker_pids(svc) -> dict[int, int | None]:
    supervision = status_json(svc)["supervision"]
    return {w["worker_id"]: w["pid"] for w in supervision["workers"]}


def test_n_workers_serve_on_one_port(make_service):
    svc = with_workers(make_service, workers=3)
    arbiter = svc.start()
    assert svc.read_pid() == arbiter
    seen = answering(port_of(svc), count=3)
    assert sorted(seen) == [0, 1, 2]
    assert len(set(seen.values())) == 3 and arbiter not in seen.values()
    assert worker_pids(svc) == seen
    status = svc.cli("status")
    assert status.returncode == 0
    assert f"arbiter pid {arbiter}; 3 workers, running" in status.stdout
    for number, pid in seen.items():
        assert f"worker {number}: pid {pid}, up " in status.stdout
    health = svc.cli("health")  # answered by the arbiter, for all of them
    assert health.returncode == 0, health.stderr
    svc.stop_gracefully(arbiter)


def test_a_killed_worker_is_replaced_alone(make_service):
    svc = with_workers(make_service, workers=3, restart="on-failure", restart_delay=0.1)
    arbiter = svc.start()
    port = port_of(svc)
    before = answering(port, count=3)
    victim = before[1]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> dict[int, int | None] | None:
        now = worker_pids(svc)
        return now if now[1] not in (None, victim) else None

    after = wait_for(replaced, timeout=20, what="worker 1 replaced")
    assert after[0] == before[0] and after[2] == before[2]  # the others untouched
    answering(port, wanted={0: before[0], 1: after[1], 2: before[2]})  # all three serve
    assert f"worker 1 (pid {victim}) was killed by SIGKILL; replacing it" in svc.log_text()
    workers = status_json(svc)["supervision"]["workers"]
    assert [w["restarts"] for w in workers] == [0, 1, 0]
    assert "was killed by SIGKILL" in workers[1]["last_exit"]
    svc.stop_gracefully(arbiter)
    assert "stopped by SIGTERM" in svc.cli("status").stdout  # the replaced crash is no failure


def test_a_worker_whose_restarts_run_out_gives_the_service_up(make_service):
    svc = with_workers(
        make_service, workers=2, restart="on-failure", restart_delay=0, restart_limit=(1, 60.0)
    )
    arbiter = svc.start()
    port = port_of(svc)
    first = answering(port, count=2)
    os.kill(first[1], signal.SIGKILL)
    second = wait_for(
        lambda: (pid := worker_pids(svc)[1]) not in (None, first[1]) and pid, what="a new worker 1"
    )
    os.kill(second, signal.SIGKILL)
    assert wait_for(lambda: is_gone(arbiter), what="the arbiter to give up")
    assert is_gone(first[0])  # the other worker was stopped
    status = svc.cli("status")
    assert status.returncode == 1
    assert "failed: worker 1: 2 failures within 60s" in status.stdout
    assert svc.daemons() == []


def test_stop_leaves_nothing(make_service):
    svc = with_workers(make_service, workers=3)
    arbiter = svc.start()
    pids = answering(port_of(svc), count=3)
    svc.stop_gracefully(arbiter)
    for pid in pids.values():
        assert wait_for(lambda pid=pid: is_gone(pid), what=f"worker {pid} to end")
    assert not svc.pidfile.exists()
    assert svc.daemons() == []
    assert svc.log_text().count("stopping ") == 3  # each stopped gracefully: should_stop()
    assert "stopped by SIGTERM" in svc.cli("status").stdout


def test_restart_hands_the_socket_to_new_workers(make_service):
    svc = with_workers(make_service, workers=2)
    arbiter = svc.start()
    port = port_of(svc)
    old = answering(port, count=2)
    result = svc.cli("restart")
    assert result.returncode == 0, result.stderr
    assert "its sockets kept" in result.stdout
    new_arbiter = svc.read_pid()
    assert new_arbiter != arbiter and is_gone(arbiter)
    new = answering(port, count=2)  # the same port, bound once by the first start
    assert not set(new.values()) & set(old.values())
    assert all(is_gone(pid) for pid in old.values())
    svc.stop_gracefully(new_arbiter)


def test_a_worker_failing_before_ready_fails_the_start_and_leaves_nothing(make_service):
    body = "if worker_id() == 1:\n    raise ValueError('boom')\n" + SERVER
    svc = with_workers(make_service, workers=3, body=body, wait_ready=True)
    result = svc.cli("start")
    assert result.returncode == 1, result.stdout
    assert "worker 1: ValueError: boom" in result.stderr
    assert wait_for(lambda: svc.daemons() == [], what="every process of the service to end")
    assert not svc.pidfile.exists()


@pytest.mark.linux_only("reads the daemon's children from /proc")
def test_one_worker_is_the_service_as_before(make_service):
    svc = with_workers(make_service, workers=1)
    pid = svc.start()
    seen = answering(port_of(svc), count=1)
    assert seen == {0: pid}  # no arbiter: the daemon is the service, worker 0
    assert children_of(pid) == []
    assert status_json(svc)["supervision"] is None
    svc.stop_gracefully(pid)


def test_without_restart_a_dead_worker_is_not_replaced_and_the_last_ends_it(make_service):
    svc = with_workers(make_service, workers=2)
    arbiter = svc.start()
    pids = answering(port_of(svc), count=2)
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: "not replaced (restart=no)" in svc.log_text(), what="worker 0 left ended")
    workers = status_json(svc)["supervision"]["workers"]
    assert workers[0]["pid"] is None and workers[0]["phase"] == "ended"
    assert workers[1]["pid"] == pids[1]
    os.kill(pids[1], signal.SIGTERM)
    assert wait_for(lambda: is_gone(arbiter), what="the arbiter to end with its last worker")
    assert not svc.pidfile.exists()


def test_a_hung_worker_is_ended_and_replaced_alone(make_service):
    svc = with_workers(
        make_service, workers=2, restart="on-failure", watchdog=1.0, restart_delay=0.1
    )
    arbiter = svc.start()
    before = answering(port_of(svc), count=2)
    (svc.dir / "hang-1").touch()

    def replaced() -> dict[int, int | None] | None:
        now = worker_pids(svc)
        return now if now[1] not in (None, before[1]) else None

    after = wait_for(replaced, timeout=30, what="the hung worker replaced")
    assert after[0] == before[0]
    log = svc.log_text()
    assert f"worker 1 (pid {before[1]}) hung: no heartbeat for 1s; replacing it" in log
    svc.stop_gracefully(arbiter)


def test_no_worker_outlives_a_killed_arbiter(make_service):
    svc = with_workers(make_service, workers=2)
    arbiter = svc.start()
    pids = answering(port_of(svc), count=2)
    os.kill(arbiter, signal.SIGKILL)
    for pid in pids.values():
        assert wait_for(lambda pid=pid: is_gone(pid), what=f"worker {pid} to die with the arbiter")
    assert svc.daemons() == []
    arbiter = svc.start()  # the lock died with it: a start works again
    svc.stop_gracefully(arbiter)


def test_stop_while_a_worker_waits_to_be_replaced(make_service):
    svc = with_workers(make_service, workers=2, restart="on-failure", restart_delay=30)
    arbiter = svc.start()
    pids = answering(port_of(svc), count=2)
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: "replacing it in 30s" in svc.log_text(), what="worker 0 backing off")
    assert status_json(svc)["supervision"]["workers"][0]["phase"] == "backing-off"
    svc.stop_gracefully(arbiter)  # at once: nothing waits for the 30 s
    assert is_gone(pids[1]) and svc.daemons() == []
    assert not svc.pidfile.exists()


def test_reload_reaches_every_worker(make_service):
    svc = with_workers(make_service, workers=3)
    hook = """
@main.on_reload
def reread_config():
    sys.stdout.write(f'reloaded {worker_id()}\\n')
    sys.stdout.flush()
"""
    guard = 'if __name__ == "__main__":'
    svc.script.write_text(svc.script.read_text().replace(guard, hook + "\n" + guard))
    arbiter = svc.start()
    answering(port_of(svc), count=3)
    result = svc.cli("reload")
    assert result.returncode == 0, result.stderr
    assert f"svc reloaded (pid {arbiter})" in result.stdout
    wait_for(
        lambda: all(f"reloaded {n}" in svc.log_text() for n in range(3)),
        what="every worker's on_reload",
    )
    svc.stop_gracefully(arbiter)


def test_run_in_the_foreground_keeps_the_workers_and_tells_the_manager(make_service, tmp_path):
    listener = NotifyListener(str(tmp_path / "notify"))
    svc = with_workers(make_service, workers=2, wait_ready=True, body="ready()\n" + SERVER)
    env = dict(svc.env, NOTIFY_SOCKET=listener.env_value, WATCHDOG_USEC="400000")
    with svc.log.open("w") as log:
        proc = svc.popen("start", env=env, stdout=log, stderr=log)  # start acts as run
    try:
        listener.until("READY=1")
        assert svc.read_pid() == proc.pid  # the arbiter is the manager's main process
        pids = answering(port_of(svc), count=2)
        assert proc.pid not in pids.values()
        assert [w["phase"] for w in status_json(svc)["supervision"]["workers"]] == [
            "running",
            "running",
        ]
        listener.until("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        listener.until("STOPPING=1")
        assert proc.wait(timeout=20) == 0
        assert all(is_gone(pid) for pid in pids.values())
        assert not svc.pidfile.exists()
        assert svc.log_text().count("stopping ") == 2
    finally:
        proc.kill()
        proc.communicate(timeout=10)
        listener.sock.close()


# Each worker loops until told of the stop, and says when it was (drain=: after the drain).
DRAINING = """
sys.stdout.write(f'looping {worker_id()}\\n')
sys.stdout.flush()
while not should_stop():
    sleep(3600)
sys.stdout.write(f'stop heard {worker_id()}\\n')
sys.stdout.flush()
"""


@pytest.mark.scenario(
    "Options", "drain under workers=: a second stop ends every worker's drain", lost="nothing"
)
def test_a_second_stop_ends_every_workers_drain(make_service):
    svc = make_service(body=DRAINING, prelude=PRELUDE, workers=2, drain=30.0, stop_timeout=5.0)
    arbiter = svc.start()
    wait_for(lambda: all(f"looping {n}" in svc.log_text() for n in (0, 1)), what="both loops")
    first = svc.popen("stop")
    wait_for(lambda: svc.log_text().count("draining for 30s") == 2, what="both drains to begin")
    assert "stop heard" not in svc.log_text()
    began = time.monotonic()
    second = svc.cli("stop")
    assert second.returncode == 0, second.stderr
    out, err = first.communicate(timeout=20)
    assert time.monotonic() - began < 20
    assert first.returncode == 0, err
    assert f"{svc.name} stopped (pid {arbiter})" in out
    text = svc.log_text()
    assert "stop heard 0" in text and "stop heard 1" in text, text
    assert "SIGKILL" not in text and "Traceback" not in text, text
    assert svc.daemons() == []


# Ready at once; raises while the file "crash" exists (every worker, and each replacement).
CRASH_WHILE_FILE = """
ready()
while not should_stop():
    if os.path.exists(os.path.join(os.path.dirname(__file__), 'crash')):
        raise RuntimeError('told to crash')
    sleep(0.05)
"""


@pytest.mark.scenario(
    "Faults",
    "health= under workers=: probes while every worker waits to be replaced",
    lost="nothing: the arbiter answers them (/readyz 503 with the last end and the next start, "
    "/livez 200) until a replacement is forked",
)
def test_the_arbiter_answers_probes_while_every_worker_is_down(make_service):
    port = free_port()
    svc = make_service(
        body=CRASH_WHILE_FILE, prelude=PRELUDE, workers=2, wait_ready=True,
        health=f"tcp://127.0.0.1:{port}", restart="on-failure", restart_delay=2,
    )  # fmt: skip
    arbiter = svc.start()
    assert get(port, "/readyz") == (200, "ready\n")
    (svc.dir / "crash").touch()

    def arbiter_answers() -> str | None:
        status, body = get(port, "/readyz", timeout=1)
        return body if status == 503 and body.startswith("restarting: ") else None

    why = wait_for(arbiter_answers, what="the arbiter's 503")
    assert why.startswith("restarting: the service has no worker running (last: worker "), why
    assert "raised RuntimeError: told to crash" in why and "next start in " in why, why
    assert get(port, "/livez") == (200, "alive: the supervisor is restarting the service\n")
    status = json.loads(get(port, "/status")[1])
    assert (status["pid"], status["ready"], status["live"]) == (arbiter, False, True), status
    assert status["supervision"]["phase"] == "running", status
    (svc.dir / "crash").unlink()
    wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), what="a replacement's 200")
    svc.stop_gracefully(arbiter)
    assert svc.daemons() == []


def test_bad_values_are_refused_at_decoration(tmp_path):
    pidfile = str(tmp_path / "x.pid")
    for value, error in ((0, ValueError), (-2, ValueError), ("many", ValueError),
                         (2.0, TypeError), (True, TypeError), (None, TypeError)):  # fmt: skip
        with pytest.raises(error, match="workers must be an int >= 1 or 'auto'"):
            daemon(pidfile=pidfile, workers=value)(lambda: None)
    assert daemon(pidfile=pidfile, workers="auto")(lambda: None).config.workers >= 1


def test_worker_id_is_0_without_workers():
    assert worker_id() == 0
