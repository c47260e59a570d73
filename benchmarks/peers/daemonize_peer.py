"""daemonize (PyPI): Daemonize(...).start(), and a stop that sends SIGTERM."""

import sys

from daemonize import Daemonize
from service import PIDFILE, service, stop_by_pidfile

if __name__ == "__main__":
    if sys.argv[1] == "start":
        Daemonize(app="bench", pid=PIDFILE, action=service).start()
    else:
        stop_by_pidfile()
