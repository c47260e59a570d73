"""The command line: start, stop, restart, status, run, and their LSB exit statuses.

Commands raise :class:`DaemonError` subclasses; :func:`dispatch` is the one
place that turns them into a line on stderr and an exit status.  The parser
is a few lines rather than argparse, which would cost more at start-up than
five fixed words are worth.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from ._config import ServiceConfig
from ._detach import StartupReport, check_log_path, check_workdir, detach, ensure_standard_fds
from ._errors import (
    AlreadyRunningError,
    DaemonError,
    PidFileError,
    StartupError,
    StopError,
    UsageError,
)
from ._pidfile import PidFile, PidFileState
from ._proc import open_pidfd, terminate, uptime, wait_exit
from ._runtime import serve

__all__ = ["COMMANDS", "dispatch", "usage"]

# LSB: for "status" every error means "status unknown", whatever it is.
STATUS_UNKNOWN = 4
_RETRY_INTERVAL = 0.01


@dataclass(frozen=True)
class Service:
    """What a command works on: the configuration and the user's ``main``."""

    config: ServiceConfig
    main: Callable[[], object]

    @property
    def name(self) -> str:
        """The service's name in messages."""
        return self.config.name

    def pidfile(self) -> PidFile:
        """A handle on the service's pidfile."""
        return PidFile(self.config.pidfile)


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


say = partial(_write, "stdout")
complain = partial(_write, "stderr")


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


def _holder_or_lock(service: Service, pidfile: PidFile) -> int | None:
    """Take the pidfile's lock (None), or return the pid of the daemon that holds it."""
    deadline = time.monotonic() + service.config.start_timeout
    while not pidfile.acquire():
        state = pidfile.inspect(settle=0)
        if state.running and state.pid is not None:
            return state.pid
        if time.monotonic() >= deadline:
            raise PidFileError(
                f"pidfile {pidfile.path} is locked, but names no process that holds it"
            )
        time.sleep(_RETRY_INTERVAL)
    return None


def _check_before_fork(config: ServiceConfig) -> None:
    check_workdir(config.workdir)
    for log in {config.stdout, config.stderr} - {None}:
        check_log_path(str(log))


def start(service: Service) -> int:
    """Detach and return once the daemon is ready, or say why it failed."""
    config = service.config
    _check_before_fork(config)
    pidfile = service.pidfile()
    holder = _holder_or_lock(service, pidfile)
    if holder is not None:
        say(f"{service.name} is already running (pid {holder})")
        return 0
    try:
        watcher = detach(
            lambda channel: serve(
                service.main, pidfile, wait_ready=config.wait_ready, startup=channel
            ),
            workdir=config.workdir,
            umask=config.umask,
            stdout=config.stdout,
            stderr=config.stderr,
        )
    except BaseException:
        pidfile.remove()
        raise
    try:
        report = watcher.wait(config.start_timeout)
    except KeyboardInterrupt:
        report = watcher.report
        report.outcome = "interrupted"
    if report.outcome == "ready":
        pidfile.hand_over()
        say(f"{service.name} started (pid {report.pid})")
        return 0
    reason = _end_failed_start(service, pidfile, report)
    raise StartupError(f"failed to start: {reason}")


def _end_failed_start(service: Service, pidfile: PidFile, report: StartupReport) -> str:
    """Make sure the failed daemon is gone, remove the pidfile; return the reason."""
    config = service.config
    waiting = {
        "timeout": f"not ready within {config.start_timeout:g}s",
        "interrupted": "interrupted before it was ready",
    }
    reason = waiting.get(report.outcome, report.reason)
    if report.pidfd is not None and report.pid is not None:
        if report.outcome in waiting:
            reason += f"; {terminate(report.pidfd, report.pid, config.stop_timeout)} it"
        elif not wait_exit(report.pidfd, config.stop_timeout):
            terminate(report.pidfd, report.pid, 0)
        os.close(report.pidfd)
    pidfile.remove()
    return reason


def stop(service: Service) -> int:
    """SIGTERM the daemon and wait until it is gone; SIGKILL its group after stop_timeout."""
    pidfile = service.pidfile()
    state = pidfile.inspect()
    if not state.running:
        _say_not_running(service, pidfile, state)
        return 0
    pid = state.pid
    if pid is None:
        raise StopError(f"pidfile {pidfile.path} is locked, but names no process that holds it")
    pidfd = open_pidfd(pid)
    # Pinned by the pidfd now; check again that it is still the lock holder,
    # so a pid reused since the first look is never signalled.
    if pidfd is None or not pidfile.is_held_by(pid):
        if pidfd is not None:
            os.close(pidfd)
        _say_not_running(service, pidfile, pidfile.inspect())
        return 0
    try:
        how = terminate(pidfd, pid, service.config.stop_timeout)
    except PermissionError as exc:
        raise StopError(f"cannot stop pid {pid}: permission denied") from exc
    except TimeoutError as exc:
        raise StopError(f"cannot stop pid {pid}: {exc}") from exc
    finally:
        os.close(pidfd)
    if how == "stopped":
        say(f"{service.name} stopped (pid {pid})")
    else:
        pidfile.remove_if_stale()
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
    """0 running, 1 dead but pidfile left behind, 3 not running."""
    pidfile = service.pidfile()
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
    pidfile = service.pidfile()
    holder = _holder_or_lock(service, pidfile)
    if holder is not None:
        raise AlreadyRunningError(f"already running (pid {holder}); not starting a second copy")
    return serve(service.main, pidfile, wait_ready=service.config.wait_ready)


@dataclass(frozen=True)
class Command:
    """A command word: what it runs and its line in the usage text."""

    run: Callable[[Service], int]
    help: str


COMMANDS: dict[str, Command] = {
    "start": Command(start, "start in the background; return once it is ready"),
    "stop": Command(stop, "stop gracefully, wait until it is gone"),
    "restart": Command(restart, "stop if running, then start"),
    "status": Command(status, "0 running, 1 dead with a pidfile left, 3 not running"),
    "run": Command(run, "run in the foreground (Ctrl-C stops gracefully)"),
}


def usage(prog: str) -> str:
    """The usage text."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} {{{'|'.join(COMMANDS)}}}", "", "commands:"]
    lines += [f"  {word:<{width}}  {command.help}" for word, command in COMMANDS.items()]
    lines += ["", "exit statuses follow the LSB init-script conventions."]
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> str | None:
    """The command word in ``argv``; None when help was asked for."""
    if any(arg in ("-h", "--help", "help") for arg in argv):
        return None
    if not argv:
        raise UsageError("no command given")
    word, *extra = argv
    if word not in COMMANDS:
        raise UsageError(f"unknown command {word!r}")
    if extra:
        raise UsageError(f"{word} takes no arguments, got {extra[0]!r}")
    return word


def error_status(command: str | None, exc: DaemonError) -> int:
    """The exit status for ``exc`` raised by ``command``."""
    if command == "status" and not isinstance(exc, UsageError):
        return STATUS_UNKNOWN
    return exc.exit_status


def dispatch(config: ServiceConfig, main: Callable[[], object], argv: Sequence[str]) -> int:
    """Run the command ``argv`` names and return its exit status; never raises DaemonError."""
    ensure_standard_fds()
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else config.name
    command: str | None = None
    try:
        command = parse(argv)
        if command is None:
            say(usage(prog))
            return 0
        return COMMANDS[command].run(Service(config, main))
    except DaemonError as exc:
        complain(f"{config.name}: {exc}")
        if isinstance(exc, UsageError):
            complain(usage(prog))
        return error_status(command, exc)
