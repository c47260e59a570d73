"""The commands that address a service: stop, restart, status, reload, logs, the unit files.

Each takes the :class:`Service` and returns its exit status, printing what
went right with :func:`say`; what went wrong is raised as a
:class:`DaemonError`, which ``_cli.dispatch`` turns into one line and a
status.  ``start`` and ``run`` are in ``_launch``.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import sys
import time

from . import _beside, _lastrun
from ._errors import (
    ManagedError,
    NoLogError,
    NotRunningError,
    PidFileError,
    ReloadError,
    StartupError,
    StopError,
    UsageError,
)
from ._lookup import inspect_service, pidfile_of, trusted_owners, with_note
from ._managers import manager_of
from ._output import complain, say
from ._platform import has_proc
from ._platform_process import ProcessHandle, start_time
from ._proc import has_open, is_alive
from ._terminate import terminate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._config import Service
    from ._looking import PidFileState
    from ._pidfile import PidFile
    from ._startup import StartupReport

__all__ = [
    "logs", "print_kubernetes_manifest", "print_launchd_plist", "print_systemd_unit", "reload",
    "restart", "status", "stop",
]  # fmt: skip


def _running_pid(service: Service, pidfile: PidFile) -> int | None:
    """The verified pid of the running service; None (after tidying up) when not running."""
    # A start holds the lock before its daemon writes the pid: wait as long as a start may.
    state, note = inspect_service(service, pidfile, settle=service.config.start_timeout)
    if not state.running:
        _say_not_running(service, pidfile, state)
        return None
    if state.pid is None:
        raise StopError(
            f"pidfile {pidfile.path} is locked, but names no process that holds it",
            path=pidfile.path,
        )
    if note:
        say(f"{service.name}: {note}")
    return state.pid


def _pinned(pidfile: PidFile, pid: int) -> ProcessHandle | None:
    """A handle on ``pid`` if, once pinned, it still holds the pidfile (or a deleted one).

    Between reading the pid and pinning it the process may have exited and
    the pid been reused: checking again after pinning rules that out.
    """
    process = ProcessHandle.open(pid)
    if process is not None and not (
        pidfile.is_held_by(pid) or has_open(pid, pidfile.path) or _vouched_for(pidfile, pid)
    ):
        process.close()
        return None
    return process


def _vouched_for(pidfile: PidFile, pid: int) -> bool:
    """Without /proc, which shows a deleted pidfile held open: ``pid`` has its sockets there."""
    if has_proc():
        return False
    from ._platform_sockets import vouches_for  # noqa: PLC0415 -- only where there is no /proc

    return vouches_for(pid, pidfile.path, pidfile.owners) is True


def stop(service: Service) -> int:
    """SIGTERM the daemon and wait until it is gone; SIGKILL its group after stop_timeout."""
    pidfile = pidfile_of(service)
    pid = _running_pid(service, pidfile)
    if pid is None:
        return 0
    process = _pinned(pidfile, pid)
    if process is None:
        _say_not_running(service, pidfile, pidfile.inspect())
        return 0
    started = start_time(pid) or time.time()
    try:
        ending = terminate(process, _stop_timeout(service))
    except PermissionError as exc:
        raise StopError(f"cannot stop pid {pid}: permission denied", pid=pid) from exc
    except TimeoutError as exc:
        raise StopError(f"cannot stop pid {pid}: {exc}", pid=pid) from exc
    finally:
        process.close()
    # Left behind after SIGKILL, or by a daemon that dropped privileges and
    # could not unlink it from a root-owned directory.
    try:
        pidfile.remove_if_stale()
    except PidFileError as exc:
        complain(f"{service.name}: {exc}")  # it is stopped all the same
    if ending.how == "stopped":
        also = _leftovers_note(ending.leftovers)
        say(f"{service.name} stopped (pid {pid}){also}")
    else:
        why = f"still running {_stop_timeout(service):g}s after SIGTERM"
        # It could write no record of its own: stop writes the one status will show.
        killed = _lastrun.LastRun(
            pid, status=None, started=started, ended=time.time(), killed=f"SIGKILL by stop, {why}"
        )
        _lastrun.write(pidfile.path, killed)
        _remove_what_it_left_beside(pidfile)
        # Killed, it could not end what it started in sessions of their own.
        say(f"{service.name} killed (pid {pid}): {why}{_end_left_by(service, pidfile, pid)}")
    return 0


def _end_left_by(service: Service, pidfile: PidFile, pid: int) -> str:
    """End what the dead run of ``pid`` left running; the words that say so (or "")."""
    from ._descendants import describe, end_left_by, killed  # noqa: PLC0415 -- after a killed run

    ended = end_left_by(pidfile.path, pid, _stop_timeout(service))
    return f"; ended {describe(ended)} its last run left running{killed(ended)}" if ended else ""


def _remove_what_it_left_beside(pidfile: PidFile) -> None:
    """What a run that could not end cleanly left beside its pidfile, but its record.

    Its options, its supervisor's state, a restart's lock that nobody holds
    (a restart killed), and the temporary names of writes cut short.
    """
    from ._handover import remove_unheld_lock  # noqa: PLC0415 -- after a killed run
    from ._phases import STATE_SUFFIX  # noqa: PLC0415
    from ._remembered_options import OPTIONS_SUFFIX  # noqa: PLC0415 -- a small module

    if pidfile.inspect(settle=0).running:
        return  # a start came in meanwhile: these are its files now
    for suffix in (OPTIONS_SUFFIX, STATE_SUFFIX):
        _beside.remove(pidfile.path + suffix)
    remove_unheld_lock(pidfile)
    suffixes = ("", OPTIONS_SUFFIX, STATE_SUFFIX, _lastrun.SUFFIX, ".restarting")
    _beside.remove_temporaries(pidfile.path + suffix for suffix in suffixes)


def _stop_timeout(service: Service) -> float:
    """The drain, then ``--timeout S`` when given, else the decorator's stop_timeout."""
    given = service.flags.get("timeout")
    timeout = float(given) if isinstance(given, float) else service.config.stop_timeout
    return service.config.drain + timeout


