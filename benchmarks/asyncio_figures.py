"""Figures for asyncio services, measured in one run beside their baselines.

    python3 benchmarks/asyncio_figures.py [--runs 10] [--idle-seconds 5]

- context switches of an idle asyncio daemon (``await stopped()``, every
  thread) over ``--idle-seconds`` (goal 0), beside a bare
  ``asyncio.run(asyncio.Event().wait())``;
- its RssAnon over that bare interpreter (goal at most +0.7 MiB), each the
  median of ``--rss-runs`` processes (the first daemon started is not
  counted: it may still be writing bytecode caches);
- stop latency (the ``stop`` command until the process is gone) of the
  asyncio daemon, beside the same idle service written as a plain ``main``.

Writes the table as the section "asyncio services" of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADING = "## asyncio services"

ASYNC_SERVICE = """
from daemonize_deco import daemon, stopped

@daemon(pidfile={pidfile!r}, stdout={log!r})
async def main():
    print("idle", flush=True)
    await stopped()

main()
"""

PLAIN_SERVICE = """
from daemonize_deco import daemon, should_stop, sleep

@daemon(pidfile={pidfile!r}, stdout={log!r})
def main():
    print("idle", flush=True)
    while not should_stop():
        sleep(3600)

main()
"""

BARE = "import asyncio; print('idle', flush=True); asyncio.run(asyncio.Event().wait())"


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(REPO)
    return env


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} for pid {pid}")


def context_switches(pid: int) -> int:
    """Voluntary and involuntary switches of every thread of ``pid``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def settled_rss(pid: int) -> int:
    """RssAnon once it has not changed for 0.3 s (the process is at rest)."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 0.3:
        now = status_field(pid, "RssAnon")
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.05)
    return last


class Daemon:
    def __init__(self, folder: Path, template: str) -> None:
        self.pidfile = folder / "svc.pid"
        self.log = folder / "svc.log"
        self.script = folder / "svc.py"
        self.script.write_text(template.format(pidfile=str(self.pidfile), log=str(self.log)))

    def command(self, word: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(self.script), word],
            env=environment(), capture_output=True, text=True, check=True,
        )  # fmt: skip

    def start(self) -> int:
        out = self.command("start").stdout
        return int(out.split("(pid ")[1].split(")")[0])


def idle_figures(idle_seconds: float, rss_runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dd-aio-") as scratch:
        service = Daemon(Path(scratch), ASYNC_SERVICE)
        rss_of_each = []
        for _ in range(rss_runs):
            service.start()
            service.command("stop")
            pid = service.start()
            rss_of_each.append(settled_rss(pid))
            service.command("stop")
        rss = statistics.median(rss_of_each)
        pid = service.start()
        before = context_switches(pid)
        time.sleep(idle_seconds)  # the measurement window itself
        switches = context_switches(pid) - before
        service.command("stop")
    bare_rss = statistics.median(bare_interpreter_rss() for _ in range(rss_runs))
    bare = subprocess.Popen([sys.executable, "-c", BARE], stdout=subprocess.PIPE, text=True)
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        bare_before = context_switches(bare.pid)
        time.sleep(idle_seconds)
        bare_switches = context_switches(bare.pid) - bare_before
    finally:
        bare.kill()
        bare.wait()
    return {"switches": switches, "bare_switches": bare_switches, "rss": rss, "bare_rss": bare_rss}


def bare_interpreter_rss() -> int:
    bare = subprocess.Popen([sys.executable, "-c", BARE], stdout=subprocess.PIPE, text=True)
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        return settled_rss(bare.pid)
    finally:
        bare.kill()
        bare.wait()


def stop_latency(template: str, runs: int) -> float:
    times = []
    with tempfile.TemporaryDirectory(prefix="dd-aio-") as scratch:
        service = Daemon(Path(scratch), template)
        for _ in range(runs):
            service.start()
            started = time.perf_counter()
            service.command("stop")  # returns once the process is gone
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def render(
    figures: dict[str, float],
    async_stop: float,
    plain_stop: float,
    runs: int,
    idle: float,
    *,
    rss_runs: int,
) -> str:
    extra_kib = figures["rss"] - figures["bare_rss"]
    return "\n".join(
        [
            HEADING,
            "",
            f"`python3 benchmarks/asyncio_figures.py --runs {runs} --rss-runs {rss_runs}` — "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPython "
            f"{sys.version.split()[0]}; the baselines measured in the same run.",
            "",
            "| figure | asyncio daemon | baseline | goal | met |",
            "|---|---|---|---|---|",
            f"| context switches while idle, {idle:g} s (all threads) | "
            f"{figures['switches']:.0f} | {figures['bare_switches']:.0f} (bare `asyncio.run`) "
            f"| 0 | {'yes' if figures['switches'] == 0 else 'no'} |",
            f"| RssAnon (KiB, median of {rss_runs} processes) | {figures['rss']:.0f} | {figures['bare_rss']:.0f} "
            f"(bare `asyncio.run(Event().wait())`) | ≤ +716 KiB | "
            f"{'yes' if extra_kib <= 716 else 'no'} (+{extra_kib:.0f} KiB) |",
            f"| stop: command returned and process gone (ms, median of {runs}) | "
            f"{async_stop:.1f} | {plain_stop:.1f} (the same idle service, plain `main`) | — | "
            f"{async_stop / plain_stop:.2f}× |",
            "",
        ]
    )


def write_section(heading: str, section: str) -> None:
    """Put ``section`` in BENCHMARKS.md in place of the one under ``heading`` (or at the end)."""
    output = REPO / "BENCHMARKS.md"
    text = output.read_text()
    before, found, after = text.partition(heading)
    rest = after.partition("\n## ")
    tail = f"\n## {rest[2]}" if found and rest[1] else ""
    kept = before.rstrip() if found else text.rstrip()
    output.write_text(f"{kept}\n\n{section}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--rss-runs", type=int, default=5)
    options = parser.parse_args()
    figures = idle_figures(options.idle_seconds, options.rss_runs)
    async_stop = stop_latency(ASYNC_SERVICE, options.runs)
    plain_stop = stop_latency(PLAIN_SERVICE, options.runs)
    section = render(
        figures,
        async_stop,
        plain_stop,
        options.runs,
        options.idle_seconds,
        rss_runs=options.rss_runs,
    )
    print(section)
    write_section(HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
