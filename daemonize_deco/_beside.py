"""Small files kept beside the pidfile (the last run's record, the daemon's options).

Each is written whole or not at all: to a temporary name, then renamed, so a
reader never sees half of one; opened for reading without following a
symlink.  Failing to write one never fails the service: it is best effort.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["fields_from_text", "fields_to_text", "read", "remove", "write"]


def fields_to_text(fields: Iterable[tuple[str, object]]) -> str:
    """``key=value`` lines, one per field that is not None, each value on one line."""
    lines = [f"{key}={' '.join(str(value).split())}" for key, value in fields if value is not None]
    return "\n".join(lines) + "\n"


def fields_from_text(text: str) -> dict[str, str]:
    """The ``key=value`` lines of ``text`` (lines without ``=`` ignored)."""
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


def write(path: str, data: bytes) -> bool:
    """Replace the file at ``path`` with ``data`` atomically; False when it could not be."""
    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o644)
    except OSError:
        return False
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except OSError:
        remove(temporary)
        return False
    return True


def read(path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of the file at ``path``; None when there is none (or not a file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None  # a directory or a FIFO put there: not ours
    finally:
        os.close(fd)


def remove(path: str) -> None:
    """Remove the file at ``path`` if there is one (and we may)."""
    try:
        os.unlink(path)
    except OSError:
        pass  # none, or not ours to remove