def _say_not_running(service: Service, pidfile: PidFile, state: PidFileState) -> None:
    if state.last_words:  # it ended cleanly, and left its record in the file: not stale
        say(f"{service.name} is not running")
        return
    if state.foreign_owner is not None:
        say(f"{service.name} is not running (what is at {pidfile.path} is not trusted, and left "
            f"alone: {state.distrust})")  # fmt: skip
        return
    left = "" if state.pid is None else _end_left_by(service, pidfile, state.pid)
    try:
        removed = state.exists and pidfile.remove_if_stale()
    except PidFileError as exc:  # another user's stale file: not running is what counts
        say(f"{service.name} is not running ({exc}){left}")
        return
    if removed:
        _remove_what_it_left_beside(pidfile)
        say(f"{service.name} is not running (removed stale pidfile {pidfile.path}){left}")
    else:
        say(f"{service.name} is not running{left}")


def restart(service: Service) -> int:
    """Stop (waiting until gone) if running, then start.

    With ``listen=``, the running instance hands its sockets to the new one,
    which is started first; the old one is stopped once it is ready.  An
    instance a process manager runs in the foreground is the manager's to
    restart: ManagedError names the manager's command.
    """
    _refuse_a_managers_child(service)
    if service.config.listen:
        replaced = _replace(service, pidfile_of(service))
        if replaced is not None:
            return replaced
    from ._launch import start  # noqa: PLC0415 -- status and stop never load the daemon's runtime

    stop(service)
    return start(service)


def _refuse_a_managers_child(service: Service) -> None:
    """Its manager would take the stop for a crash, and a detached successor is nobody's."""
    state = pidfile_of(service).inspect(settle=0)  # as it is: stop and _replace repair it
    manager = None if state.pid is None or not state.running else manager_of(state.pid)
    if manager is not None:
        raise ManagedError(
            f"not restarted: pid {state.pid} runs in the foreground under {manager.name}; "
            f"{manager.restart}"
        )


