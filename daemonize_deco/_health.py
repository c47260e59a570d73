"""The health endpoint (``health=``): ``/livez``, ``/readyz`` and ``/status`` over HTTP/1.1.

An orchestrator asks these questions many times a minute, and must get an
answer while ``main`` is busy, blocked or hung: so a thread of the
framework's own answers, never the service's code.  Idle, it sleeps in
``poll`` on the listening socket and a pipe, with no timeout: it wakes zero
times.  It is bound before the service is ready (a failure fails the start)
and closed when the run ends.

One thread serves every connection, each non-blocking, multiplexed by
``poll``: a slow client (slowloris) costs a slot, not the thread.  Every
bound is fixed: a request's head must arrive whole within ``_DEADLINE``
seconds and ``_HEAD_LIMIT`` bytes (else 408 or 431, and the connection
closes); at most ``_CONNECTIONS`` are open, a new one closing the oldest,
so a flood of idle connections cannot keep a probe out for long.  One
request a connection, answered with ``Connection: close``.  Those bounds
live in :class:`Connections`, which neither polls nor owns the listener, and
whose answers are pluggable: under ``restart=`` the supervisor, between a
run's end and the next start, answers with its own (``_between_runs``), in
its own poll loop.

- ``GET /livez``: 200 while the service is alive: its dispatcher thread runs
  and, with ``watchdog=S``, main has not been silent for more than S/2
  seconds (the watchdog ends it at S; a probe sees the hang before it does).
- ``GET /readyz``: 200 from ready (what ``start`` waits for) until a stop is
  requested; 503 from the first instant of a stop (:func:`readiness`).
- ``GET /status``: the ``status --json`` object, as the service knows itself.
- another path 404; another method 405.
"""

from __future__ import annotations

import _thread
import errno
import os
import select
import time

from . import _draining, _heartbeat, _platform, _proc, _signals
from ._fork_pause import left_the_kernel, step_aside, stop_stepping_aside
from ._hygiene import set_thread_name
from ._ready import unready, when_ready

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Collection

    from ._config import Service, ServiceConfig

__all__ = [
    "Answers",
    "Connections",
    "HealthServer",
    "ServiceAnswers",
    "liveness",
    "main_ended",
    "open_endpoint",
    "readiness",
    "status_object",
    "stop_answering",
]

_DEADLINE = 2.0  # seconds a client has to send its request's head
_HEAD_LIMIT = 8192  # bytes of request line and headers
_CONNECTIONS = 64  # open at once; a new one closes the oldest that has sent nothing
_ACCEPTS_A_ROUND = _CONNECTIONS // 2  # then the open connections get their turn
_NO_ROOM_PAUSE = 0.05  # no descriptor left (ulimit -n): stop accepting this long
_LAST_ANSWERS = 0.5  # at the close: how long what was accepted may take to be answered
_CLOSE_WAIT = 1.0 + _LAST_ANSWERS
_FINISH_GRACE = 0.25  # a supervisor's, before it forks: what it accepted may send its request
_CLOSE, _ACCEPT, _PAUSE = b"x", b"a", b"p"  # what the wake pipe says
_NO_ROOM = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip


class _Watched:
    """What the answers read: main's watchdog limit and whether the dispatcher runs."""

    limit: float | None = None
    dispatcher_answers: Callable[[], bool] | None = None
    main_ended = False
    server: HealthServer | None = None


_watched = _Watched()


def readiness() -> tuple[bool, str]:
    """Whether the service takes traffic (``/readyz``), and why not (``_ready.unready``)."""
    why = unready()
    if why is None and _watched.main_ended:
        why = "main has ended"
    return (why is None), why or "ready"


def liveness() -> tuple[bool, str]:
    """Whether the service is alive (``/livez``), and why not."""
    stale = _heartbeat.staleness(_watched.limit)
    if stale is not None:
        return False, stale
    answers = _watched.dispatcher_answers
    if answers is not None and not answers():
        return False, "the dispatcher thread has ended"
    return True, "alive"


def main_ended() -> None:
    """Main has returned or raised: the service takes no more traffic."""
    _watched.main_ended = True


