"""The signal path: recorded signals read once, each handed to one method.

Signal handlers only record (``_signals``): the numbers of the signals that
came wait as bytes in the record pipe.  Two loops read them: the
supervisor's (``_supervisor``) and the service's dispatcher thread
(``_dispatch``).  Both read them here, with :func:`read_recorded`, and
hand each byte to one method of a :class:`SignalPath`, as gunicorn's
arbiter does: :meth:`~SignalPath.handle_stop` for SIGTERM and SIGINT,
:meth:`~SignalPath.handle_reload` for SIGHUP, :meth:`~SignalPath.handle_signal`
for the ``on_signal`` ones.  What the two do alike on the way is written
here once: taking up the ``reload`` requests a SIGHUP came with, and
reopening the logs (and saying so when they cannot be).
"""

from __future__ import annotations

import os
import sys

from ._control import reply
from ._detach import reopen_logs
from ._signals import RELOAD_SIGNAL, STOP_SIGNALS, WAKEUP_TAKEN

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Iterator

    from ._control import ControlServer

__all__ = ["WAKE", "SignalPath", "read_recorded", "reload_requests", "reopen_logs_or_say"]

WAKE = 0  # a byte that only wakes the reader; its flags say what to do
_READ = 4096


def read_recorded(fd: int, limit: int = _READ) -> Iterator[bytes]:
    """The signal numbers waiting in the record pipe ``fd``, a read at a time.

    Ends when the pipe is empty or ``limit`` bytes were read (a storm of
    signals must not keep the reader from anything else for ever).
    """
    while limit > 0:
        try:
            recorded = os.read(fd, min(limit, _READ))
        except BlockingIOError:
            return
        if not recorded:
            return
        limit -= len(recorded)
        yield recorded


class SignalPath:
    """One method per recorded signal; :meth:`dispatch` calls them in arrival order."""

    def dispatch(self, recorded: bytes) -> None:
        """Hand each signal number in ``recorded`` to its method."""
        for signum in recorded:
            if signum in STOP_SIGNALS:
                self.handle_stop(signum)
            elif signum == RELOAD_SIGNAL:
                self.handle_reload()
            elif signum == WAKEUP_TAKEN:
                self.handle_wakeup_taken()
            elif signum != WAKE:
                self.handle_signal(signum)

    def handle_stop(self, signum: int) -> None:
        """SIGTERM or SIGINT: a graceful stop."""

    def handle_reload(self) -> None:
        """SIGHUP: reopen the logs, reload, answer the ``reload`` requests that sent it."""

    def handle_signal(self, signum: int) -> None:
        """Any other signal recorded (the ``on_signal`` ones)."""

    def handle_wakeup_taken(self) -> None:
        """The service took over the wakeup fd: say so in the log, once."""
        print(
            "daemonize_deco: the service replaced the signal wakeup fd (asyncio's "
            "loop.add_signal_handler?); stop and reload signals are now recorded by "
            "daemonize_deco's handlers instead, so they still work",
            file=sys.stderr,
        )


def reload_requests(control: ControlServer | None) -> list[_socket.socket]:
    """The ``reload`` requests waiting with this SIGHUP; any other request is refused now.

    Taken before reloading: a request queued during the reload waits for its
    own SIGHUP, so its answer is never from a reload that began earlier.
    """
    requests = []
    for conn, request in [] if control is None else control.accept_waiting():
        if request == "reload":
            requests.append(conn)
        else:
            reply(conn, f"error unknown request {request!r}")
    return requests


def reopen_logs_or_say(stdout: str | None, stderr: str | None) -> str | None:
    """Reopen the log files (after logrotate moved them); None, or why they could not be."""
    try:
        reopen_logs(stdout, stderr)
    except OSError as exc:
        print(f"daemonize_deco: cannot reopen logs: {exc}", file=sys.stderr)
        return str(exc)
    return None
