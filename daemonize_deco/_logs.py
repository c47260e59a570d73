"""The ``logs`` command: the last lines of the service's log files, and following them.

Following survives logrotate's "create" (the file is renamed, a new one
appears after the service's reload): the rest of the old file is read, then
the new one from its start.  "copytruncate" (the file shrinks) starts over
at its new end of data.  Files are polled a few times a second: a command
someone watches, not a daemon, so the standard library's lack of inotify
costs nothing that matters.
"""

from __future__ import annotations

import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["follow", "last_lines"]

_POLL_INTERVAL = 0.2
_CHUNK = 65536


def last_lines(path: str, count: int) -> list[bytes]:
    """The last ``count`` lines of the file at ``path`` (each with its newline, if any)."""
    if count == 0:
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        position = f.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(_CHUNK, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
    lines = data.splitlines(keepends=True)
    return lines[-count:]


class _Followed:
    """One log file being followed: its open descriptor and where we are in it."""

    def __init__(self, path: str, *, from_start: bool) -> None:
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 -- kept open across polls
        if not from_start:
            self.file.seek(0, os.SEEK_END)
        self.identity = _identity(os.fstat(self.file.fileno()))

    def new_data(self) -> bytes:
        """What was written since the last call, following a rotation or a truncation."""
        data = self.file.read()
        if os.fstat(self.file.fileno()).st_size < self.file.tell():
            self.file.seek(0)  # copytruncate: the file was emptied under us
            data += self.file.read()
        try:
            at_path = _identity(os.stat(self.path))
        except FileNotFoundError:
            return data  # rotated, and the new file is not there yet
        if at_path != self.identity:
            data += self.file.read()  # the last lines written to the old file
            self.file.close()
            self.file = open(self.path, "rb")  # noqa: SIM115
            self.identity = at_path
            data += self.file.read()
        return data

    def close(self) -> None:
        self.file.close()


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _reader_gone(fd: int) -> bool:
    """Whether the pipe on ``fd`` has lost its reader (POLLERR on a pipe's write end)."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def follow(paths: Sequence[str], count: int) -> None:
    """Print the last ``count`` lines of each file, then what is appended, until Ctrl-C."""
    out = sys.stdout.buffer
    followed = []
    try:
        for path in paths:
            header = len(paths) > 1
            if header:
                out.write(f"==> {path} <==\n".encode())
            if os.path.exists(path):
                out.writelines(last_lines(path, count))
            out.flush()
        followed = [_Followed(p, from_start=False) for p in paths if os.path.exists(p)]
        waiting = [p for p in paths if not os.path.exists(p)]
        while True:
            for path in [p for p in waiting if os.path.exists(p)]:
                followed.append(_Followed(path, from_start=True))
                waiting.remove(path)
            for item in followed:
                data = item.new_data()
                if data:
                    out.write(data)
                    out.flush()
            if _reader_gone(out.fileno()):
                return  # (with nothing new to write, no EPIPE would ever say so)
            time.sleep(_POLL_INTERVAL)
    except (KeyboardInterrupt, BrokenPipeError):
        return  # Ctrl-C, or the reader (head, less) is gone: both mean "enough"
    finally:
        for item in followed:
            item.close()
