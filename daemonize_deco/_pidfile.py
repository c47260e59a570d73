"""The pidfile: the daemon's pid in a file that stays ``flock``-ed for its whole life.

"Running" means "the lock is held", never "a file with a number in it
exists": pids are reused, and a daemon killed with SIGKILL leaves its file
behind.  A pid read from the file is trusted only while the lock is held and
only if that process really has the file open, so a stale or forged number
never leads to a signal.

The order of steps follows what lock-file libraries learned the hard way:
open without following symlinks and without truncating (a contender that
loses the race must not wipe the holder's pid), take the lock, check that
the locked file is still the one at the path (a daemon that was exiting may
have unlinked it meanwhile), and only then truncate and write.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from ._beside import is_trusted
from ._errors import PidFileError
from ._lastrun import LastRun
from ._platform import has_proc
from ._proc import holds_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

    from ._looking import PidFileState

__all__ = ["LAST_WORDS_START", "PidFile", "distrust", "parse_pid", "try_lock", "user_name"]

PIDFILE_MODE = 0o644
# A last-run record (``_lastrun``) starts so; a pid never does (and garbage
# that starts so is still garbage: it must parse as a record).
LAST_WORDS_START = b"pid="
_PID_MAX = 4_194_304  # PID_MAX_LIMIT on 64-bit Linux
_REPLACE_ATTEMPTS = 10


def parse_pid(content: bytes) -> int | None:
    """Return the pid a pidfile's content names, or None for anything else."""
    text = content.strip()
    if not text or not text.isdigit() or len(text) > 7:
        return None
    pid = int(text)
    return pid if 0 < pid <= _PID_MAX else None


