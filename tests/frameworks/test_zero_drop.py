"""Zero-drop restarts for frameworks: ``ab -c 10`` through back-to-back ``restart``s.

uvicorn (``Server.serve(sockets=listeners())``) and aiohttp (``web.SockSite``
on ``listeners()``), each in an ``async def main`` on ``listen=``.  ``ab``
opens a new connection per request; every restart hands the sockets to a new
instance, which must lose none of them, and every old instance must end on
its SIGTERM (``restart`` says "stopped", not "killed after").

uvicorn is written plainly: its own SIGTERM handler (chained after the
library's) shuts it down; aiohttp's site waits in ``await stopped()``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO, wait_for
from frameworks_helpers import free_port, http_get

sys.path.insert(0, str(REPO / "benchmarks"))
from framework_restart_figures import AIOHTTP, UVICORN  # the programs the figures measure

pytestmark = [pytest.mark.frameworks, pytest.mark.timeout(240)]
QUIESCE = pytest.mark.linux_only(
    "the quiesce reads the process's descriptors and epoll sets off /proc"
)

RESTARTS = 20

BLOCKING = """\
from daemonize_deco import listeners

def serve_one(conn):
    with conn:
        conn.settimeout(10)
        data = b""
        while b"\\r\\n\\r\\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        body = b"ok"
        conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))

def serve():
    (sock,) = listeners()

    def accept_forever():
        while True:
            conn, _ = sock.accept()  # blocking: no timeout, no selector
            # Not a daemon thread: the interpreter waits for a request in flight at exit.
            threading.Thread(target=serve_one, args=(conn,)).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    ready()
    while not should_stop():
        sleep(3600)
