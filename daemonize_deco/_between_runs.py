"""The health endpoint while a supervisor has no service (``health=`` under ``restart=``).

An arbiter (``workers=N``) answers the same way while every worker is down.

The service answers its own probes (``_health``) on a socket its supervisor
holds across restarts.  Between a run's end and the next start (the
backoff: seconds, maybe many) there is no service, and a probe would wait
unanswered in the accept queue until its own timeout: so the supervisor
answers in its place.  In its own poll loop, not a thread (it forks the
next service, and a thread at a fork is a hazard), with the endpoint's
bounds (``_health.Connections``: a deadline, a head size, a connection cap;
never a blocking call):

- ``/readyz``: 503, and why: how the last run ended, when the next begins;
- ``/livez``: 200: the supervisor is alive and doing what a failed liveness
  probe would have the orchestrator do, restart the service (sooner, and
  without the container's cost); a supervisor that gives up exits, which the
  orchestrator sees;
- ``/status``: the ``status --json`` object, the supervisor's pid and
  ``supervision`` (``listening`` unknown: reading the host's socket tables
  can take a second, and this loop has restarts and stops to see to).

Before the next fork it stops accepting and answers what it accepted (a
request not yet whole: 408, not a reset); what waits in the accept queue is
then the new service's to answer.  The listener is never closed here: the
supervisor holds it for its services.
"""

from __future__ import annotations

import time

from ._health import Answers, status_object

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import ServiceConfig

__all__ = ["SupervisorAnswers", "restarting"]

_ALIVE = "alive: the supervisor is restarting the service"


class SupervisorAnswers(Answers):
    """The supervisor's answers between runs: alive, not ready, and why."""

    def __init__(
        self,
        config: ServiceConfig,
        started: float,
        why: Callable[[], str],
        supervision: Callable[[], dict[str, object]],
    ) -> None:
        self._config = config
        self._started = started
        self._why = why
        self._supervision = supervision

    def livez(self) -> tuple[bool, str]:
        """200: the supervisor answers, and will start the service again."""
        return True, _ALIVE

    def readyz(self) -> tuple[bool, str]:
        """503: no service runs; how the last ended, when the next starts."""
        return False, self._why()

    def status(self) -> dict[str, object]:
        """The ``status --json`` object, as the supervisor knows it."""
        return status_object(
            self._config,
            self._started,
            ready=self.readyz(),
            live=self.livez(),
            supervision=self._supervision(),
            listening=False,  # the host's socket tables: no time of the supervisor's loop
        )


def restarting(ended: str, due: float | None) -> str:
    """What ``/readyz`` says: "restarting: the service exited with status 1; next start in 2.3s"."""
    if due is None:
        return f"restarting: the service {ended}"
    return f"restarting: the service {ended}; next start in {max(0.0, due - time.monotonic()):.1f}s"
