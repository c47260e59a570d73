"""Restarting uvicorn and aiohttp under load: ``ab -c 10`` through 20 back-to-back restarts.

    python3 benchmarks/framework_restart_figures.py [--restarts 20] [--no-write]

Each framework serves a 2-byte answer from an ``async def main`` on
``listen=`` (uvicorn: ``Server.serve(sockets=listeners())``; aiohttp:
``web.SockSite`` on ``listeners()``); the old instance stops by uvicorn's
own SIGTERM handler, or aiohttp's ``await stopped()``.  ``ab -c 10`` (a new connection per request) runs
while ``restart`` runs ``--restarts`` times, each after the previous one
returned; then ``ab`` runs again for as long, without restarts, against the
same service: the baseline, measured in the same run.  For each: requests,
failed requests (with ab's receive errors and exceptions: closes with no
answer and resets), non-2xx answers, old instances SIGKILLed, p50 and p99
latency.

Writes the section "Restarting uvicorn and aiohttp under load" of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from asyncio_figures import environment, write_section

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Restarting uvicorn and aiohttp under load"

SERVICE = """\
from daemonize_deco import daemon
{prelude}

@daemon(pidfile={pidfile!r}, stdout={log!r}, listen=["tcp://127.0.0.1:{port}"])
async def main():
    await serve()

if __name__ == "__main__":
    main()
"""

# The programs, as test_zero_drop runs them too.
UVICORN = """\
import uvicorn
from daemonize_deco import listeners

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

async def serve():
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    await server.serve(sockets=listeners())  # it stops on SIGTERM by itself
"""

AIOHTTP = """\
from aiohttp import web
from daemonize_deco import listeners, stopped

async def hello(request):
    return web.Response(text="ok")

async def serve():
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    for sock in listeners():
        await web.SockSite(runner, sock).start()
    await stopped()
    await runner.cleanup()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ab(port: int, seconds: float | None) -> subprocess.Popen[str]:
    """``ab -c 10``: for ``seconds``, or until SIGINT when None."""
    limit = "3600" if seconds is None else f"{max(1, round(seconds))}"
    argv = ["ab", "-q", "-r", "-c", "10", "-t", limit, "-n", "100000000"]
    return subprocess.Popen(
        [*argv, f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def figures(report: str) -> dict[str, float]:
    def number(label: str) -> float:
        found = re.search(rf"^\s*{label}:?\s+([\d.]+)", report, re.MULTILINE)
        return float(found.group(1)) if found else 0.0  # ab leaves out lines that would say 0

    errors = re.search(
        r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", report
    )
    receive, exceptions = (int(errors.group(2)), int(errors.group(4))) if errors else (0, 0)
    return {
        "requests": number("Complete requests"),
        "failed": number("Failed requests"),
        "resets": receive + exceptions,
        "non_2xx": number("Non-2xx responses"),
        "p50": number("50%"),
        "p99": number("99%"),
    }


def measure(name: str, prelude: str, restarts: int) -> tuple[dict[str, float], dict[str, float]]:
    """(during the restarts, baseline of the same length) for one framework."""
    with tempfile.TemporaryDirectory(prefix="dd-fw-restart-") as scratch:
        port = free_port()
        script = Path(scratch) / f"{name}_service.py"  # not uvicorn.py: it would import itself
        script.write_text(
            SERVICE.format(
                prelude=textwrap.dedent(prelude),
                pidfile=f"{scratch}/{name}.pid",
                log=f"{scratch}/{name}.log",
                port=port,
            )
        )
        env = environment()

        def command(word: str) -> str:
            done = subprocess.run(
                [sys.executable, str(script), word],
                env=env, check=True, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            return done.stdout

        command("start")
        try:
            load = ab(port, None)
            time.sleep(1)  # ab under way before the first restart
            began = time.monotonic()
            said = [command("restart") for _ in range(restarts)]
            length = time.monotonic() - began + 1
            load.send_signal(signal.SIGINT)
            during = figures(load.communicate()[0])
            during["killed"] = sum("killed after" in line for line in said)
            baseline = figures(ab(port, length).communicate()[0])
            baseline["killed"] = 0
        finally:
            command("stop")
    return during, baseline


def render(
    results: dict[str, tuple[dict[str, float], dict[str, float]]], restarts: int, note: str
) -> str:
    lines = [
        HEADING,
        "",
        f"`python3 benchmarks/framework_restart_figures.py --restarts {restarts}` — "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPython "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores; `ab -c 10` (a new connection per "
        "request) on loopback; the baseline is the same service, same length, no restart, "
        "measured in the same run.",
        "",
        "| figure | "
        + " | ".join(f"{n}: {restarts} restarts | {n}: no restart" for n in results)
        + " |",
        "|---|" + "---|---|" * len(results),
    ]
    rows = [
        ("requests", "requests", "{:.0f}"),
        ("failed requests", "failed", "{:.0f}"),
        ("of which resets and read errors (ab: receive, exceptions)", "resets", "{:.0f}"),
        ("non-2xx answers", "non_2xx", "{:.0f}"),
        ("old instances SIGKILLed", "killed", "{:.0f}"),
        ("p50 latency (ms)", "p50", "{:.0f}"),
        ("p99 latency (ms)", "p99", "{:.0f}"),
    ]
    for label, key, form in rows:
        cells = []
        for during, baseline in results.values():
            cells += [form.format(during[key]), form.format(baseline[key])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for key in ("p50", "p99"):
        ratios = ", ".join(
            f"{name} {during[key] / max(baseline[key], 1):.2f}×"
            for name, (during, baseline) in results.items()
        )
        lines.append(f"{key} during the restarts / {key} without: {ratios}.  ")
    lines[-1] = lines[-1].rstrip()
    lines += ["", "(ab reports whole milliseconds.)"]
    if note:
        lines += ["", note]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--note", default="", help="a paragraph after the table (the machine)")
    options = parser.parse_args()
    results = {
        "uvicorn": measure("uvicorn", UVICORN, options.restarts),
        "aiohttp": measure("aiohttp", AIOHTTP, options.restarts),
    }
    section = render(results, options.restarts, options.note)
    print(section)
    if not options.no_write:
        write_section(HEADING, section)
    lost = sum(
        during["failed"] + during["non_2xx"] + during["killed"] for during, _ in results.values()
    )
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