class _Connection:
    __slots__ = ("deadline", "head", "head_only", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = bytearray()
        self.deadline = time.monotonic() + _DEADLINE
        self.head_only = False  # HEAD: the answer's status and headers, not its body


class Answers:
    """What the endpoint says: the service's (:class:`ServiceAnswers`) or its supervisor's."""

    def livez(self) -> tuple[bool, str]:
        """``/livez``: alive, and why (not)."""
        raise NotImplementedError

    def readyz(self) -> tuple[bool, str]:
        """``/readyz``: takes traffic, and why (not)."""
        raise NotImplementedError

    def status(self) -> dict[str, object]:
        """``/status``: the ``status --json`` object."""
        raise NotImplementedError


class ServiceAnswers(Answers):
    """The service's answers: :func:`liveness`, :func:`readiness`, itself as it knows itself."""

    def __init__(self, service: Service) -> None:
        self._config = service.config
        self._started = time.time()

    def livez(self) -> tuple[bool, str]:
        """:func:`liveness`."""
        return liveness()

    def readyz(self) -> tuple[bool, str]:
        """:func:`readiness`."""
        return readiness()

    def status(self) -> dict[str, object]:
        """The ``status --json`` object, as this process knows itself (+ ready, live)."""
        return status_object(self._config, self._started, ready=readiness(), live=liveness())


class Connections:
    """A listener's connections, each answered once, within the bounds every client gets.

    It neither polls nor closes the listener: whoever owns them does
    (:class:`HealthServer`'s thread, or a supervisor's loop), calling
    :meth:`watch` with a poll object, polling for :meth:`timeout`, then
    :meth:`handle` with what is ready; the descriptors it registers, it
    registers on that same poll object.
    """

    def __init__(self, listener: socket.socket, answers: Answers) -> None:
        self.listener = listener
        self.answers = answers
        self.open: dict[int, _Connection] = {}  # by descriptor, oldest first
        self.paused_until: float | None = None
        self.accepting = True  # the listener is in the poll set
        self.closing = False
        listener.setblocking(False)

    def watch(self, poller: select.poll) -> None:
        """Register on ``poller`` what this waits on: the listener (accepting), each connection."""
        if self.accepting:
            poller.register(self.listener.fileno(), select.POLLIN)
        for fd in self.open:
            poller.register(fd, select.POLLIN)

    def timeout(self) -> int | None:
        """Milliseconds to the next deadline; None (wait for ever) when nothing is open."""
        deadlines = [c.deadline for c in self.open.values()]
        if self.paused_until is not None:
            deadlines.append(self.paused_until)
        if not deadlines:
            return None
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    def handle(self, poller: select.poll, ready: Collection[int]) -> None:
        """What ``poller`` said is ready, then the deadlines."""
        # Requests first, then new connections: a flood queued behind a
        # probe must not crowd out the probe whose request has come.
        for fd in [fd for fd in ready if fd in self.open]:
            if fd in self.open:
                self._read(poller, fd)
        if self.accepting and self.listener.fileno() in ready:
            self._accept(poller)
        self._expire(poller)
        self._resume_accepting(poller)

    def start_accepting(self, poller: select.poll) -> None:
        """Accept from now on (unless closing, or paused for want of descriptors)."""
        if not self.accepting and not self.closing and self.paused_until is None:
            self.accepting = True
            poller.register(self.listener.fileno(), select.POLLIN)

    def stop_accepting(self, poller: select.poll, grace: float) -> None:
        """Accept no more; what was accepted has ``grace`` seconds left to be answered.

        A connection accepted and closed unanswered would be reset: a probe
        lost at a restart, though the next instance would have answered it.
        """
        self.closing = True
        if self.accepting:
            poller.unregister(self.listener.fileno())
        self.accepting = False
        self.paused_until = None
        last = time.monotonic() + grace
        for connection in self.open.values():
            connection.deadline = min(connection.deadline, last)

    def finish(self) -> None:
        """Accept no more, answer what was accepted, close it (never the listener).

        A connection has ``_FINISH_GRACE`` seconds more for its request: a
        probe accepted between its connect and its send (a loaded machine)
        is answered, not given 408; one still incomplete then gets 408
        rather than a reset.  The next run waits that long at most.
        """
        poller = select.poll()
        self.watch(poller)
        self.stop_accepting(poller, _FINISH_GRACE)
        for fd in list(self.open):
            self._read(poller, fd)
        while self.open:
            ready = {fd for fd, _ in poller.poll(self.timeout())}
            self.handle(poller, ready)

    def close_connections(self) -> None:
        """Close every connection, unanswered (the listener stays)."""
        for connection in self.open.values():
            connection.sock.close()
        self.open.clear()

    def _accept(self, poller: select.poll) -> None:
        begun = time.monotonic()
        for _ in range(_ACCEPTS_A_ROUND):
            try:
                sock, _address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # No room, the connection stays queued and poll() would return at
                # once: make room if we hold one from before this round (never the
                # probe just accepted), else look away for a moment.
                if exc.errno in _NO_ROOM and not self._drop_oldest(poller, before=begun):
                    poller.unregister(self.listener.fileno())
                    self.accepting = False
                    self.paused_until = time.monotonic() + _NO_ROOM_PAUSE
                    return
                continue  # ECONNABORTED and the like: that one is gone
            sock.setblocking(False)
            if len(self.open) >= _CONNECTIONS:
                self._drop_oldest(poller)
            fd = sock.fileno()
            self.open[fd] = _Connection(sock)
            poller.register(fd, select.POLLIN)
            # A probe sends its request with the connect: answered now, before
            # the connections queued behind it (a flood) could crowd it out.
            self._read(poller, fd)

    def _drop_oldest(self, poller: select.poll, before: float | None = None) -> bool:
        """Close the oldest connection that has sent nothing (else the oldest); False if none.

        ``before``: only one opened before then.
        """
        opened = [
            fd for fd, c in self.open.items() if before is None or c.deadline - _DEADLINE < before
        ]
        if not opened:
            return False
        silent = [fd for fd in opened if not self.open[fd].head]
        oldest = (silent or opened)[0]
        self._read(poller, oldest)  # its request may have come meanwhile: answered, it goes
        if oldest in self.open:
            self._drop(poller, oldest)
        return True

    def _drop(self, poller: select.poll, fd: int) -> None:
        connection = self.open.pop(fd)
        poller.unregister(fd)
        connection.sock.close()

    def _resume_accepting(self, poller: select.poll) -> None:
        if (
            not self.closing
            and self.paused_until is not None
            and time.monotonic() >= self.paused_until
        ):
            self.paused_until = None
            self.accepting = True
            poller.register(self.listener.fileno(), select.POLLIN)

    def _expire(self, poller: select.poll) -> None:
        now = time.monotonic()
        for fd in [fd for fd, c in self.open.items() if c.deadline <= now]:
            _reply(self.open[fd], 408, "request not received in time\n")
            self._drop(poller, fd)

    def _read(self, poller: select.poll, fd: int) -> None:
        connection = self.open[fd]
        try:
            data = connection.sock.recv(_HEAD_LIMIT + 1 - len(connection.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(poller, fd)
            return
        connection.head += data
        end = connection.head.find(b"\r\n\r\n")
        if end < 0:
            end = connection.head.find(b"\n\n")
        if end >= 0:
            try:
                self._answer(connection, bytes(connection.head[:end]))
            except Exception as exc:  # noqa: BLE001 -- one answer's failure must not end the thread
                _reply(connection, 500, f"{type(exc).__name__}: {exc}\n")
            self._drop(poller, fd)
        elif len(connection.head) > _HEAD_LIMIT:
            _reply(connection, 431, "request head too large\n")
            self._drop(poller, fd)

    def _answer(self, connection: _Connection, head: bytes) -> None:
        words = head.split(b"\n", 1)[0].strip().split(b" ")
        if len(words) != 3 or not words[2].startswith(b"HTTP/1."):
            _reply(connection, 400, "expected: GET /livez HTTP/1.1\n")
            return
        method, target = words[0], words[1].split(b"?", 1)[0]
        # HEAD too, as every HTTP server must (RFC 9110): some load balancers' checks use it.
        connection.head_only = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            _reply(connection, 405, "only GET or HEAD\n", extra=b"Allow: GET, HEAD\r\n")
            return
        if target == b"/status":
            import json  # noqa: PLC0415 -- only a /status asked for pays for it

            body = json.dumps(self.answers.status()) + "\n"
            _reply(connection, 200, body, content_type=b"application/json")
            return
        question = {b"/livez": self.answers.livez, b"/readyz": self.answers.readyz}.get(target)
        if question is None:
            _reply(connection, 404, "try /livez, /readyz or /status\n")
            return
        yes, why = question()
        _reply(connection, 200 if yes else 503, why + "\n")


class HealthServer:
    """The endpoint's listening socket and the thread that answers on it."""

    def __init__(self, sock: socket.socket, service: Service) -> None:
        self._listener = sock
        self._service = service
        self._connections = Connections(sock, ServiceAnswers(service))
        self._wake_read, self._wake_write = os.pipe()
        self._finished = _thread.allocate_lock()
        self._lock = _thread.allocate_lock()  # guards closing the descriptors
        self._running = False
        self._paused = False  # stepped aside for a fork (``_fork_pause``)
        self._native_id: int | None = None

    def start(self, dispatcher_answers: Callable[[], bool], *, once_ready: bool = False) -> None:
        """Start answering, now (before the service may become ready) or ``once_ready``.

        A restart's new instance shares the socket with the one it replaces,
        which answers until the new one is ready: a probe meanwhile must not
        hear "starting" from an instance nobody routes to yet.
        """
        _watched.limit = _heartbeat.silence_limit(self._service.config.watchdog)
        _watched.dispatcher_answers = dispatcher_answers
        self._connections.accepting = not once_ready
        if once_ready:
            when_ready(self._begin_accepting)
        step_aside(self)
        self._launch()

    def _launch(self) -> None:
        self._finished.acquire()
        self._running = True
        _thread.start_new_thread(self._run, ())

    def pause(self) -> bool:
        """Before a fork in main: the thread quits; its connections and the socket stay."""
        with self._lock:
            if not self._running or self._wake_write < 0:
                return False
            if self._native_id == _thread.get_native_id():
                return False  # an answer forking: it cannot wait for itself
            self._paused = True
            os.write(self._wake_write, _PAUSE)
        if not self._finished.acquire(timeout=_CLOSE_WAIT):
            with self._lock:
                if self._running:
                    # Busy past the wait (frozen, starved): it forks alive, and must
                    # not take the pause byte, still unread, for a later one.
                    self._paused = False
                    return False
            # It decided to quit just now: it is on its way out.
            if not self._finished.acquire(timeout=_CLOSE_WAIT):
                return False
        self._finished.release()
        left_the_kernel(self._native_id)
        return True

    def resume_after_fork(self) -> None:
        """After the fork, in the parent: answer again at once.

        Not deferred to main's next call into the library, as the
        dispatcher is on 3.13: a main that forks, then serves without
        calling it, would leave the probes unanswered, and the orchestrator
        would restart a healthy service.  3.13 then warns of the thread.
        """
        with self._lock:
            self._paused = False
            if not self._running and self._wake_write >= 0:
                self._launch()

    def _begin_accepting(self) -> None:
        with self._lock:
            if self._wake_write >= 0:
                try:
                    os.write(self._wake_write, _ACCEPT)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop answering and close the socket: the run is over (never raises).

        Called by the runtime at the run's end and by a handover's quiesce,
        maybe both at once: the descriptors are closed once, under the lock
        (a number closed twice could be another thread's new file by then).
        """
        stop_stepping_aside(self)
        with self._lock:
            if self._wake_write < 0:
                return
            running = self._running
            if running:
                try:
                    os.write(self._wake_write, _CLOSE)
                except OSError:
                    pass
        if running and self._finished.acquire(timeout=_CLOSE_WAIT):
            self._finished.release()
        with self._lock:
            self._close_descriptors()

    def forget_in_child(self) -> None:
        """In a child the service forked: the thread is not there; let go of the port."""
        self._lock = _thread.allocate_lock()  # another thread may have held it at the fork
        self._running = False
        self._close_descriptors()

    def _close_descriptors(self) -> None:
        if self._wake_write < 0:
            return
        self._connections.close_connections()
        self._listener.close()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        self._wake_read = self._wake_write = -1

    def _run(self) -> None:
        self._native_id = _thread.get_native_id()
        _signals.keep_away_from_this_thread()
        set_thread_name("dd-health")
        try:
            self._loop()
        finally:
            self._running = False
            self._finished.release()

    def _loop(self) -> None:
        connections = self._connections
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        connections.watch(poller)
        while connections.open or not connections.closing:
            ready = {fd for fd, _ in poller.poll(connections.timeout())}
            if self._wake_read in ready and self._woken(poller) and self._quit_for_fork():
                return  # a fork: resume_after_fork starts a thread again
            connections.handle(poller, ready)

    def _quit_for_fork(self) -> bool:
        """Whether a fork waits for this thread to quit (not one that gave up waiting).

        Decided under the lock, with ``_running``, so that ``pause`` and
        ``resume_after_fork`` see either a thread serving on or one gone.
        """
        with self._lock:
            if not self._paused:
                return False
            self._running = False
            return True

    def _woken(self, poller: select.poll) -> bool:
        """Do what the pipe says; True: pause for a fork (what is open stays open)."""
        told = os.read(self._wake_read, 64)
        if _CLOSE in told:
            poller.unregister(self._wake_read)
            self._connections.stop_accepting(poller, _LAST_ANSWERS)
            return False
        if _ACCEPT in told:
            self._connections.start_accepting(poller)
        return _PAUSE in told


def _reply(
    connection: _Connection,
    code: int,
    body: str,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: bytes = b"",
) -> None:
    """Send the whole answer if the socket takes it at once (it is small); else drop it."""
    data = body.encode("utf-8", "replace")
    response = b"".join((
        f"HTTP/1.1 {code} {_REASONS[code]}\r\n".encode(),
        b"Content-Type: " + content_type + b"\r\n",
        f"Content-Length: {len(data)}\r\nConnection: close\r\n".encode(),
        extra,
        b"\r\n",
        b"" if connection.head_only else data,
    ))  # fmt: skip
    try:
        connection.sock.send(response)
    except OSError:
        pass  # gone, or not reading: nothing to wait for


def status_object(
    config: ServiceConfig,
    started: float,
    *,
    ready: tuple[bool, str],
    live: tuple[bool, str],
    supervision: dict[str, object] | None = None,
    listening: bool = True,
) -> dict[str, object]:
    """The ``status --json`` object, as this process knows itself (+ ready, live).

    ``listening=False``: not looked for (None): it reads the host's socket
    tables, which can take a busy host's loop a second.
    """
    pid = os.getpid()
    rss = threads = fds = children = sockets = cpu = None
    if _platform.has_proc():
        rss, threads = _proc.memory_and_threads(pid) or (None, None)
        targets = _proc.fd_targets(pid)
        fds = len(targets)
        children = _proc.children_of(pid)
        inodes = {t[len("socket:[") : -1] for t in targets if t.startswith("socket:[")}
        if listening:
            sockets = _proc.listening_sockets(inodes) if inodes else []
        busy, up = _proc.cpu_seconds(pid), _proc.uptime(pid)
        cpu = None if busy is None else (round(100 * busy / up, 1) if up else 0.0)
    return {
        "name": config.name,
        "pidfile": config.pidfile,
        "running": True,
        "pid": pid,
        "uptime_s": round(time.time() - started, 3),
        # Not said over the network: main's options may carry a secret.
        "options": None,
        "rss_bytes": rss,
        "cpu_percent": cpu,
        "threads": threads,
        "open_fds": fds,
        "children": children,
        "listening": sockets,
        "pidfile_left_behind": False,
        "leftovers": [],
        "pidfile_foreign_owner": None,
        "note": None,
        "failed": None,
        "draining_s": _draining_left(config.pidfile, pid, config.drain),
        "supervision": supervision,
        "last_run": None,
        "ready": ready[0],
        "readiness": ready[1],
        "live": live[0],
        "liveness": live[1],
    }


def _draining_left(pidfile: str, pid: int, drain: float) -> float | None:
    """Seconds left of this process's ``drain=`` stop (its own record: ``_draining``)."""
    seconds = _draining.left(pidfile, (os.geteuid(),), pid, drain)
    return None if seconds is None else round(seconds, 3)


def open_endpoint(service: Service) -> HealthServer:
    """Bind ``health=``'s address (``ListenError`` when it cannot be)."""
    from ._listeners import open_health  # noqa: PLC0415 -- loaded with the service already

    assert service.config.health is not None
    server = HealthServer(open_health(service.config.health), service)
    _watched.server = server
    return server


def stop_answering() -> None:
    """A restart's new instance answers from now on (``_handover``): this one stops accepting."""
    server = _watched.server
    if server is not None:
        server.close()
