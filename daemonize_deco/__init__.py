"""daemonize_deco: turn an ordinary ``main()`` into a well-behaved Unix service.

from daemonize_deco import daemon, should_stop, sleep

@daemon(pidfile="/tmp/ticker.pid", stdout="/tmp/ticker.log")
def main():
    while not should_stop():
        print("tick")
        sleep(5)

if __name__ == "__main__":
    main()          # python ticker.py start | stop | restart | status | run
"""

from ._errors import (
    AlreadyRunningError,
    DaemonError,
    DetachError,
    ListenError,
    ManagedError,
    NoLogError,
    NotRunningError,
    PidFileError,
    ReloadError,
    StartupError,
    StopError,
    UsageError,
)
from ._heartbeat import heartbeat
from ._notify import notify
from ._ready import ready
from ._service import Daemon, daemon
from ._signals import should_stop, sleep
from ._worker import worker_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._aio import stopped
    from ._listeners import listeners

__all__ = [
    "AlreadyRunningError",
    "Daemon",
    "DaemonError",
    "DetachError",
    "ListenError",
    "ManagedError",
    "NoLogError",
    "NotRunningError",
    "PidFileError",
    "ReloadError",
    "StartupError",
    "StopError",
    "UsageError",
    "daemon",
    "heartbeat",
    "listeners",
    "notify",
    "ready",
    "should_stop",
    "sleep",
    "stopped",
    "worker_id",
]


def __getattr__(name: str) -> object:
    # These load on first use: a supervisor (forked from ``start``) keeps
    # every module its starter loaded, and needs neither.
    if name == "stopped":
        from ._aio import stopped  # noqa: PLC0415

        return stopped
    if name == "listeners":
        from ._listeners import listeners  # noqa: PLC0415

        return listeners
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
