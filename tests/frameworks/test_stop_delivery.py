"""A stop reaches a main blocked in someone else's loop, and frameworks that take the signals over.

Each service is the framework's plain entry point as a user writes it
first; a request (or job) of 2 s is in flight when ``stop`` or ``restart``
comes.  It must get its whole answer (the job must finish), the command
must return well within ``stop_timeout`` with no SIGKILL, and the run must
read "stopped by SIGTERM".
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import Service, is_gone, wait_for
from frameworks_helpers import Request, accepts, free_port, http_get

pytestmark = [pytest.mark.frameworks, pytest.mark.timeout(120)]

STOP_TIMEOUT = 20.0
WELL_WITHIN = 12.0  # a 2-s request and a graceful shutdown, on a loaded machine

WSGI_APP = """
def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        print("request started", flush=True)
        time.sleep(2)
        print("request finished", flush=True)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
"""

ASGI_APP = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        print("request started", flush=True)
        await asyncio.sleep(2)
        print("request finished", flush=True)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"done"})
"""

AIOHTTP_APP = """
import asyncio
from aiohttp import web

async def slow(request):
    print("request started", flush=True)
    await asyncio.sleep(2)
    print("request finished", flush=True)
    return web.Response(text="done")

async def fast(request):
    return web.Response(text="done")

app = web.Application()
app.add_routes([web.get("/slow", slow), web.get("/", fast)])
"""

HANDLER = """
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            print("request started", flush=True)
            time.sleep(2)
            print("request finished", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"done")
"""

GUNICORN_APP = (
    WSGI_APP
    + """
from gunicorn.app.base import BaseApplication

class Server(BaseApplication):
    def __init__(self, app, options):
        self.application, self.options = app, options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.application
"""
)

FLASK_APP = """
from flask import Flask

app = Flask(__name__)

@app.get("/slow")
def slow():
    print("request started", flush=True)
    time.sleep(2)
    print("request finished", flush=True)
    return "done"

@app.get("/")
def fast():
    return "done"
"""

SCHEDULER = """
from apscheduler.schedulers.blocking import BlockingScheduler

def job():
    print("job started", flush=True)
    time.sleep(2)
    print("job finished", flush=True)
"""

# name -> (prelude, main's body); PORT is filled in.
SERVERS = {
    "waitress": (WSGI_APP + "import waitress\n", "waitress.serve(app, port=PORT, threads=4)"),
    "wsgiref": (
        WSGI_APP + "from wsgiref.simple_server import make_server\n",
        "make_server('127.0.0.1', PORT, app).serve_forever()",
    ),
    "ThreadingHTTPServer": (
        HANDLER,
        "ThreadingHTTPServer(('127.0.0.1', PORT), Handler).serve_forever()",
    ),
    "uvicorn.run": (ASGI_APP + "import uvicorn\n", "uvicorn.run(app, port=PORT)"),
    "aiohttp run_app": (AIOHTTP_APP, "web.run_app(app, port=PORT)"),
    "flask app.run": (FLASK_APP, "app.run(port=PORT)"),
    "gunicorn": (
        GUNICORN_APP,
        "Server(app, {'bind': '127.0.0.1:PORT', 'workers': 1}).run()",
    ),
}


def _with_hooks(svc: Service, hooks: str) -> None:
    """Add hook registrations after main (``@main.on_stop`` ...)."""
    script = svc.script.read_text()
    svc.script.write_text(
        script.replace('if __name__ == "__main__":', hooks + "\n\n" + 'if __name__ == "__main__":')
    )


ON_STOP = """
@main.on_stop
def said_stop():
    print("on_stop ran", flush=True)
"""


def _service(make_service, name: str, prelude: str, body: str, port: int) -> Service:
    svc = make_service(
        body=body.replace("PORT", str(port)),
        prelude=prelude,
        name="svc",
        stop_timeout=STOP_TIMEOUT,
    )
    _with_hooks(svc, ON_STOP)
    return svc


def _slow_request_in_flight(svc: Service, port: int, count: int = 1) -> Request:
    request = Request(port, "/slow")
    wait_for(
        lambda: svc.log_text().count("request started") >= count,
        timeout=15,
        what="the request to start",
    )
    return request


def _timed(svc: Service, command: str) -> tuple[str, float]:
    began = time.monotonic()
    result = svc.cli(command, timeout=STOP_TIMEOUT + 15)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, elapsed


