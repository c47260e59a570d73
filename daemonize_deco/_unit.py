"""A systemd unit file for a service, printed by ``python app.py systemd-unit``.

``Type=notify``: systemd runs the service in the foreground (``run``) and
learns from ``READY=1`` when it is up, so nothing forks away from it.  Under
systemd, systemd restarts the service: ``Restart=`` and the start limit come
from ``restart=`` and ``restart_limit=``, ``WatchdogSec=`` from ``watchdog=``.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._config import ServiceConfig

__all__ = ["systemd_socket_unit", "systemd_unit"]

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
        f"TimeoutStopSec={_ceil(config.stop_timeout) + _STOP_MARGIN}",
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