def _replace(service: Service, pidfile: PidFile) -> int | None:
    """Start a new instance with the running one's sockets; once it is ready, stop the old.

    None when nothing runs, or, said on stderr, when the running instance
    hands nothing over (a version before listen=): then it is stopped and
    started as any other service.
    """
    from ._handover import one_restart_at_a_time  # noqa: PLC0415 -- only services with listen=
    from ._launch import before_starting  # noqa: PLC0415

    config = service.config
    before_starting(config)
    serialised = one_restart_at_a_time(pidfile, config.start_timeout + config.kill_after)
    try:
        # Looked at with the restarts serialised: the one before ours may have replaced it.
        state, _ = inspect_service(service, pidfile, settle=config.start_timeout)
        if not state.running or state.pid is None:
            return None
        return _hand_over(service, pidfile, state.pid)
    finally:
        serialised.remove()


def _hand_over(service: Service, pidfile: PidFile, old: int) -> int | None:
    """The handover itself, one restart at a time.

    The new instance learns that the restart is over when the startup pipe
    closes: then, if the pidfile names it, it is the service (and ends the
    old one itself, should this process have died before it could);
    otherwise it stands down.  So a restart killed at any instant leaves
    exactly one instance.
    """
    from ._detach import DeferredInterrupts  # noqa: PLC0415
    from ._handover import forget_predecessor, take_over  # noqa: PLC0415
    from ._launch import check_before_fork, detach_and_wait  # noqa: PLC0415

    config = service.config
    process = _pinned(pidfile, old)
    if process is None:
        raise StartupError(
            f"failed to restart: pid {old} no longer holds {pidfile.path}",
            path=pidfile.path,
            pid=old,
        )
    try:
        with DeferredInterrupts() as interrupts:
            credentials = check_before_fork(config)
            try:
                handover = take_over(pidfile, old, config.start_timeout)
            except StartupError as exc:
                complain(f"{service.name}: {exc}; restarting by stop and start")
                return None
            shared = handover.use(pidfile, process)
            try:
                report = detach_and_wait(service, shared, credentials, interrupts)
            except StartupError as exc:
                raise StartupError(
                    f"{exc}; {_what_runs(service, process)}", path=exc.path, pid=exc.pid
                ) from None
            finally:
                forget_predecessor()
            try:
                new = _commit(service, shared, report, process)
                handover.quiesce_old()
                try:
                    ending = terminate(process, _stop_timeout(service))
                except (PermissionError, TimeoutError) as exc:
                    raise StopError(
                        f"started pid {new}, but cannot stop pid {old}: {exc}", pid=old
                    ) from exc
            finally:
                report.close_channel()  # the restart is over: the new instance settles
    finally:
        process.close()
    how = "stopped" if ending.how == "stopped" else f"killed after {_stop_timeout(service):g}s"
    left = "" if ending.how == "stopped" else _end_left_by(service, pidfile, old)
    say(f"{service.name} restarted (pid {new}; pid {old} {how}, its sockets kept){left}")
    return 0


def _commit(service: Service, shared: PidFile, report: StartupReport, old: ProcessHandle) -> int:
    """Make the ready new instance the service: its pid, then its options, in the pidfile's name.

    StartupError when it only ran and finished, or died at once (it left the
    file to the old one).
    """
    new = report.pid
    if report.outcome != "ready" or new is None:
        shared.close()
        raise StartupError(
            f"failed to restart: the new instance ran and finished ({report.reason}) "
            f"instead of serving; {_what_runs(service, old)}",
            pid=new,
        )
    if not is_alive(new):
        shared.close()
        raise StartupError(
            f"failed to restart: the new instance (pid {new}) ended as soon as it was ready; "
            f"{_what_runs(service, old)}",
            pid=new,
        )
    shared.write_pid(new)  # from now on the pidfile names the new instance
    if service.signature:
        from ._remembered_options import remember  # noqa: PLC0415 -- a small record

        remember(service.config.pidfile, service.words)  # only now: it may have failed
    shared.close()
    return new


def _leftovers_note(leftovers: int | None) -> str:
    if leftovers is None:
        return "; ended the processes it left running in its group"
    return f"; ended {leftovers} process(es) it left running" if leftovers else ""


