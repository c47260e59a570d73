"""The claim: a second hold on the service's identity that a deleted pidfile does not lose.

``rm app.pid`` (a tmp cleaner, a careless deploy script) unlinks the file the
daemon has locked; the lock lives on, on a file nobody can open by its path,
and without a second hold ``status`` would say "not running" and ``start``
launch a second copy.  So the running service also binds a Unix socket in
the abstract namespace named after the pidfile's absolute path: the kernel
lets one socket have a name, and the name goes with the process (even on
SIGKILL), with nothing on disk to delete.

Where there are no abstract names, the claim is the socket file ``claim`` in
the service's private directory (``_platform_sockets``), which no other user
can enter: what answers there is the service, and where the system does not
name the peer, its pid is the one it writes in the pidfile it puts back.

A command that finds no running service by the pidfile connects to that
name; ``SO_PEERCRED`` gives the pid of the process that listens, which is
trusted only if that process runs as root, as the asking user or as the
service's ``user=``, and has the pidfile open (``/proc/PID/fd`` shows the
path, or the path and ``(deleted)``).  The command then asks it to put
its pidfile back: the daemon creates and locks a new file at the path, and
writes its pid in it.  Only root and the daemon's own user may ask.
"""

from __future__ import annotations

import errno
import os

from . import _platform_sockets
from ._control import ControlServer, peer_credentials, read_line, reply, stream_socket
from ._errors import DetachError, PidFileError
from ._proc import has_open

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable, Collection, Mapping, Sequence

    # A request's answer: its line, and descriptors sent with it.
    Answer = Callable[[], tuple[str, Sequence[int]]]

__all__ = [
    "HEALTH",
    "READY",
    "Claimant",
    "answer_claimants",
    "ask_claim",
    "claim_address",
    "find_claimant",
    "fnv1a",
    "forget_inherited",
    "inherit",
    "inherited_claim",
    "listen_for_claimants",
]

PUT_BACK = "pidfile"
HEALTH = "health"  # asked by the ``health`` command: "ok", or "error <why not>"
READY = "ready"  # asked by ``health --ready``: "ok", or "error <why not>"
WHO = "pid"  # asked where the system does not name a socket's peer
_PID_READ_LIMIT = 64
fnv1a = _platform_sockets.fnv1a


def claim_address(pidfile: str) -> str | bytes:
    """The address this service claims ``pidfile`` (an absolute path) on: abstract, or a file."""
    return _platform_sockets.claim_address(pidfile)


class _Inherited:
    """The claim's socket, when the instance a restart replaces passed it (``_handover``)."""

    fd: int | None = None


def inherit(fd: int) -> None:
    """Listen on ``fd``, the replaced instance's claim, instead of binding the name anew."""
    _Inherited.fd = fd


def inherited_claim() -> int | None:
    """The descriptor of a claim passed by a restart's running instance, if any."""
    return _Inherited.fd


def forget_inherited() -> None:
    """Close an inherited claim nobody listened on (the restarting process's copy)."""
    if _Inherited.fd is not None:
        os.close(_Inherited.fd)
        _Inherited.fd = None


def listen_for_claimants(pidfile: str) -> ControlServer | None:
    """Bind the claim; None when another process holds the name (said by the caller).

    Raises DetachError when no socket can be had.
    """
    if _Inherited.fd is not None:
        fd, _Inherited.fd = _Inherited.fd, None
        return ControlServer.adopt(fd)
    try:
        return ControlServer(claim_address(pidfile))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return None
        # No descriptor left (ulimit -n), a socket directory another user planted:
        # a service that cannot claim its path could be started twice once its
        # pidfile is deleted.
        raise DetachError(f"cannot claim {pidfile}: {exc.strerror}", path=pidfile) from exc


def answer_claimants(server: ControlServer, answers: Mapping[str, Answer]) -> None:
    """Answer each waiting request: ``pidfile`` (put it back), ``handover`` (see ``_handover``)."""
    for conn, request in server.accept_waiting():
        answer = answers.get(request)
        if answer is None:
            reply(conn, f"error unknown request {request!r}")
        else:
            reply(conn, *answer())


def ask_claim(pidfile: str, request: str, timeout: float, trusted_uids: Collection[int]) -> str:
    """Ask whatever claims ``pidfile`` (run by one of ``trusted_uids``) ``request``; its reply.

    Raises ConnectionRefusedError when nothing trusted claims it, and
    TimeoutError when the claimant does not reply within ``timeout``.
    """
    sock = stream_socket()
    try:
        sock.settimeout(timeout)
        addresses = _platform_sockets.claim_addresses(pidfile, trusted_uids)
        address = _connect_first(sock, addresses)
        if address is None:
            raise ConnectionRefusedError(f"nothing claims {pidfile}")
        creds = peer_credentials(sock, address)
        if creds is not None and creds[1] not in trusted_uids:
            raise ConnectionRefusedError(f"another user's process claims {pidfile}")
        sock.sendall(request.encode("ascii") + b"\n")
        return read_line(sock).decode("utf-8", "replace").strip()
    finally:
        sock.close()


