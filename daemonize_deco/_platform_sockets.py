"""Where the service's Unix sockets live, and who is at the other end of one: the seam's sockets.

The claim (``_claim``), the control socket (``_control``) and a replaced
instance's quiesce socket (``_handover``) need a name only the service can
take, and the commands need to know who answers on it.

- Where abstract socket names exist (Linux), they are used, as always: a
  name with no file, gone with the socket even after SIGKILL, and
  ``SO_PEERCRED`` names the pid and uid of whoever is at the other end.
- Elsewhere (macOS, FreeBSD) they are socket files (``claim``,
  ``control.PID``, ``quiet.HEX``) in a private directory beside the
  pidfile, ``PIDFILE.sockets``: mode 0700 and owned by the service's user.
  That directory is what keeps other users out: nobody else may reach a
  socket in it (connect needs search permission on the directory), nor put
  one there.  The service makes it (root makes it for ``user=`` before
  dropping privileges) and uses it only when it is a real directory, not a
  symlink, of its own user; one that another user planted is refused with
  the reason (:class:`PlantedError`), never fallen back from.  A command
  believes a socket in it only when the directory belongs to a user it
  trusts (root, itself, the service's ``user=``, the owner of the
  pidfile's directory) and nobody else may enter it.
- Peer credentials there: ``LOCAL_PEERCRED`` (a ``struct xucred``) gives
  the peer's uid, and its pid on FreeBSD 13 and later; ``LOCAL_PEERPID``
  gives the pid on macOS.  Neither can be tried on Linux, so that code is
  kept small (untested here); where the system says nothing (as under the
  simulated platforms), :func:`peer_credentials` is None and the
  directory's owner and mode are the whole check: a pid check ("is it the
  pid the pidfile names?") then rests on the file's name, ``control.PID``.
- A socket file whose socket is gone (SIGKILL) is found by a connect probe
  (ECONNREFUSED) and replaced; each is removed when its last holder closes
  it, and the directory, with what killed instances left in it, when the
  claim goes (the service's stop).
- Every path stays within macOS's 104-byte ``sun_path`` (103 bytes and the
  NUL, everywhere): when ``PIDFILE.sockets`` is too deep for that, or the
  service's user cannot reach the pidfile's directory (root's, 0700), the
  directory is ``/tmp/daemonize_deco-DIGEST`` instead, DIGEST a hash of the
  pidfile's path (not of the user: root's commands must find the directory
  of a service running as another user).  A name anyone can compute, in a
  directory anyone may write: when another user made it first, the service
  makes ``DIGEST.HEX``, HEX random, and commands find it among the
  ``DIGEST.*`` in ``/tmp`` by its owner.  Commands look in all, in order.
"""

from __future__ import annotations

import _socket
import errno
import os
import stat
import sys

from . import _proc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = [
    "HAS_PEERCRED",
    "PlantedError",
    "bind",
    "claim_address",
    "claim_addresses",
    "control_address",
    "datagram_address",
    "directories",
    "find_control",
    "find_quiet",
    "fnv1a",
    "has_abstract_sockets",
    "is_file",
    "peer_credentials",
    "prepare_directory",
    "quiet_address",
    "receive_descriptors",
    "remove_unused",
    "vouches_for",
]

_CLAIM_PREFIX = "daemonize_deco-claim:"
_NAME_LIMIT = 107  # sun_path is 108 bytes, the first of them the abstract namespace's NUL
_CONTROL_PREFIX = "daemonize_deco/"
_PEERCRED_SIZE = 12  # struct ucred: pid, uid, gid as C ints
_SOL_LOCAL = 0  # macOS and FreeBSD: getsockopt level of the LOCAL_* options
_LOCAL_PEERPID = 2  # macOS only (on FreeBSD, 2 is LOCAL_CREDS): asked only of a macOS xucred
_XUCRED_SIZE = 96  # room for FreeBSD's struct xucred (macOS's is shorter)
_XUCRED_PID_OFFSET = 80  # FreeBSD 13+: cr_pid, in the union after cr_groups[16]
_SUFFIX = ".sockets"
_SHORT_DIRECTORY = "/tmp/daemonize_deco-"
SUN_PATH_LIMIT = 103  # macOS's sun_path is 104 bytes, the last of them the NUL
_CLAIM, _CONTROL, _QUIET = "claim", "control.", "quiet."
_LONGEST_NAME = len(_QUIET) + 16  # "quiet." and the 16 hex digits of a quiesce name
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_BIND_ATTEMPTS = 3


