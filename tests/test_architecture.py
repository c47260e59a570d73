"""The map of the package, checked: every module in a layer, and imports only run down.

ARCHITECTURE.md describes the layers and the processes; this table declares
them once, and the tests below read every module's imports with ``ast`` (at
the top and inside functions: a lazy import is still a dependency) and fail
when one runs the wrong way.
"""

from __future__ import annotations

import ast
import re

import pytest
from conftest import REPO

pytestmark = pytest.mark.timeout(30)

PACKAGE = REPO / "daemonize_deco"

# Top to bottom: a module may import from its own layer and the layers below.
LAYERS = (
    "face",  # what the user's script imports and calls: @daemon, and the names main uses
    "commands",  # what runs in the user's command: the words, start and run, looking from outside
    "daemon",  # what runs for the service's life: runtime, supervisor, dispatcher, handover
    "service",  # what main calls and the service declares at run time: signals, readiness
    "declarations",  # pure, checked at decoration: hooks, options, addresses, signal names
    "shared",  # what the command and the daemon both read or write: pidfile, sockets, records
    "base",  # OS primitives with no policy, errors, output
)

# The processes a module's code runs in: the user's command (start, stop,
# status, ...; decoration too: a daemon inherits its result through fork),
# the supervisor (restart=), the service (main's process, ``run`` included).
COMMAND, SUPERVISOR, SERVICE = "command", "supervisor", "service"
ALL = frozenset({COMMAND, SUPERVISOR, SERVICE})
CMD = frozenset({COMMAND})
DAEMON = frozenset({SUPERVISOR, SERVICE})

MODULES: dict[str, tuple[str, frozenset[str]]] = {
    "__init__": ("face", ALL),
    "_service": ("face", ALL),
    "_cli": ("commands", CMD),
    "_command_line": ("commands", CMD),
    "_commands": ("commands", CMD),
    "_launch": ("commands", ALL),  # a started daemon begins here, after the fork
    "_status": ("commands", CMD),
    "_probe": ("commands", CMD),
    "_logs": ("commands", CMD),
    "_unit": ("commands", CMD),
    "_kubernetes": ("commands", CMD),
    "_lookup": ("commands", CMD),
    "_managers": ("commands", CMD),
    "_runtime": ("daemon", frozenset({SERVICE})),
    "_supervisor": ("daemon", frozenset({SUPERVISOR})),
    "_workers": ("daemon", frozenset({SUPERVISOR})),  # workers=N: the arbiter, a kind of supervisor
    "_keeper": ("daemon", frozenset({SUPERVISOR})),  # what the supervisor and the arbiter share
    "_phases": ("daemon", frozenset({COMMAND, SUPERVISOR})),  # status reads the record
    "_restart_policy": ("daemon", frozenset({SUPERVISOR})),
    "_signal_path": ("daemon", DAEMON),
    "_dispatch": ("daemon", frozenset({SERVICE})),
    "_delivery": ("daemon", frozenset({SERVICE})),
    "_fork_pause": ("daemon", DAEMON),  # loaded with _health, which a supervisor loads too
    "_watchdog": ("daemon", frozenset({SERVICE})),
    "_health": ("daemon", DAEMON),  # health=: the service answers its probes (its supervisor too)
    "_between_runs": ("daemon", frozenset({SUPERVISOR})),  # health= while the service restarts
    "_reload_relay": ("daemon", frozenset({SUPERVISOR})),
    "_handover": ("daemon", ALL),  # restart takes over what the running instance offers
    "_quiesce": ("daemon", frozenset({SERVICE})),
    "_listening": ("daemon", frozenset({SERVICE})),
    "_listeners": ("daemon", ALL),  # start binds them, every instance holds them
    "_detach": ("daemon", ALL),
    "_config": ("service", ALL),  # checked at decoration; its Service calls main
    "_aio": ("service", frozenset({SERVICE})),
    "_signals": ("service", ALL),  # loaded with the package; acts in the daemon
    "_takeover": ("service", ALL),  # loaded with the package; acts in the service
    "_heartbeat": ("service", ALL),  # loaded with the package; acts in the daemon
    "_ready": ("service", ALL),  # loaded with the package; acts in the service
    "_notify": ("service", ALL),  # loaded with the package; acts in the daemon
    "_worker": ("service", ALL),  # loaded with the package: worker_id()
    "_hooks": ("declarations", CMD),
    "_options": ("declarations", CMD),
    "_addresses": ("declarations", frozenset({COMMAND, SERVICE})),
    "_signal_names": ("declarations", ALL),
    "_pidfile": ("shared", ALL),
    "_looking": ("shared", CMD),  # the holder's side is _pidfile: a daemon carries none of it
    "_beside": ("shared", ALL),
    "_lastrun": ("shared", ALL),
    "_remembered_options": ("shared", ALL),
    "_control": ("shared", ALL),
    "_claim": ("shared", ALL),
    "_startup": ("shared", CMD),  # the starter's end of the startup pipe
    "_mark": ("shared", ALL),
    "_descendants": ("shared", ALL),
    "_served": ("shared", frozenset({COMMAND, SERVICE})),
    "_draining": ("shared", ALL),  # the service writes it, status reads it
    "_proc": ("base", ALL),
    "_platform": ("base", ALL),
    "_platform_resources": ("base", CMD),  # status only: psutil never reaches a daemon
    "_platform_process": ("base", ALL),
    "_platform_polled": ("base", ALL),  # loaded only where there is no pidfd
    "_platform_sockets": ("base", ALL),
    "_platform_descriptors": ("base", ALL),
    "_platform_identity": ("base", ALL),
    "_platform_parent_death": ("base", ALL),
    "_terminate": ("base", ALL),
    "_hygiene": ("base", ALL),
    "_errors": ("base", ALL),
    "_output": ("base", CMD),
}

