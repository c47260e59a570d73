"""The ``health`` command: one question an orchestrator's probe asks, answered by the exit status.

0 healthy, 1 not, with the reason on stderr: for Docker's ``HEALTHCHECK
CMD`` and Kubernetes' exec probes, which run it every second or so, so it
loads only what it needs (no argparse, nothing that walks ``/proc``).
Healthy means three things, each looked at from outside the service's code:

- the service runs: the pidfile's lock is held by the process it names
  (as ``status`` decides; a deleted pidfile's claimant counts);
- its dispatcher answers: a ``health`` request on the claim socket
  (``_claim``), which the dispatcher thread (or, under ``restart=``, the
  supervisor) polls anyway, so it costs an idle service nothing between
  probes; a service whose dispatcher is stopped or wedged does not reply
  within the timeout;
- with ``watchdog=``, main's heartbeats are fresh (``_heartbeat.staleness``),
  and under ``restart=`` the service is in its running phase (not
  restarting or backing off).
"""

from __future__ import annotations

from ._claim import HEALTH, READY, ask_claim
from ._errors import DaemonError
from ._lookup import inspect_service, pidfile_of
from ._output import say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._config import Service

__all__ = ["UnhealthyError", "health"]

# Within a probe's usual one-second timeout, with room for the interpreter's start.
ANSWER_TIMEOUT = 0.5


class UnhealthyError(DaemonError):
    """The ``health`` command's "not healthy": exit status 1, and why."""

    exit_status = 1


def health(service: Service) -> int:
    """0 when the service runs, its dispatcher answers and its heartbeats are fresh; else 1.

    ``--ready``: and it takes traffic (ready, no stop announced): a readiness probe's question.
    """
    ready = bool(service.flags.get("ready"))
    word, question = ("ready", READY) if ready else ("healthy", HEALTH)
    pidfile = pidfile_of(service)
    state, _ = inspect_service(service, pidfile)
    if not state.running or state.pid is None:
        raise UnhealthyError(f"not {word}: not running", path=pidfile.path)
    pid = state.pid
    try:
        answer = ask_claim(pidfile.path, question, ANSWER_TIMEOUT, pidfile.owners)
    except TimeoutError:
        why = f"pid {pid} did not answer within {ANSWER_TIMEOUT:g}s (stopped, or wedged?)"
        raise UnhealthyError(f"not {word}: {why}", pid=pid) from None
    except OSError as exc:
        raise UnhealthyError(f"not {word}: pid {pid} cannot be asked: {exc}", pid=pid) from None
    if answer == "ok":
        say(f"{service.name} is {word} (pid {pid})")
        return 0
    why = answer.removeprefix("error ") or "no answer"
    raise UnhealthyError(f"not {word} (pid {pid}): {why}", pid=pid)