def fnv1a(data: bytes) -> int:
    """A 64-bit digest without importing hashlib (milliseconds before every daemon is ready)."""
    digest = _FNV_OFFSET
    for byte in data:
        digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return digest


# The kernel's word for who is at the other end of a Unix socket (Linux).
HAS_PEERCRED = hasattr(_socket, "SO_PEERCRED")


class _Probed:
    abstract: bool | None = None


def has_abstract_sockets() -> bool:
    """Whether Unix sockets may have abstract names (Linux): no file, gone with the socket.

    OSError when there is no descriptor left to find out with (asked again then).
    """
    if _Probed.abstract is None:
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            probe.bind(f"\0daemonize-deco-probe/{os.getpid()}/{os.urandom(8).hex()}")
        except OSError:
            _Probed.abstract = False
        else:
            _Probed.abstract = True
        finally:
            probe.close()
    return _Probed.abstract


def _abstract() -> bool:
    """Whether to use abstract names; OSError when there is no descriptor left to find out with."""
    return has_abstract_sockets()


def directories(pidfile: str) -> list[str]:
    """Where ``pidfile``'s socket files may be, in order (where there are no abstract names).

    ``PIDFILE.sockets`` when its paths fit in ``sun_path``; then the short
    ``/tmp/daemonize_deco-DIGEST``, for a deep pidfile or a service whose
    ``user=`` cannot reach the pidfile's directory; then those of the short
    one's name and a random tail, ``DIGEST.HEX``, which a service makes when
    another user made the short one first (see :func:`_service_directory`).
    """
    short = _short_directory(pidfile)
    beside = pidfile + _SUFFIX
    unguessable = _unguessable_directories(short)
    if len(os.fsencode(beside)) + 1 + _LONGEST_NAME <= SUN_PATH_LIMIT:
        return [beside, short, *unguessable]
    return [short, *unguessable]


def _short_directory(pidfile: str) -> str:
    return f"{_SHORT_DIRECTORY}{fnv1a(os.fsencode(pidfile)):016x}"


def _unguessable_directories(short: str) -> list[str]:
    """The ``SHORT.HEX`` directories in ``/tmp``, whoever made them (callers check the owner)."""
    parent, prefix = os.path.split(short + ".")
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return sorted(os.path.join(parent, name) for name in names if name.startswith(prefix))


class _Chosen:
    """The directory this process's sockets are in, by pidfile (the same for all of them)."""

    folders: dict[str, str] = {}  # noqa: RUF012 -- one per process, by design


class PlantedError(PermissionError):
    """The socket directory is another user's, or not a directory: never used, never replaced."""


def _service_directory(pidfile: str) -> str:
    """The first of :func:`directories` this process may own (made if need be).

    PlantedError when ``PIDFILE.sockets`` is another user's: the pidfile's
    own directory lets others in, which no other directory mends.  In
    ``/tmp`` anyone may make any name first, so a short directory another
    user made is passed over for one of ours with a name nobody can guess
    (``DIGEST.HEX``), which commands find by its owner.  The last OSError
    when this process can reach none.
    """
    chosen = _Chosen.folders.get(pidfile)
    if chosen is not None:
        return chosen
    error: OSError = PermissionError(errno.EACCES, "no directory for its sockets")
    short = _short_directory(pidfile)
    folders = directories(pidfile)
    if short in folders:
        folders.append(f"{short}.{os.urandom(8).hex()}")  # the last resort: made anew
    for folder in folders:
        try:
            _own_directory(folder)
        except PlantedError:
            if folder != short and not folder.startswith(short + "."):
                raise
            continue  # made first by another user, in /tmp: the next
        except OSError as exc:
            error = exc  # one this user may not reach (user=): the next
            continue
        _Chosen.folders[pidfile] = folder
        _clear_abandoned([f for f in folders if f.startswith(short + ".")], folder)
        return folder
    raise error


