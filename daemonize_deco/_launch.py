"""The commands that run the service: ``start`` and ``run``.

``start`` detaches, or stays in the foreground under a process manager.

Only these are loaded for a start, and the daemon inherits what its starter
loaded: the commands that address a running service live in ``_commands``.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import os
import sys

from ._claim import forget_inherited, inherited_claim
from ._detach import (
    DeferredInterrupts,
    check_log_path,
    check_workdir,
    detach,
    line_buffer_python_streams,
)
from ._errors import AlreadyRunningError, DetachError, StartupError
from ._hygiene import close_inherited_fds, remember_program_descriptors, resolve_credentials
from ._lookup import holder_or_lock, pidfile_of, with_note
from ._output import complain, say
from ._runtime import release_listeners, serve

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import Service, ServiceConfig
    from ._hygiene import Credentials
    from ._managers import Manager
    from ._pidfile import PidFile
    from ._startup import StartupReport, StartupWatcher

__all__ = ["before_starting", "check_before_fork", "detach_and_wait", "run", "start"]


def check_before_fork(config: ServiceConfig) -> Credentials | None:
    """Find what can be found before forking; return the credentials to drop to."""
    _warn_about_the_pidfile_directory(config)
    check_workdir(config.workdir)
    for log in {config.stdout, config.stderr} - {None}:
        check_log_path(str(log))
    return resolve_credentials(config.user, config.group)


def _manager() -> Manager | None:
    """The manager that wants this command in the foreground, if any (``_managers``).

    A daemon keeps every module its start loaded, and this one is no daemon's
    business: with no manager, it is let go of before the fork.
    """
    from ._managers import running_under  # noqa: PLC0415

    manager = running_under()
    if manager is None:
        sys.modules.pop(f"{__package__}._managers", None)
        vars(sys.modules[__package__]).pop("_managers", None)
    return manager


def _warn_about_the_pidfile_directory(config: ServiceConfig) -> None:
    """Say so when another user owns the pidfile's directory: they can replace its files."""
    from ._lookup import trusted_owners  # noqa: PLC0415 -- loaded by the start already

    directory = os.path.dirname(config.pidfile)
    try:
        owner = os.stat(directory).st_uid
    except OSError:
        return
    if owner not in trusted_owners(config, directory=False):
        from ._pidfile import user_name  # noqa: PLC0415

        complain(
            f"{config.name}: warning: {directory} belongs to user {user_name(owner)}, who can "
            "replace the pidfile and every file beside it; keep them in a directory of the "
            "service's own"
        )


def _end_what_the_last_run_left(
    service: Service, pidfile: PidFile, interrupts: DeferredInterrupts
) -> str:
    """A run that was killed could not end what it started (``_descendants``): end it now.

    Its pidfile, about to name the new run, was the one way to find them.
    Returns the line that says so ("" when there was none).
    """
    pid = pidfile.previous_pid
    if pid is None:
        return ""
    from ._descendants import describe, end_left_by, killed  # noqa: PLC0415 -- after a crash

    try:
        timeout = service.config.stop_timeout  # (Ctrl-C: SIGKILL at once, and no start)
        ended = end_left_by(pidfile.path, pid, timeout, interrupts.fileno())
    except OSError:
        return ""  # (no descriptor to look with: status and stop can still tell them)
    if not ended:
        return ""
    return f"{service.name}: ended {describe(ended)} its last run left running{killed(ended)}"


def start(service: Service) -> int:
    """Detach and return once the daemon is ready, or say why it failed."""
    manager = _manager()
    if manager is not None:
        # Forking away from a manager makes it think the service died.
        _say_in_the_foreground(service, manager)
        if manager.shell is not None:
            from ._hygiene import die_with_parent  # noqa: PLC0415 -- loads ctypes

            die_with_parent(signal.SIGTERM, manager.shell)  # its manager stops the shell
        return run(service)
    before_starting(service.config)
    pidfile = pidfile_of(service)
    with DeferredInterrupts() as interrupts:
        # "Already running" first: another user's start may not even open the logs.
        holder = holder_or_lock(service, pidfile, interrupts)
        if holder is not None:
            pid, note = holder
            say(f"{service.name} is already running ({with_note(f'pid {pid}', note)})")
            return 0
        ended = _end_what_the_last_run_left(service, pidfile, interrupts)
        try:
            credentials = check_before_fork(service.config)
            _open_listeners(service.config)
        except BaseException:
            pidfile.remove()  # not forked yet: the lock is ours alone
            raise
        report = detach_and_wait(service, pidfile, credentials, interrupts)
        pidfile.close()
    _say_started(service, report)
    if ended:
        say(ended)  # after the outcome: the first line stays "started (pid N)"
    return 0


