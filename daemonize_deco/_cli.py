"""The command line: the command words, the usage text, and errors turned into statuses.

The commands themselves live in ``_commands``; they raise :class:`DaemonError`
subclasses, and :func:`dispatch` is the one place that turns them into a line
on stderr and an LSB exit status.  The parser is a few lines rather than
argparse, which would cost more at start-up than a few fixed words are worth.
"""

from __future__ import annotations

import atexit
import os
import sys

from ._commands import (
    complain,
    print_systemd_unit,
    reload,
    restart,
    run,
    say,
    start,
    status,
    stop,
)
from ._detach import ensure_standard_fds, flush_standard_streams
from ._errors import DaemonError, UsageError, exit_status
from ._runtime import served_here, threads_left_behind

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

    from ._config import Service

__all__ = ["COMMANDS", "dispatch", "exit_with", "usage"]

# LSB: for "status" every error means "status unknown", whatever it is.
STATUS_UNKNOWN = 4


class Command:
    """A built-in command word: what it runs and its line in the usage text."""

    __slots__ = ("help", "run")

    def __init__(self, run: Callable[[Service], int], help: str) -> None:
        self.run = run
        self.help = help


COMMANDS: dict[str, Command] = {
    "start": Command(start, "start in the background; return once it is ready, or say why not"),
    "stop": Command(stop, "stop gracefully, wait until it is gone"),
    "restart": Command(restart, "stop if running, then start"),
    "status": Command(
        status, "0 running, 1 dead with a pidfile left, 3 not running (how it ended), 4 unknown"
    ),
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
