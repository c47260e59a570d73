"""The systemd notification protocol (``sd_notify``), in the standard library.

When systemd starts a service with ``Type=notify`` it sets ``NOTIFY_SOCKET``
to a datagram socket, a path or an abstract name written ``@name``.  The
service sends newline-separated ``KEY=value`` lines: ``READY=1`` once ready,
``RELOADING=1`` with ``MONOTONIC_USEC`` around a reload, ``STOPPING=1``,
``STATUS=...`` and, when ``WATCHDOG_USEC`` is set, ``WATCHDOG=1`` pings.
Without ``NOTIFY_SOCKET`` every call here does nothing.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Notifier", "notify"]


class Notifier:
    """The service's link to its manager, read once from the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith(("@", "/")):
            from ._platform_sockets import datagram_address  # noqa: PLC0415 -- under systemd only

            self.address = datagram_address(address)
        self.watchdog_interval = _watchdog_interval(env)

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when nobody listens or it failed."""
        if self.address is None:
            return False
        message = "".join(f"{key.upper()}={value}\n" for key, value in fields.items())
        # The C module, and only now: socket.py would import selectors and enum,
        # and a service that is not under systemd never needs either.
        import _socket  # noqa: PLC0415

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)  # never inherited (PEP 446)
        try:
            sock.sendto(message.encode("utf-8"), self.address)
        except OSError:
            return False  # the manager went away; the service carries on
        finally:
            sock.close()
        return True

    def ready(self) -> None:
        """``READY=1``: the same moment ``start`` reports ready."""
        self.send(ready=1)

    def reloading(self) -> None:
        """``RELOADING=1`` and the clock, in the same datagram, as systemd requires."""
        self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        """``STOPPING=1``: a graceful stop has begun."""
        self.send(stopping=1)

    def watchdog(self) -> None:
        """``WATCHDOG=1``: still alive."""
        self.send(watchdog=1)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC``, in seconds, when the pings are meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if watchdog_pid and watchdog_pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


_notifier = Notifier({})


def attach(notifier: Notifier) -> None:
    """Make ``notifier`` the one :func:`notify` and the runtime use in this process."""
    global _notifier  # noqa: PLW0603 -- one manager link per process
    _notifier = notifier


def current() -> Notifier:
    """The notifier of this process."""
    return _notifier


def notify(status: str | None = None, **fields: object) -> bool:
    """Tell the service manager (systemd) something: ``notify(status="3 jobs queued")``.

    ``status`` becomes ``STATUS=``; other keywords are sent as upper-case
    ``KEY=value`` fields.  Returns False, doing nothing, when the service does
    not run under a manager that listens (no ``NOTIFY_SOCKET``).
    """
    if status is not None:
        fields["status"] = " ".join(str(status).splitlines())
    return _notifier.send(**fields) if fields else False
