"""Helpers for the framework suite: real servers and schedulers, driven from outside.

Every test module here says ``pytestmark = pytest.mark.frameworks``.  Each
test writes a plain program (``make_service``'s prelude and body: the
framework's usual entry point), runs it through the real command line, and
talks to it with a real client.
"""

from __future__ import annotations

import http.client
import socket
import threading
from dataclasses import dataclass, field

FRAMEWORKS = ("uvicorn", "fastapi", "aiohttp", "waitress", "flask", "gunicorn", "apscheduler")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str = "/", timeout: float = 30.0) -> tuple[int, str]:
    """GET ``path`` from 127.0.0.1:``port`` on a new connection; (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Request:
    """A request made on a thread of its own: its answer, or what went wrong."""

    port: int
    path: str
    answer: tuple[int, str] | None = None
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.answer = http_get(self.port, self.path)
        except BaseException as exc:  # noqa: BLE001 -- the test asserts on it
            self.error = exc

    def result(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for the answer; raise what the request met instead."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"GET {self.path} still waiting after {timeout}s"
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer
