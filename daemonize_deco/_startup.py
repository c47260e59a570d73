"""The starting process's side of the startup pipe: waiting for the daemon's outcome.

The daemon writes "pid", "main", perhaps "wait", then "ready", "done" or "fail" (see
``_detach.StartupChannel``); :class:`StartupWatcher` reads them, watches the
daemon's exit (``_platform_process``), and times the start grace.  Loaded after the fork, by the
starter only: the daemon never carries this code.
"""

from __future__ import annotations

import os
import select
import time

from ._platform_process import ProcessHandle

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

__all__ = ["StartupReport", "StartupWatcher"]


class StartupReport:
    """What the starting process learned: the daemon's pid and how startup ended."""

    __slots__ = ("channel", "outcome", "pid", "pipe_ended", "process", "reason")

    def __init__(
        self, outcome: Literal["ready", "finished", "failed", "timeout", "interrupted"]
    ) -> None:
        self.outcome = outcome
        self.pid: int | None = None
        self.process: ProcessHandle | None = None
        self.reason = ""
        self.pipe_ended = False  # every process that could write to it is gone
        self.channel: int | None = None  # the pipe, kept open past ready (a handover)

    def close_channel(self) -> None:
        """Close the startup pipe kept past ready: the new instance of a handover settles."""
        if self.channel is not None:
            os.close(self.channel)
            self.channel = None


class StartupWatcher:
    """Reads the startup pipe until the daemon is ready, fails, dies, or time runs out.

    Closing it (it is a context manager) closes the pipe; until then an
    interrupted start can still learn the daemon's pid with :meth:`learn_pid`.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._buffer = b""
        self._eof = False
        self._main_at: float | None = None
        self._postponed = False  # "wait": main is on its way to listening (``_listening``)
        self.report = StartupReport(outcome="timeout")

    def __enter__(self) -> StartupWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pipe; the daemon's handle, if any, stays with the report."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def keep_channel(self) -> None:
        """Leave the pipe open, with the report: the daemon waits for its end (``_handover``)."""
        self.report.channel, self._fd = self._fd, -1

    def wait(
        self, timeout: float, interrupt_fd: int | None = None, grace: float | None = None
    ) -> StartupReport:
        """Wait up to ``timeout`` seconds for the outcome, or until ``interrupt_fd`` is readable.

        With a ``grace``, a daemon whose main has run that long without
        failing is ready: timed here, so that nothing in the daemon (a
        dispatcher paused for a fork) can hold the answer back.
        """
        deadline = time.monotonic() + timeout
        while not self._decided():
            grace_ends = self._grace_ends(grace, timeout, deadline)
            if grace_ends is not None and time.monotonic() >= grace_ends:
                self.report.outcome = "ready"
                break
            now = time.monotonic()
            if now >= deadline:
                break  # timed out
            events = self._poll(interrupt_fd, min(deadline, grace_ends or deadline) - now)
            if self._fd in events:
                self._read_available()
            if self._exited(events):
                self._read_available()  # its last words may still be in the pipe
                if not self._decided():
                    self._failed("it exited before it was ready")
            elif self._eof and self.report.process is None and not self._decided():
                self._failed("it exited before it was ready")
            if interrupt_fd in events and not self._decided():
                self.report.outcome = "interrupted"
        return self.report

    def _grace_ends(self, grace: float | None, timeout: float, deadline: float) -> float | None:
        """When main's start grace ends; told "wait", ``grace`` before the timeout instead.

        A postponed grace ends by the deadline at the latest: a main that has
        not failed by then is ready, as the daemon decides too.
        """
        if grace is None or self._main_at is None:
            return None
        if self._postponed:
            return min(self._main_at + max(grace, timeout - grace), deadline)
        return self._main_at + grace

    def _exited(self, events: dict[int, int]) -> bool:
        """Whether the daemon has exited, as ``events`` say (or, polling, a look)."""
        process = self.report.process
        if process is None:
            return False
        exit_fd = process.fileno()
        return exit_fd in events if exit_fd is not None else process.has_exited()

    def _poll(self, interrupt_fd: int | None, seconds: float) -> dict[int, int]:
        poller = select.poll()
        if not self._eof:
            poller.register(self._fd, select.POLLIN)
        if self.report.process is not None:
            exit_fd = self.report.process.fileno()
            if exit_fd is None:  # only polling tells: look again soon
                seconds = min(seconds, ProcessHandle.POLL_INTERVAL)
            else:
                poller.register(exit_fd, select.POLLIN)
        if interrupt_fd is not None:
            poller.register(interrupt_fd, select.POLLIN)
        return dict(poller.poll(seconds * 1000))

    def learn_pid(self, timeout: float) -> int | None:
        """Read on until the daemon has said its pid (or the pipe ended); return it."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while self.report.pid is None and not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if poller.poll(remaining * 1000):
                self._read_available()
        return self.report.pid

    def _decided(self) -> bool:
        return self.report.outcome != "timeout"

    def _failed(self, reason: str) -> None:
        self.report.outcome = "failed"
        self.report.reason = reason

    def _read_available(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self._eof = self.report.pipe_ended = True
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._handle(line.decode("utf-8", "replace"))

    def _handle(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "pid" and rest.isdigit():
            self.report.pid = int(rest)
            # None when it is gone already: its "fail" line, if any, follows
            # in the pipe, and end-of-file decides if there is none.
            self.report.process = ProcessHandle.open(self.report.pid)
        elif word == "main" and self._main_at is None:
            self._main_at = time.monotonic()
        elif word == "wait":
            self._postponed = True
        elif word == "ready" and not self._decided():
            self.report.outcome = "ready"
        elif word == "done" and not self._decided():
            self.report.outcome = "finished"
            self.report.reason = f"status {rest}"
        elif word == "fail" and not self._decided():
            self._failed(rest)