def _clear_abandoned(unguessable: list[str], chosen: str) -> None:
    """Empty and remove our other ``SHORT.HEX`` directories: a killed instance's stale sockets.

    ``unguessable``: those :func:`directories` listed (``/tmp`` is read once).

    A live socket in one (an instance being replaced) keeps it; a bind
    into one removed meanwhile makes it again (:func:`bind`).
    """
    for folder in unguessable:
        if folder != chosen and _is_trusted_directory(folder, (os.geteuid(),)):
            _sweep(folder)
            try:
                os.rmdir(folder)
            except OSError:
                pass  # a live socket in it, or gone already


def claim_address(pidfile: str) -> str | bytes:
    """The address this service claims ``pidfile`` (an absolute path) on.

    An abstract name; or a socket file in the directory of its own it takes
    (:func:`directories`): OSError when it can have none.
    """
    if not _abstract():
        return os.path.join(_service_directory(pidfile), _CLAIM)
    name = (_CLAIM_PREFIX + pidfile).encode("utf-8", "surrogateescape")
    if len(name) <= _NAME_LIMIT:
        return b"\0" + name
    # Too long: the end of the path (where names differ) and a digest of all of it.
    tail = name[-(_NAME_LIMIT - len(_CLAIM_PREFIX) - 18) :]
    return b"\0" + f"{_CLAIM_PREFIX}{fnv1a(name):016x}".encode() + b":" + tail


def claim_addresses(pidfile: str, owners: Collection[int]) -> list[str | bytes]:
    """Where to ask for the service claiming ``pidfile``: in directories ``owners`` keep."""
    if _abstract():
        return [claim_address(pidfile)]
    return [os.path.join(folder, _CLAIM) for folder in _trusted(pidfile, owners)]


def control_address(pidfile: str) -> str:
    """A fresh address for this process's control socket.

    An abstract name is random, so no other user can take it first; a file
    is ``control.PID`` in the service's directory (OSError when it has none).
    """
    if _abstract():
        return f"\0{_CONTROL_PREFIX}{os.getpid()}/{os.urandom(16).hex()}"
    return os.path.join(_service_directory(pidfile), f"{_CONTROL}{os.getpid()}")


def quiet_address(pidfile: str, name: str) -> str:
    """The address to listen on for a quiesce, called ``name`` (``daemonize_deco/quiesce/HEX``)."""
    if _abstract():
        return "\0" + name
    return os.path.join(_service_directory(pidfile), _QUIET + name[-16:])


def find_quiet(pidfile: str, name: str, owners: Collection[int]) -> str | None:
    """The address of the quiesce socket ``name`` that the replaced instance listens on."""
    try:
        abstract = _abstract()
    except OSError:
        return None  # no descriptor left: it is stopped without the quiesce
    if abstract:
        return "\0" + name
    return _socket_in(pidfile, _QUIET + name[-16:], owners)


def _trusted(pidfile: str, owners: Collection[int]) -> list[str]:
    return [folder for folder in directories(pidfile) if _is_trusted_directory(folder, owners)]


def _socket_in(pidfile: str, name: str, owners: Collection[int]) -> str | None:
    """The socket file ``name`` in the first directory of ``pidfile`` that ``owners`` keep."""
    for folder in _trusted(pidfile, owners):
        path = os.path.join(folder, name)
        try:
            if stat.S_ISSOCK(os.stat(path, follow_symlinks=False).st_mode):
                return path
        except OSError:
            continue
    return None


def is_file(address: str | bytes) -> bool:
    """Whether ``address`` is a socket file (not an abstract name)."""
    return address[:1] not in ("\0", b"\0")


