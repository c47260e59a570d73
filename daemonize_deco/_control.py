"""The control socket: how ``reload`` hears back that the daemon has reloaded.

A signal carries no answer, so ``reload`` asks over a Unix stream socket in
the abstract namespace (nothing on disk to leave behind, even after
SIGKILL).  Its name is derived from the pidfile's device and inode: the
command finds it from the same file the daemon holds locked, and a new
daemon, with a new pidfile, gets a new name.  Only root and the daemon's own
user may ask (checked with ``SO_PEERCRED``).

One request a connection: a line ``reload``; one reply line, ``ok`` or
``error <reason>``.
"""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["ControlServer", "address_for", "ask"]

_PEERCRED = struct.Struct("3i")  # pid, uid, gid
_CLIENT_TIMEOUT = 1.0


def address_for(identity: tuple[int, int]) -> str:
    """The abstract socket name for the pidfile ``(st_dev, st_ino)``."""
    dev, ino = identity
    return f"\0daemonize_deco/{dev:x}:{ino:x}"


class ControlServer:
    """The daemon's listening socket; :meth:`accept` returns one checked request."""

    def __init__(self, identity: tuple[int, int]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(address_for(identity))
            self.sock.listen(8)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        """The listening descriptor, for select."""
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, str] | None:
        """Accept one connection and read its request; None for a refused or mute peer."""
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return None
        conn.settimeout(_CLIENT_TIMEOUT)  # a peer that never writes must not block the dispatcher
        try:
            _, uid, _ = _PEERCRED.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
            if uid not in (0, os.geteuid()):
                conn.sendall(b"error permission denied\n")
                conn.close()
                return None
            request = conn.makefile("rb").readline(256).decode("ascii", "replace").strip()
        except OSError:
            conn.close()
            return None
        return conn, request

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


def reply(conn: socket.socket, text: str) -> None:
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
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address_for(identity))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        sock.sendall(request.encode("ascii") + b"\n")
        try:
            answer = sock.makefile("rb").readline(4096)
        except TimeoutError:
            raise  # an OSError too, but one the caller must hear about
        except OSError:
            return None
        return answer.decode("utf-8", "replace").strip() if answer else None
