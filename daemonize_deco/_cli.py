"""The command line: start, stop, restart, status, run, and their LSB exit statuses.

Commands raise :class:`DaemonError` subclasses; :func:`dispatch` is the one
place that turns them into a line on stderr and an exit status.  The parser
is a few lines rather than argparse, which would cost more at start-up than
five fixed words are worth.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)
import atexit
import os
import sys
import time

from ._control import ImpostorError, ask
from ._detach import (
    DeferredInterrupts,
    check_log_path,
    check_workdir,
    detach,
    ensure_standard_fds,
    flush_standard_streams,
    line_buffer_python_streams,
)
from ._errors import (
    AlreadyRunningError,
    DaemonError,
    DetachError,
    NotRunningError,
    PidFileError,
    ReloadError,
    StartupError,
    StopError,
    UsageError,
    exit_status,
)
from ._hygiene import close_inherited_fds, resolve_credentials
from ._pidfile import PidFile
from ._proc import open_pidfd, terminate, uptime, wait_exit
from ._runtime import serve, served_here, threads_left_behind
from ._unit import systemd_unit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

    from ._config import Service, ServiceConfig
    from ._detach import StartupReport
    from ._hygiene import Credentials
    from ._pidfile import PidFileState

__all__ = ["COMMANDS", "dispatch", "exit_with", "usage"]

# LSB: for "status" every error means "status unknown", whatever it is.
STATUS_UNKNOWN = 4
_RETRY_INTERVAL = 0.01
# Set by the managers that want their service in the foreground.
_MANAGER_VARIABLES = {
    "NOTIFY_SOCKET": "systemd Type=notify",
    "SUPERVISOR_ENABLED": "supervisord",
}


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


def format_uptime(seconds: float) -> str:
    """``3s``, ``5m 3s``, ``2h 5m``, ``3d 2h``."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


# -- the commands ------------------------------------------------------------


def _holder_or_lock(
    service: Service, pidfile: PidFile, interrupts: DeferredInterrupts | None = None
) -> int | None:
    """Take the pidfile's lock (None), or return the pid of the daemon that holds it."""
    deadline = time.monotonic() + service.config.start_timeout
    while not pidfile.acquire():
        state = pidfile.inspect(settle=0)
        if state.running and state.pid is not None:
            return state.pid
        if interrupts is not None and interrupts.signum is not None:
            raise StartupError("failed to start: interrupted before it was started")
        if time.monotonic() >= deadline:
            raise PidFileError(
                f"pidfile {pidfile.path} is locked, but names no process that holds it"
            )
        time.sleep(_RETRY_INTERVAL)
    return None


def _check_before_fork(config: ServiceConfig) -> Credentials | None:
    """Find what can be found before forking; return the credentials to drop to."""
    check_workdir(config.workdir)
    for log in {config.stdout, config.stderr} - {None}:
        check_log_path(str(log))
    return resolve_credentials(config.user, config.group)


def _manager() -> str | None:
    """The process manager that wants us in the foreground, if any."""
    return next((who for var, who in _MANAGER_VARIABLES.items() if os.environ.get(var)), None)


def start(service: Service) -> int:
    """Detach and return once the daemon is ready, or say why it failed."""
    manager = _manager()
    if manager is not None:
        # Forking away from a manager makes it think the service died.
        complain(f"{service.name}: running in the foreground under {manager} (start acts as run)")
        return run(service)
    config = service.config
    credentials = _check_before_fork(config)
    pidfile = _pidfile(service)
    with DeferredInterrupts() as interrupts:
        holder = _holder_or_lock(service, pidfile, interrupts)
        if holder is not None:
            say(f"{service.name} is already running (pid {holder})")
            return 0
        if interrupts.signum is not None:
            pidfile.remove()  # not forked yet: the lock is ours alone
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
            report = watcher.wait(config.start_timeout, interrupt_fd=interrupts.fileno())
            if report.outcome == "ready":
                _close_pidfd(report)
                pidfile.hand_over()
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
    state = pidfile.inspect(settle=service.config.start_timeout)
    if not state.running:
        _say_not_running(service, pidfile, state)
        return None
    if state.pid is None:
        raise StopError(f"pidfile {pidfile.path} is locked, but names no process that holds it")
    return state.pid


