"""The built-in commands: start, stop, restart, status, run, reload, systemd-unit.

Each takes the :class:`Service` and returns its exit status, printing what
went right with :func:`say`; what went wrong is raised as a
:class:`DaemonError`, which ``_cli.dispatch`` turns into one line and a
status.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import os
import stat
import sys
import time

from . import _lastrun
from ._claim import find_claimant, has_open
from ._control import ImpostorError, ask
from ._detach import (
    DeferredInterrupts,
    check_log_path,
    check_workdir,
    detach,
    line_buffer_python_streams,
)
from ._errors import (
    AlreadyRunningError,
    DaemonError,
    DetachError,
    NoLogError,
    NotRunningError,
    PidFileError,
    ReloadError,
    StartupError,
    StopError,
)
from ._hygiene import close_inherited_fds, resolve_credentials
from ._pidfile import PidFile, PidFileState
from ._proc import command_line, open_pidfd, read_stat, terminate, uptime, wait_exit
from ._runtime import serve

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._config import Service, ServiceConfig
    from ._detach import StartupReport
    from ._hygiene import Credentials

__all__ = [
    "complain",
    "logs",
    "print_systemd_unit",
    "reload",
    "restart",
    "run",
    "say",
    "start",
    "status",
    "stop",
]

_RETRY_INTERVAL = 0.01
_CLAIM_TIMEOUT = 2.0
_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "busybox"})


def _pidfile(service: Service) -> PidFile:
    return PidFile(service.config.pidfile)


# -- output ------------------------------------------------------------------


def _write(stream_name: str, text: str) -> None:
    stream = getattr(sys, stream_name)
    if stream is None:
        return
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # nobody reads our output (closed pipe): the exit status still tells


def say(text: str) -> None:
    """A line on stdout: what went right."""
    _write("stdout", text)


def complain(text: str) -> None:
    """A line on stderr: what went wrong."""
    _write("stderr", text)


# -- the commands ------------------------------------------------------------


def _holder_or_lock(
    service: Service, pidfile: PidFile, interrupts: DeferredInterrupts | None = None
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
                f"pidfile {pidfile.path} is locked, but names no process that holds it"
            )
        time.sleep(_RETRY_INTERVAL)
    if _claimant(service, pidfile, put_back=False) is None:
        return None
    pidfile.remove()  # the running daemon puts its own back, locked, at this path
    found = _claimant(service, pidfile)
    if found is None:  # it exited meanwhile: start afresh
        return _holder_or_lock(service, pidfile, interrupts)
    return found


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
    return state.pid, f"owned by user {_user_name(pidfile.owner())}"


def _user_name(uid: int) -> str:
    import pwd  # noqa: PLC0415 -- only this message needs it

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _trusted_uids(config: ServiceConfig) -> set[int]:
    """Who may hold the claim on our pidfile: root, the asking user, the service's user=."""
    trusted = {0, os.geteuid()}
    if isinstance(config.user, int):
        trusted.add(config.user)
    elif config.user is not None:
        import pwd  # noqa: PLC0415 -- only services that drop privileges pay for it

        try:
            trusted.add(pwd.getpwnam(config.user).pw_uid)
        except KeyError:
            pass  # no such user: start says so; nobody runs as it
    return trusted


def _inspect(service: Service, pidfile: PidFile, settle: float = 1.0) -> tuple[PidFileState, str]:
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
        return (pidfile.inspect(settle=settle) if state.running else state), ""
    pid, note = found
    return PidFileState(exists=True, running=True, pid=pid), note


def _claimant(
    service: Service, pidfile: PidFile, *, put_back: bool = True
) -> tuple[int, str] | None:
    """The pid of the process claiming the pidfile's path, and what putting it back gave."""
    claimant = find_claimant(
        pidfile.path, _CLAIM_TIMEOUT, trusted_uids=_trusted_uids(service.config), put_back=put_back
    )
    if claimant is None:
        return None
    return claimant.pid, _put_back_note(pidfile, claimant.answer)


def _with_note(text: str, note: str) -> str:
    return f"{text}; {note}" if note else text


def _put_back_note(pidfile: PidFile, answer: str) -> str:
    if answer == "ok put back":
        return f"its pidfile {pidfile.path} was missing or wrong: put back"
    if answer == "ok":
        return ""
    reason = answer.removeprefix("error ")
    return f"its pidfile {pidfile.path} is missing and could not be put back: {reason}"


def _check_before_fork(config: ServiceConfig) -> Credentials | None:
    """Find what can be found before forking; return the credentials to drop to."""
    check_workdir(config.workdir)
    for log in {config.stdout, config.stderr} - {None}:
        check_log_path(str(log))
    return resolve_credentials(config.user, config.group)


