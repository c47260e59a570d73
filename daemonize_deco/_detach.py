"""Detaching: the double fork, done right, with the startup outcome sent back.

The sequence reads like the checklist it implements (see :func:`detach`).
Beyond the classic recipe, the starting process does not report success
when the fork succeeds: it waits on a pipe from the daemon, which says
"ready" once it really is, or why it failed.  This module knows nothing of
pidfiles or commands; it runs the ``serve`` callable it is given in the
daemon.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import io
import os
import sys

from ._errors import DetachError, describe, exit_status, last_words
from ._hygiene import log_handlers
from ._proc import GROUP_BADGE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType, TracebackType
    from typing import NoReturn, TextIO

    from ._signals import Handler
    from ._startup import StartupWatcher

__all__ = [
    "DeferredInterrupts",
    "StartupChannel",
    "check_log_path",
    "check_workdir",
    "detach",
    "ensure_standard_fds",
    "exit_daemon",
    "line_buffer_python_streams",
    "reopen_logs",
]


# -- the daemon's side of the startup pipe ---------------------------------


class StartupChannel:
    """The daemon's end of the startup pipe: "pid", "main", "wait", then "ready", "done" or "fail".

    A supervised service's channel leads to its supervisor and stays open
    after "ready" (``supervised=True``), for its last line: "exit STATUS
    [Type: message]", how it ended.  A held one (:meth:`hold`) stays open
    until the starting process closes its end, which the daemon watches.
    """

    def __init__(self, fd: int, *, supervised: bool = False) -> None:
        self._fd: int | None = fd
        self.supervised = supervised
        self.held = False
        self.is_ready = False

    def _send(self, line: str) -> bool:
        if self._fd is None:
            return False
        try:
            os.write(self._fd, (" ".join(line.split()) + "\n").encode("utf-8", "replace"))
        except BrokenPipeError:
            if not self.held:  # a held one is closed by whoever watches it
                self.close()  # the starting process is gone (interrupted): nobody listens
            return False
        return True

    def hold(self) -> None:
        """Keep the pipe open after "ready": a handover's new instance waits for its end."""
        self.held = True

    @property
    def _stays_open(self) -> bool:
        return self.supervised or self.held

    def send_pid(self, pid: int) -> None:
        """Tell the starting process which pid the daemon has."""
        self._send(f"pid {pid}")

    def ready(self) -> None:
        """Report that the daemon is ready, once; later calls do nothing."""
        if not self.is_ready:
            self.is_ready = True
            self._send("ready")
            if not self._stays_open:
                self.close()

    def main_entered(self) -> None:
        """Tell the starting process that main runs now (its start grace begins)."""
        self._send("main")

    def postpone(self) -> None:
        """Tell the starting process that main is on its way to listening (``_listening``)."""
        self._send("wait")

    def ended(self, status: int, exception: str | None) -> None:
        """Tell the supervisor how the service ended (its last line)."""
        self._send(f"exit {status} {exception or ''}")
        self.close()

    def finished(self, status: int) -> bool:
        """Report that main ran to completion before it was ready (a one-shot job)."""
        delivered = self._send(f"done {status}")
        if not self._stays_open:
            self.close()
        return delivered

    def fail(self, reason: str) -> bool:
        """Report why startup failed; False when nobody was listening any more."""
        delivered = self._send(f"fail {reason}")
        if not self._stays_open:
            self.close()
        return delivered

    def fileno(self) -> int:
        """The pipe's descriptor (-1 once closed), to keep when closing inherited ones."""
        return -1 if self._fd is None else self._fd

    def close(self) -> None:
        """Close the pipe (the starting process then sees end-of-file)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class DeferredInterrupts:
    """While a start is under way, SIGINT and SIGTERM are recorded instead of raised.

    A KeyboardInterrupt raised at an arbitrary line of the starting process
    (in ``waitpid``, between reading the daemon's pid and pinning it) would
    leave a daemon nobody knows about.  Recorded, the interrupt is acted on
    at one place: :meth:`fileno` becomes readable, the start is abandoned and
    the daemon it created is stopped.  Outside the main thread nothing is
    installed (no KeyboardInterrupt can reach another thread).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._owner = os.getpid()
        self._previous: dict[int, Handler] = {}
        try:
            self._read, self._write = os.pipe()
        except OSError as exc:  # no descriptor left (ulimit -n)
            raise DetachError(f"cannot create the pipe that defers Ctrl-C: {exc.strerror}") from exc
        os.set_blocking(self._write, False)

    def __enter__(self) -> DeferredInterrupts:
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        except ValueError:
            self.restore()  # not the main thread
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()
        for fd in (self._read, self._write):
            os.close(fd)

    def fileno(self) -> int:
        """Readable once an interrupt was recorded."""
        return self._read

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:
            return  # the child before setsid shares the terminal's Ctrl-C: the starter acts
        if self.signum is None:
            self.signum = signum
        try:
            os.write(self._write, b"!")
        except OSError:
            pass  # full: readable already

    def restore(self) -> None:
        """Put the previous handlers back (also the daemon's first step, for its children)."""
        while self._previous:
            signum, handler = self._previous.popitem()
            signal.signal(signum, handler)


# -- checks made before forking --------------------------------------------


def check_workdir(path: str) -> None:
    """Fail before forking when the working directory does not exist."""
    if not os.path.isdir(path):
        raise DetachError(
            f"cannot change directory to {path}: it is not an existing directory", path=path
        )


def check_log_path(path: str) -> None:
    """Fail before forking when the log file could obviously not be opened."""
    directory = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise DetachError(f"cannot open log file {path}: it is a directory", path=path)
    if not os.path.isdir(directory):
        raise DetachError(
            f"cannot open log file {path}: directory {directory} does not exist", path=path
        )
    target = path if os.path.exists(path) else directory
    if not os.access(target, os.W_OK):
        raise DetachError(f"cannot open log file {path}: permission denied", path=path)


# -- the steps, each a small function --------------------------------------


def ensure_standard_fds() -> None:
    """Open /dev/null on whichever of descriptors 0-2 is closed.

    Started with ``<&- >&- 2>&-``, the next file opened (the pidfile!) would
    land on 0, 1 or 2, and redirecting the standard streams would then
    silently close it and drop the lock.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null == fd:
                os.set_inheritable(fd, True)  # a standard stream children must see
            else:
                os.dup2(null, fd, inheritable=True)
                os.close(null)


def flush_standard_streams() -> None:
    """Flush Python's buffers, so a fork does not print them twice."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stream has nothing to lose


def flush_before_fork() -> None:
    """Flush the standard streams and every logging handler of the program.

    What is still buffered at the fork exists twice; the daemon flushes its
    copy at exit (``logging.shutdown``), so the starter must have flushed
    its own first, and each line is written once.
    """
    flush_standard_streams()
    for handler in log_handlers():
        try:
            handler.flush()
        except (OSError, ValueError):
            pass  # as above


def change_working_directory(path: str) -> None:
    """chdir, so the daemon does not keep the directory it was started in busy."""
    try:
        os.chdir(path)
    except OSError as exc:
        raise DetachError(f"cannot change directory to {path}: {exc.strerror}", path=path) from exc


def open_log(path: str) -> int:
    """Open a log file for appending, created with the umask in force."""
    # O_NONBLOCK only for the open: a FIFO with no reader fails instead of hanging.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise DetachError(f"cannot open log file {path}: {exc.strerror}", path=path) from exc
    os.set_blocking(fd, True)
    return fd


def _open_null(flags: int) -> int:
    """Open /dev/null; DetachError when it cannot be (no descriptor left: ``ulimit -n``)."""
    try:
        return os.open(os.devnull, flags)
    except OSError as exc:
        raise DetachError(f"cannot open {os.devnull}: {exc.strerror}") from exc


def redirect_standard_streams(stdout: str | None, stderr: str | None) -> None:
    """Stdin from /dev/null, stdout and stderr to the log files (or /dev/null).

    dup2 over descriptors 0-2 also closes the launcher's pipes and terminal
    in the daemon, so ``subprocess.run(..., capture_output=True)`` of the
    start command returns as soon as that command does.
    """
    null = _open_null(os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    _point_output_at(stdout, stderr)
    line_buffer_python_streams()


def reopen_logs(stdout: str | None, stderr: str | None) -> None:
    """Open the log files afresh and put them on stdout and stderr.

    After logrotate moved ``app.log`` away, new lines go to a new ``app.log``.
    dup2 swaps a descriptor atomically, so no write is lost in between.
    """
    flush_standard_streams()
    _point_output_at(stdout, stderr)


def _point_output_at(stdout: str | None, stderr: str | None) -> None:
    """Descriptors 1 and 2 onto the log files, or /dev/null; stderr follows a lone stdout."""
    out = open_log(stdout) if stdout else _open_null(os.O_WRONLY)
    try:
        err = out if stderr in (None, stdout) else open_log(stderr)
    except DetachError:
        os.close(out)
        raise
    for source, target in ((out, 1), (err, 2)):
        os.dup2(source, target)
    for fd in {out, err}:
        os.close(fd)


def _line_buffered(stream: TextIO | None, fd: int) -> TextIO:
    # Reconfigure the existing object when it writes to this fd, so objects
    # holding a reference to it (a logging handler) are line-buffered too.
    if isinstance(stream, io.TextIOWrapper):
        try:
            if stream.fileno() == fd:
                stream.reconfigure(line_buffering=True)
                return stream
        except (OSError, ValueError):
            pass  # detached or closed: replace it
    return open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)


def line_buffer_python_streams() -> None:
    """Make print() reach the log at once, even when nothing is a terminal.

    Also in the foreground: under supervisord, runit's svlogd or the journal,
    stdout is a pipe, which Python would otherwise fill 8 KiB at a time.
    """
    sys.stdout = _line_buffered(sys.stdout, 1)
    sys.stderr = _line_buffered(sys.stderr, 2)
    if sys.stdin is None:
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 -- lives as long as the process


def wear_group_badge() -> None:
    """Mark this process as the leader of a group daemonize_deco made for it.

    ``stop`` ends what a daemon left running in its process group, and must
    know that the group is the daemon's own and not its caller's (``run``
    under sshd, cron or ``setsid`` shares a group with them).  The mark is a
    memfd whose name carries the group id: only this process can open a
    descriptor in itself, and ``/proc/PID/fd`` shows it to whoever may signal
    it.  Children lose it at fork.  Without memfds (``_platform_identity``)
    the daemon goes without: then nothing could read it either (no /proc).
    """
    from ._platform_identity import wear_badge  # noqa: PLC0415 -- a daemon's

    try:
        fd = wear_badge(f"{GROUP_BADGE}{os.getpgrp()}")
    except OSError as exc:
        raise DetachError(f"cannot create the group's badge (a memfd): {exc.strerror}") from exc
    if fd is None:
        return
    _badge.append(fd)
    os.register_at_fork(after_in_child=_drop_group_badge)


_badge: list[int] = []


def _drop_group_badge() -> None:
    # Forgotten once closed, so a grandchild never closes a reused number.
    while _badge:
        os.close(_badge.pop())


# -- the sequence ------------------------------------------------------------


def detach(
    serve: Callable[[StartupChannel], int],
    *,
    workdir: str,
    umask: int,
    stdout: str | None,
    stderr: str | None,
    close_inherited: Callable[[set[int]], None],
    in_child: Callable[[], None],
) -> StartupWatcher:
    """Start ``serve`` in a detached daemon; return a watcher for its startup outcome.

    Only the starting process returns.  The daemon runs ``serve(channel)`` and
    exits with its result.  ``in_child`` runs first in the daemon, once it is
    out of the starter's session;
    ``close_inherited(keep)`` closes what the launcher passed down but the
    descriptors in ``keep``.  Raises :class:`DetachError` when forking fails.
    """
    flush_before_fork()
    try:
        read_end, write_end = os.pipe()
    except OSError as exc:
        raise DetachError(f"cannot create the startup pipe: {exc.strerror}") from exc
    try:
        child = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        raise DetachError(f"cannot fork: {exc.strerror}") from exc
    if child == 0:
        os.close(read_end)
        _become_daemon(
            StartupChannel(write_end),
            serve,
            in_daemon=in_child,
            workdir=workdir,
            umask=umask,
            stdout=stdout,
            stderr=stderr,
            close_inherited=close_inherited,
        )
    os.close(write_end)
    from ._startup import StartupWatcher  # noqa: PLC0415 -- the starter's side only: not in the daemon

    # Reap the intermediate child at once: it exits right after the second fork,
    # and a long-lived program calling start must not collect zombies.
    try:
        os.waitpid(child, 0)
    except ChildProcessError:
        pass  # the program ignores SIGCHLD: the kernel reaped it already
    return StartupWatcher(read_end)


def _become_daemon(
    channel: StartupChannel,
    serve: Callable[[StartupChannel], int],
    *,
    in_daemon: Callable[[], None],
    workdir: str,
    umask: int,
    stdout: str | None,
    stderr: str | None,
    close_inherited: Callable[[set[int]], None],
) -> NoReturn:
    status = 1
    try:
        # setsid: leave the launcher's session and terminal, and its process
        # group, so job control and terminal hangups no longer reach us.
        os.setsid()
        # Second fork: the session leader could acquire a controlling terminal
        # by merely opening a tty; its child is not a leader and never can.
        # The intermediate exits, so the daemon is re-parented to init.
        if os.fork() != 0:
            os._exit(0)
        in_daemon()
        channel.send_pid(os.getpid())
        # First let go of the starter's descriptors: under a tight ulimit -n,
        # what the daemon opens next needs their places.
        close_inherited({channel.fileno()})
        wear_group_badge()
        change_working_directory(workdir)
        # A known umask: files the daemon creates get the modes it was
        # configured with, not whatever the launching shell had.
        os.umask(umask)
        redirect_standard_streams(stdout, stderr)
        status = serve(channel)
    except SystemExit as exc:  # a child forked in main leaves this way, as from any script
        status = exit_status(exc.code)
        channel.fail(describe(exc))
    except BaseException as exc:  # noqa: BLE001 -- everything must reach the starter and end here
        if not channel.fail(describe(exc)):  # nobody listens: a forked child, or a gone starter
            import traceback  # noqa: PLC0415 -- only a failure pays for it

            last_words(traceback.print_exc)
    finally:
        exit_daemon(status)


def exit_daemon(status: int) -> NoReturn:
    """Leave with os._exit: the caller's stack and atexit handlers belong to the starter."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()  # flush the program's log handlers, as interpreter exit would
    flush_standard_streams()
    os._exit(status & 0xFF)