def _pinned(pidfile: PidFile, pid: int) -> int | None:
    """A pidfd for ``pid`` if, once pinned, it still holds the pidfile; else None.

    Between reading the pid and pinning it the process may have exited and
    the pid been reused: checking again after pinning rules that out.
    """
    pidfd = open_pidfd(pid)
    if pidfd is not None and not pidfile.is_held_by(pid):
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
    try:
        ending = terminate(pidfd, pid, service.config.stop_timeout)
    except PermissionError as exc:
        raise StopError(f"cannot stop pid {pid}: permission denied") from exc
    except TimeoutError as exc:
        raise StopError(f"cannot stop pid {pid}: {exc}") from exc
    finally:
        os.close(pidfd)
    # Left behind after SIGKILL, or by a daemon that dropped privileges and
    # could not unlink it from a root-owned directory.
    pidfile.remove_if_stale()
    if ending.how == "stopped":
        also = f"; ended {ending.leftovers} process(es) it left running" if ending.leftovers else ""
        say(f"{service.name} stopped (pid {pid}){also}")
    else:
        timeout = service.config.stop_timeout
        say(f"{service.name} killed (pid {pid}): still running {timeout:g}s after SIGTERM")
    return 0


def _say_not_running(service: Service, pidfile: PidFile, state: PidFileState) -> None:
    if state.exists and pidfile.remove_if_stale():
        say(f"{service.name} is not running (removed stale pidfile {pidfile.path})")
    else:
        say(f"{service.name} is not running")


def restart(service: Service) -> int:
    """Stop (waiting until gone) if running, then start."""
    stop(service)
    return start(service)


def status(service: Service) -> int:
    """0 running, 1 dead but pidfile left behind, 3 not running (4: see error_status)."""
    pidfile = _pidfile(service)
    state = pidfile.inspect()
    if state.running:
        pid = state.pid
        up = uptime(pid) if pid is not None else None
        detail = "pid unknown" if pid is None else f"pid {pid}"
        if up is not None:
            detail += f", up {format_uptime(up)}"
        say(f"{service.name} is running ({detail})")
        return 0
    if state.exists:
        stale = f" (pid {state.pid})" if state.pid is not None else ""
        say(f"{service.name} is not running, but its pidfile {pidfile.path} is left behind{stale}")
        return 1
    say(f"{service.name} is not running")
    return 3


def run(service: Service) -> int:
    """Run in the foreground: same pidfile and signals, no fork, no redirect."""
    credentials = resolve_credentials(service.config.user, service.config.group)
    pidfile = _pidfile(service)
    holder = _holder_or_lock(service, pidfile)
    if holder is not None:
        raise AlreadyRunningError(f"already running (pid {holder}); not starting a second copy")
    line_buffer_python_streams()
    return serve(service, pidfile, credentials=credentials)


def reload(service: Service) -> int:
    """Reopen the logs and run the reload callbacks; return once the daemon has."""
    pidfile = _pidfile(service)
    state = pidfile.inspect()
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
    say(f"{service.name} reloaded (pid {pid})")
    return 0


def _send_sighup(pidfd: int, pid: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGHUP)
    except PermissionError as exc:
        raise ReloadError(f"cannot signal pid {pid}: permission denied") from exc
    except ProcessLookupError as exc:
        raise NotRunningError("is not running") from exc


def print_systemd_unit(service: Service) -> int:
    """Print a unit file that runs the service under systemd (Type=notify)."""
    say(systemd_unit(service.config).rstrip("\n"))
    return 0


class Command:
    """A built-in command word: what it runs and its line in the usage text."""

    __slots__ = ("help", "run")

    def __init__(self, run: Callable[[Service], int], help: str) -> None:
        self.run = run
        self.help = help


