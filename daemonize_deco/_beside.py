"""Small files kept beside the pidfile (the last run's record, the daemon's options).

Each is written whole or not at all: to a temporary name, then renamed, so a
reader never sees half of one.  The directory may be shared with other users
(/tmp): the temporary name is random and created exclusively, so nobody can
take it first, and a file is read only when it belongs to an owner the
caller trusts (root, the asking user, the service's user), never through a
symlink nor as a hard link, so what another user planted there is never
believed.  Failing to write one never fails the service: it is best effort.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

__all__ = [
    "fields_from_text",
    "fields_to_text",
    "is_trusted",
    "read",
    "remove",
    "remove_temporaries",
    "write",
]

_NAME_ATTEMPTS = 8
_TOKEN_BYTES = 8  # of a temporary name's random part


def fields_to_text(fields: Iterable[tuple[str, object]]) -> str:
    """``key=value`` lines, one per field that is not None, each value on one line."""
    lines = [f"{key}={' '.join(str(value).split())}" for key, value in fields if value is not None]
    return "\n".join(lines) + "\n"


def fields_from_text(text: str) -> dict[str, str]:
    """The ``key=value`` lines of ``text`` (lines without ``=`` ignored)."""
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


def is_trusted(found: os.stat_result, owners: Collection[int]) -> bool:
    """A regular file of a trusted owner with a single name.

    A second name (a hard link) would let a file outside the directory be
    read or written through this one.
    """
    return stat.S_ISREG(found.st_mode) and found.st_uid in owners and found.st_nlink == 1


def write(path: str, data: bytes) -> bool:
    """Replace the file at ``path`` with ``data`` atomically; False when it could not be."""
    fd, temporary = _create_temporary(path)
    if fd is None:
        return False
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        _rename(temporary, path)
    except OSError:
        remove(temporary)
        return False
    return True


def _rename(temporary: str, path: str) -> None:
    """Put the new file in place, over an empty directory another user made at the name."""
    try:
        os.rename(temporary, path)
    except IsADirectoryError:
        os.rmdir(path)  # only an empty one goes: what is in it is not ours
        os.rename(temporary, path)


def _create_temporary(path: str) -> tuple[int | None, str]:
    """A new file beside ``path`` under a name nobody could guess and take first."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_NAME_ATTEMPTS):
        temporary = temporary_name(path, os.urandom(_TOKEN_BYTES).hex())
        try:
            return os.open(temporary, flags, 0o644), temporary
        except FileExistsError:
            continue  # taken, against all odds: draw again
        except OSError:
            break
    return None, ""


def read(path: str, limit: int, owners: Collection[int]) -> bytes | None:
    """Up to ``limit`` bytes of the file at ``path``; None when there is none we trust."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not is_trusted(os.fstat(fd), owners):
            return None  # another user's, a FIFO, a second name for some other file
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def temporary_name(path: str, token: str) -> str:
    """The temporary name, beside ``path``, under which a new ``path`` is written."""
    return f"{os.path.dirname(path)}/.{os.path.basename(path)}.{token}"


def remove_temporaries(paths: Iterable[str]) -> None:
    """Remove what writes to ``paths`` cut short (SIGKILL before the rename) left.

    Only names that :func:`temporary_name` makes: a dot, the name, a dot and
    the random part.
    """
    by_folder: dict[str, set[str]] = {}
    for path in paths:
        by_folder.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
    for folder, names in by_folder.items():
        try:
            found = os.listdir(folder or ".")
        except OSError:
            continue  # gone, or not ours to look in
        for entry in found:
            name, dot, token = entry[1:].rpartition(".")
            if entry.startswith(".") and dot and name in names and _is_token(token):
                remove(os.path.join(folder, entry))


def _is_token(text: str) -> bool:
    return len(text) == 2 * _TOKEN_BYTES and all(c in "0123456789abcdef" for c in text)


def remove(path: str) -> None:
    """Remove the file at ``path`` if there is one (and we may)."""
    try:
        os.unlink(path)
    except OSError:
        pass  # none, or not ours to remove