def _what_runs(service: Service, old: ProcessHandle) -> str:
    """After a failed handover: the old instance serves on, or (stopped meanwhile) nothing does.

    The old one left the pidfile and its socket files to the restart; with
    nothing to hand them to, they are removed here.
    """
    if not old.has_exited():
        return f"pid {old.pid} is still running and serving"
    from ._listeners import remove_unused_files  # noqa: PLC0415 -- loaded by listen=

    remove_unused_files(service.config.listen)
    return f"pid {old.pid} ended meanwhile (stopped?), so nothing runs now"


def status(service: Service) -> int:
    """0 running, 1 dead but pidfile left behind, 3 not running (4: see error_status)."""
    from ._status import StatusReport  # noqa: PLC0415 -- only status loads it (and /proc readers)

    pidfile = pidfile_of(service)
    state, note = inspect_service(service, pidfile)
    options_by = trusted_owners(service.config, directory=False)
    report = StatusReport(
        service.name, pidfile, state, note, option_owners=options_by, drain=service.config.drain
    )
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


def reload(service: Service) -> int:
    """Reopen the logs and run the reload callbacks; return once the daemon has."""
    from ._control import ImpostorError, ask  # noqa: PLC0415 -- only reload asks

    pidfile = pidfile_of(service)
    state, note = inspect_service(service, pidfile)
    process = None if state.pid is None else _pinned(pidfile, state.pid)
    if process is None:
        raise NotRunningError("is not running", path=pidfile.path)
    pid, timeout = process.pid, service.config.start_timeout
    try:
        where = (pidfile.path, pidfile.owners)
        answer = ask(pid, "reload", timeout, lambda: _send_sighup(process), where)
        if answer is None:
            _send_sighup(process)
            say(f"{service.name}: sent SIGHUP to pid {pid} (no acknowledgement channel)")
            return 0
    except ImpostorError as exc:
        _send_sighup(process)
        say(f"{service.name}: sent SIGHUP to pid {pid} ({exc}: not trusting it)")
        return 0
    except TimeoutError:
        raise ReloadError(f"no answer from pid {pid} within {timeout:g}s", pid=pid) from None
    finally:
        process.close()
    if answer != "ok":
        raise ReloadError(f"reload failed in pid {pid}: {answer.removeprefix('error ')}", pid=pid)
    say(f"{service.name} reloaded ({with_note(f'pid {pid}', note)})")
    return 0


def _send_sighup(process: ProcessHandle) -> None:
    pid = process.pid
    try:
        sent = process.send(signal.SIGHUP)
    except PermissionError as exc:
        raise ReloadError(f"cannot signal pid {pid}: permission denied", pid=pid) from exc
    if not sent:
        raise NotRunningError("is not running", pid=pid)


def print_systemd_unit(service: Service) -> int:
    """Print a unit file that runs the service under systemd (Type=notify), with its options."""
    from ._unit import systemd_socket_unit, systemd_unit  # noqa: PLC0415 -- only this command

    if service.flags.get("socket"):
        if not service.config.listen:
            raise UsageError("has no listen= sockets: there is no .socket unit to print")
        say(systemd_socket_unit(service.config).rstrip("\n"))
    else:
        say(systemd_unit(service.config, service.words).rstrip("\n"))
    return 0


def print_launchd_plist(service: Service) -> int:
    """Print a launchd plist that runs the service (``run``) with its options."""
    from ._unit import launchd_label, launchd_plist  # noqa: PLC0415 -- only this command

    config = service.config
    label = launchd_label(config.name, [service.options[name] for name in config.placeholders])
    say(launchd_plist(config, service.words, label).rstrip("\n"))
    return 0


def print_kubernetes_manifest(service: Service) -> int:
    """Print a Kubernetes Deployment (+ Service) running the service (``run``) with its options."""
    from ._kubernetes import (  # noqa: PLC0415 -- only this command
        DEFAULT_IMAGE,
        kubernetes_manifest,
        resource_name,
    )

    config = service.config
    name = resource_name(config.name)
    image = str(service.flags.get("image") or DEFAULT_IMAGE)
    replicas = service.flags.get("replicas")
    manifest, warnings = kubernetes_manifest(
        config,
        service.words,
        name=name,
        image=image,
        replicas=replicas if isinstance(replicas, int) else 1,
    )
    for warning in warnings:
        complain(f"{service.name}: {warning}")
    say(manifest.rstrip("\n"))
    return 0
