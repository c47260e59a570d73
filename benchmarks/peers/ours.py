"""daemonize_deco: the library under test."""

from service import LOG, PIDFILE, service

from daemonize_deco import daemon, ready, should_stop, sleep


@daemon(pidfile=PIDFILE, stdout=LOG, name="bench", wait_ready=True)
def main():
    service(sleep=sleep, running=lambda: not should_stop(), ready=ready)


if __name__ == "__main__":
    main()
