"""The control socket: how ``reload`` hears back that the daemon has reloaded.

A signal carries no answer, so ``reload`` asks over a Unix stream socket in
the abstract namespace (nothing on disk to leave behind, even after
SIGKILL).  Its name is derived from the pidfile's device and inode: the
command finds it from the same file the daemon holds locked, and a new
daemon, with a new pidfile, gets a new name.  Only root and the daemon's own
user may ask (checked with ``SO_PEERCRED``).

One request a connection: a line ``reload``; one reply line, ``ok`` or
``error <reason>``.  The C ``_socket`` module is used directly: ``socket.py``
would cost every daemon milliseconds of imports before it is ready.
"""

from __future__ import annotations

import _socket
import os
import sys

__all__ = ["ControlServer", "address_for", "ask", "reply"]

_PEERCRED_SIZE = 12  # struct ucred: pid, uid, gid as C ints
_CLIENT_TIMEOUT = 1.0
_LINE_LIMIT = 4096


def address_for(identity: tuple[int, int]) -> str:
    """The abstract socket name for the pidfile ``(st_dev, st_ino)``."""
    dev, ino = identity
    return f"\0daemonize_deco/{dev:x}:{ino:x}"


def _stream_socket(fileno: int | None = None) -> _socket.socket:
    if fileno is not None:
        return _socket.socket(fileno=fileno)
    return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)


def _read_line(sock: _socket.socket) -> bytes:
    """Bytes up to the first newline (or end of stream), at most _LINE_LIMIT."""
    data = b""
    while b"\n" not in data and len(data) < _LINE_LIMIT:
        chunk = sock.recv(_LINE_LIMIT)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


class ControlServer:
    """The daemon's listening socket; :meth:`accept` returns one checked request."""

    def __init__(self, identity: tuple[int, int]) -> None:
        self.sock = _stream_socket()
        try:
            self.sock.bind(address_for(identity))
            self.sock.listen(8)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        """The listening descriptor, for select."""
        return self.sock.fileno()

    def accept(self) -> tuple[_socket.socket, str] | None:
        """Accept one connection and read its request; None for a refused or mute peer."""
        try:
            fd, _ = self.sock._accept()  # type: ignore[attr-defined]  # C-level accept

        except OSError:
            return None
        conn = _stream_socket(fd)
        conn.settimeout(_CLIENT_TIMEOUT)  # a peer that never writes must not block the dispatcher
        try:
            creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _PEERCRED_SIZE)
            uid = int.from_bytes(creds[4:8], sys.byteorder)
            if uid not in (0, os.geteuid()):
                conn.sendall(b"error permission denied\n")
                conn.close()
                return None
            request = _read_line(conn).decode("ascii", "replace").strip()
        except OSError:
            conn.close()
            return None
        return conn, request

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


def reply(conn: _socket.socket, text: str) -> None:
    """Send the one reply line and close the connection."""
    try:
        conn.sendall((" ".join(text.split()) + "\n").encode("utf-8", "replace"))
    except OSError:
        pass  # the asker gave up waiting; the daemon carries on
    finally:
        conn.close()


def ask(identity: tuple[int, int], request: str, timeout: float) -> str | None:
    """Send ``request``; return the reply line, or None when nobody listens.

    Raises TimeoutError when the daemon does not answer within ``timeout``.
    """
    sock = _stream_socket()
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(address_for(identity))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        sock.sendall(request.encode("ascii") + b"\n")
        try:
            answer = _read_line(sock)
        except TimeoutError:
            raise  # an OSError too, but one the caller must hear about
        except OSError:
            return None
        return answer.decode("utf-8", "replace").strip() or None
    finally:
        sock.close()
