"""``PIDFILE.draining``: that a ``drain=S`` stop is under way, for ``status``.

During a drain the service runs on and ``main`` has not heard of the stop;
only its readiness says so.  ``status`` reads files beside the pidfile and
asks the service nothing, so the service writes one when a drain begins
(the pid that drains, when the drain ends) and removes it when the drain
is over: a write and an unlink a stop, nothing otherwise.  A record left by
a killed service says nothing: it is believed only for the pid running now,
and only until the drain's end it names.
"""

from __future__ import annotations

import time

from . import _beside

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["began", "ended", "left"]

SUFFIX = ".draining"


def began(pidfile: str, pid: int, seconds: float) -> None:
    """The service ``pid`` drains for ``seconds`` from now (best effort: never raises)."""
    fields = (("pid", pid), ("until", round(time.time() + seconds, 3)))
    _beside.write(pidfile + SUFFIX, _beside.fields_to_text(fields).encode())


def ended(pidfile: str) -> None:
    """The drain is over (or the run is): the record goes."""
    _beside.remove(pidfile + SUFFIX)


def left(pidfile: str, owners: Collection[int], pid: int) -> float | None:
    """Seconds left of the drain of the service ``pid``, or None: it is not draining."""
    data = _beside.read(pidfile + SUFFIX, 256, owners)
    if data is None:
        return None
    fields = _beside.fields_from_text(data.decode("utf-8", "replace"))
    try:
        if int(fields["pid"]) != pid:
            return None
        remaining = float(fields["until"]) - time.time()
    except (KeyError, ValueError):
        return None
    return remaining if remaining > 0 else None
