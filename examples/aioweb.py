"""An asyncio HTTP/1.1 JSON service: asyncio streams, no framework.

    GET /              {"service": "aioweb", "pid": 4242, "requests": 7}
    GET /slow?s=1.5    waits 1.5 s (at most 30), then {"slept": 1.5}

Keep-alive connections are served until a stop is requested.  Then the
server takes no new connection, closes the idle ones, lets every request
in flight finish (a slow one too, answered with "Connection: close"), and
exits.  ``ready()`` comes once the port is bound, so ``start`` reports
"address already in use" at once.  Pidfile and log: AIOWEB_DIR (/tmp).

Try it::

    python examples/aioweb.py start --port 8080
    curl -s localhost:8080/
    curl -s 'localhost:8080/slow?s=3' & python examples/aioweb.py stop --port 8080; wait
"""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import parse_qs, urlsplit

from daemonize_deco import daemon, ready, stopped

DIR = os.environ.get("AIOWEB_DIR", "/tmp")  # where the pidfile and the log go
MAX_HEADER_BYTES = 16384
MAX_SLOW_SECONDS = 30.0


class Connection:
    """One client connection; ``busy`` while a request on it is being answered."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.busy = False


class App:
    """The routes, the open connections, and whether the service is stopping."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.requests = 0
        self.stopping = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(writer)
        self.connections.add(connection)
        try:
            while not self.stopping:
                request = await read_request(reader)
                if request is None:
                    break
                connection.busy = True
                method, target, keep_alive = request
                status, document = await self.route(method, target)
                keep_alive = keep_alive and not self.stopping
                writer.write(response(status, document, keep_alive))
                await writer.drain()
                connection.busy = False
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or sent garbage: nothing to answer
        finally:
            self.connections.discard(connection)
            writer.close()

    async def route(self, method: str, target: str) -> tuple[int, dict[str, object]]:
        self.requests += 1
        url = urlsplit(target)
        if method != "GET":
            return 405, {"error": f"method {method} not allowed"}
        if url.path == "/":
            return 200, {"service": "aioweb", "pid": os.getpid(), "requests": self.requests}
        if url.path == "/slow":
            try:
                seconds = min(float(parse_qs(url.query).get("s", ["1"])[0]), MAX_SLOW_SECONDS)
            except ValueError:
                return 400, {"error": "s must be a number of seconds"}
            print(f"aioweb: a slow request, {seconds:g}s", flush=True)
            await asyncio.sleep(max(0.0, seconds))  # a stop waits for this
            return 200, {"slept": seconds}
        return 404, {"error": f"no such path {url.path}"}

    def stop_taking_work(self) -> None:
        """Close the idle keep-alive connections; busy ones close after their answer."""
        self.stopping = True
        for connection in list(self.connections):
            if not connection.busy:
                connection.writer.close()

    async def drain(self) -> None:
        """Wait until every connection has finished (its request in flight answered)."""
        while self.connections:
            await asyncio.sleep(0.01)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bool] | None:
    """The request line and headers; None at a clean end of the connection."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return None
    if len(head) > MAX_HEADER_BYTES:
        raise ConnectionError("headers too large")
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = [*lines[0].split(" "), "", "", ""][:3]
    fields = (line.partition(":") for line in lines[1:])
    headers = {name.strip().lower(): value.strip() for name, _, value in fields}
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)  # a body we do not use
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return method, target, keep_alive


def response(status: int, document: dict[str, object], keep_alive: bool) -> bytes:
    body = json.dumps(document).encode() + b"\n"
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


@daemon(pidfile=DIR + "/aioweb-{port}.pid", stdout=DIR + "/aioweb-{port}.log", wait_ready=True)
async def main(port: int = 8080, host: str = "127.0.0.1") -> None:
    """An asyncio JSON service with a slow endpoint.

    Args:
        port: the TCP port to listen on.
        host: the address to bind.
    """
    app = App()
    server = await asyncio.start_server(app.handle, host, port)
    print(f"aioweb: listening on {host}:{port}", flush=True)
    ready()
    await stopped()
    server.close()  # no new connection from here on
    app.stop_taking_work()
    await app.drain()
    print(f"aioweb: stopped after {app.requests} requests", flush=True)


if __name__ == "__main__":
    main()
