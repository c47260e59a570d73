"""The supervisor's reload relay: ``reload`` gets the service's own answer, and nobody waits.

``reload`` asks the supervisor (the pid in the pidfile); the supervisor asks
its service the same way (a request on the service's control socket, then
SIGHUP) and answers the waiting commands with what the service answers.
The request is sent, and its answer read, by the supervisor's poll loop,
which never waits for it: however long ``on_reload`` takes, a restart's
handover on the claim socket, a stop and the service's exit are seen to
meanwhile.

One request is out at a time.  Commands that come while it is out (and
SIGHUPs) get the next one, sent once it is answered: the service itself
answers a request only with a reload that began after it was queued, and a
burst of SIGHUPs makes one more reload, not one each.  A request the
service leaves unanswered for ``start_timeout`` is given up (its commands
told so), which keeps what a hung ``on_reload`` can hold to one request.
"""

from __future__ import annotations

import time

from ._control import reply, send_request

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable, Collection, Sequence

    # The service to ask (its pid) and how to signal it; None while it is not ready.
    Target = Callable[[], tuple[int, Callable[[], None]] | None]

__all__ = ["ReloadRelay"]

_LINE_LIMIT = 4096
_NOT_RUNNING = "error the service is not running now (it is being restarted)"


class _Request:
    """A reload request out to the service: its socket, and the commands its answer goes to."""

    __slots__ = ("buffer", "commands", "deadline", "pid", "sock")

    def __init__(
        self, pid: int, sock: _socket.socket, commands: Sequence[_socket.socket], deadline: float
    ) -> None:
        self.pid = pid
        self.sock = sock
        self.commands = commands
        self.deadline = deadline
        self.buffer = b""

    def answer(self, readable: Collection[int]) -> str | None:
        """The service's answer, or why none can come, once there is one; else None."""
        if self.sock.fileno() not in readable:
            return None
        try:
            chunk = self.sock.recv(_LINE_LIMIT)
        except BlockingIOError:
            return None  # nothing yet (the number was another socket's when polled)
        except OSError:
            chunk = b""
        if not chunk:
            return self.ended()
        self.buffer += chunk
        line, newline, _ = self.buffer.partition(b"\n")
        if newline or len(self.buffer) >= _LINE_LIMIT:
            return line.decode("utf-8", "replace").strip() or "error an empty answer"
        return None

    def ended(self) -> str:
        """The answer when the service is gone without answering."""
        return f"error the service (pid {self.pid}) ended before it answered"

    def overdue(self, timeout: float) -> str | None:
        """The answer when ``timeout`` has passed since it was sent; else None."""
        if time.monotonic() < self.deadline:
            return None
        return f"error no answer from the service (pid {self.pid}) within {timeout:g}s"


class ReloadRelay:
    """The ``reload`` commands waiting for the service, and the request out to it."""

    def __init__(self, target: Target, timeout: float, where: tuple[str, Collection[int]]) -> None:
        self._target = target
        self._timeout = timeout
        self._where = where  # the pidfile and its owners: where the service's socket is
        self._out: _Request | None = None
        self._next: list[_socket.socket] = []
        self._due = False

    def fileno(self) -> int | None:
        """The socket the service's answer comes on, to poll; None when no request is out."""
        return None if self._out is None else int(self._out.sock.fileno())

    def deadline(self) -> float | None:
        """When the request out is given up (monotonic); None when none is out."""
        return None if self._out is None else self._out.deadline

    def reload(self, commands: Sequence[_socket.socket]) -> None:
        """A SIGHUP came, with these ``reload`` commands waiting: have the service reload."""
        self._next.extend(commands)
        self._due = True
        self.carry_on(())

    def carry_on(self, readable: Collection[int]) -> None:
        """Pass the service's answer on when it came (or is overdue); then send the next request."""
        out = self._out
        if out is not None:
            answer = out.answer(readable) or out.overdue(self._timeout)
            if answer is None:
                return
            self._out = None
            out.sock.close()
            _answer(out.commands, answer)
        if self._due:
            self._due = False
            commands, self._next = self._next, []
            self._ask(commands)

    def close(self) -> None:
        """The supervisor ends: answer every command still waiting (the service may just have)."""
        out, self._out = self._out, None
        if out is not None:
            answer = out.answer({out.sock.fileno()}) or out.ended()
            out.sock.close()
            _answer(out.commands, answer)
        commands, self._next = self._next, []
        _answer(commands, "error the service has stopped")

    def _ask(self, commands: Sequence[_socket.socket]) -> None:
        target = self._target()
        if target is None:
            _answer(commands, _NOT_RUNNING)
            return
        pid, trigger = target
        try:
            sock = send_request(pid, "reload", 0, trigger, self._where)
        except OSError as exc:  # ImpostorError among them, or its backlog is full
            trigger()
            _answer(commands, f"error {exc}")
            return
        if sock is None:  # it has no control socket: the signal is all it gets
            trigger()
            _answer(commands, "ok")
            return
        self._out = _Request(pid, sock, commands, time.monotonic() + self._timeout)


def _answer(commands: Sequence[_socket.socket], answer: str) -> None:
    for conn in commands:
        reply(conn, answer)
