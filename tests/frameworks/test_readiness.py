"""Readiness for servers: ``start`` returns once uvicorn or aiohttp accepts connections,
and a start that fails says why (the errno text), however the framework exits."""

from __future__ import annotations

import os
import socket
import time

import pytest
from conftest import is_gone, marked_pids
from frameworks_helpers import free_port, http_get

pytestmark = [pytest.mark.frameworks, pytest.mark.timeout(90)]

STARTUP = 4.0

ASGI_APP = """
import asyncio, uvicorn

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep({startup})  # loading models, warming caches
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    else:
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": b"hello"}})
"""

UVICORN_MAINS = {
    "uvicorn.run": "uvicorn.run(app, host='127.0.0.1', port={port})",
    "Server.serve": (
        "return uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port={port})).serve()"
    ),
}

AIOHTTP_APP = f"""
import asyncio
from aiohttp import web

async def hello(request):
    return web.Response(text="hello")

async def warm_up(app):
    await asyncio.sleep({STARTUP})

app = web.Application()
app.router.add_get("/", hello)
app.on_startup.append(warm_up)
"""

AIOHTTP_MAIN = "web.run_app(app, host='127.0.0.1', port={port}, print=None)"


def started_and_served(svc, port: int) -> None:
    """``start`` takes the startup's time; a GET right after it is answered."""
    began = time.monotonic()
    result = svc.cli("start")
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert took >= STARTUP, f"start returned after {took:.1f}s, before the {STARTUP}s startup"
    assert http_get(port, timeout=5) == (200, "hello")
    pid = svc.pid_from(result.stdout)
    svc.cli("stop")
    assert is_gone(pid)


def failed_with_the_reason(svc, port: int) -> None:
    """``start`` on a taken port: status 1, the errno text on stderr, nothing left."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = svc.cli("start")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "svc: failed to start: OSError: [Errno 98]" in result.stderr, result.stderr
    assert "address already in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert marked_pids(svc.mark) == [], "a failed start left a process behind"
    assert not os.path.lexists(svc.pidfile), "a failed start left its pidfile behind"


@pytest.mark.scenario(
    "Defaults",
    "uvicorn with a 4-s startup: start waits until it listens",
    lost="nothing: start returns after the startup and the first request is answered",
)
@pytest.mark.parametrize("form", UVICORN_MAINS)
def test_uvicorn_start_returns_once_it_listens(make_service, form: str) -> None:
    port = free_port()
    svc = make_service(
        prelude=ASGI_APP.format(startup=STARTUP), body=UVICORN_MAINS[form].format(port=port)
    )
    started_and_served(svc, port)


@pytest.mark.scenario(
    "Defaults",
    "uvicorn on a taken port: start says why",
    lost="nothing: 'failed to start: OSError: [Errno 98] ... address already in use'",
)
@pytest.mark.parametrize("startup", [0, STARTUP])
@pytest.mark.parametrize("form", UVICORN_MAINS)
def test_uvicorn_on_a_taken_port_says_why(make_service, form: str, startup: float) -> None:
    # uvicorn logs the OSError and calls sys.exit(3): the reason is in its context.
    port = free_port()
    svc = make_service(
        prelude=ASGI_APP.format(startup=startup), body=UVICORN_MAINS[form].format(port=port)
    )
    failed_with_the_reason(svc, port)


@pytest.mark.scenario(
    "Defaults",
    "aiohttp run_app with a 4-s startup: start waits until it listens",
    lost="nothing: start returns after the startup and the first request is answered",
)
def test_aiohttp_start_returns_once_it_listens(make_service) -> None:
    port = free_port()
    svc = make_service(prelude=AIOHTTP_APP, body=AIOHTTP_MAIN.format(port=port))
    started_and_served(svc, port)


def test_aiohttp_on_a_taken_port_says_why(make_service) -> None:
    port = free_port()
    svc = make_service(prelude=AIOHTTP_APP, body=AIOHTTP_MAIN.format(port=port))
    failed_with_the_reason(svc, port)
