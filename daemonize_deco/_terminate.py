"""Stopping a process: SIGTERM, a wait, then SIGKILL to its group.

Pids are reused, so nothing here signals a bare pid.  A process is first
pinned with a pidfd (``_proc.open_pidfd``), checked, and then signalled
through the pidfd, so the signal can only reach the process that was checked.
Loaded by the commands that stop a service, and by a daemon only when a
run that started processes ends (``_descendants``) or a restart that
replaced it died before the old instance was gone (``_handover``).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import os
import select
import time

from ._proc import BADGE_LINK, fd_targets, open_pidfd, read_stat, wait_exit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Literal

__all__ = ["Ending", "end_pinned", "terminate"]

_KILL_WAIT = 5.0


def _own_process_group(pid: int) -> int | None:
    """The process group to kill with ``pid``: only one daemonize_deco made for it.

    A detached daemon wears a badge (a memfd named after its group, see
    ``_detach.wear_group_badge``).  Without one (``run`` shares its caller's
    group: a shell, sshd, cron) only the process itself is signalled, even
    when the caller leads its own session.
    """
    stat = read_stat(pid)
    if stat is None:
        return None
    for target in fd_targets(pid):
        if target.startswith(BADGE_LINK):
            badge = target[len(BADGE_LINK) :].split(" ", 1)[0]
            mine = badge.isdigit() and int(badge) == stat.pgrp
            return stat.pgrp if mine and stat.pgrp not in (os.getpgrp(), 0, 1) else None
    return None


class Ending:
    """How a process ended under :func:`terminate`.

    ``leftovers`` counts the processes still in its group afterwards, ended too.
    """

    __slots__ = ("how", "leftovers")

    def __init__(self, how: Literal["stopped", "killed"], leftovers: int = 0) -> None:
        self.how = how
        self.leftovers = leftovers


def terminate(pidfd: int, pid: int, timeout: float) -> Ending:
    """Send SIGTERM and wait up to ``timeout`` seconds; then SIGKILL its group.

    After a graceful exit, what the daemon left running in its own process
    group (workers it forked or spawned and never stopped) gets SIGTERM and,
    after ``timeout`` more seconds, SIGKILL, so a stop leaves no orphan.
    Raises PermissionError when the process may not be signalled and
    TimeoutError when even SIGKILL did not end it.
    """
    group = _own_process_group(pid)  # read while the process is surely alive
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    except ProcessLookupError:
        return Ending("stopped")
    if wait_exit(pidfd, timeout):
        return Ending("stopped", _end_group(group, timeout) if group is not None else 0)
    try:
        # The daemon is still alive here, so its group id cannot have been reused.
        if group is not None:
            os.killpg(group, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        return Ending("stopped")
    if not wait_exit(pidfd, _KILL_WAIT):
        raise TimeoutError(f"pid {pid} is still alive {_KILL_WAIT:g}s after SIGKILL")
    return Ending("killed")


def _group_members(pgid: int) -> list[int]:
    """Live (not yet exited) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X"):
                members.append(int(entry))
    return members


def _end_group(pgid: int, timeout: float) -> int:
    """SIGTERM what is left in ``pgid``, SIGKILL it after ``timeout``; return how many."""
    pidfds = [fd for fd in map(open_pidfd, _group_members(pgid)) if fd is not None]
    try:
        # Members are alive and hold the group id, so it names no one else.
        _end(pidfds, timeout, lambda signum: os.killpg(pgid, signum))
    finally:
        for fd in pidfds:
            os.close(fd)
    return len(pidfds)


def end_pinned(
    pidfds: Sequence[int],
    timeout: float,
    interrupt: int | None = None,
    before_kill: Callable[[Sequence[int]], object] | None = None,
) -> None:
    """SIGTERM the processes the pidfds pin, SIGKILL those left ``timeout`` seconds later.

    Sooner, when ``interrupt`` (a descriptor: Ctrl-C to a start) becomes readable.
    ``before_kill`` is given the pidfds of those about to get SIGKILL, still alive.
    """

    def send(signum: int) -> None:
        for fd in pidfds:
            try:
                signal.pidfd_send_signal(fd, signum)
            except ProcessLookupError:
                continue  # exited already

    _end(pidfds, timeout, send, interrupt, before_kill)


def _end(
    pidfds: Sequence[int],
    timeout: float,
    send: Callable[[int], object],
    interrupt: int | None = None,
    before_kill: Callable[[Sequence[int]], object] | None = None,
) -> None:
    """``send(SIGTERM)``, wait for every pidfd, ``send(SIGKILL)`` if some are left."""
    if not pidfds:
        return
    try:
        send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        remaining = list(pidfds)
        while remaining and (left := deadline - time.monotonic()) > 0:
            remaining = [fd for fd in remaining if not wait_exit(fd, 0)]
            if remaining and _wait_for_one(remaining[0], interrupt, left):
                break  # interrupted: no more waiting
        remaining = [fd for fd in remaining if not wait_exit(fd, 0)]  # as they are now
        if remaining:
            if before_kill is not None:
                before_kill(remaining)
            send(signal.SIGKILL)
    except ProcessLookupError:
        pass  # all gone meanwhile


def _wait_for_one(pidfd: int, interrupt: int | None, timeout: float) -> bool:
    """Wait for ``pidfd``'s exit, up to ``timeout``; True when ``interrupt`` came first."""
    if interrupt is None:
        wait_exit(pidfd, timeout)
        return False
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(interrupt, select.POLLIN)
    ready = dict(poller.poll(max(0, int(timeout * 1000))))
    return interrupt in ready
