"""The watchdog and servers that never call should_stop() or sleep().

An ``async def main`` awaiting uvicorn's ``Server.serve()`` or aiohttp's
site beats from its event loop: idle, it is never taken for hung; a handler
that blocks the loop (``time.sleep(10)`` in an ``async`` route) is.  A sync
main blocked in a server of its own never beats: its watchdog is not armed
(one line in the log says so) until something beats.
"""

from __future__ import annotations

import re
import time

import pytest
from conftest import is_gone, wait_for
from frameworks_helpers import Request, accepts, free_port, http_get
from test_supervisor import service_pid

pytestmark = [pytest.mark.frameworks, pytest.mark.timeout(120)]

WATCHDOG = 3.0
WAYS = pytest.mark.parametrize("supervised", [True, False], ids=["supervised", "unsupervised"])

# A bare ASGI app: "/" answers at once, "/block" blocks the event loop for 10 s.
ASGI_APP = """
import asyncio
import uvicorn

async def app(scope, receive, send):
    if scope['path'] == '/block':
        print('blocking', flush=True)
        time.sleep(10)
    await send({{'type': 'http.response.start', 'status': 200, 'headers': []}})
    await send({{'type': 'http.response.body', 'body': b'ok'}})

PORT = {port}
"""

UVICORN_SERVE = """
config = uvicorn.Config(app, host='127.0.0.1', port=PORT, lifespan='off', log_level='warning')
await uvicorn.Server(config).serve()
"""

AIOHTTP_APP = """
import asyncio
from aiohttp import web

async def hello(request):
    return web.Response(text='ok')

PORT = {port}
"""

AIOHTTP_SITE = """
app = web.Application()
app.router.add_get('/', hello)
runner = web.AppRunner(app)
await runner.setup()
await web.TCPSite(runner, '127.0.0.1', PORT).start()
await asyncio.Event().wait()
"""

# A sync main blocked in the stdlib's server: nothing ever beats.
SYNC_SERVER = """
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'ok')

PORT = {port}
"""

SERVE_FOREVER = """
ThreadingHTTPServer(('127.0.0.1', PORT), Hello).serve_forever()
"""

# README's recipe: a thread that asks the server itself beats while it answers.
# The server is single-threaded: "/block" holds it, as a hung server would be.
SYNC_SERVER_WITH_A_PROBE = """
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from daemonize_deco import heartbeat

class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == '/block':
            print('blocking', flush=True)
            time.sleep(30)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'ok')

def beat_while_it_answers(url, every):
    while True:
        try:
            urllib.request.urlopen(url, timeout=every).close()
            heartbeat()
        except OSError:
            pass
        time.sleep(every)

PORT = {port}
"""

PROBE_AND_SERVE = """
threading.Thread(
    target=beat_while_it_answers, args=(f'http://127.0.0.1:{PORT}/', 1), daemon=True
).start()
HTTPServer(('127.0.0.1', PORT), Hello).serve_forever()
"""


def make(make_service, prelude: str, body: str, *, supervised: bool, asynchronous: bool = True):
    port = free_port()
    options: dict[str, object] = {"watchdog": WATCHDOG, "stop_timeout": 5.0}
    if supervised:
        options.update(restart="on-failure", restart_delay=0)
    svc = make_service(body, prelude=prelude.format(port=port), **options)
    if asynchronous:
        svc.script.write_text(svc.script.read_text().replace("def main():", "async def main():"))
    return svc, port


def the_service(svc, supervised: bool, started: int) -> int:
    """The pid that runs main: the supervisor's child, or the daemon itself."""
    return service_pid(svc) if supervised else started


def answers_for(port: int, seconds: float) -> list[int]:
    """GET / every half second for ``seconds``; the statuses (0: no answer)."""
    statuses = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            statuses.append(http_get(port, timeout=10)[0])
        except OSError:
            statuses.append(0)
        time.sleep(0.5)  # pacing the client, not synchronising with the service
    return statuses


def stop(svc, started: int) -> None:
    """The stop ends it (the supervisor and its service, or the daemon)."""
    result = svc.cli("stop")
    assert result.returncode == 0, result.stderr
    assert is_gone(started)


def stays_up_idle(svc, port: int, pid: int, periods: int = 4) -> None:
    """Watchdog periods with a request now and then: same pid, every answer 200."""
    assert wait_for(lambda: accepts(port), timeout=20, what="the server to listen")
    statuses = answers_for(port, periods * WATCHDOG + 1)
    log = svc.log_text()
    assert set(statuses) == {200}, (statuses, log)
    assert not is_gone(pid), log
    assert "hung" not in log, log
    assert "Fatal Python error" not in log, log


