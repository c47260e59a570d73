"""The command line: the command words, the usage text, and errors turned into statuses.

The commands themselves live in ``_launch`` (start, run) and ``_commands``
(the others), their options in ``_command_line``; each is loaded only when
its command runs, because a daemon keeps what its ``start`` loaded.  They
raise :class:`DaemonError` subclasses, and :func:`dispatch` is the one place
that turns them into a line on stderr and an LSB exit status.  A line that
is only a command word never loads argparse.
"""

from __future__ import annotations

import atexit
import os
import sys

from . import _mark
from ._detach import ensure_standard_fds, flush_standard_streams
from ._errors import DaemonError, UsageError
from ._output import complain, say
from ._served import served_here, threads_left_behind

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

    from ._command_line import MainOptions
    from ._config import Service

__all__ = ["COMMANDS", "dispatch", "exit_with", "usage"]

# LSB: for "status" every error means "status unknown", whatever it is.
STATUS_UNKNOWN = 4
# A command ended by Ctrl-C leaves as shells report it (128 + SIGINT), as ``run`` does.
INTERRUPTED = 130


class Command:
    """A built-in command word: where its function is, its line in the usage text, its options.

    ``function`` is "module:name", imported when the command runs.
    ``main_options``: "required" (start, run, the unit files: main is called
    with them), "reused" (restart: the running daemon's when none given),
    "optional" (commands that only address a daemon); ``flags`` names the
    command's own (see ``_command_line.FLAGS``).
    """

    __slots__ = ("flags", "function", "help", "main_options")

    def __init__(
        self,
        function: str,
        help: str,
        *,
        main_options: MainOptions = "optional",
        flags: str | None = None,
    ) -> None:
        self.function = function
        self.help = help
        self.main_options = main_options
        self.flags = flags

    def run(self, service: Service) -> int:
        """Import the command's function and run it."""
        module, _, name = self.function.partition(":")
        loaded = __import__(f"{__package__}.{module}", fromlist=[name])
        command: Callable[[Service], int] = getattr(loaded, name)
        return command(service)


COMMANDS: dict[str, Command] = {
    "start": Command(
        "_launch:start",
        "start in the background; return once it is ready, or say why not",
        main_options="required",
    ),
    "stop": Command(
        "_commands:stop", "stop gracefully, wait until it is gone", flags="stop_timeout"
    ),
    "restart": Command(
        "_commands:restart",
        "stop if running, then start (with the running one's options unless given)",
        main_options="reused",
        flags="stop_timeout",
    ),
    "status": Command(
        "_commands:status",
        "0 running, 1 dead with a pidfile left, 3 not running (how it ended), 4 unknown",
        flags="status",
    ),
    "run": Command(
        "_launch:run", "run in the foreground (Ctrl-C stops gracefully)", main_options="required"
    ),
    "health": Command(
        "_probe:health",
        "0 healthy (running, answering, heartbeats fresh), 1 not: for probes (--ready: ready)",
        flags="health",
    ),
    "reload": Command("_commands:reload", "reopen the logs and run the reload callbacks (SIGHUP)"),
    "logs": Command(
        "_commands:logs", "print the last lines of the log (-n N), or follow it (-f)", flags="logs"
    ),
    "systemd-unit": Command(
        "_commands:print_systemd_unit",
        "print a systemd unit file for this service (with the options given); "
        "--socket: its .socket unit",
        main_options="required",
        flags="systemd_unit",
    ),
    "launchd-plist": Command(
        "_commands:print_launchd_plist",
        "print a launchd plist for this service (macOS; with the options given)",
        main_options="required",
    ),
    "kubernetes-manifest": Command(
        "_commands:print_kubernetes_manifest",
        "print a Kubernetes Deployment (+ Service for listen=) running this service "
        "(with the options given); --image, --replicas",
        main_options="required",
        flags="kubernetes_manifest",
    ),
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
    lines = [f"usage: {prog} {{{'|'.join(helps)}}} [OPTION...]", ""]
    description = _first_paragraph(service.main)
    if description:
        lines += [description, ""]
    lines += ["commands:"]
    lines += [f"  {word:<{width}}  {text}".rstrip() for word, text in helps.items()]
    lines += [
        "",
        f"'{prog} COMMAND --help' lists a command's options.",
        "exit statuses follow the LSB init-script conventions.",
    ]
    return "\n".join(lines)


def _first_paragraph(func: Callable[..., object]) -> str:
    doc = (getattr(func, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split())


def parse(argv: Sequence[str], custom: Sequence[str] = ()) -> str | None:
    """The command word in ``argv``; None when the general help was asked for.

    The rest of the line is the command's (its options, or ``--help``).
    """
    if not argv:
        raise UsageError("no command given")
    word = argv[0]
    if word in ("-h", "--help", "help"):
        return None
    if word in custom or word in COMMANDS:
        return word
    if any(arg in ("-h", "--help") for arg in argv):
        return None
    raise UsageError(f"unknown command {word!r}")


def error_status(command: str | None, exc: DaemonError) -> int:
    """The exit status for ``exc`` raised by ``command``; it stays on ``exc`` as ``status``."""
    if command == "status" and not isinstance(exc, UsageError):
        exc.status = STATUS_UNKNOWN
    else:
        exc.status = exc.exit_status
    return exc.status


def dispatch(service: Service, argv: Sequence[str], *, standalone: bool = True) -> int:
    """Run the command ``argv`` names and return its exit status.

    Never raises DaemonError, nor KeyboardInterrupt (Ctrl-C is a line and
    status 130), unless not ``standalone``: then both are raised as they
    came, the error with its exit status as ``status``, and nothing is said.
    """
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
            from ._command_line import run_custom  # noqa: PLC0415 -- see the module docstring

            signature = service.hooks.command_signatures[command]
            return run_custom(custom, signature, command, argv[1:], prog)
        spec = COMMANDS[command]
        # A built-in command is never part of a run, even one main runs on its own
        # service (``run`` drops the badge: the process is the service then).
        _mark.wear_command_badge()
        given = _bound(service, spec, command, argv[1:], prog)
        if isinstance(given, str):
            say(given)
            return 0
        return spec.run(given)
    except DaemonError as exc:
        status = error_status(command, exc)
        if not standalone:
            raise
        complain(exc.line_for(service.name))
        if isinstance(exc, UsageError):
            complain(exc.usage if exc.usage is not None else usage(prog, service))
        return status
    except KeyboardInterrupt:
        if not standalone:
            raise
        # What the command had done stands (a stop's SIGTERM was sent); say so in one line.
        complain(f"{service.name}: {command or 'command'} interrupted")
        return INTERRUPTED
    finally:
        _mark.drop_command_badge()  # a program calling main.cli() goes on: not a command


def _bound(
    service: Service, spec: Command, word: str, words: Sequence[str], prog: str
) -> Service | str:
    """The service as the command line gives it (see ``_command_line.bind``)."""
    if not words and service.signature is None:
        return service  # no options, so no placeholders either: nothing to bind
    from ._command_line import bind  # noqa: PLC0415 -- see the module docstring

    return bind(
        service, word, words, prog=prog, description=spec.help,
        main_options=spec.main_options, flags=spec.flags,
    )  # fmt: skip


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