def find_control(pid: int, pidfile: str, owners: Collection[int]) -> str | None:
    """The address of the control socket ``pid`` listens on; None when it has none.

    An abstract name is found among the sockets the process itself holds
    (``/proc``), never guessed; None too when we may not look.  A file is
    ``control.PID`` in a directory that ``owners`` keep.
    """
    try:
        abstract = _abstract()
    except OSError:
        return None  # no descriptor left to look with (nor, then, to connect)
    if abstract:
        names = _proc.unix_socket_names(pid)
        for name in names or ():
            if name.startswith("@" + _CONTROL_PREFIX):
                return "\0" + name[1:]
        return None
    return _socket_in(pidfile, f"{_CONTROL}{pid}", owners)


def vouches_for(pid: int, pidfile: str, owners: Collection[int]) -> bool | None:
    """Whether ``pid`` has its control socket file in a directory ``owners`` keep for ``pidfile``.

    Where nothing shows another process's descriptors, this tells the
    service from a process a pidfile was overwritten to name.  None where
    the sockets have abstract names, or there is no such directory, or it
    is closed to us (nothing to tell by), or no descriptor is left.
    """
    try:
        if _abstract():
            return None
    except OSError:
        return None
    folders = _trusted(pidfile, owners)
    for folder in folders:
        try:
            found = os.stat(os.path.join(folder, f"{_CONTROL}{pid}"), follow_symlinks=False)
        except PermissionError:
            return None  # the service's directory, closed to us: we may not look
        except OSError:
            continue
        if stat.S_ISSOCK(found.st_mode):
            return True
    return False if folders else None


def datagram_address(text: str) -> str | None:
    """The address of ``NOTIFY_SOCKET``: ``@name`` is an abstract name, ``/path`` a file."""
    if text.startswith("@"):
        return "\0" + text[1:]
    return text if text.startswith("/") else None


def peer_credentials(
    sock: _socket.socket, address: str | bytes | None = None
) -> tuple[int | None, int] | None:
    """The pid (None when unknown) and uid of the process at the other end of a Unix socket.

    None when the system does not say: then only the socket's directory
    tells who may be there (see the module's docstring).  Connected to the
    socket file ``address``, the pid is not asked: the file's name and
    directory say whose it is, and which pid macOS reports for a listening
    socket passed on (``_handover``) cannot be checked here.
    """
    if HAS_PEERCRED:
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _PEERCRED_SIZE)
        return int.from_bytes(creds[0:4], sys.byteorder), int.from_bytes(creds[4:8], sys.byteorder)
    option = getattr(_socket, "LOCAL_PEERCRED", None)
    if option is None:
        return None
    pid, uid = _local_peer(sock, option)
    return (None if address is not None and is_file(address) else pid), uid


def _local_peer(sock: _socket.socket, option: int) -> tuple[int | None, int]:
    """The pid and uid in ``LOCAL_PEERCRED`` (and ``LOCAL_PEERPID``): macOS, FreeBSD."""
    # struct xucred: u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; ...
    xucred = sock.getsockopt(_SOL_LOCAL, option, _XUCRED_SIZE)
    uid = int.from_bytes(xucred[4:8], sys.byteorder)
    pid: int | None = None
    if len(xucred) >= _XUCRED_PID_OFFSET + 4:  # FreeBSD's, with cr_pid
        pid = int.from_bytes(xucred[_XUCRED_PID_OFFSET : _XUCRED_PID_OFFSET + 4], sys.byteorder)
    else:  # macOS's: the pid is a separate option
        try:
            pid = int.from_bytes(sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4), sys.byteorder)
        except OSError:
            pid = None
    return pid or None, uid


def receive_descriptors(
    sock: _socket.socket, size: int, most: int
) -> tuple[bytes, list[int], bool]:
    """Data and up to ``most`` descriptors (SCM_RIGHTS) from ``sock``, none of them inheritable.

    The third item is whether the kernel had no room for them all (``ulimit -n``).
    """
    flag = getattr(_socket, "MSG_CMSG_CLOEXEC", None)
    space = _socket.CMSG_SPACE(most * 4)
    data, ancillary, flags, _ = sock.recvmsg(size, space, 0 if flag is None else flag)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
    if flag is None:
        for fd in fds:  # a moment inheritable: this process starts no program meanwhile
            os.set_inheritable(fd, False)
    return data, fds, bool(flags & _socket.MSG_CTRUNC)


