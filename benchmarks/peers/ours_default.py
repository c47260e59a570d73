"""daemonize_deco with the default readiness: ready once main reaches its loop."""

from service import LOG, PIDFILE, service

from daemonize_deco import daemon, should_stop, sleep


@daemon(pidfile=PIDFILE, stdout=LOG, name="bench")
def main():
    service(sleep=sleep, running=lambda: not should_stop())


if __name__ == "__main__":
    main()
