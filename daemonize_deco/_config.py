"""The decorator's keywords, checked once at decoration time.

Wrong types raise TypeError and wrong values ValueError, naming the keyword,
so a mistake shows when the script is imported rather than when ``start``
runs in production.  Relative paths are resolved against the directory the
program was launched from, since the daemon itself changes directory.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServiceConfig"]

PathArg = str | os.PathLike[str]


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the commands need to know about one service."""

    name: str
    pidfile: str
    stdout: str | None
    stderr: str | None
    workdir: str
    umask: int
    stop_timeout: float
    start_timeout: float
    wait_ready: bool

    @classmethod
    def from_keywords(
        cls,
        func: Callable[..., object],
        *,
        pidfile: PathArg,
        stdout: PathArg | None,
        stderr: PathArg | None,
        workdir: PathArg,
        umask: int,
        stop_timeout: float,
        start_timeout: float,
        wait_ready: bool,
        name: str | None,
    ) -> ServiceConfig:
        """Check and normalise the decorator's keywords."""
        if not isinstance(wait_ready, bool):
            raise TypeError(f"wait_ready must be True or False, not {wait_ready!r}")
        return cls(
            name=_name(name, func),
            pidfile=_path("pidfile", pidfile),
            stdout=None if stdout is None else _path("stdout", stdout),
            stderr=None if stderr is None else _path("stderr", stderr),
            workdir=_path("workdir", workdir),
            umask=_umask(umask),
            stop_timeout=_timeout("stop_timeout", stop_timeout),
            start_timeout=_timeout("start_timeout", start_timeout),
            wait_ready=wait_ready,
        )


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
    return os.path.abspath(path)


def _umask(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"umask must be an int such as 0o022, not {type(value).__name__}")
    if not 0 <= value <= 0o777:
        raise ValueError(f"umask must be between 0 and 0o777, not {value:#o}")
    return value


def _timeout(keyword: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{keyword} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{keyword} must be a positive, finite number of seconds, not {value!r}")
    return float(value)


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
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    filename = getattr(module, "__file__", None) or (sys.argv[0] if sys.argv else "")
    path = Path(filename)
    if path.stem == "__main__":
        return path.parent.name or "daemon"
    return path.stem or getattr(func, "__name__", "daemon")
