"""What this system offers the library, found by probing: the platform seam's base.

Every other seam module (``_proc`` and the ``_platform_*`` modules) asks
here which mechanism to use (those about sockets are asked in
``_platform_sockets``, which loads ``_socket``: commands that open no
socket do not).  Each answer is a feature test, never
``sys.platform``: a Linux without ``/proc`` mounted, or a macOS that grows
a call, is then handled by what it really has.
"""

from __future__ import annotations

import _signal  # signal.py would load enum's Signals into every daemon (a millisecond)
import functools
import os
import select

__all__ = [
    "HAS_EPOLL",
    "HAS_KQUEUE",
    "HAS_MEMFD",
    "HAS_PIDFD",
    "has_proc",
    "usable_cpus",
]

# epoll, whose sets a handed-over listener is taken out of (``_quiesce``): Linux.
HAS_EPOLL = hasattr(select, "epoll")
# A pidfd pins a process: signals through it cannot reach a later process that reuses the pid.
HAS_PIDFD = hasattr(os, "pidfd_open") and hasattr(_signal, "pidfd_send_signal")
# kqueue's EVFILT_PROC/NOTE_EXIT tells the moment a process exits (macOS, the BSDs).
HAS_KQUEUE = hasattr(select, "kqueue")
# An anonymous file a process holds, named in /proc/PID/fd: the daemons' badges.
HAS_MEMFD = hasattr(os, "memfd_create")


@functools.cache
def has_proc() -> bool:
    """Whether a Linux procfs is mounted at /proc."""
    try:
        os.stat("/proc/self/stat")  # no descriptor: under ulimit -n, opening one could fail
    except OSError:
        return False
    return True


def usable_cpus() -> int:
    """How many CPUs this process may run on (``workers="auto"``), at least 1.

    Its affinity mask and cgroup quota where Python can tell
    (``os.process_cpu_count``, 3.13), else its affinity (Linux, FreeBSD),
    else every CPU the system has.
    """
    process_cpu_count = getattr(os, "process_cpu_count", None)
    if process_cpu_count is not None:
        counted: int | None = process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        counted = len(os.sched_getaffinity(0))
    else:
        counted = os.cpu_count()
    return max(1, counted or 1)
