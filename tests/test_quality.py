"""The code stays ruff-clean, formatted and mypy --strict clean."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.linux_only("static checks of the code, not its behaviour: run once, on Linux"),
]


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]],
    ids=["ruff", "ruff-format", "mypy"],
)
def test_static_checks(command):
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
