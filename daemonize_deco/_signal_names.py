"""The signals the framework keeps for itself, and their names in messages.

Pure constants and a name lookup, below both the signal registry
(``_signals``, which installs handlers for them) and the callbacks a service
declares (``_hooks``, which refuses them to ``on_signal``).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)

__all__ = ["RELOAD_SIGNAL", "RESERVED_SIGNALS", "STOP_SIGNALS", "signal_name"]

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# SIGHUP reloads (and reopens logs); a stray one from a closing terminal or
# logrotate must never kill a daemon.
RELOAD_SIGNAL = signal.SIGHUP
RESERVED_SIGNALS = STOP_SIGNALS | {RELOAD_SIGNAL}


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15: for messages only, so the enum module loads only then."""
    import signal as signal_module  # noqa: PLC0415

    try:
        return signal_module.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
