"""A pytest plugin: run the suite as if on macOS or FreeBSD (``--simulate-platform``).

The processes the tests start load ``tests/simulated_platform/sitecustomize.py``,
which takes away what that platform lacks (see its docstring).  The pytest
process itself stays Linux: the tests look from outside through ``/proc``.
Tests of a Linux-only promise carry ``@pytest.mark.linux_only("why")`` and
are skipped in a simulated run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SIMULATION = Path(__file__).resolve().parent / "simulated_platform"
VARIABLE = "DAEMONIZE_DECO_SIMULATE"
PLATFORMS = ("darwin", "freebsd14")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--simulate-platform",
        choices=PLATFORMS,
        default=None,
        help="run the processes under test with macOS's or FreeBSD's handicaps",
    )


def simulated() -> str | None:
    """The platform this run simulates, or None on plain Linux."""
    return os.environ.get(VARIABLE) or None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "linux_only(reason): a promise only Linux keeps")
    platform = config.getoption("--simulate-platform")
    if platform is None:
        os.environ.pop(VARIABLE, None)
        return
    os.environ[VARIABLE] = platform
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SIMULATION), path]))


def pytest_report_header(config: pytest.Config) -> str | None:
    platform = simulated()
    return (
        None if platform is None else f"simulated platform: {platform} (tests/simulated_platform)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    platform = simulated()
    if platform is None:
        return
    for item in items:
        marker = item.get_closest_marker("linux_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else "Linux only"
            item.add_marker(pytest.mark.skip(reason=f"Linux only: {reason}"))