class Claimant:
    """The process holding the claim on a pidfile, and what it said when asked to put it back.

    Its pid is None when it was only found (not asked) where the system
    does not say who is at the other end of a socket.
    """

    __slots__ = ("answer", "pid")

    def __init__(self, pid: int | None, answer: str) -> None:
        self.pid = pid
        self.answer = answer


def find_claimant(
    pidfile: str, timeout: float, *, trusted_uids: Collection[int], put_back: bool = True
) -> Claimant | None:
    """The verified process claiming ``pidfile``, asked to put its pidfile back; or None.

    Verified: it runs as one of ``trusted_uids`` (root, the asker, the
    service's ``user=``: a pidfile is world-readable, so another user could
    hold it open and squat the name) and has the pidfile open.  A socket
    file is in a directory of theirs that nobody else may enter
    (``_platform_sockets``): its pid is the one it writes in the pidfile it
    puts back.  With ``put_back=False`` it is only found (its answer is then
    "ok", its pid None when the socket is a file).
    """
    try:
        addresses = _platform_sockets.claim_addresses(pidfile, trusted_uids)
        sock = stream_socket()
    except OSError as exc:  # no descriptor left (ulimit -n): the question has no answer
        raise PidFileError(
            f"cannot look for a service claiming {pidfile}: cannot open a socket: {exc.strerror}",
            path=pidfile,
        ) from exc
    try:
        sock.settimeout(timeout)
        address = _connect_first(sock, addresses)
        if address is None:
            return None  # nobody claims it: the usual case, one failed connect
        creds = peer_credentials(sock, address)
        pid = None if creds is None else creds[0]
        if creds is not None and creds[1] not in trusted_uids:
            return None  # another user's (which we could not stop)
        if creds is None or pid is None:
            # A socket file: its directory says it is a trusted user's.
            return (
                _put_back_unseen(sock, address, pidfile, trusted_uids)
                if put_back
                else Claimant(None, "ok")
            )
        if not has_open(pid, pidfile):
            return None  # not a service of ours
        return Claimant(pid, _ask_to_put_back(sock) if put_back else "ok")
    finally:
        sock.close()


def _connect_first(sock: _socket.socket, addresses: Sequence[str | bytes]) -> str | bytes | None:
    """Connect to the first of ``addresses`` that answers; which, or None when none does."""
    for address in addresses:
        try:
            sock.connect(address)
        except OSError:
            continue
        return address
    return None


def _ask_to_put_back(sock: _socket.socket) -> str:
    try:
        sock.sendall(PUT_BACK.encode("ascii") + b"\n")
        answer = read_line(sock).decode("utf-8", "replace").strip()
    except OSError as exc:
        answer = f"error no answer: {exc}"
    return answer or "error no answer"


def _put_back_unseen(
    sock: _socket.socket, address: str | bytes, pidfile: str, trusted_uids: Collection[int]
) -> Claimant | None:
    """The claimant whose pid the system does not tell: the pid it puts in its pidfile.

    When it cannot put it back (a ``user=`` that may not write the pidfile's
    directory), the pid it states: its socket's directory vouches for it.
    """
    answer = _ask_to_put_back(sock)
    pid = None
    if answer.startswith("ok"):
        from ._beside import read  # noqa: PLC0415 -- loaded by the pidfile already
        from ._pidfile import parse_pid  # noqa: PLC0415

        content = read(pidfile, _PID_READ_LIMIT, trusted_uids)
        pid = None if content is None else parse_pid(content)
    if pid is None and not answer.startswith("error no answer"):
        pid = _stated_pid(address, sock.gettimeout())
    return None if pid is None else Claimant(pid, answer)


def _stated_pid(address: str | bytes, timeout: float | None) -> int | None:
    """The pid the process listening on the claim ``address`` says it has."""
    try:
        sock = stream_socket()
    except OSError:
        return None
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(WHO.encode("ascii") + b"\n")
        answer = read_line(sock).decode("ascii", "replace").split()
    except OSError:
        return None
    finally:
        sock.close()
    if len(answer) == 2 and answer[0] == "ok" and answer[1].isdigit():
        return int(answer[1])
    return None