def _describe_open_error(path: str, exc: OSError, what: str = "pidfile") -> str:
    if exc.errno in (errno.ELOOP, errno.EACCES) and os.path.islink(path):
        # EACCES too: with fs.protected_symlinks the kernel refuses first.
        return f"cannot use {what} {path}: it is a symbolic link, which is refused, not followed"
    reasons = {
        errno.EISDIR: "it is a directory",
        errno.ENOTDIR: "a component of the path is not a directory",
        errno.EACCES: "permission denied",
        errno.EROFS: "read-only file system",
    }
    directory = os.path.dirname(path)
    if exc.errno == errno.ENOENT and os.path.isdir(directory):
        # The directory is there, yet the file cannot be made (procfs, sysfs).
        reason = f"the file system of {directory} does not let files be created there"
    elif exc.errno == errno.ENOENT:
        reason = f"directory {directory} does not exist"
    else:
        reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    return f"cannot use {what} {path}: {reason}"


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISLNK: "a symbolic link",
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _named_in(content: bytes) -> int | None:
    """The pid a pidfile's content names: a pid, or the pid of a last-run record left in it."""
    pid = parse_pid(content[:32])
    if pid is None and content.startswith(LAST_WORDS_START):
        run = LastRun.from_text(content.decode("utf-8", "replace"))
        pid = None if run is None else run.pid
    return pid


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def user_name(uid: int) -> str:
    """The name of user ``uid`` (the number when it has none)."""
    import pwd  # noqa: PLC0415 -- only messages about other users need it

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class PidFile:
    """A pidfile at ``path``, locked with ``flock`` by the process that runs the service.

    ``owners`` are the uids a pidfile may belong to (root, the user asking,
    the service's user): one of another user's, planted in a shared
    directory, is never believed, and ``acquire`` replaces it when it may.
    """

    def __init__(
        self, path: str, owners: Collection[int] | None = None, *, what: str = "pidfile"
    ) -> None:
        self.path = path
        self.what = what  # what messages call it (``_handover`` locks a file the same way)
        self.owners = frozenset({0, os.geteuid()} if owners is None else owners)
        self._fd: int | None = None
        self.last_words: bytes | None = None  # left in the file when it cannot be removed
        self.previous_pid: int | None = None  # what the file named when acquire() locked it
        self.adopted = False  # passed by the instance a restart replaces

    # -- opening -----------------------------------------------------------

    def _open(self, flags: int) -> int:
        """Open the path as a regular file, never following a symlink, never blocking."""
        # O_NONBLOCK: opening a FIFO for reading would otherwise hang forever.
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
        try:
            fd = os.open(self.path, flags, PIDFILE_MODE)
        except OSError as exc:
            raise PidFileError(
                _describe_open_error(self.path, exc, self.what), path=self.path
            ) from exc
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise PidFileError(
                f"cannot use {self.what} {self.path}: it is {_file_kind(mode)}", path=self.path
            )
        return fd

    def open_existing(self) -> int | None:
        """Open the pidfile for reading only; None when there is none (nothing is created)."""
        try:
            return self._open(os.O_RDONLY)
        except PidFileError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return None
            raise

    def names(self, fd: int) -> bool:
        """Whether the path still names the file open on ``fd`` (it was not unlinked)."""
        try:
            at_path = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)

    # -- the holder's side -------------------------------------------------

    def acquire(self) -> bool:
        """Take the lock; False when another process holds it.

        On success the file is emptied and set to mode 0644; the pid is written
        later by :meth:`write_pid`.  Raises :class:`PidFileError` when the path
        cannot be used.
        """
        attempts = 0
        while True:
            if attempts < _REPLACE_ATTEMPTS:
                fd = self._open_to_lock()
            elif attempts < 2 * _REPLACE_ATTEMPTS:
                fd = self._put_in_place()  # another user keeps creating it: replace in one step
            else:
                raise PidFileError(f"cannot use {self.what} {self.path}: it keeps changing")
            if fd is None:
                attempts += 1
                continue  # a planted file was removed: create ours
            if not try_lock(fd):
                os.close(fd)
                return False
            if self.names(fd):
                break
            os.close(fd)  # an exiting holder unlinked it between our open and lock: reopen
        self.previous_pid = _named_in(os.pread(fd, 4096, 0))
        try:
            os.ftruncate(fd, 0)
            if stat.S_IMODE(os.fstat(fd).st_mode) != PIDFILE_MODE:
                os.fchmod(fd, PIDFILE_MODE)  # fixed whatever the umask says
        except OSError as exc:
            os.close(fd)
            raise PidFileError(f"cannot write {self.what} {self.path}: {exc.strerror}") from exc
        self._fd = fd
        return True

    def _open_to_lock(self) -> int | None:
        """Open (or create) the pidfile for writing; None when a planted one was removed.

        Another user may have created the name first in a shared directory,
        to write a pid of theirs in it later: such a file is unlinked (root
        may, even in a sticky directory) and a fresh one created, or refused
        with the reason when we may not remove it.
        """
        try:
            fd = self._open(os.O_RDWR | os.O_CREAT)
        except PidFileError:
            # A symlink or FIFO planted there, or (fs.protected_regular) another
            # user's file in a sticky directory, which O_CREAT may not open.
            found = self.foreign_at_path()
            if found is None:
                raise
            self.remove_foreign(found)
            return None
        found = os.fstat(fd)
        if is_trusted(found, self.owners):
            return fd
        os.close(fd)
        self.remove_foreign(found)
        return None

    def _put_in_place(self) -> int | None:
        """A locked file of our own, renamed over what another user keeps creating at the path.

        Unlinking theirs and creating ours is two steps, and a loop of theirs
        can win the moment between every time; a rename replaces in one.
        (Only ever over a name found not to be trusted.)
        """
        directory, name = os.path.split(self.path)
        temporary = f"{directory}/.{name}.{os.urandom(8).hex()}"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temporary, flags, PIDFILE_MODE)
        except OSError as exc:
            raise PidFileError(f"cannot create {self.what} {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a file nobody else has seen: never contended
            replace = self.foreign_at_path() is not None or not os.path.lexists(self.path)
            if replace:
                os.rename(temporary, self.path)
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise PidFileError(f"cannot replace {self.what} {self.path}: {exc.strerror}") from exc
        if not replace:  # a trusted one is there now (another start of ours): the plain way
            os.close(fd)
            os.unlink(temporary)
            return None
        return fd

    def foreign_at_path(self) -> os.stat_result | None:
        """What is at the path, when it is not to be trusted: another user's, or a hard link.

        A symlink or FIFO of a trusted user (root's own) is refused as it
        is, never removed.
        """
        try:
            found = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return None
        if found.st_uid not in self.owners:
            return found
        return found if stat.S_ISREG(found.st_mode) and found.st_nlink != 1 else None

    def remove_foreign(self, found: os.stat_result, why: str | None = None) -> None:
        """Unlink the untrusted file ``found`` if the path still names it (root only).

        Another user's file may also be that user's own service: only root,
        whose word is final, replaces it; anyone else is refused, with ``why``.
        """
        refusal = PidFileError(f"cannot use {self.what} {self.path}: {why or distrust(found)}")
        if os.geteuid() != 0:
            raise refusal
        try:
            now = os.stat(self.path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (found.st_dev, found.st_ino):
                # Unlink follows no symlink; rmdir takes only an empty directory.
                (os.rmdir if stat.S_ISDIR(found.st_mode) else os.unlink)(self.path)
        except FileNotFoundError:
            pass  # gone already: ours to create
        except OSError as exc:  # a directory with something in it is not ours to empty
            raise refusal from exc

    @classmethod
    def adopt(cls, path: str, fd: int, owners: Collection[int]) -> PidFile:
        """The pidfile whose locked descriptor another process passed us (``_handover``)."""
        pidfile = cls(path, owners)
        pidfile._fd = fd
        pidfile.adopted = True
        return pidfile

    def write_pid(self, pid: int) -> None:
        """Write ``pid`` as the file's whole content.

        Never empty nor mixed on the way: the new pid is written over the old
        one, padded with blanks that parse_pid strips, and only then cut to size.
        """
        fd = self._held_fd()
        text = f"{pid}\n".encode("ascii")
        os.pwrite(fd, text.ljust(os.fstat(fd).st_size, b" "), 0)
        os.ftruncate(fd, len(text))

    def handed_on(self) -> bool:
        """Whether the file names another process that has it open now.

        A ``restart`` that keeps the sockets passes the lock to the new
        instance and has its pid written here; the old one then leaves the
        file to it, and so does a starter whose new instance failed while the
        old one still runs.
        """
        return self._fd is not None and self._names_another(self._fd, os.getpid())

    def handed_on_seen_by(self, us: int) -> bool:
        """:meth:`handed_on` for a process that does not hold the file: other than ``us``.

        A supervisor's service (it closed the lock's descriptor at the fork)
        asks with its supervisor's pid, reading the file at its path.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return self._names_another(fd, us)
        finally:
            os.close(fd)

    def _names_another(self, fd: int, us: int) -> bool:
        """Whether the file open as ``fd`` names a process other than ``us`` that has it open."""
        pid = parse_pid(os.pread(fd, 32, 0))
        if pid is None or pid == us:
            return False
        held = os.fstat(fd)
        if holds_file(pid, (held.st_dev, held.st_ino), held.st_mtime) is not True:
            return False
        return has_proc() or _vouched_for(pid, self.path, self.owners)

    def names_us(self) -> bool:
        """Whether the locked file names this process (a handover committed to it)."""
        return self._fd is not None and parse_pid(os.pread(self._fd, 32, 0)) == os.getpid()

    def fileno(self) -> int:
        """The locked descriptor (to keep open when detaching)."""
        return self._held_fd()

    def keep_out_of_forks(self) -> None:
        """Close the lock's descriptor in children this process forks from now on.

        A child forked without exec (``multiprocessing``) would otherwise share
        the lock and keep it after the daemon died, blocking every later start.
        """
        global _held  # noqa: PLW0603 -- one holder per process, read by the fork hook
        if _held is None:
            os.register_at_fork(after_in_child=_forget_in_child)
        _held = self

    def put_back(self, pid: int) -> bool:
        """Recreate the pidfile at its path if it was deleted, replaced or overwritten.

        True when something was put back.

        The new file is locked and names ``pid``; it takes over our descriptor
        number (dup2), so nothing that knows that number needs telling, and
        the lock on the old, unreachable file goes with it.  Raises
        :class:`PidFileError` when the path cannot be used or another process
        holds the file now there.
        """
        held = self._held_fd()
        if self.names(held):
            if parse_pid(os.pread(held, 32, 0)) == pid:
                return False
            self.write_pid(pid)  # its content was overwritten (echo x > app.pid)
            return True
        replacement = PidFile(self.path, self.owners, what=self.what)
        if not replacement.acquire():
            raise PidFileError(f"another process holds the file now at {self.path}")
        new = replacement._held_fd()
        try:
            replacement.write_pid(pid)
            os.dup2(new, held, inheritable=False)
        except OSError as exc:
            replacement.remove()
            raise PidFileError(f"cannot write {self.what} {self.path}: {exc.strerror}") from exc
        os.close(new)
        return True

    def close(self) -> None:
        """Close our descriptor; the lock stays with whoever shares it (a daemon, its start)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Unlink the pidfile, if the path still names ours, then release the lock.

        A service that dropped privileges may not unlink it from a root-owned
        directory; it still has the file open for writing, so the pidfile then
        keeps :attr:`last_words` (the last-run record) instead of a pid, and
        says "not running, and here is how it ended" to whoever looks.
        """
        if self._fd is None:
            return
        if self.names(self._fd) and not self.handed_on():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except PermissionError:
                self._leave_last_words(self._fd)
        self.close()

    def _leave_last_words(self, fd: int) -> None:
        if self.last_words is None:
            return
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.last_words, 0)
        except OSError:
            pass  # a full disk: the lock is released all the same

    def _held_fd(self) -> int:
        if self._fd is None:
            raise PidFileError(f"pidfile {self.path} is not locked by this process")
        return self._fd

    # -- everyone else's side (``_looking``, loaded by those who look) --------

    def inspect(self, settle: float = 1.0) -> PidFileState:
        """Tell whether the service runs, without creating, truncating or locking for long."""
        from ._looking import inspect  # noqa: PLC0415

        return inspect(self, settle)

    def is_held_by(self, pid: int) -> bool:
        """Whether the pidfile names ``pid`` and that process has it open."""
        from ._looking import is_held_by  # noqa: PLC0415

        return is_held_by(self, pid)

    def remove_if_stale(self) -> bool:
        """Unlink the pidfile if nobody holds its lock; True when it was removed."""
        from ._looking import remove_if_stale  # noqa: PLC0415

        return remove_if_stale(self)

    def remove_if_squatted(self) -> bool:
        """Unlink the pidfile if only other users' processes hold its lock; True if gone."""
        from ._looking import remove_if_squatted  # noqa: PLC0415

        return remove_if_squatted(self)

    def owner(self) -> int:
        """The uid that owns the pidfile (-1 when there is none)."""
        try:
            return os.stat(self.path, follow_symlinks=False).st_uid
        except OSError:
            return -1


def distrust(found: os.stat_result) -> str:
    """Why what is at the pidfile's path is not to be trusted."""
    if stat.S_ISREG(found.st_mode) and found.st_nlink != 1:
        return "it has another name (a hard link to it), so writing it would write elsewhere"
    owner = user_name(found.st_uid)
    what = (
        f"it belongs to user {owner}, who could write any pid in it"
        if stat.S_ISREG(found.st_mode)
        else f"it is {_file_kind(found.st_mode)} of user {owner}'s"
    )
    return f"{what}; remove it, or keep the pidfile in a directory of the service's own"


_held: PidFile | None = None


def _vouched_for(pid: int, path: str, owners: frozenset[int]) -> bool:
    """Without /proc: whether ``pid`` is a service of ours (``_platform_sockets.vouches_for``).

    A successor is ready, so it listens on its control socket, before its
    pid is written here; a process the file was overwritten to name does not.
    """
    from ._platform_sockets import vouches_for  # noqa: PLC0415 -- loaded by the claim already

    return vouches_for(pid, path, owners) is not False


def _forget_in_child() -> None:
    if _held is not None and _held._fd is not None:
        os.close(_held._fd)
        _held._fd = None