def _say_in_the_foreground(service: Service, manager: Manager) -> None:
    """Say so on stderr, naming the log files not used, and what is wrong with a shell between."""
    config = service.config
    line = f"{service.name}: running in the foreground under {manager.name} (start acts as run)"
    if config.stdout is not None or config.stderr is not None:
        files = ", ".join(
            f"{key}={path}"
            for key, path in (("stdout", config.stdout), ("stderr", config.stderr))
            if path is not None
        )
        line += f"; output stays on the streams it was given, not {files}"
    complain(line)
    if manager.warning is not None:
        complain(f"{service.name}: warning: {manager.warning}")


def before_starting(config: ServiceConfig) -> None:
    """A start's first step, before it opens any descriptor of its own.

    Notes which descriptors are the program's (the daemon keeps them), and
    imports what the daemon will load.
    """
    remember_program_descriptors()
    _load_what_it_runs(config, supervised=config.restart.enabled or config.workers > 1)


def _load_what_it_runs(config: ServiceConfig, *, supervised: bool) -> None:
    """Import, while no descriptor is held yet, the modules the service loads later.

    An import reads a file: under a tight ``ulimit -n``, one made with the
    pidfile locked and the sockets bound could fail and leave them behind.
    """
    names = []
    if supervised:
        keeper = "_workers" if config.workers > 1 else "_supervisor"
        names.append(f"{__package__}.{keeper}")
    if config.prevent_core:
        names.append("resource")
    if config.listen or config.health:
        names += ["socket", f"{__package__}._listeners", f"{__package__}._handover"]
    if config.health:
        names.append(f"{__package__}._health")
        if supervised:  # it answers the endpoint while it backs off
            names.append(f"{__package__}._between_runs")
    if config.drain:  # the service tells status of a drain
        names.append(f"{__package__}._draining")
    for name in names:
        __import__(name)


def _open_listeners(config: ServiceConfig) -> None:
    if config.listen:
        from ._listeners import open_listeners  # noqa: PLC0415 -- only services with listen=

        open_listeners(config.listen)
    if config.health:
        from ._listeners import open_health  # noqa: PLC0415 -- only services with health=

        open_health(config.health)


def _say_started(service: Service, report: StartupReport) -> None:
    if report.outcome == "finished":
        say(f"{service.name} ran and finished (pid {report.pid}, {report.reason})")
    else:
        say(f"{service.name} started (pid {report.pid})")


def detach_and_wait(
    service: Service,
    pidfile: PidFile,
    credentials: Credentials | None,
    interrupts: DeferredInterrupts,
) -> StartupReport:
    """Detach the daemon holding ``pidfile``; return its report once ready (or finished).

    A daemon that fails, or is not ready in time, is ended (StartupError
    with the reason); the pidfile is then let go of as it must be.  Either
    way this process keeps no listening socket: a program that starts the
    service and goes on would otherwise hold its port after it stopped.
    """
    forked = False
    try:
        watcher = _detach(service, pidfile, credentials, interrupts)
        forked = True
        return _wait_until_ready(service, pidfile, watcher, interrupts)
    finally:
        # Before the fork nobody else has the Unix socket files this start made;
        # handed-over ones (adopted) are the running instance's.
        release_listeners(remove_files=not forked and not pidfile.adopted)
        forget_inherited()


def _detach(
    service: Service,
    pidfile: PidFile,
    credentials: Credentials | None,
    interrupts: DeferredInterrupts,
) -> StartupWatcher:
    config = service.config
    if interrupts.signum is not None:
        pidfile.remove()
        raise StartupError("failed to start: interrupted before it was started", path=pidfile.path)
    run_in_daemon: Callable[..., int] = serve
    if config.workers > 1:
        from ._workers import arbitrate  # noqa: PLC0415 -- only services with workers

        run_in_daemon = arbitrate
    elif config.restart.enabled:
        from ._supervisor import supervise  # noqa: PLC0415 -- only supervised services

        run_in_daemon = supervise
    keep = {pidfile.fileno(), *config.descriptors_to_keep(), *_sockets_to_keep()}
    try:
        return detach(
            lambda channel: run_in_daemon(
                service, pidfile, credentials=credentials, startup=channel
            ),
            workdir=config.workdir,
            umask=config.umask,
            stdout=config.stdout,
            stderr=config.stderr,
            close_inherited=lambda kept: close_inherited_fds({*kept, *keep}),
            in_child=interrupts.restore,
        )
    except DetachError:
        pidfile.remove()  # the fork failed: no other process shares the lock
        raise