"""

# The same, finishing up for 3 s once it saw its stop: the new instance serves meanwhile.
BLOCKING_SLOW_EXIT = BLOCKING.replace('b"ok"', "str(os.getpid()).encode()") + (
    "    print('stopping', flush=True)\n    time.sleep(3)\n"
)


def _figure(output: str, label: str) -> int:
    found = re.search(rf"^{label}:\s+(\d+)", output, re.MULTILINE)
    return int(found.group(1)) if found else 0  # ab leaves out a line that would say 0


def _connections_served(port: int) -> bool:
    """Connections to the port that ended (TIME-WAIT): the load is flowing."""
    ss = ["ss", "-Htn", "state", "time-wait", f"( sport = :{port} )"]
    return bool(subprocess.run(ss, capture_output=True, text=True).stdout.strip())


@pytest.mark.scenario(
    "Load",
    "ab -c 10 through back-to-back listen= restarts (uvicorn, aiohttp)",
    lost="nothing: 0 failed requests, 0 non-2xx, every old instance ends on SIGTERM",
)
@pytest.mark.parametrize("prelude", [UVICORN, AIOHTTP], ids=["uvicorn", "aiohttp"])
@QUIESCE
def test_restarts_under_load_lose_no_request(make_service, prelude):
    _restart_under_load(make_service, "return serve()", prelude, RESTARTS)


@pytest.mark.scenario(
    "Load",
    "listen= restarts under ab -c 10 with 1,000 descriptors open (uvicorn, aiohttp)",
    lost="nothing: the quiesce looks through every descriptor in time",
)
@pytest.mark.parametrize("prelude", [UVICORN, AIOHTTP], ids=["uvicorn", "aiohttp"])
@QUIESCE
def test_restarts_with_a_thousand_descriptors(make_service, prelude):
    held = "\nimport socket as _socket\n_HELD = [_socket.socketpair() for _ in range(500)]\n"
    _restart_under_load(make_service, "return serve()", prelude + held, 10)


@pytest.mark.scenario(
    "Load",
    "listen= restarts under ab -c 10: a plain loop with a thread blocked in accept()",
    lost="nothing: the blocked accept() is woken onto the quiet socket",
)
@QUIESCE
def test_restarts_of_a_blocking_accept_loop(make_service):
    _restart_under_load(make_service, "serve()", BLOCKING, 10, wait_ready=True)


def _restart_under_load(
    make_service,
    body: str,
    prelude: str,
    restarts: int,
    *,
    blocked_in_accept: bool = False,
    **options: object,
) -> None:
    port = free_port()
    svc = make_service(
        body,
        prelude=prelude,
        listen=[f"tcp://127.0.0.1:{port}"],
        **{"stop_timeout": 10.0, **options},
    )
    svc.start()
    assert wait_for(lambda: _http_ok(port), what="the first answer")
    load = subprocess.Popen(
        ["ab", "-q", "-r", "-c", "10", "-t", "200", "-n", "10000000", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _connections_served(port), what="ab's first requests")
        said = [svc.cli("restart", timeout=60) for _ in range(restarts)]
    finally:
        load.send_signal(signal.SIGINT)  # ab prints what it counted so far
        report, errors = load.communicate(timeout=30)
    for result in said:
        assert result.returncode == 0, result.stderr
        assert re.search(r"pid \d+ stopped, its sockets kept", result.stdout), result.stdout
    assert _figure(report, "Complete requests") > 0, report + errors
    failed, non_2xx = _figure(report, "Failed requests"), _figure(report, "Non-2xx responses")
    assert (failed, non_2xx) == (0, 0), report
    if blocked_in_accept:
        _stop_between_two_accepts(svc, port)
    else:
        svc.stop_gracefully(svc.read_pid())


def _stop_between_two_accepts(svc, port: int) -> None:
    """stop a main that sees its stop only between two accept()s: connect until it is gone."""
    pid = svc.read_pid()
    stopping = svc.popen("stop")

    def stopped_after_a_request() -> bool:
        _http_ok(port)  # answered, main looks at should_stop() again
        return stopping.poll() is not None

    wait_for(stopped_after_a_request, what="the stop")
    out, err = stopping.communicate(timeout=30)
    assert f"stopped (pid {pid})" in out, out + err


@pytest.mark.scenario(
    "Load",
    "listen= restart of a plain loop whose thread waits in accept(); requests after its stop",
    lost="nothing: every connection made after the old instance saw its stop is the new one's",
)
@QUIESCE
def test_a_blocked_accept_takes_nothing_after_the_quiesce(make_service):
    port = free_port()
    svc = make_service(
        "serve()", prelude=BLOCKING_SLOW_EXIT, listen=[f"tcp://127.0.0.1:{port}"],
        wait_ready=True, stop_timeout=10.0,
    )  # fmt: skip
    old = svc.start()
    assert wait_for(lambda: _http_ok(port), what="the first answer")
    restart = svc.popen("restart")
    wait_for(lambda: "stopping" in svc.log_text(), what="the old instance's stop")
    answers = [http_get(port, timeout=10) for _ in range(10)]
    _, err = restart.communicate(timeout=60)
    assert restart.returncode == 0, err
    # Before the wake, the old instance's accept() took the first one (and, exiting, would drop it).
    assert [body for _, body in answers if body == str(old)] == [], answers
    assert all(status == 200 for status, _ in answers), answers
    svc.stop_gracefully(svc.read_pid())


def _http_ok(port: int) -> bool:
    try:
        return http_get(port, timeout=5)[0] == 200
    except OSError:
        return False


# README's own shape: main's thread accepts and serves, one connection at a time.
MAIN_LOOP = (
    BLOCKING.partition("def serve():")[0]
    + """\
def serve():
    (sock,) = listeners()
    ready()
    while not should_stop():
        conn, _ = sock.accept()  # blocking, in main's own thread
        time.sleep(0.02)  # the work: under load, the quiesce finds it here, not in accept()
        serve_one(conn)
"""
)


@pytest.mark.scenario(
    "Load",
    "listen= restarts under ab -c 10: main's own loop accepts, blocking, and serves",
    lost="nothing: each old instance ends on its SIGTERM, as it did before the quiesce",
)
def test_restarts_of_a_main_that_accepts_in_its_own_loop(make_service):
    # Its next accept() after the quiesce was on the quiet socket, which no
    # connection ever reaches: SIGTERM could not end it, SIGKILL after stop_timeout.
    _restart_under_load(
        make_service,
        "serve()",
        MAIN_LOOP,
        5,
        blocked_in_accept=True,
        wait_ready=True,
        stop_timeout=4.0,
    )