def _during_a_request(
    make_service, server: str, command: str
) -> tuple[Service, int, int, Request, str, float]:
    """Start ``server``, put a 2-s request in flight, run ``command``: what is needed to judge."""
    port = free_port()
    svc = _service(make_service, server, *SERVERS[server], port)
    pid = svc.start()
    wait_for(lambda: accepts(port), timeout=15, what="the server to listen")
    request = _slow_request_in_flight(svc, port)
    output, elapsed = _timed(svc, command)
    return svc, port, pid, request, output, elapsed


def _stopped_by_sigterm(svc: Service, pid: int) -> None:
    status = svc.cli("status")
    assert status.returncode == 3, status.stdout
    assert f"pid {pid} stopped by SIGTERM and exited with status 0" in status.stdout, status.stdout


@pytest.mark.scenario(
    "Promises under pressure",
    "stop of a plain framework server during a request",
    lost="nothing: the request in flight gets its whole answer, no SIGKILL",
)
@pytest.mark.parametrize("server", list(SERVERS))
def test_stop_during_a_request_answers_it_and_stops(make_service, server: str) -> None:
    svc, _, pid, request, output, elapsed = _during_a_request(make_service, server, "stop")
    assert f"svc stopped (pid {pid})" in output, output
    assert elapsed < WELL_WITHIN, f"stop took {elapsed:.1f}s"
    assert request.result() == (200, "done")
    assert is_gone(pid)
    _stopped_by_sigterm(svc, pid)
    log = svc.log_text()
    assert "request finished" in log, log
    assert "on_stop ran" in log, log
    assert "Traceback" not in log, log
    assert log.count("daemonize_deco: stop delivered to main: ") == 1, log


@pytest.mark.scenario(
    "Promises under pressure",
    "restart of a plain framework server during a request",
    lost="nothing: the request in flight gets its whole answer, no SIGKILL",
)
@pytest.mark.parametrize("server", list(SERVERS))
def test_restart_during_a_request_answers_it_and_serves_again(make_service, server: str) -> None:
    svc, port, pid, request, output, elapsed = _during_a_request(make_service, server, "restart")
    assert f"svc stopped (pid {pid})" in output, output
    assert elapsed < WELL_WITHIN + 5, f"restart took {elapsed:.1f}s"
    assert request.result() == (200, "done")
    assert is_gone(pid)
    log = svc.log_text()
    assert "on_stop ran" in log, log
    assert log.count("daemonize_deco: stop delivered to main: ") == 1, log
    new_pid = svc.read_pid()
    assert new_pid is not None and new_pid != pid
    wait_for(lambda: accepts(port), timeout=15, what="the new instance to listen")
    second = _slow_request_in_flight(svc, port, count=2)
    svc.stop_gracefully(new_pid)
    assert second.result() == (200, "done")
    _stopped_by_sigterm(svc, new_pid)


@pytest.mark.scenario(
    "asyncio",
    "stop or restart of uvicorn's Server.serve() in an async main during a request",
    lost="nothing: the request in flight gets its whole answer, no SIGKILL",
)
@pytest.mark.parametrize("command", ["stop", "restart"])
def test_uvicorn_server_serve_in_async_main(make_service, command: str) -> None:
    port = free_port()
    svc = make_service(
        prelude=ASGI_APP + "import uvicorn\n",
        body=(
            "async def serve():\n"
            f"    await uvicorn.Server(uvicorn.Config(app, port={port})).serve()\n"
            "return serve()"
        ),
        stop_timeout=STOP_TIMEOUT,
    )
    pid = svc.start()
    wait_for(lambda: accepts(port), timeout=15, what="the server to listen")
    request = _slow_request_in_flight(svc, port)
    output, elapsed = _timed(svc, command)
    assert f"svc stopped (pid {pid})" in output, output
    assert elapsed < WELL_WITHIN + 5, f"{command} took {elapsed:.1f}s"
    assert request.result() == (200, "done")
    assert is_gone(pid)
    assert "stop delivered to main: the service's own handler (uvicorn." in svc.log_text()
    if command == "restart":
        new_pid = svc.read_pid()
        assert new_pid is not None and new_pid != pid
        wait_for(lambda: accepts(port), timeout=15, what="the new instance to listen")
        second = _slow_request_in_flight(svc, port, count=2)
        svc.stop_gracefully(new_pid)
        assert second.result() == (200, "done")
        pid = new_pid
    _stopped_by_sigterm(svc, pid)


BUILDS_THEN_SERVES = """
from wsgiref.simple_server import make_server

def build():
    print("building", flush=True)
    busy_until = time.monotonic() + 3
    while time.monotonic() < busy_until:  # the service's own code, setting up
        pass
    print("built", flush=True)
    return make_server("127.0.0.1", PORT, app)
"""


