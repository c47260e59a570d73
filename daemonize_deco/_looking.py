"""What a pidfile says to those who look at it: status, stop, a start that finds it locked.

The holder's side is ``_pidfile``; this one is loaded only by those who
look, so a daemon (which keeps every module its start loaded) carries none
of it.  A pid read from the file is believed only while the lock is held
and that process has the file open.  A lock whose holders are all another
user's processes (anyone may open a world-readable pidfile and lock it) is
a squatter's, not the service's: who holds it is read off ``/proc/locks``,
and, when the process that took it is gone, off each process's descriptors.
Without ``/proc`` (macOS, the BSDs) the pid the locked file names is
believed while that process runs and had started by the file's last write
(``_proc.holds_file``) and, where the sockets are files, has its control
socket in the service's own directory (a process named by a hand that
overwrote the file has none); no squatter can be told from the service.
"""

from __future__ import annotations

import os
import time

from ._beside import is_trusted
from ._errors import PidFileError
from ._lastrun import LastRun
from ._pidfile import LAST_WORDS_START, distrust, parse_pid, try_lock, user_name
from ._platform import has_proc
from ._proc import descriptor_info, flock_holders, holds_file, openers, real_uid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._pidfile import PidFile

__all__ = ["PidFileState", "inspect", "is_held_by", "remove_if_squatted", "remove_if_stale"]

_RETRY_INTERVAL = 0.01
_CREATION_WINDOW = 1.0


class PidFileState:
    """What a pidfile says: whether it exists, whether its lock is held, and the pid.

    ``last_words``: the content of a pidfile its service could not remove
    and left its last-run record in (see :meth:`PidFile.remove`).
    ``foreign_owner``: the uid of the user a file not to be trusted belongs
    to (another user planted it in a shared directory): it tells nothing.
    """

    __slots__ = ("distrust", "exists", "foreign_owner", "last_words", "pid", "running")

    def __init__(
        self,
        *,
        exists: bool,
        running: bool,
        pid: int | None = None,
        last_words: bytes = b"",
        foreign_owner: int | None = None,
        distrust: str = "",
    ) -> None:
        self.exists = exists
        self.running = running
        self.pid = pid
        self.last_words = last_words
        self.foreign_owner = foreign_owner
        self.distrust = distrust  # why, then

    def __repr__(self) -> str:
        return f"PidFileState(exists={self.exists}, running={self.running}, pid={self.pid})"


_ABSENT = PidFileState(exists=False, running=False)


def _foreign_state(found: os.stat_result) -> PidFileState:
    return PidFileState(
        exists=True, running=False, foreign_owner=found.st_uid, distrust=distrust(found)
    )


_AT_ONCE, _SOON = object(), object()  # when to look at a pidfile again
# Empty, unlocked, and nobody has it open to write: a start killed before it
# wrote a pid, or one whose lock attempt met a looker's probing lock and is
# about to try again (a loaded machine may hold it there for a while).
_EMPTY = object()
_LEFT_EMPTY = PidFileState(exists=True, running=False)


def _identity(fd: int) -> tuple[int, int]:
    return _identity_of(os.fstat(fd))


def _identity_of(found: os.stat_result) -> tuple[int, int]:
    return found.st_dev, found.st_ino


def _just_created(fd: int) -> bool:
    """Whether the file changed within the last second (a start may be under way)."""
    return time.time() - os.fstat(fd).st_ctime < _CREATION_WINDOW


def inspect(pidfile: PidFile, settle: float = 1.0) -> PidFileState:
    """Tell whether the service runs, without creating, truncating or locking for long.

    While the lock is held but the file names no process that has it open
    (a start between lock and pid write), look again for up to ``settle``
    seconds; after that the state is "running" with an unknown pid.  An
    empty file nobody holds is called left behind only if it stays so as long.
    """
    deadline = time.monotonic() + settle
    while True:
        foreign = pidfile.foreign_at_path()
        if foreign is not None:
            return _foreign_state(foreign)
        fd = pidfile.open_existing()
        if fd is None:
            return _ABSENT
        try:
            state = _state_of(pidfile, fd)
        finally:
            os.close(fd)  # also drops the probing lock, if we took it
        if isinstance(state, PidFileState):
            return state
        if state is _AT_ONCE:
            continue  # an exiting holder unlinked it meanwhile: look again
        if time.monotonic() >= deadline:
            return _LEFT_EMPTY if state is _EMPTY else PidFileState(exists=True, running=True)
        time.sleep(_RETRY_INTERVAL)


def _state_of(pidfile: PidFile, fd: int) -> PidFileState | object:
    """What the open pidfile says, or when to look again (_AT_ONCE, _SOON, _EMPTY)."""
    found = os.fstat(fd)
    if not is_trusted(found, pidfile.owners):
        return _foreign_state(found)
    content = os.pread(fd, 32, 0)
    pid = parse_pid(content)
    if try_lock(fd):
        return _unlocked_state(pidfile, fd, content, pid)
    if pid is not None and _holds(pidfile, pid, found) is not False:
        return PidFileState(exists=True, running=True, pid=pid)
    if _squatter(pidfile, found, pid) is not None:  # another user's lock: not the service
        return PidFileState(exists=True, running=False, pid=pid)
    return _SOON


def _unlocked_state(
    pidfile: PidFile, fd: int, content: bytes, pid: int | None
) -> PidFileState | object:
    """What a pidfile whose lock we could take says: nothing runs (or a start is under way)."""
    if not pidfile.names(fd):
        return _AT_ONCE
    if content.startswith(LAST_WORDS_START):
        words = os.pread(fd, 4096, 0)
        if LastRun.from_text(words.decode("utf-8", "replace")) is not None:
            return PidFileState(exists=True, running=False, last_words=words)
    if content == b"":
        if _just_created(fd) or writers(_identity(fd)):
            return _SOON  # a starter between creating and locking it (on a busy machine, later)
        return _EMPTY
    return PidFileState(exists=True, running=False, pid=pid)


