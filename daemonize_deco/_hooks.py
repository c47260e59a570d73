"""The callbacks a service registers: on reload, on stop, on a signal; and extra commands.

The registry only stores them; ``_dispatch`` runs the daemon-side ones and
``_cli`` the commands.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum (milliseconds)

from ._signal_names import RESERVED_SIGNALS, signal_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection
    from typing import TypeVar

    from ._options import Signature

    T = TypeVar("T")
    Callback = Callable[[], object]
    CustomCommand = Callable[..., object]

__all__ = [
    "Hooks",
    "checked_callable",
    "checked_signal",
    "has_no_parameters",
    "read_signature",
    "refuse_generator",
    "takes_words",
]

_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


class Hooks:
    """Everything registered with ``@main.on_reload`` and friends, in registration order."""

    def __init__(self) -> None:
        self.on_reload: list[Callback] = []
        self.on_stop: list[Callback] = []
        self.on_signal: dict[int, list[Callback]] = {}
        self.commands: dict[str, CustomCommand] = {}
        self.command_signatures: dict[str, Signature | None] = {}

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
        self.command_signatures[word] = read_signature(func, what=f"command {word!r}", command=True)


_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08
_CO_GENERATOR, _CO_ASYNC_GENERATOR = 0x20, 0x200


def _shape(func: Callable[..., object]) -> tuple[bool, bool, bool] | None:
    """Named parameters?, ``*args``?, ``**kwargs``?: from the code object, without inspect."""
    code = getattr(func, "__code__", None)
    if code is None:
        return None  # a builtin or a callable object: inspect will tell
    named = code.co_argcount + code.co_kwonlyargcount > 0
    return named, bool(code.co_flags & _CO_VARARGS), bool(code.co_flags & _CO_VARKEYWORDS)


def has_no_parameters(func: Callable[..., object]) -> bool:
    """A plain function with no parameters at all."""
    return _shape(func) == (False, False, False)


def takes_words(func: Callable[..., object]) -> bool:
    """``def cmd(*args)`` without annotations: it gets the command line's words as they are."""
    return _shape(func) == (False, True, False) and not getattr(func, "__annotations__", None)


def read_signature(
    func: Callable[..., object], *, what: str, command: bool = False
) -> Signature | None:
    """``func``'s parameters as options; None for none at all (or a command's bare ``*args``).

    Only a function with parameters loads inspect, typing and the option code.
    """
    if has_no_parameters(func) or (command and takes_words(func)):
        return None
    from ._options import Signature  # noqa: PLC0415 -- only functions with parameters

    return Signature(func, what=what, commands=command)


def checked_callable(role: str, value: T) -> T:
    """``value`` if it can be called; a TypeError naming what was given, at registration."""
    if not callable(value):
        raise TypeError(f"@main.{role} takes a function, not {value!r}")
    return value


def refuse_generator(func: object, what: str) -> None:
    """A generator function cannot be a service: say so at decoration."""
    code = getattr(func, "__code__", None)
    if code is not None and code.co_flags & (_CO_GENERATOR | _CO_ASYNC_GENERATOR):
        raise TypeError(f"{what} is a generator function; a service is a function or a coroutine")


def checked_signal(signum: object) -> int:
    """``signum`` if a service may register a callback for it; TypeError or ValueError if not."""
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"on_signal takes a signal number such as signal.SIGUSR1, not {signum!r}")
    if signum not in signal.valid_signals():
        raise ValueError(f"{signum} is not a signal number")
    name = signal_name(signum)
    if signum in _UNCATCHABLE:
        raise ValueError(f"{name} cannot be caught")
    if signum in RESERVED_SIGNALS:
        use = "on_reload" if signum == signal.SIGHUP else "on_stop"
        raise ValueError(f"{name} is handled by daemonize_deco: use @main.{use}")
    return int(signum)
