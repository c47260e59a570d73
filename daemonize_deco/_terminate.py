"""Stopping a process: SIGTERM, a wait, then SIGKILL to its group.

Pids are reused, so nothing here signals a bare pid.  A process is first
pinned (``_platform_process.ProcessHandle``: a pidfd on Linux), checked, and
then signalled through the handle, so the signal can only reach the process
that was checked.
Loaded by the commands that stop a service, and by a daemon only when a
run that started processes ends (``_descendants``) or a restart that
replaced it died before the old instance was gone (``_handover``).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import os
import select
import time

from ._platform import HAS_MEMFD, has_proc
from ._platform_process import ProcessHandle, group_lives
from ._proc import BADGE_LINK, fd_targets, group_members, read_stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Literal

__all__ = ["Ending", "end_pinned", "terminate"]

_KILL_WAIT = 5.0


def _own_process_group(pid: int) -> int | None:
    """The process group to kill with ``pid``: only one daemonize_deco made for it.

    A detached daemon wears a badge (a memfd named after its group, see
    ``_detach.wear_group_badge``; where there are none, ``_detached_group``).
    Without one (``run`` shares its caller's group: a shell, sshd, cron) only
    the process itself is signalled, even when the caller leads its own session.
    """
    if not (HAS_MEMFD and has_proc()):
        return _detached_group(pid)
    stat = read_stat(pid)
    if stat is None:
        return None
    for target in fd_targets(pid):
        if target.startswith(BADGE_LINK):
            badge = target[len(BADGE_LINK) :].split(" ", 1)[0]
            mine = badge.isdigit() and int(badge) == stat.pgrp
            return stat.pgrp if mine and stat.pgrp not in (os.getpgrp(), 0, 1) else None
    return None


def _detached_group(pid: int) -> int | None:
    """Where no badge can be worn: the group of a session whose leader is gone.

    ``start`` detaches with setsid in a first child that forks the daemon and
    exits, so the daemon's group is its session, led by nobody.  ``run``
    shares its caller's group, whose leader (a shell, sshd, cron) lives, or
    leads it itself: neither is taken.  A pid is not given out again while a
    group of that id exists, so a leader that is gone stays gone.
    """
    try:
        group, session = os.getpgid(pid), os.getsid(pid)
    except OSError:
        return None  # gone, or another session the system will not tell about
    if group != session or group == pid or group in (os.getpgrp(), 0, 1):
        return None
    try:
        os.kill(group, 0)
    except ProcessLookupError:
        return group
    except OSError:
        pass  # the leader lives, as another user
    return None


class Ending:
    """How a process ended under :func:`terminate`.

    ``leftovers`` counts the processes still in its group afterwards, ended
    too; None when some were but no one could count them (no /proc).
    """

    __slots__ = ("how", "leftovers")

    def __init__(self, how: Literal["stopped", "killed"], leftovers: int | None = 0) -> None:
        self.how = how
        self.leftovers = leftovers


def terminate(process: ProcessHandle, timeout: float) -> Ending:
    """Send SIGTERM and wait up to ``timeout`` seconds; then SIGKILL its group.

    After a graceful exit, what the daemon left running in its own process
    group (workers it forked or spawned and never stopped) gets SIGTERM and,
    after ``timeout`` more seconds, SIGKILL, so a stop leaves no orphan.
    Raises PermissionError when the process may not be signalled and
    TimeoutError when even SIGKILL did not end it.
    """
    pid = process.pid
    group = _own_process_group(pid)  # read while the process is surely alive
    if not process.send(signal.SIGTERM):
        return Ending("stopped")
    if process.wait(timeout):
        return Ending("stopped", _end_group(group, timeout) if group is not None else 0)
    try:
        # The daemon is still alive here, so its group id cannot have been reused.
        if group is not None:
            os.killpg(group, signal.SIGKILL)
        elif not process.send(signal.SIGKILL):
            return Ending("stopped")
    except ProcessLookupError:
        return Ending("stopped")
    if not process.wait(_KILL_WAIT):
        raise TimeoutError(f"pid {pid} is still alive {_KILL_WAIT:g}s after SIGKILL")
    return Ending("killed")


def _end_group(pgid: int, timeout: float) -> int | None:
    """SIGTERM what is left in ``pgid``, SIGKILL it after ``timeout``; return how many."""
    members = group_members(pgid)
    if members is None:
        return _end_unseen_group(pgid, timeout)
    handles = [h for h in map(ProcessHandle.open, members) if h is not None]
    try:
        # Members are alive and hold the group id, so it names no one else.
        _end(handles, timeout, lambda signum: os.killpg(pgid, signum))
    finally:
        for handle in handles:
            handle.close()
    return len(handles)


def end_pinned(
    handles: Sequence[ProcessHandle],
    timeout: float,
    interrupt: int | None = None,
    before_kill: Callable[[Sequence[ProcessHandle]], object] | None = None,
) -> None:
    """SIGTERM the processes the handles pin, SIGKILL those left ``timeout`` seconds later.

    Sooner, when ``interrupt`` (a descriptor: Ctrl-C to a start) becomes readable.
    ``before_kill`` is given the handles of those about to get SIGKILL, still alive.
    """

    def send(signum: int) -> None:
        for handle in handles:
            handle.send(signum)  # False: exited already

    _end(handles, timeout, send, interrupt, before_kill)


def _end_unseen_group(pgid: int, timeout: float) -> int | None:
    """Where no one can list a group: SIGTERM it while it has members, SIGKILL it ``timeout`` later.

    :func:`group_lives` says whether anyone is left.  A group's id is not
    given out again while it has a member, so only the last member's exit in
    the microseconds between that probe and the signal, and a new group
    taking the very same number then, could misdirect one: pids are handed
    out in turn, and that number was its leader's, long gone.  Returns 0 when
    none was left, None when some were (how many, no one can say).
    """
    if not group_lives(pgid):
        return 0
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        pause = 0.01
        while group_lives(pgid):
            if time.monotonic() >= deadline:
                os.killpg(pgid, signal.SIGKILL)
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
    except ProcessLookupError:
        pass  # all gone meanwhile
    return None


def _end(
    handles: Sequence[ProcessHandle],
    timeout: float,
    send: Callable[[int], object],
    interrupt: int | None = None,
    before_kill: Callable[[Sequence[ProcessHandle]], object] | None = None,
) -> None:
    """``send(SIGTERM)``, wait for every handle, ``send(SIGKILL)`` if some are left."""
    if not handles:
        return
    try:
        send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        remaining = list(handles)
        while remaining and (left := deadline - time.monotonic()) > 0:
            remaining = [h for h in remaining if not h.has_exited()]
            if remaining and _wait_for_one(remaining[0], interrupt, left):
                break  # interrupted: no more waiting
        remaining = [h for h in remaining if not h.has_exited()]  # as they are now
        if remaining:
            if before_kill is not None:
                before_kill(remaining)
            send(signal.SIGKILL)
    except ProcessLookupError:
        pass  # all gone meanwhile


def _wait_for_one(process: ProcessHandle, interrupt: int | None, timeout: float) -> bool:
    """Wait for ``process``'s exit, up to ``timeout``; True when ``interrupt`` came first."""
    if interrupt is None:
        process.wait(timeout)
        return False
    poller = select.poll()
    exit_fd = process.fileno()
    if exit_fd is None:  # only polling tells: look again soon
        timeout = min(timeout, ProcessHandle.POLL_INTERVAL)
    else:
        poller.register(exit_fd, select.POLLIN)
    poller.register(interrupt, select.POLLIN)
    ready = dict(poller.poll(max(0, int(timeout * 1000))))
    return interrupt in ready
