"""The ``@daemon`` decorator: wires the configuration, the CLI and the user's ``main``.

This module holds no fork, lock or signal code; it only puts the parts together.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from ._cli import dispatch
from ._config import PathArg, ServiceConfig

__all__ = ["Daemon", "daemon"]


class Daemon:
    """A ``main`` function turned into a service with start/stop/restart/status/run.

    Calling the object dispatches on ``sys.argv[1:]`` and exits with the
    command's status; :meth:`cli` returns the status instead.  The original
    function stays available as ``__wrapped__``.
    """

    def __init__(self, func: Callable[[], object], config: ServiceConfig) -> None:
        self.__wrapped__ = func
        self.config = config
        functools.update_wrapper(self, func)

    def cli(self, argv: Sequence[str] | None = None) -> int:
        """Run the command in ``argv`` (default ``sys.argv[1:]``); return its exit status."""
        args = sys.argv[1:] if argv is None else argv
        if isinstance(args, str):
            raise TypeError("argv must be a sequence of strings, not a str")
        return dispatch(self.config, self.__wrapped__, list(args))

    def __call__(self) -> NoReturn:
        """Dispatch on ``sys.argv[1:]`` and exit with the command's status."""
        sys.exit(self.cli())

    def __repr__(self) -> str:
        return f"<Daemon {self.config.name!r} pidfile={self.config.pidfile!r}>"


def daemon(
    *,
    pidfile: PathArg,
    stdout: PathArg | None = None,
    stderr: PathArg | None = None,
    workdir: PathArg = "/",
    umask: int = 0o022,
    stop_timeout: float = 10.0,
    start_timeout: float = 10.0,
    wait_ready: bool = False,
    name: str | None = None,
) -> Callable[[Callable[[], object]], Daemon]:
    """Turn ``main()`` into a Unix service driven by its command line.

    Parameters:
        pidfile: the pidfile, locked for the daemon's whole life (required).
        stdout, stderr: log files, opened for appending.  With only
            ``stdout``, stderr goes to the same file; unset means /dev/null
            once detached.  ``run`` leaves the streams as they are.
        workdir: the daemon's working directory.
        umask: the daemon's umask (log files follow it; the pidfile is 0644).
        stop_timeout: seconds ``stop`` waits after SIGTERM before SIGKILL.
        start_timeout: seconds ``start`` waits for the daemon to be ready.
        wait_ready: when True, ready means ``main`` called :func:`ready`;
            otherwise ready is when ``main`` is entered.
        name: the service's name in messages (default: the script's stem).

    Relative paths resolve against the current directory at decoration time.
    Raises TypeError or ValueError at once for a wrong keyword or value.
    """
    options = {
        "pidfile": pidfile, "stdout": stdout, "stderr": stderr, "workdir": workdir,
        "umask": umask, "stop_timeout": stop_timeout, "start_timeout": start_timeout,
        "wait_ready": wait_ready, "name": name,
    }  # fmt: skip

    def decorate(func: Callable[[], object]) -> Daemon:
        if not callable(func):
            raise TypeError(f"@daemon(...) decorates a function, not {type(func).__name__}")
        return Daemon(func, ServiceConfig.from_keywords(func, **options))  # type: ignore[arg-type]

    return decorate