@pytest.mark.scenario(
    "Promises under pressure",
    "stop while main still sets up, in its own code, before it calls the server's loop",
    lost="nothing: the stop is delivered once main waits in serve_forever(), no SIGKILL",
)
def test_a_stop_before_main_reaches_the_loop_is_delivered_there(make_service) -> None:
    port = free_port()
    svc = make_service(
        body="build().serve_forever()",
        prelude=WSGI_APP + BUILDS_THEN_SERVES.replace("PORT", str(port)),
        name="svc",
        start_grace=0.1,
        stop_timeout=STOP_TIMEOUT,
    )
    pid = svc.start()
    wait_for(lambda: "building" in svc.log_text(), what="main's setup")
    assert "built" not in svc.log_text()  # the stop comes while main runs its own code
    output, elapsed = _timed(svc, "stop")
    assert f"svc stopped (pid {pid})" in output, output
    assert elapsed < WELL_WITHIN, f"stop took {elapsed:.1f}s"
    log = svc.log_text()
    assert "built" in log, log  # its own code was not interrupted
    assert "stop delivered to main: KeyboardInterrupt in main's thread" in log, log
    _stopped_by_sigterm(svc, pid)


@pytest.mark.scenario(
    "asyncio",
    "stop of an async main that never asks",
    lost="nothing: its task is cancelled as asyncio.run does on Ctrl-C; its finally runs",
)
def test_an_async_main_that_never_asks_is_cancelled(make_service) -> None:
    svc = make_service(
        prelude="import asyncio\n",
        body=(
            "async def wait():\n"
            "    try:\n"
            "        await asyncio.Event().wait()\n"
            "    finally:\n"
            "        print('cleaned up', flush=True)\n"
            "return wait()"
        ),
        stop_timeout=STOP_TIMEOUT,
    )
    pid = svc.start()
    output, elapsed = _timed(svc, "stop")
    assert f"svc stopped (pid {pid})" in output, output
    assert elapsed < WELL_WITHIN, f"stop took {elapsed:.1f}s"
    log = svc.log_text()
    assert "stop delivered to main: main's task cancelled" in log, log
    assert "cleaned up" in log, log
    assert "Traceback" not in log, log
    _stopped_by_sigterm(svc, pid)


@pytest.mark.scenario(
    "Promises under pressure",
    "stop of APScheduler's BlockingScheduler during a job",
    lost="nothing: the job in flight finishes, no SIGKILL",
)
@pytest.mark.parametrize("command", ["stop", "restart"])
def test_blocking_scheduler_finishes_its_job_on_stop(make_service, command: str) -> None:
    svc = make_service(
        prelude=SCHEDULER,
        body=(
            "scheduler = BlockingScheduler()\n"
            "scheduler.add_job(job, 'interval', seconds=1)\n"
            "scheduler.start()"
        ),
        stop_timeout=STOP_TIMEOUT,
    )
    pid = svc.start()
    wait_for(lambda: "job started" in svc.log_text(), timeout=15, what="a job to start")
    output, elapsed = _timed(svc, command)
    assert f"svc stopped (pid {pid})" in output, output
    assert elapsed < WELL_WITHIN, f"{command} took {elapsed:.1f}s"
    assert is_gone(pid)
    if command == "restart":
        new_pid = svc.read_pid()
        assert new_pid is not None and new_pid != pid
        svc.stop_gracefully(new_pid)
        pid = new_pid
    log = svc.log_text()
    assert log.count("job started") == log.count("job finished"), log
    _stopped_by_sigterm(svc, pid)


AIOHTTP_HOOKS = """
@main.on_stop
def said_stop():
    print("on_stop ran", flush=True)

@main.on_reload
def said_reload():
    print("on_reload ran", flush=True)
"""


@pytest.mark.scenario(
    "Promises under pressure",
    "aiohttp's run_app takes SIGTERM over",
    lost="nothing: on_stop runs, should_stop() is True, reload works, the run reads SIGTERM",
)
def test_a_framework_that_takes_the_signals_over_still_stops_the_service(make_service) -> None:
    port = free_port()
    svc = make_service(
        prelude=AIOHTTP_APP,
        body=f"web.run_app(app, port={port})\nprint('should_stop', should_stop(), flush=True)",
        stop_timeout=STOP_TIMEOUT,
    )
    _with_hooks(svc, AIOHTTP_HOOKS)
    pid = svc.start()
    wait_for(lambda: accepts(port), timeout=15, what="the server to listen")
    reload = svc.cli("reload")
    assert reload.returncode == 0, reload.stderr
    assert "on_reload ran" in svc.log_text()
    request = _slow_request_in_flight(svc, port)
    svc.stop_gracefully(pid)
    assert request.result() == (200, "done")
    log = svc.log_text()
    assert "on_stop ran" in log, log
    assert "should_stop True" in log, log
    assert "stop delivered to main: the service's own handler" in log, log
    _stopped_by_sigterm(svc, pid)


