"""The callbacks a service registers: on reload, on stop, on a signal; and extra commands.

The registry only stores them; ``_dispatch`` runs the daemon-side ones and
``_cli`` the commands.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Collection

from ._signals import RESERVED_SIGNALS

__all__ = ["Callback", "CustomCommand", "Hooks", "checked_signal"]

Callback = Callable[[], object]
CustomCommand = Callable[..., object]

_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


class Hooks:
    """Everything registered with ``@main.on_reload`` and friends, in registration order."""

    def __init__(self) -> None:
        self.on_reload: list[Callback] = []
        self.on_stop: list[Callback] = []
        self.on_signal: dict[int, list[Callback]] = {}
        self.commands: dict[str, CustomCommand] = {}

    def add_signal(self, signum: int, callback: Callback) -> None:
        """Run ``callback`` when ``signum`` arrives."""
        sig = checked_signal(signum)
        self.on_signal.setdefault(sig, []).append(callback)

    def add_command(self, func: CustomCommand, reserved: Collection[str]) -> None:
        """Add a command word: the function's name, ``_`` written ``-``."""
        word = getattr(func, "__name__", "").replace("_", "-")
        if not word or word.startswith("-") or any(c.isspace() for c in word):
            raise ValueError(f"{word!r} cannot be a command word")
        if word in reserved:
            raise ValueError(f"{word!r} is a built-in command; give the function another name")
        if word in self.commands:
            raise ValueError(f"command {word!r} is already defined")
        self.commands[word] = func


def checked_signal(signum: object) -> signal.Signals:
    """``signum`` as a Signals member, if a service may register a callback for it."""
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"on_signal takes a signal number such as signal.SIGUSR1, not {signum!r}")
    try:
        sig = signal.Signals(signum)
    except ValueError:
        raise ValueError(f"{signum} is not a signal number") from None
    if sig in _UNCATCHABLE:
        raise ValueError(f"{sig.name} cannot be caught")
    if sig in RESERVED_SIGNALS:
        use = "on_reload" if sig == signal.SIGHUP else "on_stop"
        raise ValueError(f"{sig.name} is handled by daemonize_deco: use @main.{use}")
    return sig
