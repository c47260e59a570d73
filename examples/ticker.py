"""The minimal service: a line in its log every few seconds.

python examples/ticker.py start     # "ticker started (pid N)"
python examples/ticker.py status
tail -f /tmp/ticker.log
python examples/ticker.py stop
"""

import os
import time

from daemonize_deco import daemon, should_stop, sleep

INTERVAL = float(os.environ.get("TICKER_INTERVAL", "5"))


@daemon(
    pidfile=os.environ.get("TICKER_PIDFILE", "/tmp/ticker.pid"),
    stdout=os.environ.get("TICKER_LOG", "/tmp/ticker.log"),
)
def main() -> None:
    while not should_stop():
        print(time.strftime("%Y-%m-%d %H:%M:%S"), "tick")
        sleep(INTERVAL)
    print("ticker: stopping")


if __name__ == "__main__":
    main()