def _manager() -> str | None:
    """The process manager that wants us in the foreground, if any.

    ``NOTIFY_SOCKET`` is systemd's word to its main process (the service
    removes it from its children's environment).  ``SUPERVISOR_ENABLED`` is
    inherited by every descendant of supervisord, so it counts only when
    supervisord itself (perhaps through one shell) started this command.
    As PID 1 (a container's command) there is nobody to detach to: the
    kernel would end the daemon with the namespace when we exit.  Started by
    PID 1 itself (sysvinit's respawn, a container's tini or dumb-init), the
    init watches this very process; but not under a systemd unit
    (``INVOCATION_ID``), where PID 1 is systemd and ``Type=forking`` expects
    the fork.  A socket on stdin is inetd's (or systemd's ``Accept=yes``)
    connection, served in the foreground.
    """
    if os.environ.get("NOTIFY_SOCKET"):
        return "systemd Type=notify"
    if os.environ.get("SUPERVISOR_ENABLED") and _started_by_supervisord():
        return "supervisord"
    if os.getpid() == 1:
        return "PID 1 of a container"
    if os.getppid() == 1 and not os.environ.get("INVOCATION_ID"):
        return "init (its parent is PID 1)"
    if _stdin_is_a_socket():
        return "a super-server (stdin is a network socket)"
    return None


def _stdin_is_a_socket() -> bool:
    """Stdin is an internet socket: inetd's or systemd's (``Accept=yes``) connection.

    Unix-domain sockets do not count: sshd and job runners hand commands
    socketpairs for their standard streams.
    """
    try:
        if not stat.S_ISSOCK(os.fstat(0).st_mode):
            return False
        import _socket  # noqa: PLC0415 -- loaded by then, via _control

        probe = _socket.socket(fileno=os.dup(0))  # reads SO_DOMAIN
    except OSError:
        return False
    try:
        return probe.family in (_socket.AF_INET, _socket.AF_INET6)
    finally:
        probe.close()


def _started_by_supervisord() -> bool:
    parent = os.getppid()
    for _ in range(2):  # the parent, or the parent of a wrapper shell
        words = command_line(parent)
        if any(os.path.basename(word) == "supervisord" for word in words[:3]):
            return True
        if not words or os.path.basename(words[0]) not in _SHELLS:
            return False
        stat = read_stat(parent)
        if stat is None:
            return False
        parent = stat.ppid
    return False


def start(service: Service) -> int:
    """Detach and return once the daemon is ready, or say why it failed."""
    manager = _manager()
    if manager is not None:
        # Forking away from a manager makes it think the service died.
        complain(f"{service.name}: running in the foreground under {manager} (start acts as run)")
        return run(service)
    config = service.config
    pidfile = _pidfile(service)
    with DeferredInterrupts() as interrupts:
        # "Already running" first: another user's start may not even open the logs.
        holder = _holder_or_lock(service, pidfile, interrupts)
        if holder is not None:
            pid, note = holder
            say(f"{service.name} is already running ({_with_note(f'pid {pid}', note)})")
            return 0
        try:
            credentials = _check_before_fork(config)
        except DaemonError:
            pidfile.remove()  # not forked yet: the lock is ours alone
            raise
        if interrupts.signum is not None:
            pidfile.remove()
            raise StartupError("failed to start: interrupted before it was started")
        try:
            watcher = detach(
                lambda channel: serve(service, pidfile, credentials=credentials, startup=channel),
                workdir=config.workdir,
                umask=config.umask,
                stdout=config.stdout,
                stderr=config.stderr,
                close_inherited=lambda keep: close_inherited_fds(
                    {*keep, pidfile.fileno(), *config.descriptors_to_keep()}
                ),
                in_child=interrupts.restore,
            )
        except DetachError:
            pidfile.remove()  # the fork failed: no other process shares the lock
            raise
        with watcher:
            grace = None if config.wait_ready or config.start_grace == 0 else config.start_grace
            report = watcher.wait(config.start_timeout, interrupts.fileno(), grace)
            if report.outcome in ("ready", "finished"):
                _close_pidfd(report)
                pidfile.hand_over()
                if report.outcome == "finished":
                    say(f"{service.name} ran and finished (pid {report.pid}, {report.reason})")
                else:
                    say(f"{service.name} started (pid {report.pid})")
                return 0
            if report.outcome == "interrupted":
                watcher.learn_pid(config.start_timeout)
            reason = _end_failed_start(service, pidfile, report)
    raise StartupError(f"failed to start: {reason}")