def prepare_directory(pidfile: str, uid: int) -> None:
    """Make ``pidfile``'s socket directory for the user ``uid`` (before dropping to it).

    Nothing where abstract names are used; errors are left to the bind that
    follows, which says them.
    """
    try:
        if uid == os.geteuid() or _abstract():
            return
    except OSError:
        return  # no descriptor left: the bind that follows says so
    for folder in directories(pidfile):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            return  # checked when used
        except OSError:
            continue  # cannot be made here: the next
        try:
            os.chown(folder, uid, -1, follow_symlinks=False)
        except OSError:
            os.rmdir(folder)
        return


def _own_directory(folder: str) -> None:
    """Make ``folder`` ours, or check that it is: PermissionError when it cannot be trusted."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    found = os.stat(folder, follow_symlinks=False)
    if not stat.S_ISDIR(found.st_mode):
        raise PlantedError(errno.EACCES, f"{folder} is not a directory", folder)
    if found.st_uid != os.geteuid():
        raise PlantedError(
            errno.EACCES, f"{folder} belongs to another user (uid {found.st_uid})", folder
        )
    if stat.S_IMODE(found.st_mode) != 0o700:
        os.chmod(folder, 0o700, follow_symlinks=False)  # ours: the umask made it wider or narrower


def _is_trusted_directory(folder: str, owners: Collection[int]) -> bool:
    try:
        found = os.stat(folder, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(found.st_mode) and found.st_uid in owners and not found.st_mode & 0o077


def bind(sock: _socket.socket, address: str | bytes) -> None:
    """Bind ``sock`` to ``address``; a file in its private directory, a stale one replaced.

    OSError as bind() raises it: EADDRINUSE when a live socket has the
    name; PermissionError when the directory is not one we may trust.
    """
    if not is_file(address):
        sock.bind(address)
        return
    path = os.fsdecode(address)
    for attempt in range(_BIND_ATTEMPTS):
        _own_directory(os.path.dirname(path))
        try:
            sock.bind(path)
        except FileNotFoundError:
            if attempt + 1 == _BIND_ATTEMPTS:
                raise  # the last one out keeps removing the directory
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not _is_stale(path):
                raise
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        else:
            return
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE), path)


def _is_stale(path: str) -> bool:
    """Whether nothing listens on the socket file ``path`` (its process was killed).

    OSError when no socket can be had to probe with.
    """
    try:
        if not stat.S_ISSOCK(os.stat(path, follow_symlinks=False).st_mode):
            return False  # not a socket: not ours to remove
    except FileNotFoundError:
        return True
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.setblocking(False)  # a full backlog is EAGAIN, not a wait
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def remove_unused(address: str | bytes | None) -> None:
    """Remove the socket file ``address`` once nothing listens on it, and its directory if empty.

    A socket passed on (``_handover``) still listens in its new holder: its
    file stays.  What killed instances left in the directory goes with it.
    """
    if address is None or not is_file(address):
        return
    path = os.fsdecode(address)
    try:
        if not _is_stale(path):
            return
    except OSError:
        return  # no descriptor left to probe with: left, and replaced at the next start
    folder = os.path.dirname(path)
    try:
        os.unlink(path)
    except OSError:
        return  # gone already, or not ours
    if os.path.basename(path) == _CLAIM:  # the service's last: sweep, and go
        _sweep(folder)
        try:
            os.rmdir(folder)
        except OSError:
            pass  # another instance's sockets still in it


def _sweep(folder: str) -> None:
    """Remove the socket files in ``folder`` that nothing listens on (their holders were killed)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        try:
            if _is_stale(path):
                os.unlink(path)
        except OSError:
            pass  # gone already, or no descriptor left to probe with
