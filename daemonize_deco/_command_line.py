"""One command line bound to the service: main's options, placeholders, the command's flags.

``python web.py start --port 9000 --verbose`` calls ``main(port=9000,
verbose=True)``, in a daemon whose pidfile is ``/tmp/web-9000.pid`` when the
decorator said ``pidfile="/tmp/web-{port}.pid"``.  Commands that only address
a daemon (stop, status, reload, logs) take the same options, none of them
required but those that fill a placeholder.  A command line that is only the
command word never loads argparse.

The options a daemon was started with are remembered beside its pidfile
(``PIDFILE.options``, the words NUL-separated): ``status`` shows them, and
``restart`` given no settings reuses them (options that fill a placeholder
only say which instance to restart).
"""

from __future__ import annotations

from ._errors import UsageError, exit_status
from ._hooks import takes_words
from ._output import complain

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Literal

    from ._config import Service
    from ._options import Signature

    MainOptions = Literal["required", "optional", "reused"]

__all__ = ["FLAGS", "bind", "run_custom"]


def bind(
    service: Service,
    word: str,
    words: Sequence[str],
    *,
    prog: str,
    description: str,
    main_options: MainOptions,
    flags: str | None,
) -> Service | str:
    """The service as ``word words...`` gives it; a str when help was asked for.

    (A line that is the bare word, for a main without options, never comes here.)
    """
    if not words and main_options != "reused" and service.signature is not None:
        defaults = service.signature.defaults()
        if defaults is not None:
            return _given(service, service.signature, defaults, {})
    from ._options import HelpRequested, Signature  # noqa: PLC0415 -- only lines with options

    signature = service.signature or Signature(None, what="main")
    parser = signature.parser(f"{prog} {word}", description)
    if flags is not None:
        FLAGS[flags](parser)
    try:
        parsed = vars(parser.parse_args(list(words)))
    except HelpRequested as help_text:
        return help_text.text
    values = {option.name: parsed.pop(option.name) for option in signature.options}
    placeholders = service.config.placeholders
    # Options that fill a placeholder name the instance; the others are settings.
    settings = any(v is not None for k, v in values.items() if k not in placeholders)
    if main_options == "reused" and not settings:
        values = _reused(service, signature, values, parser)
    missing = signature.missing(values)
    if missing and main_options != "optional":
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    naming = [flag for flag in missing if flag[2:].replace("-", "_") in placeholders]
    if naming:
        parser.error(f"{word} needs {', '.join(naming)}: it names the pidfile")
    return _given(service, signature, signature.fill(values), parsed, parser)


def _reused(
    service: Service,
    signature: Signature,
    addressing: dict[str, object],
    parser: argparse.ArgumentParser,
) -> dict[str, object]:
    """For a restart without settings: those the instance it names runs with."""
    from ._lookup import trusted_owners  # noqa: PLC0415 -- restart loads it anyway
    from ._remembered_options import remembered  # noqa: PLC0415 -- a small record

    at = _given(service, signature, signature.fill(dict(addressing)), {}, parser)
    words = remembered(at.config.pidfile, trusted_owners(at.config, directory=False))
    if words is None and _runs(at):
        complain(
            f"{service.name}: the running instance's options are unknown ({at.config.pidfile}"
            ".options is missing or not trusted): restarting with the defaults"
        )
    if not words:
        return addressing
    try:
        reparsed = vars(signature.parser("restart").parse_args(words))
    except UsageError as exc:  # main's signature changed since that start
        parser.error(f"the running instance's options ({' '.join(words)}) no longer fit: {exc}")
    return {option.name: reparsed.get(option.name) for option in signature.options}


def _runs(service: Service) -> bool:
    """Whether the instance ``service`` names runs (its pidfile says so)."""
    from ._lookup import pidfile_of  # noqa: PLC0415 -- restart loads it anyway

    return pidfile_of(service).inspect(settle=0).running


def _given(
    service: Service,
    signature: Signature,
    values: dict[str, object],
    flags: dict[str, object],
    parser: argparse.ArgumentParser | None = None,
) -> Service:
    from ._options import text_of  # noqa: PLC0415 -- loaded by main's signature already

    texts = {name: text_of(value) for name, value in values.items()}
    try:
        config = service.config.resolved(values, texts)
    except ValueError as exc:
        if parser is None:
            raise UsageError(str(exc)) from None
        parser.error(str(exc))
    return service.given(config, values, signature.words(values), flags)


