"""daemonize_deco at a base revision beside the working tree, alternating, in one run.

    python3 benchmarks/compare.py --base REV [--runs 20]

Absolute figures move from machine to machine (the interpreter's own start-up
differs by half between two of ours), so "no figure worse by more than 10 %"
is checked here: the same service (benchmarks/peers/ours.py) started,
measured idle and stopped under the base revision (a temporary git worktree)
and under the working tree, one after the other (each first every other
time), ``--runs`` times, with the
interpreter of benchmarks/.venv (make it with benchmarks/run.py).  Writes the
table as the last section of BENCHMARKS.md, which run.py keeps.
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

from run import COMPARE_HEADING, PEERS_DIR, REPO, VENV

FIGURES = {
    "start": "start returns (ms)",
    "start_default": "start returns, default readiness: wait_ready=False (ms)",
    "stop": "stop: command returned and process gone (ms)",
    "rss": "idle daemon's RssAnon (KiB)",
}


def env_for(tree: Path, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(
        PYTHONPATH=f"{PEERS_DIR}{os.pathsep}{tree}",
        BENCH_PIDFILE=str(folder / "bench.pid"),
        BENCH_LOG=str(folder / "bench.log"),
        BENCH_MODE="idle",
    )
    return env


def rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError(f"no RssAnon for pid {pid}")


def wait_until_idle(log: Path) -> None:
    deadline = time.monotonic() + 10
    while "tick" not in (log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline:
            raise RuntimeError("the service never printed its first line")
        time.sleep(0.01)


def measure_once(python: str, tree: Path, into: dict[str, list[float]]) -> None:
    with tempfile.TemporaryDirectory(prefix="dd-compare-") as scratch:
        folder = Path(scratch)
        env = env_for(tree, folder)
        argv = [python, str(PEERS_DIR / "ours.py")]
        started = time.perf_counter()
        result = subprocess.run([*argv, "start"], env=env, capture_output=True, text=True)
        into["start"].append((time.perf_counter() - started) * 1000)
        if result.returncode != 0:
            raise RuntimeError(f"start failed under {tree}: {result.stderr}")
        pid = int(result.stdout.split("(pid ")[1].split(")")[0])
        wait_until_idle(folder / "bench.log")
        into["rss"].append(rss_anon_kib(pid))
        started = time.perf_counter()
        subprocess.run([*argv, "stop"], env=env, capture_output=True, check=True)
        into["stop"].append((time.perf_counter() - started) * 1000)
        # The same loop with the default readiness (the first should_stop() call).
        default = [python, str(PEERS_DIR / "ours_default.py")]
        started = time.perf_counter()
        subprocess.run([*default, "start"], env=env, capture_output=True, check=True)
        into["start_default"].append((time.perf_counter() - started) * 1000)
        subprocess.run([*default, "stop"], env=env, capture_output=True, check=True)


def render(base: str, results: dict[str, dict[str, list[float]]], runs: int) -> str:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        COMPARE_HEADING,
        "",
        f"`python3 benchmarks/compare.py --base {base} --runs {runs}` — "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: the working tree (at {head}) "
        f"against {base}, alternating run by run (and which goes first) on the same machine; medians.",
        "",
        "The tables above move with the machine (both revisions measure alike on the same one);",
        "this one tells what the change itself costs. More than +10 % on a figure is a regression.",
        "",
        "| figure | base | this tree | change |",
        "|---|---|---|---|",
    ]
    for key, label in FIGURES.items():
        old = statistics.median(results["base"][key])
        new = statistics.median(results["tree"][key])
        lines.append(f"| {label} | {old:.1f} | {new:.1f} | {(new / old - 1) * 100:+.1f} % |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a git revision to compare against")
    parser.add_argument("--runs", type=int, default=20)
    options = parser.parse_args()
    python = str(VENV / "bin" / "python")
    if not Path(python).exists():
        parser.error("no benchmarks/.venv: run benchmarks/run.py once first")
    results: dict[str, dict[str, list[float]]] = {
        who: {key: [] for key in FIGURES} for who in ("base", "tree")
    }
    with tempfile.TemporaryDirectory(prefix="dd-base-") as scratch:
        worktree = Path(scratch) / "base"
        subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "worktree",
                "add",
                "--detach",
                "-q",
                str(worktree),
                options.base,
            ],
            check=True,
        )
        try:
            # Which goes first alternates too: the second of a pair measured
            # consistently slower here (+9 % for the same code at the same revision).
            pair = [(worktree, results["base"]), (REPO, results["tree"])]
            for run in range(options.runs):
                for tree, into in pair if run % 2 == 0 else reversed(pair):
                    measure_once(python, tree, into)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)])
    section = render(options.base, results, options.runs)
    print(section)
    output = REPO / "BENCHMARKS.md"
    before, found, after = output.read_text().partition(COMPARE_HEADING)
    # Sections after this one (benchmarks/asyncio_figures.py's) are kept.
    later = after.partition("\n## ")
    tail = f"\n## {later[2]}" if found and later[1] else ""
    output.write_text(f"{before.rstrip()}\n\n{section}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
