"""The ``@daemon`` decorator: wires the configuration, the hooks, the CLI and ``main``.

This module holds no fork, lock or signal code; it only puts the parts together.
"""

from __future__ import annotations

import sys

from ._config import RestartPolicy, Service, ServiceConfig
from ._hooks import Hooks, checked_callable, checked_signal, read_signature, refuse_generator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import NoReturn, TypeVar

    from ._config import PathArg
    from ._hooks import Callback, CustomCommand
    from ._options import Signature

    C = TypeVar("C", bound=Callback)
    F = TypeVar("F", bound=CustomCommand)

__all__ = ["Daemon", "daemon"]

_WRAPPED = ("__module__", "__name__", "__qualname__", "__doc__")


class Daemon:
    """A ``main`` function turned into a service with start/stop/restart/status/run.

    Calling the object dispatches on ``sys.argv[1:]`` and exits with the
    command's status; :meth:`cli` returns the status instead.  The original
    function stays available as ``__wrapped__``.
    """

    def __init__(
        self, func: Callable[..., object], config: ServiceConfig, signature: Signature | None
    ) -> None:
        self.__wrapped__ = func
        self.config = config
        self.signature = signature
        self.hooks = Hooks()
        # What functools.update_wrapper does, without importing functools.
        for attribute in _WRAPPED:
            if hasattr(func, attribute):
                setattr(self, attribute, getattr(func, attribute))
        self.__dict__.update(getattr(func, "__dict__", {}))

    def cli(self, argv: Sequence[str] | None = None, *, standalone: bool = True) -> int:
        """Run the command in ``argv`` (default ``sys.argv[1:]``); return its exit status.

        A failed command prints one line and returns its status; with
        ``standalone=False`` it prints nothing and raises the
        :class:`DaemonError` instead (its status as ``status``, what it
        names as ``path`` and ``pid``), and Ctrl-C raises KeyboardInterrupt.
        """
        args = sys.argv[1:] if argv is None else argv
        if isinstance(args, str):
            raise TypeError("argv must be a sequence of strings, not a str")
        from ._cli import dispatch  # noqa: PLC0415 -- the CLI loads when a command runs

        return dispatch(self._service(), list(args), standalone=standalone)

    def __call__(self) -> NoReturn:
        """Dispatch on ``sys.argv[1:]`` and exit with the command's status."""
        from ._cli import exit_with  # noqa: PLC0415 -- the CLI loads when a command runs

        exit_with(self._service(), sys.argv[1:])

    def _service(self) -> Service:
        return Service(self.config, self.__wrapped__, self.hooks, signature=self.signature)

    def on_reload(self, callback: C) -> C:
        """Decorator: run ``callback`` on ``reload`` and SIGHUP, after the logs are reopened."""
        self.hooks.on_reload.append(checked_callable("on_reload", callback))
        return callback

    def on_stop(self, callback: C) -> C:
        """Decorator: run ``callback`` once when a stop is requested (SIGTERM, SIGINT, stop).

        It runs on the dispatcher thread while ``main`` is still running: the
        place to call ``server.shutdown()``.
        """
        self.hooks.on_stop.append(checked_callable("on_stop", callback))
        return callback

    def on_signal(self, signum: int) -> Callable[[C], C]:
        """Decorator: run the callback when ``signum`` arrives (not TERM, INT or HUP)."""
        sig = checked_signal(signum)  # a wrong signal fails here, not at the def below

        def register(callback: C) -> C:
            self.hooks.add_signal(sig, checked_callable("on_signal", callback))
            return callback

        return register

    def command(self, func: F) -> F:
        """Decorator: add ``python app.py NAME ARG...`` running ``func(*args)`` in the caller.

        NAME is the function's name with ``_`` written ``-``; the return value
        is the exit status (None means 0).
        """
        from ._cli import RESERVED_WORDS  # noqa: PLC0415 -- the CLI loads when needed

        self.hooks.add_command(checked_callable("command", func), reserved=RESERVED_WORDS)
        return func

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
    start_grace: float = 1.0,
    wait_ready: bool = False,
    name: str | None = None,
    user: str | int | None = None,
    group: str | int | None = None,
    files_preserve: Iterable[object] | None = None,
    prevent_core: bool = True,
    restart: str = "no",
    restart_delay: float = 0.1,
    restart_delay_max: float = 30.0,
    restart_limit: tuple[int, float] = (5, 60.0),
    watchdog: float | None = None,
    listen: Sequence[str] | str | None = None,
    health: str | None = None,
    stop_main: str = "auto",
    drain: float = 0.0,
    workers: int | str = 1,
) -> Callable[[Callable[..., object]], Daemon]:
    """Turn ``main()`` into a Unix service driven by its command line.

    Args:
        pidfile: the pidfile, locked for the daemon's whole life (required).
        stdout: log file for stdout, opened for appending; unset means
            /dev/null once detached.  ``run`` leaves the streams as they are.
        stderr: log file for stderr; with only ``stdout``, stderr goes there.
        workdir: the daemon's working directory.
        umask: the daemon's umask (log files follow it; the pidfile is 0644).
        stop_timeout: seconds ``stop`` waits after SIGTERM before SIGKILL.
        start_timeout: seconds ``start`` waits for the daemon to be ready.
        start_grace: with ``wait_ready=False``, the service is ready at the
            first of: ``main`` calls :func:`ready`, ``main``'s thread calls
            :func:`should_stop` or :func:`sleep` (it reached its loop), or
            ``main`` has run this many seconds (at most half of
            ``start_timeout``).  ``0``: ready when ``main`` is entered.  A
            ``main`` that raises or exits before that fails the start; one
            that returns 0 "ran and finished".
        wait_ready: when True, ready means ``main`` called :func:`ready`,
            and nothing else.
        name: the service's name in messages and its process name
            (default: the script's file stem).
        user: when started as root, drop to this user (name or uid) after
            locking the pidfile and opening the logs.
        group: the group to drop to (default: the user's primary group).
        files_preserve: descriptors or file objects inherited from the
            launcher that the daemon keeps open (others are closed).
        prevent_core: set RLIMIT_CORE to 0 so no core dump spills secrets.
        restart: "no" (default), "on-failure" or "always": ``start`` then
            detaches a supervisor that holds the pidfile and restarts the
            service when it ends (see README, "Keeping a service alive").
        restart_delay: the first restart's delay, doubling after each.
        restart_delay_max: the longest delay between restarts.
        restart_limit: ``(n, seconds)``: more than n restarts within that
            many seconds gives up; a run longer than that resets the count.
        watchdog: seconds without a heartbeat (main's ``should_stop()``,
            ``sleep()``, ``await stopped()`` or :func:`heartbeat`) after
            which the service is hung: its stacks go to the log and it is
            ended (SIGABRT, then SIGKILL), and restarted if ``restart`` says so.
        listen: addresses to listen on, ``tcp://HOST:PORT`` (``[::1]`` for
            IPv6) or ``unix:/path``, ``{name}`` placeholders allowed: bound
            before detaching (or passed by systemd socket activation), given
            to main by :func:`listeners`, and handed to the next instance on
            ``restart`` (see README, "Restarting without dropping connections").
        health: an address for the health endpoint, as ``listen``
            (``tcp://127.0.0.1:8081``, ``tcp://:8081``, ``unix:/path``):
            HTTP ``GET /livez``, ``/readyz`` and ``/status``, answered by a
            thread of the framework's own (see README, "Health endpoint").
        stop_main: how a stop reaches ``main`` once ``on_stop`` ran: "auto"
            (a ``main`` that never called :func:`should_stop`, :func:`sleep`
            or ``await stopped()`` gets KeyboardInterrupt, or its task is
            cancelled, as on Ctrl-C; one that did sees the flag), "flag"
            (only the flag), "interrupt" (always, as on Ctrl-C).  See
            README, "How a stop reaches `main`".
        drain: seconds between a stop signal and the stop reaching ``main``:
            the stop is announced at once (a ``health=`` endpoint's
            ``/readyz`` answers 503) and :func:`should_stop`, ``on_stop``
            and the rest follow this many seconds later, so a load balancer
            stops sending new work first; a framework's own chained
            handler (uvicorn's) hears the signal then too.  A second stop
            signal ends the drain at once.  ``stop_timeout`` counts after
            the drain.
        workers: how many copies of ``main`` run side by side, an int >= 1
            or "auto" (the CPUs this process may use).  Above 1, ``start``
            detaches an arbiter that holds the pidfile and forks the
            workers; each gets the same :func:`listeners` (the kernel
            spreads the connections) and its :func:`worker_id`; ``start``
            says "started" once all are ready; a worker that dies is
            replaced as ``restart`` says (see README, "Workers").

    Relative paths resolve against the current directory at decoration time.
    Raises TypeError or ValueError at once for a wrong keyword or value.
    """
    options = {
        "pidfile": pidfile, "stdout": stdout, "stderr": stderr, "workdir": workdir,
        "umask": umask, "stop_timeout": stop_timeout, "start_timeout": start_timeout,
        "start_grace": start_grace, "wait_ready": wait_ready, "name": name, "user": user,
        "group": group, "files_preserve": files_preserve, "prevent_core": prevent_core,
        "restart": RestartPolicy(restart, restart_delay, restart_delay_max, restart_limit),
        "watchdog": watchdog, "listen": listen, "health": health, "stop_main": stop_main,
        "drain": drain, "workers": workers,
    }  # fmt: skip

    def decorate(func: Callable[..., object]) -> Daemon:
        if not callable(func):
            raise TypeError(f"@daemon(...) decorates a function, not {type(func).__name__}")
        refuse_generator(func, "main")
        signature = read_signature(func, what="main")
        parameters = signature.names if signature is not None else set()
        config = ServiceConfig(func, parameters=parameters, **options)  # type: ignore[arg-type]
        return Daemon(func, config, signature)

    return decorate
