"""This process's open descriptors, listed however the system lets us.

``/proc/self/fd`` (Linux), else ``/dev/fd`` where it lists every
descriptor (macOS; FreeBSD with fdescfs mounted: without it, ``/dev/fd``
holds 0, 1 and 2 alone), else a probe of every number below the soft
``RLIMIT_NOFILE`` (``sysconf(_SC_OPEN_MAX)``), capped at
:data:`PROBED_AT_MOST`: a descriptor numbered above the cap is not seen.
"""

from __future__ import annotations

import os

from ._proc import own_descriptors

__all__ = ["PROBED_AT_MOST", "listed_descriptors", "open_descriptors", "open_limit"]

PROBED_AT_MOST = 65536  # one fcntl each: some 20 ms


def listed_descriptors() -> list[int] | None:
    """This process's descriptors as a directory lists them, ascending; None where none does.

    The listing's own descriptor may be among them.  OSError when it cannot
    be listed (no descriptor left: ``ulimit -n``).
    """
    listed = own_descriptors()
    if listed is not None:
        return listed
    try:
        entries = os.listdir("/dev/fd")
    except FileNotFoundError:
        return None
    found = sorted(int(entry) for entry in entries if entry.isdigit())
    # The listing itself holds a descriptor, above 2 unless the standard ones
    # are closed: a /dev/fd without one is devfs's three entries, not a list.
    return found if any(fd > 2 for fd in found) else None


def open_descriptors() -> list[int]:
    """This process's descriptors, ascending: listed, else probed (see the module's docstring).

    OSError when they cannot be listed (no descriptor left: ``ulimit -n``).
    """
    listed = listed_descriptors()
    if listed is not None:
        return listed
    return [fd for fd in range(open_limit()) if _is_open(fd)]


def open_limit() -> int:
    """One more than the highest descriptor probed: the soft ``RLIMIT_NOFILE``, capped."""
    try:
        limit = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        limit = -1
    return PROBED_AT_MOST if limit <= 0 else min(limit, PROBED_AT_MOST)


def _is_open(fd: int) -> bool:
    try:
        os.get_inheritable(fd)  # fcntl(F_GETFD): EBADF when nothing is open there
    except OSError:
        return False
    return True
