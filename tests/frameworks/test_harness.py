"""The framework suite's own footing: the pinned frameworks are installed and import."""

from __future__ import annotations

import importlib

import pytest
from frameworks_helpers import FRAMEWORKS

pytestmark = pytest.mark.frameworks


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_the_pinned_framework_is_installed(name: str) -> None:
    importlib.import_module(name)
