"""The minimal service: a line in its log every few seconds.

Try it::

    python examples/ticker.py start      # "ticker started (pid N)"
    python examples/ticker.py status
    python examples/ticker.py last       # a custom command: the log's last line
    python examples/ticker.py reload     # reopen the log, read ticker.interval beside it
    python examples/ticker.py stop
    python examples/ticker.py --help     # lists the custom commands too
"""

import os
import time

from daemonize_deco import daemon, should_stop, sleep

PIDFILE = os.environ.get("TICKER_PIDFILE", "/tmp/ticker.pid")
LOG = os.environ.get("TICKER_LOG", "/tmp/ticker.log")
settings = {"interval": float(os.environ.get("TICKER_INTERVAL", "5"))}


@daemon(pidfile=PIDFILE, stdout=LOG)
def main() -> None:
    while not should_stop():
        print(time.strftime("%Y-%m-%d %H:%M:%S"), "tick")
        sleep(settings["interval"])
    print("ticker: stopping")


@main.on_reload
def reread_interval() -> None:
    """SIGHUP or `reload`: the log was reopened; pick up a new interval from a file."""
    override = os.path.join(os.path.dirname(LOG), "ticker.interval")
    if os.path.exists(override):
        with open(override) as f:
            settings["interval"] = float(f.read())
    print("ticker: interval is", settings["interval"])


@main.command
def last() -> int:
    """Print the last line of the log."""
    try:
        with open(LOG) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        print("no log yet at", LOG)
        return 1
    print(lines[-1] if lines else "(empty log)")
    return 0


if __name__ == "__main__":
    main()