def _wait_until_ready(
    service: Service, pidfile: PidFile, watcher: StartupWatcher, interrupts: DeferredInterrupts
) -> StartupReport:
    config = service.config
    with watcher:
        grace = None if config.wait_ready or config.start_grace == 0 else config.start_grace
        report = watcher.wait(config.start_timeout, interrupts.fileno(), grace)
        if report.outcome in ("ready", "finished"):
            _close_process(report)
            if pidfile.adopted and report.outcome == "ready":
                watcher.keep_channel()  # closed once the restart is over (``_handover``)
            return report
        if report.outcome == "interrupted":
            watcher.learn_pid(config.start_timeout)
    # The pipe closed first: under a tight ulimit -n, ending the start needs its descriptor.
    reason = _end_failed_start(service, pidfile, report)
    raise StartupError(f"failed to start: {reason}", path=pidfile.path, pid=report.pid)


def _sockets_to_keep() -> list[int]:
    """The listening sockets; a restart's claim and the handle on the instance it replaces."""
    listeners = sys.modules.get(f"{__package__}._listeners")
    handover = sys.modules.get(f"{__package__}._handover")
    kept = [] if listeners is None else listeners.descriptors()
    passed = [inherited_claim(), None if handover is None else handover.predecessor_descriptor()]
    return [*kept, *(fd for fd in passed if fd is not None)]


def _close_process(report: StartupReport) -> None:
    if report.process is not None:
        report.process.close()
        report.process = None


def _end_failed_start(service: Service, pidfile: PidFile, report: StartupReport) -> str:
    """Make sure the daemon that failed to start is gone; return the reason.

    The daemon shares the pidfile's lock, so the pidfile is removed only once
    it is known to be gone; otherwise it is left to the daemon, still locked.
    """
    from ._terminate import terminate  # noqa: PLC0415 -- a failed start only: not in the daemon

    config = service.config
    waiting = {
        "timeout": f"not ready within {config.start_timeout:g}s",
        "interrupted": "interrupted before it was ready",
    }
    reason = waiting.get(report.outcome, report.reason)
    # With no pid line, a daemon exists only if the pipe is still open.
    gone = report.pid is not None or report.pipe_ended
    if report.process is not None and report.pid is not None:
        try:
            if report.outcome in waiting:
                reason += f"; {terminate(report.process, config.kill_after).how} it"
            elif not report.process.wait(config.kill_after):
                terminate(report.process, 0)
        except (PermissionError, TimeoutError) as exc:
            gone = False
            reason += f"; could not stop pid {report.pid}: {exc}"
        _close_process(report)
    elif not gone:
        reason += "; its pid is unknown, so its pidfile is left to it"
    if gone:
        # Its Unix socket files are ours to remove now: it may have died before it could.
        release_listeners(remove_files=not pidfile.adopted)
        pidfile.remove()
    else:
        pidfile.close()
    return reason


def run(service: Service) -> int:
    """Run in the foreground: same pidfile and signals, no fork, no redirect."""
    _warn_about_the_pidfile_directory(service.config)
    credentials = resolve_credentials(service.config.user, service.config.group)
    workers = service.config.workers > 1
    _load_what_it_runs(service.config, supervised=workers)
    pidfile = pidfile_of(service)
    with DeferredInterrupts() as interrupts:
        holder = holder_or_lock(service, pidfile, interrupts)
        if holder is not None:
            pid, note = holder
            raise AlreadyRunningError(
                f"already running ({with_note(f'pid {pid}', note)}); not starting a second copy",
                path=pidfile.path,
                pid=pid,
            )
        ended = _end_what_the_last_run_left(service, pidfile, interrupts)
        if ended:
            complain(ended)  # stdout is the service's from now on
        # From the lock to the service's handlers, a stop signal waits (blocked)
        # instead of killing us with the default action and the pidfile left behind;
        # the handlers take it, and main starts with should_stop() already True.
        try:
            _open_listeners(service.config)
        except BaseException:
            pidfile.remove()
            raise
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, DeferredInterrupts.SIGNALS)
    try:
        if interrupts.signum is not None:
            signal.raise_signal(interrupts.signum)  # pending until the handlers are in
        line_buffer_python_streams()
        if workers:
            from ._workers import arbitrate  # noqa: PLC0415 -- loaded above

            return arbitrate(service, pidfile, credentials=credentials, startup=None)
        return serve(service, pidfile, credentials=credentials)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
