"""Which worker this process is: :func:`worker_id`, for logs and sharding.

With ``workers=N`` the arbiter (``_workers``) forks N copies of the service
and tells each its number, 0 to N-1, before ``serve``; a replacement gets
the number of the worker it replaces.  A service without workers is worker
0, as is the command itself: code that shards by ``worker_id()`` then does
the same with one worker as with many.  A child ``main`` forks keeps its
parent's number (it is that worker's business).
"""

from __future__ import annotations

__all__ = ["become_worker", "worker_id"]


class _Number:
    value = 0


_number = _Number()


def become_worker(number: int) -> None:
    """This process is worker ``number`` (the arbiter's child, before ``serve``)."""
    _number.value = number


def worker_id() -> int:
    """This worker's number, 0 to N-1 with ``workers=N``; 0 in a service without workers.

    Stable for a worker's slot: the worker that replaces a dead one has its
    number.  Use it to tell the workers' log lines apart, or to give each a
    share of the work (a port offset, a queue partition).
    """
    return _number.value