COMMANDS: dict[str, Command] = {
    "start": Command(start, "start in the background; return once it is ready"),
    "stop": Command(stop, "stop gracefully, wait until it is gone"),
    "restart": Command(restart, "stop if running, then start"),
    "status": Command(status, "0 running, 1 dead with a pidfile left, 3 not running, 4 unknown"),
    "run": Command(run, "run in the foreground (Ctrl-C stops gracefully)"),
    "reload": Command(reload, "reopen the logs and run the reload callbacks (SIGHUP)"),
    "systemd-unit": Command(print_systemd_unit, "print a systemd unit file for this service"),
}
RESERVED_WORDS = frozenset({*COMMANDS, "help"})


def _first_line(func: Callable[..., object]) -> str:
    doc = (getattr(func, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def usage(prog: str, service: Service) -> str:
    """The usage text, custom commands included."""
    helps = {word: command.help for word, command in COMMANDS.items()}
    helps.update({word: _first_line(func) for word, func in service.hooks.commands.items()})
    width = max(map(len, helps))
    lines = [f"usage: {prog} {{{'|'.join(helps)}}} [ARG...]", "", "commands:"]
    lines += [f"  {word:<{width}}  {text}".rstrip() for word, text in helps.items()]
    lines += ["", "exit statuses follow the LSB init-script conventions."]
    return "\n".join(lines)


def parse(argv: Sequence[str], custom: Sequence[str] = ()) -> str | None:
    """The command word in ``argv``; None when help was asked for.

    Built-in commands take no arguments; custom ones take the rest of argv.
    """
    if any(arg in ("-h", "--help") for arg in argv) or list(argv[:1]) == ["help"]:
        return None
    if not argv:
        raise UsageError("no command given")
    word, *extra = argv
    if word in custom:
        return word
    if word not in COMMANDS:
        raise UsageError(f"unknown command {word!r}")
    if extra:
        raise UsageError(f"{word} takes no arguments, got {extra[0]!r}")
    return word


def run_custom(func: Callable[..., object], word: str, args: Sequence[str]) -> int:
    """Call a ``@main.command`` function with the remaining arguments; its result is the status."""
    import inspect  # noqa: PLC0415 -- only custom commands pay for it

    try:
        inspect.signature(func).bind(*args)
    except TypeError as exc:
        raise UsageError(f"{word}: {exc}") from None
    except ValueError:
        pass  # no signature to check (a builtin): let the call decide
    return exit_status(func(*args))


def error_status(command: str | None, exc: DaemonError) -> int:
    """The exit status for ``exc`` raised by ``command``."""
    if command == "status" and not isinstance(exc, UsageError):
        return STATUS_UNKNOWN
    return exc.exit_status


def dispatch(service: Service, argv: Sequence[str]) -> int:
    """Run the command ``argv`` names and return its exit status; never raises DaemonError."""
    ensure_standard_fds()
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else service.name
    command: str | None = None
    try:
        command = parse(argv, list(service.hooks.commands))
        if command is None:
            say(usage(prog, service))
            return 0
        custom = service.hooks.commands.get(command)
        if custom is not None:
            return run_custom(custom, command, argv[1:])
        return COMMANDS[command].run(service)
    except DaemonError as exc:
        complain(exc.line_for(service.name))
        if isinstance(exc, UsageError):
            complain(usage(prog, service))
        return error_status(command, exc)


def exit_with(service: Service, argv: Sequence[str]) -> NoReturn:
    """Run the command ``argv`` names and end the process with its status.

    A command that only controls a service (start, stop, status, ...) ran
    none of the service's code here beyond importing the script, so its
    process leaves with ``os._exit`` after the atexit handlers and a flush:
    the interpreter's teardown would add milliseconds to every start and stop
    in a deploy script.  When this process ran the service (``run``, or
    ``start`` under a manager) or a custom command, it exits normally, which
    also waits for the program's threads.
    """
    status = dispatch(service, argv)
    controlled_only = argv[:1] and argv[0] in COMMANDS and argv[0] != "run" and not served_here()
    # The service's own threads ran past stop_timeout: sys.exit would wait for them forever.
    if controlled_only or threads_left_behind():
        atexit._run_exitfuncs()
        flush_standard_streams()
        os._exit(status & 0xFF)
    sys.exit(status)
