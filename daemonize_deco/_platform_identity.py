"""Who a process is, as others see it: its badges and its user.

A badge is a memfd (``memfd_create``) whose name says what the process is
(a run's, a daemon leading its group, a command): only the process itself
can open a descriptor in itself, its forked children inherit it, and
``/proc/PID/fd`` shows its name to whoever may signal the process
(``_proc.memfd_names``).  Without memfds (macOS, FreeBSD) a process wears
none: :func:`wear_badge` says None, and whoever reads badges cannot tell
from them (without /proc, nothing reads them anyway).
"""

from __future__ import annotations

import os

from ._platform import HAS_MEMFD

__all__ = ["become", "wear_badge"]


def wear_badge(name: str) -> int | None:
    """Open a close-on-exec memfd named ``name``; its descriptor, or None without memfds.

    OSError when it cannot (no descriptor left: ``ulimit -n``).
    """
    if not HAS_MEMFD:
        return None
    # Close-on-exec: a program exec'd is not what forked it; a fork keeps it.
    return os.memfd_create(name, os.MFD_CLOEXEC)


def become(uid: int, gid: int) -> None:
    """Set the real, effective and saved group, then user ids, of this (root) process.

    ``setresgid``/``setresuid`` where they exist (Linux, FreeBSD); elsewhere
    (macOS) ``setgid``/``setuid``, which set all three when called as root.
    OSError when the kernel refuses.
    """
    if hasattr(os, "setresuid") and hasattr(os, "setresgid"):
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    else:
        os.setgid(gid)
        os.setuid(uid)
