"""The import map: forms of import the checker must see.

``tests/test_architecture.py`` reads imports with ``ast`` to check that they
run down the layers.  Each form below runs at import time and makes the
importing module depend on ``_runtime``; a checker that misses one lets a
reverse import (or a daemon module in ``status``) through unseen.
"""

from __future__ import annotations

import ast

import pytest
from test_architecture import _imports

pytestmark = pytest.mark.timeout(30)

FORMS = {
    "from . import": "from . import _runtime\n",
    "from .x import": "from ._runtime import serve\n",
    "from package.x import": "from daemonize_deco._runtime import serve\n",
    "import package.x": "import daemonize_deco._runtime\n",
    "import package.x as y": "import daemonize_deco._runtime as runtime\n",
    "from package import x": "from daemonize_deco import _runtime\n",
    "lazy import package.x": "def f():\n    import daemonize_deco._runtime\n",
    "else of TYPE_CHECKING": "if TYPE_CHECKING:\n    pass\nelse:\n    from . import _runtime\n",
    "importlib": "import importlib\nimportlib.import_module('daemonize_deco._runtime')\n",
}


@pytest.mark.parametrize("form", FORMS)
def test_the_checker_sees_every_form_of_import(form):
    found = _imports(ast.parse(FORMS[form]), top_only=False)
    assert "_runtime" in found, f"{form!r}: the import map does not see {FORMS[form]!r}"
