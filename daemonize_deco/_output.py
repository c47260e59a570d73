"""The commands' two voices: what went right on stdout, what went wrong on stderr."""

from __future__ import annotations

import sys

__all__ = ["complain", "say"]


def _write(stream_name: str, text: str) -> None:
    stream = getattr(sys, stream_name)
    if stream is None:
        return
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # nobody reads our output (closed pipe): the exit status still tells


def say(text: str) -> None:
    """A line on stdout: what went right."""
    _write("stdout", text)


def complain(text: str) -> None:
    """A line on stderr: what went wrong."""
    _write("stderr", text)