# Commands that only address a service (status, stop, reload, logs, ...) run
# in _cli and _commands: what those load with them must run in the command.
ADDRESSING = ("__init__", "_service", "_cli", "_commands")


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"


PACKAGE_NAME = "daemonize_deco"
BY_NAME = re.compile(r"_[a-z_]+(?=:[a-z_]+$)")  # "module:function", imported when run
DOTTED = re.compile(r"daemonize_deco\.(_[a-z_]+)$")  # importlib.import_module("daemonize_deco._x")


def _imports(tree: ast.AST, *, top_only: bool) -> set[str]:
    """The package's modules ``tree`` imports, in any of the forms the package could use.

    ``from . import x``, ``from ._x import y``, ``import daemonize_deco._x``,
    ``from daemonize_deco import _x``; and, outside ``top_only``, by name:
    ``__import__(f"{__package__}._x")``, ``import_module("daemonize_deco._x")``
    and the "_x:function" strings of a
    table of commands.  The ``if TYPE_CHECKING:`` branch never runs and is
    left out (its ``else:`` is not); with ``top_only``, so are functions
    (loaded when called).
    """
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if _is_type_checking(node):
            for child in node.orelse:  # type: ignore[attr-defined]
                found |= _imports(ast.Module(body=[child], type_ignores=[]), top_only=top_only)
            continue
        if top_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        found |= _named_here(node, top_only=top_only)
        found |= _imports(node, top_only=top_only)
    return found


def _named_here(node: ast.AST, *, top_only: bool) -> set[str]:  # noqa: PLR0911 -- one per form
    """What ``node`` itself imports (not its children)."""
    if isinstance(node, ast.ImportFrom) and node.level == 1:
        if node.module:
            return {node.module.split(".")[0]}
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        if node.module == PACKAGE_NAME:
            return {alias.name for alias in node.names}
        if (node.module or "").startswith(PACKAGE_NAME + "."):
            return {str(node.module).split(".")[1]}
    if isinstance(node, ast.Import):
        return {
            alias.name.split(".")[1]
            for alias in node.names
            if alias.name.startswith(PACKAGE_NAME + ".")
        }
    if top_only:
        return set()
    if isinstance(node, ast.JoinedStr) and len(node.values) >= 2:
        first, rest = node.values[0], node.values[1]
        if (
            isinstance(first, ast.FormattedValue)
            and ast.unparse(first.value) == "__package__"
            and isinstance(rest, ast.Constant)
            and isinstance(rest.value, str)
            and rest.value.startswith("._")
        ):
            return {rest.value[1:].split(".")[0]}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        match = BY_NAME.match(node.value)
        if match:
            return {match.group()}
        match = DOTTED.match(node.value)
        if match:
            return {match.group(1)}
    return set()


def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")


def _present() -> set[str]:
    return {path.stem for path in PACKAGE.glob("*.py")}


def _graph(*, top_only: bool = False) -> dict[str, set[str]]:
    return {module: _imports(_tree(module), top_only=top_only) - {module} for module in _present()}


