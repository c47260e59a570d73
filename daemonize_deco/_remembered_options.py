"""The running daemon's option words, kept beside its pidfile (``PIDFILE.options``).

``start`` writes them once its daemon is ready, ``status`` shows them,
``restart`` reuses them when given none, and the service's end removes them.
A small record with no option parsing: the daemon that forgets it carries
neither argparse nor the signature reader (``_options``).
"""

from __future__ import annotations

from . import _beside

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

__all__ = ["OPTIONS_SUFFIX", "forget", "remember", "remembered"]

# The running daemon's option words, NUL-separated, beside its pidfile.
OPTIONS_SUFFIX = ".options"
_WORDS_LIMIT = 65536


def remember(pidfile: str, words: Sequence[str]) -> None:
    """Keep the option words the service runs with beside its pidfile (best effort)."""
    _beside.write(pidfile + OPTIONS_SUFFIX, "\0".join(words).encode("utf-8", "surrogateescape"))


def remembered(pidfile: str, owners: Collection[int]) -> list[str] | None:
    """The option words the service with ``pidfile`` runs (or ran) with; None if unknown.

    Only a file of one of ``owners`` (the service's) is read: in a shared
    directory another user could plant one for a restart to run main with.
    """
    data = _beside.read(pidfile + OPTIONS_SUFFIX, _WORDS_LIMIT, owners)
    if data is None:
        return None
    return data.decode("utf-8", "surrogateescape").split("\0") if data else []


def forget(pidfile: str) -> None:
    """The service ends: its options are no longer those of a running service."""
    _beside.remove(pidfile + OPTIONS_SUFFIX)