def _close_pidfd(report: StartupReport) -> None:
    if report.pidfd is not None:
        os.close(report.pidfd)
        report.pidfd = None


def _end_failed_start(service: Service, pidfile: PidFile, report: StartupReport) -> str:
    """Make sure the daemon that failed to start is gone; return the reason.

    The daemon shares the pidfile's lock, so the pidfile is removed only once
    it is known to be gone; otherwise it is left to the daemon, still locked.
    """
    config = service.config
    waiting = {
        "timeout": f"not ready within {config.start_timeout:g}s",
        "interrupted": "interrupted before it was ready",
    }
    reason = waiting.get(report.outcome, report.reason)
    # With no pid line, a daemon exists only if the pipe is still open.
    gone = report.pid is not None or report.pipe_ended
    if report.pidfd is not None and report.pid is not None:
        try:
            if report.outcome in waiting:
                reason += f"; {terminate(report.pidfd, report.pid, config.stop_timeout).how} it"
            elif not wait_exit(report.pidfd, config.stop_timeout):
                terminate(report.pidfd, report.pid, 0)
        except (PermissionError, TimeoutError) as exc:
            gone = False
            reason += f"; could not stop pid {report.pid}: {exc}"
        _close_pidfd(report)
    elif not gone:
        reason += "; its pid is unknown, so its pidfile is left to it"
    if gone:
        pidfile.remove()
    else:
        pidfile.hand_over()
    return reason


def _running_pid(service: Service, pidfile: PidFile) -> int | None:
    """The verified pid of the running service; None (after tidying up) when not running."""
    # A start holds the lock before its daemon writes the pid: wait as long as a start may.
    state, note = _inspect(service, pidfile, settle=service.config.start_timeout)
    if not state.running:
        _say_not_running(service, pidfile, state)
        return None
    if state.pid is None:
        raise StopError(f"pidfile {pidfile.path} is locked, but names no process that holds it")
    if note:
        say(f"{service.name}: {note}")
    return state.pid


def _pinned(pidfile: PidFile, pid: int) -> int | None:
    """A pidfd for ``pid`` if, once pinned, it still holds the pidfile (or a deleted one).

    Between reading the pid and pinning it the process may have exited and
    the pid been reused: checking again after pinning rules that out.
    """
    pidfd = open_pidfd(pid)
    if pidfd is not None and not (pidfile.is_held_by(pid) or has_open(pid, pidfile.path)):
        os.close(pidfd)
        return None
    return pidfd


def stop(service: Service) -> int:
    """SIGTERM the daemon and wait until it is gone; SIGKILL its group after stop_timeout."""
    pidfile = _pidfile(service)
    pid = _running_pid(service, pidfile)
    if pid is None:
        return 0
    pidfd = _pinned(pidfile, pid)
    if pidfd is None:
        _say_not_running(service, pidfile, pidfile.inspect())
        return 0
    started = time.time() - (uptime(pid) or 0.0)
    try:
        ending = terminate(pidfd, pid, _stop_timeout(service))
    except PermissionError as exc:
        raise StopError(f"cannot stop pid {pid}: permission denied") from exc
    except TimeoutError as exc:
        raise StopError(f"cannot stop pid {pid}: {exc}") from exc
    finally:
        os.close(pidfd)
    # Left behind after SIGKILL, or by a daemon that dropped privileges and
    # could not unlink it from a root-owned directory.
    try:
        pidfile.remove_if_stale()
    except PidFileError as exc:
        complain(f"{service.name}: {exc}")  # it is stopped all the same
    if ending.how == "stopped":
        also = f"; ended {ending.leftovers} process(es) it left running" if ending.leftovers else ""
        say(f"{service.name} stopped (pid {pid}){also}")
    else:
        why = f"still running {_stop_timeout(service):g}s after SIGTERM"
        # It could write no record of its own: stop writes the one status will show.
        killed = _lastrun.LastRun(
            pid, status=None, started=started, ended=time.time(), killed=f"SIGKILL by stop, {why}"
        )
        _lastrun.write(pidfile.path, killed)
        say(f"{service.name} killed (pid {pid}): {why}")
    return 0


def _stop_timeout(service: Service) -> float:
    """``--timeout S`` when given, else the decorator's stop_timeout."""
    given = service.flags.get("timeout")
    return float(given) if isinstance(given, float) else service.config.stop_timeout