def run_custom(
    func: Callable[..., object],
    signature: Signature | None,
    word: str,
    args: Sequence[str],
    prog: str,
) -> int:
    """Run a ``@main.command`` function with the rest of the line; its result is the status.

    A function taking only ``*args`` (``signature`` None) gets the words as
    they are; one with parameters gets them through argparse, like main's
    options: positional parameters stay positional.  ``-h`` or ``--help``
    alone prints the command's help, whatever its parameters.
    """
    if signature is None:
        if not args:
            return exit_status(func())
        from ._options import HELP_FLAGS, Signature  # noqa: PLC0415 -- a small module

        if len(args) == 1 and args[0] in HELP_FLAGS:
            # Read now, for its help: the usage line names the *args parameter.
            signature = Signature(func, what=f"command {word!r}", commands=True)
        elif takes_words(func):
            return exit_status(func(*args))
        else:
            raise UsageError(f"{word} takes no arguments, got {args[0]!r}")
    if not signature and not args:
        return exit_status(func())
    from ._options import HelpRequested  # noqa: PLC0415 -- loaded by the signature already

    parser = signature.parser(f"{prog} {word}", _description(func))
    try:
        parsed = vars(parser.parse_args(list(args)))
    except HelpRequested as help_text:
        print(help_text.text)
        return 0
    positional: list[object] = []
    keywords: dict[str, object] = {}
    for option in signature.options:
        value = parsed[option.name]
        if option.variadic:
            positional.extend(value or ())
        elif option.positional:
            positional.append(value)
        elif value is not None or option.required:
            keywords[option.name] = value
    return exit_status(func(*positional, **keywords))


def _description(func: Callable[..., object]) -> str:
    doc = (getattr(func, "__doc__", None) or "").strip()
    return doc.split("\n\n", 1)[0]


def _add_stop_timeout(parser: argparse.ArgumentParser) -> None:
    """``--timeout S``: seconds to wait after SIGTERM before SIGKILL (stop_timeout)."""
    parser.add_argument(
        "--timeout", type=_seconds, metavar="S", help="seconds after SIGTERM before SIGKILL"
    )


def _add_status_flags(parser: argparse.ArgumentParser) -> None:
    """``--json``: one JSON object instead of a sentence."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_logs_flags(parser: argparse.ArgumentParser) -> None:
    """``-n N`` lines (default 20), ``-f`` to follow."""
    parser.add_argument("-n", "--lines", type=_count, default=20, metavar="N",
                        help="how many last lines (default 20)")  # fmt: skip
    follow = "print new lines as they come, across rotations, until Ctrl-C"
    parser.add_argument("-f", "--follow", action="store_true", help=follow)


def _add_unit_flags(parser: argparse.ArgumentParser) -> None:
    """``--socket``: the .socket unit of a service with listen=."""
    parser.add_argument("--socket", action="store_true", help="print the .socket unit instead")


def _add_manifest_flags(parser: argparse.ArgumentParser) -> None:
    """``--image NAME`` (default app:latest), ``--replicas N`` (default 1)."""
    from ._kubernetes import DEFAULT_IMAGE  # noqa: PLC0415 -- only this command

    parser.add_argument("--image", type=_image, default=DEFAULT_IMAGE, metavar="NAME",
                        help=f"the container image (default {DEFAULT_IMAGE})")  # fmt: skip
    parser.add_argument("--replicas", type=_replicas, default=1, metavar="N",
                        help="how many pods (default 1)")  # fmt: skip


def _add_health_flags(parser: argparse.ArgumentParser) -> None:
    """``--ready``: whether it takes traffic (readiness), not whether it lives."""
    parser.add_argument("--ready", action="store_true",
                        help="whether it is ready for traffic, not whether it lives")  # fmt: skip


# The built-in commands' own flags, by the name their ``_cli.Command`` gives.
# ``_options.COMMAND_FLAGS`` lists them for decoration (a test checks the two agree).
FLAGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "stop_timeout": _add_stop_timeout,
    "status": _add_status_flags,
    "logs": _add_logs_flags,
    "systemd_unit": _add_unit_flags,
    "kubernetes_manifest": _add_manifest_flags,
    "health": _add_health_flags,
}


def _seconds(text: str) -> float:
    from ._options import argument_error  # noqa: PLC0415 -- argparse is loaded by now

    try:
        value = float(text)
    except ValueError:
        raise argument_error(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argument_error(f"{text!r} is not a positive number of seconds")
    return value


def _count(text: str) -> int:
    from ._options import argument_error  # noqa: PLC0415 -- argparse is loaded by now

    if not text.isdigit():
        raise argument_error(f"{text!r} is not a number of lines")
    return int(text)


def _image(text: str) -> str:
    from ._kubernetes import check_image  # noqa: PLC0415 -- only this command
    from ._options import argument_error  # noqa: PLC0415 -- argparse is loaded by now

    try:
        return check_image(text)
    except ValueError as exc:
        raise argument_error(str(exc)) from None


def _replicas(text: str) -> int:
    from ._options import argument_error  # noqa: PLC0415 -- argparse is loaded by now

    # A Deployment's replicas is an int32; 0 is a Deployment scaled down.
    if not (text.isascii() and text.isdigit()) or int(text) > 2**31 - 1:
        raise argument_error(f"{text!r} is not a number of replicas (0 or more)")
    return int(text)