def is_held_by(pidfile: PidFile, pid: int) -> bool:
    """Whether the pidfile names ``pid`` and that process has it open."""
    fd = pidfile.open_existing()
    if fd is None:
        return False
    try:
        held = os.fstat(fd)
        named = parse_pid(os.pread(fd, 32, 0))
    finally:
        os.close(fd)
    if not is_trusted(held, pidfile.owners):
        return False
    return named == pid and _holds(pidfile, pid, held) is not False


def _holds(pidfile: PidFile, pid: int, found: os.stat_result) -> bool | None:
    """Whether ``pid``, which the pidfile ``found`` names, has it open (``_proc.holds_file``)."""
    held = holds_file(pid, _identity_of(found), found.st_mtime)
    if held and not has_proc():
        from ._platform_sockets import vouches_for  # noqa: PLC0415 -- only where there is no /proc

        if vouches_for(pid, pidfile.path, pidfile.owners) is False:
            return False  # an earlier process, not the service: the file was overwritten
    return held


def remove_if_stale(pidfile: PidFile) -> bool:
    """Unlink the pidfile if nobody holds its lock; True when it was removed.

    Raises :class:`PidFileError` when it is stale but may not be removed.
    """
    fd = pidfile.open_existing()
    if fd is None:
        return False
    try:
        if not is_trusted(os.fstat(fd), pidfile.owners):
            return False  # another user's: start replaces it, nothing else touches it
        if not try_lock(fd) or not pidfile.names(fd):
            return False
        os.unlink(pidfile.path)
    except OSError as exc:
        reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror
        raise PidFileError(
            f"cannot remove its stale pidfile {pidfile.path}: {reason}", path=pidfile.path
        ) from exc
    finally:
        os.close(fd)
    return True


def remove_if_squatted(pidfile: PidFile) -> bool:
    """Unlink the pidfile if only other users' processes hold its lock; True if gone.

    The file is world-readable, so anyone may open it and ``flock`` it
    (a stale one, after a crash) to make every start wait: such a lock
    is not the service's.
    """
    fd = pidfile.open_existing()
    if fd is None:
        return False
    try:
        found = os.fstat(fd)
        squatter = _squatter(pidfile, found, parse_pid(os.pread(fd, 32, 0)))
        if squatter is None:
            return False
        why = (
            f"its lock is held by user {user_name(squatter)}, not by the service; remove "
            "it, or keep the pidfile in a directory of the service's own"
        )
        pidfile.remove_foreign(found, why)
        return True
    finally:
        os.close(fd)


def _squatter(pidfile: PidFile, found: os.stat_result, named: int | None) -> int | None:
    """The user whose processes alone hold the lock on ``found``, if not one we trust.

    Never when the file names a process that has it open: that is the
    service, whatever user it became.  The lock's holders are those
    ``/proc/locks`` names that still have the file open (the start that
    took it is gone, its pid free), or, failing them, those whose
    descriptors on it carry the lock (a slow look, every descriptor).
    """
    identity = _identity_of(found)
    if named is not None and _holds(pidfile, named, found):
        return None
    holders = [pid for pid in lock_holders(identity) if holds_file(pid, identity)]
    uids = {owner_of(pid) for pid in holders or lockers(identity)}
    if not uids or None in uids or uids & pidfile.owners:
        return None
    return min(uid for uid in uids if uid is not None)


# -- who holds the lock, and who writes the file (``_proc``) -------------------


def lock_holders(identity: tuple[int, int]) -> list[int]:
    """The pids holding an ``flock`` on the file ``(st_dev, st_ino)`` (``/proc/locks``).

    The pid is the process that took the lock; the lock may live on in a
    child it shared the descriptor with.
    """
    return flock_holders(identity)


def owner_of(pid: int) -> int | None:
    """The real uid of ``pid`` (a set-user-ID program's too); None when it is gone."""
    return real_uid(pid)


def writers(identity: tuple[int, int]) -> list[int]:
    """Every other process we may look at that has the file ``(st_dev, st_ino)`` open to write.

    Read off ``/proc/PID/fdinfo``'s flags: commands that only look open read-only.
    """
    return [pid for pid in openers(identity) if _descriptor_info(pid, identity, _writes)]


def lockers(identity: tuple[int, int]) -> list[int]:
    """Every other process we may look at that holds an ``flock`` on the file.

    Through any descriptor of its own (``/proc/PID/fdinfo`` lists a
    descriptor's locks), unlike ``/proc/locks``, which names only the
    process that took the lock, gone perhaps, its pid free for another.
    """
    return [pid for pid in openers(identity) if _descriptor_info(pid, identity, _locks)]


def _writes(info: list[bytes]) -> bool:
    flags = [int(line.split()[1], 8) for line in info if line.startswith(b"flags:")]
    return bool(flags) and flags[0] & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


def _locks(info: list[bytes]) -> bool:
    return any(line.startswith(b"lock:") and b"FLOCK" in line for line in info)


def _descriptor_info(
    pid: int, identity: tuple[int, int], test: Callable[[list[bytes]], bool]
) -> bool:
    """Whether one of ``pid``'s descriptors on the file passes ``test`` (its fdinfo lines)."""
    for info in descriptor_info(pid, identity):
        try:
            if test(info):
                return True
        except ValueError:
            continue
    return False