# Servers whose own signal handler is chained (uvicorn's, gunicorn's arbiter), and
# aiohttp told to set none.
DRAINED_MAINS = {
    "uvicorn.run": (ASGI_APP + "import uvicorn\n", "uvicorn.run(app, port=PORT, loop='asyncio')"),
    "Server.serve": (
        ASGI_APP + "import uvicorn\n",
        "async def serve():\n"
        "    await uvicorn.Server(uvicorn.Config(app, port=PORT)).serve()\n"
        "return serve()",
    ),
    "uvicorn.run uvloop": (
        ASGI_APP + "import uvicorn\n",
        "uvicorn.run(app, port=PORT, loop='uvloop')",
    ),
    "gunicorn": SERVERS["gunicorn"],
    "run_app handle_signals=False": (
        AIOHTTP_APP,
        "web.run_app(app, port=PORT, handle_signals=False)",
    ),
}


@pytest.mark.scenario(
    "Options",
    "drain=2 with uvicorn, gunicorn (their own handlers chained), run_app(handle_signals=False)",
    lost="nothing: a new request 1 s after SIGTERM is answered, /readyz is 503, exit 0",
)
@pytest.mark.parametrize("main", list(DRAINED_MAINS))
def test_a_framework_serves_on_through_a_drain(make_service, main: str) -> None:
    if "uvloop" in main:
        pytest.importorskip("uvloop")  # uvicorn[standard]'s default loop; not in the extras
    port, health = free_port(), free_port()
    prelude, body = DRAINED_MAINS[main]
    svc = make_service(
        prelude=prelude,
        body=body.replace("PORT", str(port)),
        drain=2.0,
        health=f"tcp://127.0.0.1:{health}",
        stop_timeout=STOP_TIMEOUT,
    )
    pid = svc.start()
    wait_for(lambda: accepts(port), timeout=15, what="the server to listen")
    sent = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: "draining for 2s" in svc.log_text(), what="the drain to begin")
    assert http_get(health, "/readyz")[0] == 503
    wait_for(lambda: time.monotonic() - sent >= 1.0, what="a second into the drain")
    assert http_get(port, "/") == (200, "done")
    assert time.monotonic() - sent < 2.0, "the request came after the drain: nothing shown"
    wait_for(lambda: is_gone(pid), timeout=STOP_TIMEOUT, what="the service to stop")
    log = svc.log_text()
    assert "stop delivered to main: " in log, log
    assert "Traceback" not in log, log
    _stopped_by_sigterm(svc, pid)


def test_ctrl_c_twice_ends_uvicorns_drain_gracefully(make_service) -> None:
    """The second Ctrl-C ends the drain; uvicorn hears one Ctrl-C: no forced quit."""
    port = free_port()
    svc = make_service(
        prelude=ASGI_APP + "import uvicorn\n",
        body=f"uvicorn.run(app, port={port})",
        drain=30.0,
        stop_timeout=STOP_TIMEOUT,
    )
    with svc.log.open("a") as log:  # run leaves the streams as they are: the log is ours
        run = svc.popen("run", stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: accepts(port), timeout=15, what="the server to listen")
    # Ready (the start grace over): a stop before ready has nothing to drain.
    wait_for(lambda: svc.cli("health", "--ready").returncode == 0, what="the service to be ready")
    request = _slow_request_in_flight(svc, port)
    run.send_signal(signal.SIGINT)
    wait_for(lambda: "draining for 30s" in svc.log_text(), what="the drain to begin")
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=STOP_TIMEOUT) == 0, svc.log_text()
    assert request.result() == (200, "done")
    assert "Traceback" not in svc.log_text()


