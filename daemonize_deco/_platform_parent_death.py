"""A process that dies with its parent: the kernel's signal, else a lifeline pipe.

Linux has ``prctl(PR_SET_PDEATHSIG)``, FreeBSD ``procctl(PROC_PDEATHSIG_CTL)``
(neither has an ``os`` binding: both go through ctypes, loaded only by
the processes that ask).  Elsewhere (macOS) the parent makes a
:class:`Lifeline` before it forks: a pipe whose write end only the parent
keeps.  The child's dispatcher thread (``_dispatch``) waits on the read
end with the rest, no periodic wakeups, and at end-of-file (the parent
has exited, however) the child sends itself the signal.  Not a thread of
its own: a fork in main would count it (Python 3.12 warns of forking a
multi-threaded process), where the dispatcher steps aside.  A lifeline
needs the parent's help: a parent we did not start (a manager's shell)
gets none, and then nothing holds.  The FreeBSD call cannot be tried
here: it is kept to the one call.
"""

from __future__ import annotations

import os

from ._platform import has_proc

__all__ = ["Lifeline", "ask_kernel", "kernel_may_lack_it"]

_PR_SET_PDEATHSIG = 1  # prctl(2)
_P_PID = 0  # idtype_t (sys/wait.h, FreeBSD)
_PROC_PDEATHSIG_CTL = 11  # procctl(2), FreeBSD 11.2 and later


def ask_kernel(signum: int) -> bool:
    """Have the kernel send ``signum`` when our parent exits; False where it cannot.

    OSError when the call exists and fails.
    """
    import ctypes  # noqa: PLC0415 -- no os binding; only the processes that ask pay for it

    libc = ctypes.CDLL(None, use_errno=True)
    try:
        prctl = libc.prctl
    except AttributeError:
        prctl = None
    if prctl is not None:
        if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        return True
    try:
        procctl = libc.procctl
    except AttributeError:
        return False
    wanted = ctypes.c_int(signum)
    if procctl(_P_PID, 0, _PROC_PDEATHSIG_CTL, ctypes.byref(wanted)) != 0:
        raise OSError(ctypes.get_errno(), "procctl(PROC_PDEATHSIG_CTL) failed")
    return True


def kernel_may_lack_it() -> bool:
    """Whether a parent should make a :class:`Lifeline` for its children.

    Asking the kernel itself loads ctypes (some 150 KiB), which a parent
    that never needs it should not carry: /proc is taken as the sign of
    Linux, which has the signal.  Elsewhere a lifeline is made, and a
    child whose kernel has the signal after all (FreeBSD) lets go of it.
    """
    return not has_proc()


class Lifeline:
    """A pipe from a parent to the children it forks: end-of-file means the parent is gone.

    Made by the parent before it forks, once for all its children; both
    ends close on exec, so a program a child execs holds neither.
    """

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.signum = 0  # held, in this process, for this signal
        # The parent's copy of the write end must be the only one: every
        # child forked from now on closes its own at once.
        os.register_at_fork(after_in_child=self._in_child)

    def _in_child(self) -> None:
        self.signum = 0  # held by the parent, not by its children (as the kernel's request)
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1  # a grandchild must not close a number used again

    def hold(self, signum: int) -> None:
        """In a child: have :meth:`check` send ``signum`` once the parent is gone."""
        os.set_blocking(self.read_end, False)
        self.signum = signum

    def held(self) -> bool:
        """Whether this process holds it (watch :attr:`read_end`, then :meth:`check`)."""
        return self.signum != 0

    def check(self) -> None:
        """Send the signal to this process if the parent is gone (the pipe at end-of-file)."""
        try:
            if os.read(self.read_end, 1):
                return  # nobody writes to it: never
        except OSError:
            return  # the parent lives (EAGAIN); or main closed it: nothing to tell by
        os.kill(os.getpid(), self.signum)

    def let_go(self) -> None:
        """In a child that needs no lifeline: close the read end (the write end is gone)."""
        if self.read_end >= 0:
            os.close(self.read_end)
            self.read_end = -1