def _say_not_running(service: Service, pidfile: PidFile, state: PidFileState) -> None:
    if state.last_words:  # it ended cleanly, and left its record in the file: not stale
        say(f"{service.name} is not running")
        return
    try:
        removed = state.exists and pidfile.remove_if_stale()
    except PidFileError as exc:  # another user's stale file: not running is what counts
        say(f"{service.name} is not running ({exc})")
        return
    if removed:
        say(f"{service.name} is not running (removed stale pidfile {pidfile.path})")
    else:
        say(f"{service.name} is not running")


def restart(service: Service) -> int:
    """Stop (waiting until gone) if running, then start."""
    stop(service)
    return start(service)


def status(service: Service) -> int:
    """0 running, 1 dead but pidfile left behind, 3 not running (4: see error_status)."""
    from ._status import StatusReport  # noqa: PLC0415 -- only status loads it (and /proc readers)

    pidfile = _pidfile(service)
    state, note = _inspect(service, pidfile)
    report = StatusReport(service.name, pidfile.path, state, note)
    say(report.as_json() if service.flags.get("json") else report.text())
    return report.exit_status


def logs(service: Service) -> int:
    """Print the last lines of the log file(s); with ``-f``, follow them until Ctrl-C."""
    from ._logs import follow, last_lines  # noqa: PLC0415 -- only logs loads it

    config = service.config
    paths = list(dict.fromkeys(p for p in (config.stdout, config.stderr) if p is not None))
    if not paths:
        raise NoLogError(
            "has no log file: stdout= and stderr= are not set (run logs to the terminal)"
        )
    count = int(service.flags.get("lines", 20))  # type: ignore[call-overload]
    if service.flags.get("follow"):
        follow(paths, count)
        return 0
    out = sys.stdout.buffer
    try:
        for path in paths:
            if len(paths) > 1:
                out.write(f"==> {path} <==\n".encode())
            try:
                out.writelines(last_lines(path, count))
            except FileNotFoundError:
                complain(f"{service.name}: no log file {path} yet")
        out.flush()
    except BrokenPipeError:
        pass  # the reader (head) had enough
    return 0


def run(service: Service) -> int:
    """Run in the foreground: same pidfile and signals, no fork, no redirect."""
    credentials = resolve_credentials(service.config.user, service.config.group)
    pidfile = _pidfile(service)
    with DeferredInterrupts() as interrupts:
        holder = _holder_or_lock(service, pidfile, interrupts)
        if holder is not None:
            pid, note = holder
            raise AlreadyRunningError(
                f"already running ({_with_note(f'pid {pid}', note)}); not starting a second copy"
            )
        # From the lock to the service's handlers, a stop signal waits (blocked)
        # instead of killing us with the default action and the pidfile left behind;
        # the handlers take it, and main starts with should_stop() already True.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, DeferredInterrupts.SIGNALS)
    try:
        if interrupts.signum is not None:
            signal.raise_signal(interrupts.signum)  # pending until the handlers are in
        line_buffer_python_streams()
        return serve(service, pidfile, credentials=credentials)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def reload(service: Service) -> int:
    """Reopen the logs and run the reload callbacks; return once the daemon has."""
    pidfile = _pidfile(service)
    state, note = _inspect(service, pidfile)
    pidfd = None if state.pid is None else _pinned(pidfile, state.pid)
    if pidfd is None or state.pid is None:
        raise NotRunningError("is not running")
    pid, timeout = state.pid, service.config.start_timeout
    try:
        answer = ask(pid, "reload", timeout, lambda: _send_sighup(pidfd, pid))
        if answer is None:
            _send_sighup(pidfd, pid)
            say(f"{service.name}: sent SIGHUP to pid {pid} (no acknowledgement channel)")
            return 0
    except ImpostorError as exc:
        _send_sighup(pidfd, pid)
        say(f"{service.name}: sent SIGHUP to pid {pid} ({exc}: not trusting it)")
        return 0
    except TimeoutError:
        raise ReloadError(f"no answer from pid {pid} within {timeout:g}s") from None
    finally:
        os.close(pidfd)
    if answer != "ok":
        raise ReloadError(f"reload failed in pid {pid}: {answer.removeprefix('error ')}")
    say(f"{service.name} reloaded ({_with_note(f'pid {pid}', note)})")
    return 0


def _send_sighup(pidfd: int, pid: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGHUP)
    except PermissionError as exc:
        raise ReloadError(f"cannot signal pid {pid}: permission denied") from exc
    except ProcessLookupError as exc:
        raise NotRunningError("is not running") from exc


def print_systemd_unit(service: Service) -> int:
    """Print a unit file that runs the service under systemd (Type=notify), with its options."""
    from ._unit import systemd_unit  # noqa: PLC0415 -- only this command needs it

    say(systemd_unit(service.config, service.words).rstrip("\n"))
    return 0