@pytest.mark.scenario(
    "Promises under pressure",
    "Ctrl-C on uvicorn.run in the foreground",
    lost="nothing: one Ctrl-C is a graceful stop, not a second one that exits at once",
)
def test_one_ctrl_c_stops_uvicorn_in_the_foreground_gracefully(make_service) -> None:
    port = free_port()
    svc = make_service(
        prelude=ASGI_APP + "import uvicorn\n",
        body=f"uvicorn.run(app, port={port})",
        stop_timeout=STOP_TIMEOUT,
    )
    with svc.log.open("a") as log:  # run leaves the streams as they are: the log is ours
        run = svc.popen("run", stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: accepts(port), timeout=15, what="the server to listen")
    request = _slow_request_in_flight(svc, port)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=STOP_TIMEOUT) == 0
    assert request.result() == (200, "done")
    status = svc.cli("status")
    assert status.returncode == 3, status.stdout
    assert f"pid {run.pid} stopped by SIGINT and exited with status 0" in status.stdout


def test_on_stop_that_ends_serve_forever_is_not_interrupted(make_service) -> None:
    # The README's pattern: on_stop calls server.shutdown(); main's own
    # lines after serve_forever() must run, with no KeyboardInterrupt.
    port = free_port()
    svc = make_service(
        prelude=HANDLER + "server = None\n",
        body=(
            "global server\n"
            f"server = ThreadingHTTPServer(('127.0.0.1', {port}), Handler)\n"
            "server.serve_forever()\n"
            "time.sleep(0.5)\n"
            "print('cleaned up', flush=True)"
        ),
        stop_timeout=STOP_TIMEOUT,
    )
    _with_hooks(svc, "@main.on_stop\ndef end():\n    server.shutdown()")
    pid = svc.start()
    wait_for(lambda: accepts(port), timeout=15, what="the server to listen")
    svc.stop_gracefully(pid)
    log = svc.log_text()
    assert "cleaned up" in log, log
    assert "stop delivered" not in log, log
    _stopped_by_sigterm(svc, pid)


@pytest.mark.scenario(
    "Options",
    "stop_main='interrupt' for a main that asked once, then blocks",
    lost="nothing: it gets KeyboardInterrupt as on Ctrl-C and stops",
)
def test_stop_main_interrupt_reaches_a_main_that_asked(make_service) -> None:
    svc = make_service(
        body="should_stop()\nthreading.Event().wait()",
        stop_main="interrupt",
        stop_timeout=STOP_TIMEOUT,
    )
    pid = svc.start()
    output, elapsed = _timed(svc, "stop")
    assert f"svc stopped (pid {pid})" in output, output
    assert elapsed < WELL_WITHIN
    assert "stop delivered to main: KeyboardInterrupt" in svc.log_text()
    assert "stop_main='interrupt'" in svc.log_text()
    _stopped_by_sigterm(svc, pid)


@pytest.mark.scenario(
    "Options",
    "stop_main='flag' for a main that never asks",
    lost="the main is killed at stop_timeout, as before: the flag only",
)
def test_stop_main_flag_keeps_the_flag_only(make_service) -> None:
    svc = make_service(body="threading.Event().wait()", stop_main="flag", stop_timeout=1.0)
    pid = svc.start()
    result = svc.cli("stop")
    assert "killed" in result.stdout + result.stderr, result.stdout + result.stderr
    assert is_gone(pid)
    assert "stop delivered" not in svc.log_text()


@pytest.mark.parametrize("value", ["'sometimes'", "None", "True"])
def test_a_bad_stop_main_is_refused_at_import(make_service, value: str) -> None:
    svc = make_service()
    script = svc.script.read_text().replace("@daemon(", f"@daemon(stop_main={value}, ", 1)
    svc.script.write_text(script)
    result = svc.cli("status")
    assert result.returncode != 0
    assert "stop_main must be one of 'auto', 'flag', 'interrupt', not" in result.stderr


@pytest.mark.scenario(
    "Promises under pressure",
    "Ctrl-C on waitress.serve in the foreground",
    lost="nothing: one Ctrl-C answers the request in flight and exits 0",
)
def test_one_ctrl_c_stops_waitress_in_the_foreground_gracefully(make_service) -> None:
    port = free_port()
    prelude, body = SERVERS["waitress"]
    svc = make_service(
        prelude=prelude, body=body.replace("PORT", str(port)), stop_timeout=STOP_TIMEOUT
    )
    with svc.log.open("a") as log:
        run = svc.popen("run", stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: accepts(port), timeout=15, what="the server to listen")
    request = _slow_request_in_flight(svc, port)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=STOP_TIMEOUT) == 0
    assert request.result() == (200, "done")
    log_text = svc.log_text()
    assert "stop delivered to main: KeyboardInterrupt" in log_text, log_text
    status = svc.cli("status")
    assert f"pid {run.pid} stopped by SIGINT and exited with status 0" in status.stdout
