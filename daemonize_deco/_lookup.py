"""Finding the service behind a pidfile: the lock's holder, or the claim of a running one.

"Running" means the pidfile's lock is held.  When the file shows nothing
running, the process holding the claim on its path (``_claim``) may still be
the service, its pidfile deleted or overwritten: it is asked to put it back.
Shared by the commands that start a service and those that address one.
"""

from __future__ import annotations

import os
import time

from ._errors import PidFileError, StartupError
from ._pidfile import PidFile, user_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._config import Service, ServiceConfig
    from ._detach import DeferredInterrupts
    from ._looking import PidFileState

__all__ = ["holder_or_lock", "inspect_service", "pidfile_of", "trusted_owners", "with_note"]

_RETRY_INTERVAL = 0.01
_CLAIM_TIMEOUT = 2.0


def pidfile_of(service: Service) -> PidFile:
    """The service's pidfile (not opened yet)."""
    return PidFile(service.config.pidfile, trusted_owners(service.config))


def holder_or_lock(
    service: Service,
    pidfile: PidFile,
    interrupts: DeferredInterrupts | None = None,
    *,
    again: bool = False,
) -> tuple[int, str] | None:
    """Take the pidfile's lock (None), or return the running daemon's pid and a note.

    Having the lock is not enough when the running daemon's pidfile was
    deleted: its claim says so, and then the lock is let go of again.
    """
    deadline = time.monotonic() + service.config.start_timeout
    while True:
        try:
            if pidfile.acquire():
                break
        except PidFileError as exc:
            return _other_users_service(pidfile, exc)
        if pidfile.remove_if_squatted():
            continue  # another user only locked our (world-readable) file: make our own
        state = pidfile.inspect(settle=0)
        if state.running and state.pid is not None:
            return state.pid, ""
        if state.running:
            # Locked, but the content names nobody: a daemon between lock and
            # pid write (no claim yet), or one whose pidfile was overwritten.
            found = _claimant(service, pidfile)
            if found is not None:
                return found
        if interrupts is not None and interrupts.signum is not None:
            raise StartupError("failed to start: interrupted before it was started")
        if time.monotonic() >= deadline:
            raise PidFileError(
                f"pidfile {pidfile.path} is locked, but names no process that holds it",
                path=pidfile.path,
            )
        time.sleep(_RETRY_INTERVAL)
    from ._claim import find_claimant  # noqa: PLC0415 -- only when the pidfile names nobody

    try:
        claimed = find_claimant(
            pidfile.path, _CLAIM_TIMEOUT, trusted_uids=pidfile.owners, put_back=False
        )
        if claimed is None:
            return None
    except BaseException:
        pidfile.remove()  # ours alone still: nothing left behind
        raise
    pidfile.remove()  # the running daemon puts its own back, locked, at this path
    found = _claimant(service, pidfile)
    if found is None:  # it exited meanwhile: start afresh (once: not for a mute one)
        _say_no_pid(pidfile, again=again)
        return holder_or_lock(service, pidfile, interrupts, again=True)
    return found


def _say_no_pid(pidfile: PidFile, *, again: bool) -> None:
    """A claimant found twice that never says which process it is: a stopped one, say."""
    if again:
        raise PidFileError(
            f"a process claims {pidfile.path} but does not say its pid (stopped?)",
            path=pidfile.path,
        )


def _other_users_service(pidfile: PidFile, error: PidFileError) -> tuple[int, str]:
    """When we may not open the pidfile to lock it: the pid of the service holding it, if any.

    A non-root ``start`` against root's running service must say that it
    runs (and whose it is), not "permission denied".  Re-raises ``error``
    when nothing runs there.
    """
    if not isinstance(error.__cause__, PermissionError):
        raise error
    state = pidfile.inspect(settle=0)
    if not (state.running and state.pid is not None):
        raise error
    return state.pid, f"owned by user {user_name(pidfile.owner())}"


def trusted_owners(config: ServiceConfig, *, directory: bool = True) -> frozenset[int]:
    """Whose the service's files (and its claim) may be.

    Root, the asking user, the service's ``user=``, and (with ``directory``)
    the owner of the pidfile's directory: nobody else can have made a file
    there but in a directory others may write (``/tmp``), where the names
    can be taken first by anyone, and what another user owns is never
    believed.  A user's service in the user's own directory is that user's,
    even to root, as far as its pid and its records go; never its options,
    which ``restart`` runs ``main`` with (``directory=False``): the owner of
    a directory may be anyone who made it first.
    """
    trusted = {0, os.geteuid()}
    if directory:
        try:
            trusted.add(os.stat(os.path.dirname(config.pidfile)).st_uid)
        except OSError:
            pass  # no directory: no file either
    if isinstance(config.user, int):
        trusted.add(config.user)
    elif config.user is not None:
        import pwd  # noqa: PLC0415 -- only services that drop privileges pay for it

        try:
            trusted.add(pwd.getpwnam(config.user).pw_uid)
        except KeyError:
            pass  # no such user: start says so; nobody runs as it
    return frozenset(trusted)


def inspect_service(
    service: Service, pidfile: PidFile, settle: float = 1.0
) -> tuple[PidFileState, str]:
    """The pidfile's state, and a note when it was put back.

    When the pidfile shows no running service, the process holding its claim
    (if any) is the service: it is asked to put its pidfile back.
    """
    state = pidfile.inspect(settle=0)
    if state.running and state.pid is not None:
        return state, ""
    # Not running, or locked by a process the content does not name: one
    # whose pidfile was overwritten has a claim; a starting one has none yet.
    found = _claimant(service, pidfile)
    if found is None:
        # Locked by no process it names, or empty: a start may be under way.
        unsure = state.running or (state.exists and state.pid is None and not state.last_words)
        return (pidfile.inspect(settle=settle) if unsure else state), ""
    pid, note = found
    from ._looking import PidFileState  # noqa: PLC0415 -- loaded by inspect() already

    return PidFileState(exists=True, running=True, pid=pid), note


def _claimant(
    service: Service, pidfile: PidFile, *, put_back: bool = True
) -> tuple[int, str] | None:
    """The pid of the process claiming the pidfile's path, and what putting it back gave."""
    from ._claim import find_claimant  # noqa: PLC0415 -- only when the pidfile names nobody

    claimant = find_claimant(
        pidfile.path, _CLAIM_TIMEOUT, trusted_uids=pidfile.owners, put_back=put_back
    )
    if claimant is None or claimant.pid is None:
        return None
    return claimant.pid, _put_back_note(pidfile, claimant.answer)


def with_note(text: str, note: str) -> str:
    return f"{text}; {note}" if note else text


def _put_back_note(pidfile: PidFile, answer: str) -> str:
    if answer == "ok put back":
        return f"its pidfile {pidfile.path} was missing or wrong: put back"
    if answer == "ok":
        return ""
    reason = answer.removeprefix("error ")
    return f"its pidfile {pidfile.path} is missing and could not be put back: {reason}"
