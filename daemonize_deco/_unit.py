"""A systemd unit file or a launchd plist for a service, printed by its command.

``python app.py systemd-unit``: ``Type=notify``: systemd runs the service in
the foreground (``run``) and learns from ``READY=1`` when it is up, so
nothing forks away from it.  Under systemd, systemd restarts the service:
``Restart=`` and the start limit come from ``restart=`` and
``restart_limit=``, ``WatchdogSec=`` from ``watchdog=``.

``python app.py launchd-plist``: the same for macOS's launchd, a property
list running ``run``; ``KeepAlive`` comes from ``restart=``.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._config import ServiceConfig

__all__ = ["launchd_label", "launchd_plist", "systemd_socket_unit", "systemd_unit"]

# Beyond stop_timeout, time for the on_stop callbacks and the exit itself.
_STOP_MARGIN = 5


def _ceil(seconds: float) -> int:
    return -int(-seconds // 1)


def _quote(word: str) -> str:
    import shlex  # noqa: PLC0415 -- only this command needs it

    # systemd's ExecStart= splits like a shell but expands "$" and "%" itself.
    return shlex.quote(word).replace("%", "%%").replace("$", "$$")


def systemd_unit(config: ServiceConfig, options: Sequence[str] = ()) -> str:
    """The text of a ready-to-install ``NAME.service`` for ``config``, run with ``options``."""
    command = [_quote(word) for word in (sys.executable, config.script)]
    exec_start = " ".join([*command, "run", *map(_quote, options)])
    # The acknowledged reload: systemd.service(5) advises against an
    # asynchronous "kill -HUP", after which systemd cannot tell when it ended.
    exec_reload = " ".join([*command, "reload", *map(_quote, options)])
    lines = [
        "[Unit]",
        f"Description={config.name} (daemonize_deco service)",
        "After=network.target",
        # restart_limit: more restarts than this within the interval and systemd gives up.
        f"StartLimitIntervalSec={_ceil(config.restart.interval)}",
        f"StartLimitBurst={config.restart.burst}",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        f"ExecReload={exec_reload}",
        # SIGTERM to the main process only; what is left after the timeout is killed.
        "KillMode=mixed",
        f"TimeoutStopSec={_ceil(config.kill_after) + _STOP_MARGIN}",
        f"TimeoutStartSec={_ceil(config.start_timeout)}",
        f"Restart={config.restart.mode}",
        f"RestartSec={config.restart.delay:g}s",
        f"WorkingDirectory={config.workdir}",
        f"UMask={config.umask:04o}",
    ]
    if config.watchdog is not None:
        # Pings go out only while main beats (``_watchdog``): a hung main is
        # seen by systemd, which sends SIGABRT (faulthandler prints the stacks).
        lines.insert(lines.index("KillMode=mixed"), f"WatchdogSec={config.watchdog:g}s")
    if config.listen:
        # Socket activation: the sockets stay with systemd across restarts.
        lines[lines.index("[Service]") - 1 : lines.index("[Service]") - 1] = [
            f"Requires={config.name}.socket",
            f"After={config.name}.socket",
        ]
    # No User=: the service starts as root, locks its pidfile, opens its logs
    # and then drops to its user= itself.
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def systemd_socket_unit(config: ServiceConfig) -> str:
    """The ``NAME.socket`` unit that passes the ``listen=`` sockets to ``NAME.service``."""
    from ._addresses import parse_address  # noqa: PLC0415

    lines = [
        "[Unit]",
        f"Description={config.name} listening sockets (daemonize_deco service)",
        "",
        "[Socket]",
    ]
    for entry in config.listen:
        address = parse_address(entry)
        if address.is_unix:
            lines.append(f"ListenStream={address.path}")
        elif ":" in address.host:
            lines.append(f"ListenStream=[{address.host}]:{address.port}")
        else:
            lines.append(f"ListenStream={address.host or '0.0.0.0'}:{address.port}")
    # As the service binds them itself: an IPv6 address does not take IPv4 too.
    lines += ["BindIPv6Only=ipv6-only", f"Service={config.name}.service"]
    lines += ["", "[Install]", "WantedBy=sockets.target", ""]
    return "\n".join(lines)


def launchd_label(name: str, instance: Sequence[object] = ()) -> str:
    """``daemonize_deco.NAME``, then each value that names the instance (``{port}``: ``.9001``).

    launchd knows a job by its label alone: two instances need two labels.
    """
    import re  # noqa: PLC0415 -- only this command needs it

    words = [name, *map(str, instance)]
    return ".".join(["daemonize_deco", *(re.sub(r"[^A-Za-z0-9_-]+", "-", w) for w in words)])


def launchd_plist(config: ServiceConfig, options: Sequence[str] = (), label: str = "") -> str:
    """The XML of a LaunchDaemon (or LaunchAgent) plist that runs ``config``'s service.

    launchd runs ``run`` in the foreground and restarts it as ``restart=``
    says: ``KeepAlive`` true for "always", ``{SuccessfulExit: false}`` (only
    after a failed run) for "on-failure", false for "no".  No ``UserName``:
    as under systemd, the service starts as root, locks its pidfile, and
    drops to its ``user=`` itself (``run`` refuses ``user=`` when not root).
    """
    import plistlib  # noqa: PLC0415 -- only this command needs it

    keep_alive: bool | dict[str, bool] = config.restart.mode == "always"
    if config.restart.mode == "on-failure":
        keep_alive = {"SuccessfulExit": False}  # relaunched only after a run that failed
    job: dict[str, object] = {
        "Label": label or launchd_label(config.name),
        "ProgramArguments": [sys.executable, config.script, "run", *options],
        "RunAtLoad": True,
        "KeepAlive": keep_alive,
        "WorkingDirectory": config.workdir,
        "Umask": config.umask,
        # launchd sends SIGTERM, then SIGKILL after this: time for stop_timeout and on_stop.
        "ExitTimeOut": _ceil(config.kill_after) + _STOP_MARGIN,
    }
    if config.restart.enabled:
        # The least time between two starts (launchd's own default is 10 s).
        job["ThrottleInterval"] = max(1, _ceil(config.restart.delay))
    stdout = config.stdout
    # As a daemon's: with only stdout= given, stderr goes to the same file.
    stderr = config.stderr or stdout
    if stdout is not None:
        job["StandardOutPath"] = stdout
    if stderr is not None:
        job["StandardErrorPath"] = stderr
    return plistlib.dumps(job, sort_keys=False).decode("utf-8")
