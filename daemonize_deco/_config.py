"""The decorator's keywords, checked once at decoration time.

Wrong types raise TypeError and wrong values ValueError, naming the keyword,
so a mistake shows when the script is imported rather than when ``start``
runs in production.  Relative paths are resolved against the directory the
program was launched from, since the daemon itself changes directory.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

    from ._hooks import Hooks
    from ._options import Signature

    PathArg = str | os.PathLike[str]

__all__ = ["RestartPolicy", "Service", "ServiceConfig"]

RESTART_MODES = ("no", "on-failure", "always")

_PATH_KEYWORDS = ("pidfile", "stdout", "stderr", "workdir")


class ServiceConfig:
    """Everything the commands need to know about one service, checked and normalised.

    Built once by the decorator from its keywords (whose defaults live in
    ``daemon()``'s signature only); read-only afterwards.
    """

    __slots__ = (
        "drain", "files_preserve", "group", "health", "listen", "name", "pidfile", "placeholders",
        "prevent_core", "restart", "script", "start_grace", "start_timeout", "stderr", "stdout",
        "stop_main", "stop_timeout", "umask", "user", "wait_ready", "watchdog", "workdir",
        "workers",
    )  # fmt: skip

    def __init__(
        self,
        func: Callable[..., object],
        *,
        pidfile: PathArg,
        stdout: PathArg | None,
        stderr: PathArg | None,
        workdir: PathArg,
        umask: int,
        stop_timeout: float,
        start_timeout: float,
        start_grace: float,
        wait_ready: bool,
        name: str | None,
        user: str | int | None,
        group: str | int | None,
        files_preserve: Iterable[object] | None,
        prevent_core: bool,
        restart: RestartPolicy | None = None,
        watchdog: float | None = None,
        listen: Iterable[str] | str | None = None,
        health: str | None = None,
        stop_main: str = "auto",
        drain: float = 0.0,
        workers: int | str = 1,
        parameters: Collection[str] = (),
    ) -> None:
        for keyword, flag in (("wait_ready", wait_ready), ("prevent_core", prevent_core)):
            if not isinstance(flag, bool):
                raise TypeError(f"{keyword} must be True or False, not {flag!r}")
        self.name = _name(name, func)
        self.pidfile = _path("pidfile", pidfile)
        self.stdout = None if stdout is None else _path("stdout", stdout)
        self.stderr = None if stderr is None else _path("stderr", stderr)
        self.workdir = _path("workdir", workdir)
        self.umask = _umask(umask)
        self.stop_timeout = _timeout("stop_timeout", stop_timeout)
        self.start_timeout = _timeout("start_timeout", start_timeout)
        self.start_grace = _grace(start_grace, self.start_timeout)
        self.wait_ready = wait_ready
        self.user = _account("user", user)
        self.group = _account("group", group)
        self.files_preserve = _files(files_preserve)
        self.prevent_core = prevent_core
        self.restart = restart or RestartPolicy()
        self.watchdog = None if watchdog is None else _timeout("watchdog", watchdog)
        self.listen = _listen(listen)
        self.health = _health(health, self.listen)
        self.stop_main = _stop_main(stop_main)
        self.drain = _seconds("drain", drain)
        self.workers = _workers(workers)
        self.script = _script(func)
        self.placeholders = _placeholders(self, parameters)

    def resolved(self, values: Mapping[str, object], texts: Mapping[str, str]) -> ServiceConfig:
        """A copy whose paths have their ``{name}`` placeholders filled from ``values``.

        ``texts`` are the values as written on the command line.  A value
        may not smuggle a directory into a file name: ``/`` is refused but
        in a pathlib.Path value.
        """
        if not self.placeholders:
            return self
        copy = object.__new__(ServiceConfig)
        for slot in ServiceConfig.__slots__:
            setattr(copy, slot, getattr(self, slot))
        for name in self.placeholders:
            text = texts[name]
            is_path = isinstance(values[name], os.PathLike)
            if "\0" in text or text in ("", ".", "..") or ("/" in text and not is_path):
                raise ValueError(f"--{name.replace('_', '-')} {text!r} cannot name a file")
        for keyword in _PATH_KEYWORDS:
            template = getattr(self, keyword)
            if template is not None and "{" in template:
                setattr(copy, keyword, os.path.abspath(template.format_map(texts)))
        copy.listen = _listen([entry.format_map(texts) for entry in self.listen])
        if self.health is not None:
            copy.health = _health(self.health.format_map(texts), copy.listen)
        return copy

    def __repr__(self) -> str:
        return f"ServiceConfig(name={self.name!r}, pidfile={self.pidfile!r})"

    @property
    def kill_after(self) -> float:
        """Seconds from SIGTERM to SIGKILL: the drain, then stop_timeout."""
        return self.drain + self.stop_timeout

    def descriptors_to_keep(self) -> set[int]:
        """The descriptor numbers of ``files_preserve`` (files may have been opened since)."""
        keep = set()
        for item in self.files_preserve:
            if isinstance(item, int):
                keep.add(item)
                continue
            try:
                keep.add(int(getattr(item, "fileno")()))  # noqa: B009 -- checked at decoration
            except (OSError, ValueError):
                continue  # closed since: nothing to keep
        return keep


class RestartPolicy:
    """When and how fast a supervisor restarts the service (systemd's ``Restart=`` words).

    ``mode``: "no" (one process, no supervisor), "on-failure" (a non-zero
    status, an exception, a signal, a hang), "always" (any end but a stop).
    The delay starts at ``delay`` and doubles up to ``delay_max``; more than
    ``burst`` restarts within ``interval`` seconds gives up; a run that
    lasted longer than ``interval`` starts the count and the delay afresh.
    """

    __slots__ = ("burst", "delay", "delay_max", "interval", "mode")

    def __init__(
        self,
        mode: str = "no",
        delay: float = 0.1,
        delay_max: float = 30.0,
        limit: tuple[int, float] = (5, 60.0),
    ) -> None:
        if not isinstance(mode, str) or mode not in RESTART_MODES:
            raise ValueError(
                f"restart must be one of {', '.join(map(repr, RESTART_MODES))}, not {mode!r}"
            )
        self.mode = mode
        self.delay = _seconds("restart_delay", delay)
        self.delay_max = max(self.delay, _seconds("restart_delay_max", delay_max))
        self.burst, self.interval = _limit(limit)

    @property
    def enabled(self) -> bool:
        """Whether a supervisor process keeps the service alive."""
        return self.mode != "no"


def _seconds(keyword: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{keyword} must be a number of seconds, not {type(value).__name__}")
    if not 0 <= value < float("inf"):  # also refuses NaN
        raise ValueError(f"{keyword} must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


def _limit(value: object) -> tuple[int, float]:
    if not (isinstance(value, tuple) and len(value) == 2):
        raise TypeError(f"restart_limit must be a tuple (restarts, seconds), not {value!r}")
    burst, interval = value
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        raise ValueError(f"restart_limit's restarts must be an int >= 0, not {burst!r}")
    return burst, _timeout("restart_limit's seconds", interval)


class Service:
    """What a command works on: the configuration, ``main`` and the registered hooks.

    For one command line: ``main`` is called with the options it gave
    (``options``, written back as ``words``), and ``flags`` holds the
    command's own (``stop --timeout``, ``status --json``).
    """

    __slots__ = ("config", "flags", "hooks", "main", "options", "signature", "words")

    def __init__(
        self,
        config: ServiceConfig,
        main: Callable[..., object],
        hooks: Hooks,
        *,
        signature: Signature | None = None,
        options: dict[str, object] | None = None,
        words: list[str] | None = None,
        flags: dict[str, object] | None = None,
    ) -> None:
        self.config = config
        self.main = main
        self.hooks = hooks
        self.signature = signature
        self.options = options or {}
        self.words = words or []
        self.flags = flags or {}

    def given(
        self,
        config: ServiceConfig,
        options: dict[str, object],
        words: list[str],
        flags: dict[str, object],
    ) -> Service:
        """This service as one command line gave it: paths, options and flags filled in."""
        return Service(
            config, self.main, self.hooks, signature=self.signature,
            options=options, words=words, flags=flags,
        )  # fmt: skip

    def call_main(self) -> object:
        """Call ``main`` with this command line's options; an awaitable runs under asyncio."""
        result = self.main(**self.options)
        if hasattr(result, "__await__"):
            from ._aio import run_awaitable  # noqa: PLC0415 -- only asyncio services

            return run_awaitable(result)
        return result

    def remember_options(self) -> None:
        """Keep the option words it runs with beside its pidfile (``status``, ``restart``)."""
        if self.signature:
            from ._remembered_options import remember  # noqa: PLC0415 -- a small record

            remember(self.config.pidfile, self.words)

    @property
    def name(self) -> str:
        """The service's name in messages."""
        return self.config.name


def _path(keyword: str, value: object) -> str:
    if not isinstance(value, str | os.PathLike):
        raise TypeError(
            f"{keyword} must be a path (str or os.PathLike), not {type(value).__name__}"
        )
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{keyword} must be a text path, not {type(path).__name__}")
    if not path or "\0" in path:
        raise ValueError(f"{keyword} must be a non-empty path without NUL characters")
    path = os.path.expanduser(path)  # ~ and ~user, as a shell would
    if path.startswith("{"):
        return path  # filled from the options, made absolute then (see resolved())
    try:
        return os.path.abspath(path)
    except FileNotFoundError:
        raise ValueError(
            f"{keyword} {path!r} is relative, but the current directory no longer exists"
        ) from None


def _placeholders(config: ServiceConfig, parameters: Collection[str]) -> tuple[str, ...]:
    """The ``{name}`` placeholders in the paths; each must name a parameter of main."""
    from _string import formatter_parser  # noqa: PLC0415 -- the C half of string.Formatter

    found: list[str] = []
    templates = [(keyword, getattr(config, keyword)) for keyword in _PATH_KEYWORDS]
    templates += [("listen", entry) for entry in config.listen]
    templates.append(("health", config.health))
    for keyword, template in templates:
        if template is None or "{" not in template:
            continue
        try:
            fields = [field for _, field, _, _ in formatter_parser(template) if field is not None]
        except ValueError as exc:
            raise TypeError(f"{keyword} {template!r}: {exc}") from None
        for field in fields:
            if field not in parameters:
                raise TypeError(
                    f"{keyword} {template!r}: {{{field}}} names no parameter of main"
                    if field.isidentifier()
                    else f"{keyword} {template!r}: {{{field}}} is not a parameter name"
                )
            if field not in found:
                found.append(field)
    return tuple(found)


def _listen(value: object) -> tuple[str, ...]:
    """``listen=``: one address or a list of them, each checked unless it has placeholders."""
    if value is None:
        return ()
    from ._addresses import parse_address  # noqa: PLC0415 -- only services with listen=

    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list | tuple):
        raise TypeError(f"listen= takes a list of addresses, not {type(value).__name__}")
    for entry in entries:
        if not isinstance(entry, str) or "{" not in entry:
            parse_address(entry)
    return tuple(entries)


def _health(value: object, listen: Sequence[str]) -> str | None:
    """``health=``: one address, checked unless it has placeholders; none of ``listen``'s."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"health= takes one address as text, not {type(value).__name__}")
    if "{" not in value:
        from ._addresses import parse_address  # noqa: PLC0415 -- only services with health=

        found = parse_address(value, "health")
        where = (found.host, found.port, found.path)
        for entry in listen:
            other = None if "{" in entry else parse_address(entry)
            if other is not None and (other.host, other.port, other.path) == where:
                raise ValueError(f"health {value!r} is also a listen= address: it needs its own")
    return value


def _stop_main(value: object) -> str:
    """``stop_main=``: how a stop reaches main (``_delivery``)."""
    modes = ("auto", "flag", "interrupt")  # _delivery.STOP_MAIN_MODES, without importing it
    if not isinstance(value, str) or value not in modes:
        raise ValueError(f"stop_main must be one of {', '.join(map(repr, modes))}, not {value!r}")
    return value


def _workers(value: object) -> int:
    """``workers=``: a count >= 1, or "auto": the CPUs this process may use."""
    if value == "auto":
        from ._platform import usable_cpus  # noqa: PLC0415 -- only workers="auto" asks

        return usable_cpus()
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"workers must be an int >= 1 or 'auto', not {type(value).__name__}")
    if isinstance(value, str) or value < 1:
        raise ValueError(f"workers must be an int >= 1 or 'auto', not {value!r}")
    return value


def _account(keyword: str, value: object) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"{keyword} must be a name or a numeric id, not {type(value).__name__}")
    if (isinstance(value, int) and value < 0) or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{keyword} must be a name or a non-negative id, not {value!r}")
    return value


def _files(value: Iterable[object] | None) -> tuple[object, ...]:
    if value is None:
        return ()
    wrong = TypeError("files_preserve must be a list of descriptors or file objects")
    if isinstance(value, str | bytes):
        raise wrong
    try:
        items = tuple(value)
    except TypeError:
        raise wrong from None
    for item in items:
        is_fd = isinstance(item, int) and not isinstance(item, bool) and item >= 0
        if not is_fd and not callable(getattr(item, "fileno", None)):
            raise TypeError(f"files_preserve: {item!r} is neither a descriptor nor a file object")
    return items


def _script(func: Callable[..., object]) -> str:
    """The file that defines ``main``, for the systemd unit's ExecStart."""
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    filename = getattr(module, "__file__", None) or (sys.argv[0] if sys.argv else "")
    try:
        return os.path.abspath(filename) if filename else ""
    except FileNotFoundError:  # started from a deleted directory: keep it as given
        return filename


def _umask(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"umask must be an int such as 0o022, not {type(value).__name__}")
    if not 0 <= value <= 0o777:
        raise ValueError(f"umask must be between 0 and 0o777, not {value:#o}")
    return value


def _timeout(keyword: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{keyword} must be a number of seconds, not {type(value).__name__}")
    if not 0 < value < float("inf"):  # also refuses NaN
        raise ValueError(f"{keyword} must be a positive, finite number of seconds, not {value!r}")
    return float(value)


def _grace(value: object, start_timeout: float) -> float:
    """The start grace in force: at most half of start_timeout, so a start never times out on it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"start_grace must be a number of seconds, not {type(value).__name__}")
    if not 0 <= value < float("inf"):  # also refuses NaN
        raise ValueError(f"start_grace must be a finite number of seconds >= 0, not {value!r}")
    return min(float(value), start_timeout / 2)


def _name(value: object, func: Callable[..., object]) -> str:
    if value is None:
        return _default_name(func)
    if not isinstance(value, str):
        raise TypeError(f"name must be a str, not {type(value).__name__}")
    if not value.strip() or any(c in value for c in "\n\r\0"):
        raise ValueError(f"name must be a non-empty single line, not {value!r}")
    return value


def _default_name(func: Callable[..., object]) -> str:
    """The script's file stem; for a package's ``__main__.py``, the package's name."""
    script = _script(func)
    stem = os.path.splitext(os.path.basename(script))[0]
    if stem == "__main__":
        return os.path.basename(os.path.dirname(script)) or "daemon"
    return stem or getattr(func, "__name__", "daemon")