@pytest.mark.scenario(
    "asyncio",
    "an idle uvicorn Server.serve() or aiohttp AppRunner/TCPSite in async main (watchdog=3), "
    "supervised or not",
    lost="nothing: its event loop beats, the server lives on and answers",
)
@pytest.mark.parametrize(
    ("app", "serve"),
    [(ASGI_APP, UVICORN_SERVE), (AIOHTTP_APP, AIOHTTP_SITE)],
    ids=["uvicorn", "aiohttp"],
)
@WAYS
def test_an_idle_server_is_not_hung(make_service, app, serve, supervised):
    svc, port = make(make_service, app, serve, supervised=supervised)
    started = svc.start()
    pid = the_service(svc, supervised, started)
    stays_up_idle(svc, port, pid)
    if supervised:
        assert service_pid(svc) == pid
    stop(svc, started)


@pytest.mark.scenario(
    "asyncio",
    "an idle uvicorn server, then an async route blocks its loop with time.sleep(10) (watchdog=3)",
    lost="the blocked request; seen before the sleep ends, stacks in the log, restarted",
)
@WAYS
def test_a_route_blocking_the_event_loop_is_hung(make_service, supervised):
    svc, port = make(make_service, ASGI_APP, UVICORN_SERVE, supervised=supervised)
    started = svc.start()
    pid = the_service(svc, supervised, started)
    stays_up_idle(svc, port, pid, periods=2)  # its loop beats: nothing was hung so far
    asked = time.monotonic()
    blocked = Request(port, "/block")
    wait_for(lambda: "blocking" in svc.log_text(), what="the route to block the loop")
    assert wait_for(lambda: is_gone(pid), timeout=20, what="the watchdog to end it")
    # Seen while the route still slept: a loop that had come back would have beaten.
    assert time.monotonic() - asked < 10
    log = svc.log_text()
    assert f"main made no progress for {WATCHDOG:g}s (pid {pid}): hung" in log, log
    assert re.search(r"line \d+ in app", log), log  # faulthandler's stack of the route
    with pytest.raises(ConnectionError):
        blocked.result()
    if supervised:
        second = service_pid(svc, other_than=pid)
        assert wait_for(lambda: accepts(port), timeout=20, what="the restarted server")
        assert http_get(port) == (200, "ok")
        assert "hung: no heartbeat for 3s" in svc.cli("status").stdout
        assert not is_gone(second)
        stop(svc, started)


@pytest.mark.scenario(
    "Options",
    "watchdog=3 on a sync main blocked in serve_forever(), which never beats",
    lost="nothing: the watchdog is not armed (one log line says so), the server lives on",
)
@WAYS
def test_a_sync_server_that_never_beats_is_not_taken_for_hung(make_service, supervised):
    svc, port = make(
        make_service, SYNC_SERVER, SERVE_FOREVER, supervised=supervised, asynchronous=False
    )
    started = svc.start()
    pid = the_service(svc, supervised, started)
    stays_up_idle(svc, port, pid)
    log = svc.log_text()
    line = f"watchdog=3 not armed: nothing beat in the 3s since main began (pid {pid})"
    assert log.count(line) == 1, log
    stop(svc, started)


@pytest.mark.scenario(
    "Options",
    "README's probe thread for a sync server (watchdog=3): idle, then a request holds it",
    lost="the held request; the probe's beats keep it alive idle, their end is a hang",
)
def test_a_probe_thread_beats_for_a_sync_server_while_it_answers(make_service):
    svc, port = make(
        make_service, SYNC_SERVER_WITH_A_PROBE, PROBE_AND_SERVE, supervised=True, asynchronous=False
    )
    started = svc.start()
    pid = the_service(svc, True, started)
    stays_up_idle(svc, port, pid)
    assert "not armed" not in svc.log_text()
    blocked = Request(port, "/block")
    wait_for(lambda: "blocking" in svc.log_text(), what="the request to hold the server")
    second = service_pid(svc, other_than=pid)
    log = svc.log_text()
    assert f"main made no progress for {WATCHDOG:g}s (pid {pid}): hung" in log, log
    assert re.search(r"line \d+ in do_GET", log), log
    with pytest.raises(ConnectionError):
        blocked.result()
    assert wait_for(lambda: accepts(port), timeout=20, what="the restarted server")
    assert http_get(port) == (200, "ok")
    assert not is_gone(second)
    stop(svc, started)
