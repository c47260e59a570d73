"""Figures for a resident service (restart= and watchdog=), measured in one run.

    python3 benchmarks/supervisor_figures.py [--runs 10] [--idle-seconds 5]

- crash → new service ready (SIGKILL to the service, restart_delay=0), median
  ms, beside our own ``start`` of the same service without a supervisor
  (goal: at most twice);
- the supervisor's RssAnon over a bare interpreter (goal at most +1 MiB) and
  its context switches while idle (goal 0);
- a hung main (a deadlock) seen by the watchdog (watchdog=1): ms from the
  deadlock to the supervisor's log line (goal at most S + 0.5 s).

Writes the table as the section "Keeping a service alive" of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asyncio_figures import context_switches, environment, settled_rss, write_section

HEADING = "## Keeping a service alive"

SERVICE = """
import os, time
from daemonize_deco import daemon, ready, should_stop, sleep

@daemon(pidfile={pidfile!r}, stdout={log!r}, restart={restart!r}, restart_delay=0,
        restart_limit=(1000, 60.0), watchdog={watchdog!r}, wait_ready=True)
def main():
    ready()
    print("ready", os.getpid(), time.monotonic(), flush=True)
    hang = os.path.join({folder!r}, "hang")
    while not should_stop():
        if os.path.exists(hang):
            os.remove(hang)
            print("hanging", time.monotonic(), flush=True)
            import threading  # here: the supervisor's RssAnon is ours, not the benchmark's
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()
        sleep(0.05 if {watchdog!r} else 3600)

main()
"""

BARE = "import time; print('idle', flush=True); time.sleep(3600)"


class Service:
    def __init__(self, folder: Path, restart: str, watchdog: float | None) -> None:
        self.folder = folder
        self.pidfile = folder / "svc.pid"
        self.log = folder / "svc.log"
        self.script = folder / "svc.py"
        self.script.write_text(
            SERVICE.format(
                pidfile=str(self.pidfile),
                log=str(self.log),
                restart=restart,
                watchdog=watchdog,
                folder=str(folder),
            )
        )

    def command(self, word: str) -> str:
        return subprocess.run(
            [sys.executable, str(self.script), word],
            env=environment(), capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    def readies(self) -> list[tuple[int, float]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [(int(p), float(t)) for p, t in re.findall(r"^ready (\d+) ([\d.]+)$", text, re.M)]


def wait_until(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.002)
    raise RuntimeError("timed out")


def start_ms(runs: int) -> float:
    times = []
    with tempfile.TemporaryDirectory(prefix="dd-sup-") as scratch:
        service = Service(Path(scratch), "no", None)
        for _ in range(runs):
            began = time.perf_counter()
            service.command("start")
            times.append((time.perf_counter() - began) * 1000)
            service.command("stop")
    return statistics.median(times)


def crash_to_ready_ms(runs: int) -> float:
    times = []
    with tempfile.TemporaryDirectory(prefix="dd-sup-") as scratch:
        service = Service(Path(scratch), "on-failure", None)
        service.command("start")
        for _ in range(runs):
            pid, _ = wait_until(lambda: service.readies()[-1:])[0]
            count = len(service.readies())
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            _, ready_at = wait_until(lambda n=count: service.readies()[n:])[0]
            times.append((ready_at - killed_at) * 1000)
        service.command("stop")
    return statistics.median(times)


def supervisor_at_rest(idle_seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dd-sup-") as scratch:
        service = Service(Path(scratch), "on-failure", None)
        service.command("start")
        service.command("stop")
        service.command("start")
        supervisor = int(service.pidfile.read_text())
        rss = settled_rss(supervisor)
        before = context_switches(supervisor)
        time.sleep(idle_seconds)  # the measurement window itself
        switches = context_switches(supervisor) - before
        service.command("stop")
    bare = subprocess.Popen([sys.executable, "-c", BARE], stdout=subprocess.PIPE, text=True)
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        bare_rss = settled_rss(bare.pid)
    finally:
        bare.kill()
        bare.wait()
    return {"rss": rss, "bare_rss": bare_rss, "switches": switches}


def hang_detection_ms(runs: int, limit: float) -> float:
    times = []
    with tempfile.TemporaryDirectory(prefix="dd-sup-") as scratch:
        folder = Path(scratch)
        service = Service(folder, "on-failure", limit)
        service.command("start")
        for _ in range(runs):
            readies = len(wait_until(service.readies))
            hangs = service.log.read_text().count("hung;")
            (folder / "hang").touch()
            text = wait_until(lambda n=hangs: _hung_more_than(service, n))
            seen_at = time.monotonic()
            hanging = float(re.findall(r"^hanging ([\d.]+)$", text, re.M)[-1])
            times.append((seen_at - hanging) * 1000)
            wait_until(lambda n=readies: len(service.readies()) > n)  # restarted
        service.command("stop")
    return statistics.median(times)


def _hung_more_than(service: Service, count: int) -> str | None:
    text = service.log.read_text()
    return text if text.count("hung;") > count else None


def render(figures: dict[str, float], runs: int, idle: float) -> str:
    extra = figures["rss"] - figures["bare_rss"]
    ratio = figures["crash"] / figures["start"]
    limit_ms = figures["limit"] * 1000
    return "\n".join([
        HEADING,
        "",
        f"`python3 benchmarks/supervisor_figures.py --runs {runs}` — "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPython "
        f"{sys.version.split()[0]}; the baselines measured in the same run.",
        "",
        "| figure | measured | baseline | goal | met |",
        "|---|---|---|---|---|",
        f"| SIGKILL of the service → new service ready, restart_delay=0 (ms, median of {runs}) "
        f"| {figures['crash']:.1f} | {figures['start']:.1f} (our `start`, no supervisor) "
        f"| ≤ 2× | {'yes' if ratio <= 2 else 'no'} ({ratio:.2f}×) |",
        f"| supervisor RssAnon (KiB) | {figures['rss']:.0f} | {figures['bare_rss']:.0f} "
        f"(bare `python -c 'time.sleep()'`) | ≤ +1024 KiB | "
        f"{'yes' if extra <= 1024 else 'no'} (+{extra:.0f} KiB) |",
        f"| supervisor context switches while idle, {idle:g} s | {figures['switches']:.0f} | — "
        f"| 0 | {'yes' if figures['switches'] == 0 else 'no'} |",
        f"| deadlock → watchdog's log line, watchdog={figures['limit']:g} (ms, median of "
        f"{figures['hang_runs']}) | {figures['hang']:.0f} | — | ≤ {limit_ms + 500:.0f} | "
        f"{'yes' if figures['hang'] <= limit_ms + 500 else 'no'} |",
        "",
        "The supervisor is forked from `start`, so it holds what the starter loaded: the",
        "interpreter, the package's start path, and the service script's own module-level",
        "imports: here only `os` and `time` (a script that imports `threading` at the top",
        "pays its ~220 KiB in every process it runs in, supervised or not).",
        "",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    options = parser.parse_args()
    hang_runs = max(3, options.runs // 3)
    figures: dict[str, float] = {
        "start": start_ms(options.runs),
        "crash": crash_to_ready_ms(options.runs),
        "limit": 1.0,
        "hang_runs": hang_runs,
        **supervisor_at_rest(options.idle_seconds),
    }
    figures["hang"] = hang_detection_ms(hang_runs, figures["limit"])
    section = render(figures, options.runs, options.idle_seconds)
    print(section)
    write_section(HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