def test_every_module_is_in_the_table():
    present = _present()
    assert not present - MODULES.keys(), f"not in the table: {sorted(present - MODULES.keys())}"
    missing = MODULES.keys() - present
    assert not missing, f"in the table, not in the package: {sorted(missing)}"
    assert {layer for layer, _ in MODULES.values()} == set(LAYERS)


def test_imports_run_down_the_layers():
    rank = {name: LAYERS.index(layer) for name, (layer, _) in MODULES.items()}
    upward = [
        f"{module} ({MODULES[module][0]}) imports {imported} ({MODULES[imported][0]})"
        for module, imported_set in sorted(_graph().items())
        for imported in sorted(imported_set)
        if imported in rank and module in rank and rank[imported] < rank[module]
    ]
    assert not upward, "imports run up a layer:\n" + "\n".join(upward)


def test_the_daemon_imports_nothing_of_the_command():
    # A module that runs only in the daemon never reaches for one that runs
    # only in the user's command, lazily or not: the daemon would carry it.
    wrong = [
        f"{module} (daemon only) imports {imported} (command only)"
        for module, imported_set in sorted(_graph().items())
        if MODULES.get(module, ("", ALL))[1].isdisjoint({COMMAND})
        for imported in sorted(imported_set)
        if MODULES.get(imported, ("", ALL))[1] == CMD
    ]
    assert not wrong, "\n".join(wrong)


def test_addressing_a_service_loads_nothing_that_only_the_daemon_runs():
    graph = _graph(top_only=True)
    loaded, todo = set(), list(ADDRESSING)
    while todo:
        module = todo.pop()
        if module not in loaded:
            loaded.add(module)
            todo += graph.get(module, ())
    daemon_only = {name for name in loaded if COMMAND not in MODULES.get(name, ("", ALL))[1]}
    assert not daemon_only, f"status and stop would load {sorted(daemon_only)}"


def test_architecture_names_every_module():
    text = (REPO / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`(_[a-z_]+|__init__)(?:\.py)?`", text))
    unnamed = _present() - named
    assert not unnamed, f"ARCHITECTURE.md does not name {sorted(unnamed)}"
    assert not named - _present(), f"no such module: {sorted(named - _present())}"


def test_architecture_shows_the_layers_of_the_table():
    rows = re.findall(r"^\| (\w+) \|.*\|(.*)\|$", (REPO / "ARCHITECTURE.md").read_text(), re.M)
    shown = {
        module: layer
        for layer, cell in rows
        if layer in LAYERS
        for module in re.findall(r"`(_[a-z_]+|__init__)`", cell)
    }
    assert shown == {module: layer for module, (layer, _) in MODULES.items()}


# The platform seam: only these modules may touch what Linux alone has.
SEAM_PREFIX = "_platform"
SEAM = frozenset({"_proc"})
LINUX_ONLY_NAMES = frozenset({
    "pidfd_open", "pidfd_send_signal", "memfd_create", "MFD_CLOEXEC", "SO_PEERCRED",
    "SOCK_CLOEXEC", "SOCK_NONBLOCK", "MSG_CMSG_CLOEXEC", "setresuid", "setresgid",
    "prctl", "epoll", "sched_getaffinity",
})  # fmt: skip


def _is_seam(module: str) -> bool:
    return module in SEAM or module.startswith(SEAM_PREFIX)


def _linux_only_uses(tree: ast.AST) -> list[str]:
    """What in ``tree`` reaches past the seam: /proc paths, Linux-only calls, abstract names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in LINUX_ONLY_NAMES:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.alias) and node.name in LINUX_ONLY_NAMES:
            found.append(f"imports {node.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            if text.startswith("/proc") or (text.startswith("\0") and len(text) > 1):
                found.append(f"line {node.lineno}: {text[:20]!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left = node.left
            if isinstance(left, ast.Constant) and left.value in ("\0", b"\0"):
                found.append(f"line {node.lineno}: an abstract socket name")
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and str(first.value).startswith("\0"):
                found.append(f"line {node.lineno}: an abstract socket name")
    return found


def test_only_the_seam_touches_what_linux_alone_has():
    reaching = {
        module: uses
        for module in sorted(m for m in _present() if not _is_seam(m))
        if (uses := _linux_only_uses(_tree(module)))
    }
    assert not reaching, f"past the platform seam: {reaching}"
