"""Who runs this command, and whether it wants the service in the foreground.

A process manager watches the process it started.  A ``start`` that forks
away from it looks dead: supervisord, runit and s6 start it again, find it
"already running" and loop; a container's init ends the container, and the
daemon with it.  Under one, ``start`` stays in the foreground (acts as
``run``); anywhere else it detaches.

An orphan is re-parented to PID 1 (or to the nearest child subreaper), so
"my parent is PID 1" cannot tell "init started me as its service" from "the
shell that started me has exited" (``setsid -f``, ``( ... & )``, ``nohup
... &``, an entrypoint script's line).  So a parent counts as the manager
only when it is one by name, and, for inits (PID 1 or a subreaper, which
adopt orphans), only when this process is the first of its living children:
an init starts one command; whatever it adopts comes later.  Inits that run
many services (systemd, sysvinit) never count: their child is as likely an
orphan as a service.

A shell between the manager and this process (``command=sh -c "..."``, a
run script without ``exec``) gets the manager's signals instead of the
service: that is said in a warning, and the service stops when the shell
does (``_hygiene.die_with_parent``).  Under a container's init (or as its
PID 1) a shell is an entrypoint script, after which the container goes on,
unless its ``-c`` command is this one command and nothing else.

Seen from outside (:func:`manager_of`), the same questions tell ``restart``
that the running instance is a manager's child, which only the manager may
restart.

The parent's name, its children and another process's environment come from
/proc (``_proc``).  Where the parent cannot be seen (no /proc: macOS,
FreeBSD) only what this process itself has tells: ``NOTIFY_SOCKET``
(systemd), being PID 1 (a container), ``SUPERVISOR_ENABLED`` (supervisord:
counted without seeing the parent, so a descendant of a supervised program
that runs ``start`` stays in the foreground too) and a network socket on
stdin (inetd).  runit, s6, daemontools and container inits are not
recognised by name there: their run scripts say ``run``.  Nor is a
manager's child recognised from outside: ``restart`` restarts it.
"""

from __future__ import annotations

import os
import stat

from ._proc import (
    BADGE_LINK,
    cgroup_path,
    command_line,
    environment,
    fd_targets,
    first_living_child,
    read_stat,
    working_directory,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Manager", "manager_of", "running_under", "runs_one_command"]

_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "busybox"})

# Inits that start one command and watch it: a container's PID 1 (``docker run
# --init`` is tini as docker-init; podman's is catatonit), or a subreaper (``tini -s``).
_INITS = frozenset({"tini", "tini-static", "dumb-init", "docker-init", "catatonit"})

# Supervisors that run one service each, from its directory (their working
# directory): the name to say, and their own restart command.
_SUPERVISORS = {
    "runsv": ("runsv", "sv restart {}"),  # runit
    "s6-supervise": ("s6-supervise", "s6-svc -r {}"),
    "supervise": ("supervise", "svc -t {}"),  # daemontools
}

_CONTAINER = "restart the container"  # what restart says instead, in a container


class Manager:
    """A process manager that started the service's command and watches it.

    ``restart`` is what to do instead of this library's ``restart`` (the
    manager's own command); ``init``: a container's init, which ends the
    container with its one command; ``shell`` is the pid of a shell standing
    between the manager and the service, ``warning`` what to say about it.
    """

    __slots__ = ("init", "name", "restart", "shell", "warning")

    def __init__(self, name: str, restart: str, *, init: bool = False) -> None:
        self.name = name
        self.restart = restart
        self.init = init
        self.shell: int | None = None
        self.warning: str | None = None

    def __repr__(self) -> str:
        return f"Manager({self.name!r}, shell={self.shell})"


class _Process:
    """Another process as /proc shows it: its parent and its command line."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        found = read_stat(pid)
        self.ppid = 0 if found is None else found.ppid
        self.words = command_line(pid)
        self.program = os.path.basename(self.words[0]) if self.words else ""

    def is_supervisord(self) -> bool:
        """supervisord, also run as ``python -m supervisor.supervisord``."""
        return any(
            os.path.basename(word) == "supervisord" or word == "supervisor.supervisord"
            for word in self.words[:4]
        )


def runs_one_command(words: list[str]) -> bool:
    """A shell's command line: ``sh -c '...'`` whose command is one simple command.

    Nothing comes after it: the shell only waits for it.  Redirections
    (``2>&1``) belong to the command; any other ``&``, ``|``, ``;``, a
    newline, a subshell or a command substitution may start another.
    """
    script = _shell_command(words)
    if script is None:
        return False
    for redirection, plain in ((">&", ">"), ("<&", "<"), ("&>", ">")):
        script = script.replace(redirection, plain)
    return not any(mark in script for mark in ";&|\n`(")


def running_under() -> Manager | None:
    """The manager that started this very command to watch it; None: nobody, detach.

    ``NOTIFY_SOCKET`` is systemd's word to its main process (the service
    removes it from its children's environment); ``SUPERVISOR_ENABLED``
    counts only with supervisord as the parent (every descendant of a
    supervised program inherits it).  A socket on stdin is inetd's (or
    systemd's ``Accept=yes``) connection, served in the foreground.
    """
    if os.environ.get("NOTIFY_SOCKET"):
        return Manager("systemd Type=notify", "use systemctl restart (the unit)")
    found = _watching(os.getpid(), os.getppid(), os.environ)
    if found is None and read_stat(os.getppid()) is None:
        found = _told_by_environment(os.environ)  # no /proc: the parent cannot be seen
    if found is None and _stdin_is_a_socket():
        return Manager("a super-server (stdin is a network socket)", "")
    return found


def _told_by_environment(environ: Mapping[str, str]) -> Manager | None:
    """The manager this process's own environment names, when the parent cannot be seen."""
    if environ.get("SUPERVISOR_ENABLED"):
        return Manager("supervisord", f"use supervisorctl restart {_supervisord_name(environ)}")
    return None


def manager_of(pid: int) -> Manager | None:
    """The manager that runs the service ``pid`` in the foreground; None for a detached daemon.

    A detached daemon wears a group badge (``_detach.wear_group_badge``) and
    has left whoever started it; ``run`` (or ``start`` acting as ``run``)
    never does.  Another user's process shows neither its descriptors nor its
    environment unless we are root: then we could not restart it either.
    """
    if any(target.startswith(BADGE_LINK) for target in fd_targets(pid)):
        return None
    environ = environment(pid)
    found = read_stat(pid)
    if found is None:
        return None
    if environ.get("NOTIFY_SOCKET") or (
        environ.get("INVOCATION_ID") and _Process(found.ppid).program == "systemd"
    ):
        return Manager("systemd", f"use {_systemctl_restart(pid)}")
    return _watching(pid, found.ppid, environ)


def _watching(pid: int, ppid: int, environ: Mapping[str, str]) -> Manager | None:
    """The manager watching process ``pid``, whose parent is ``ppid``."""
    if pid == 1:
        # Nobody to detach to: the kernel ends the namespace when PID 1 exits.
        return Manager("PID 1 of a container", _CONTAINER, init=True)
    parent = _Process(ppid)
    found = _watcher(parent, pid, environ)
    if found is None and parent.program in _SHELLS:
        found = _through_shell(parent, pid, environ)
    return found


def _watcher(process: _Process, child: int, environ: Mapping[str, str]) -> Manager | None:
    """``process`` as the manager of its ``child``, if it is one."""
    if process.is_supervisord() and environ.get("SUPERVISOR_ENABLED"):
        return Manager("supervisord", f"use supervisorctl restart {_supervisord_name(environ)}")
    if process.program in _SUPERVISORS:
        name, restart = _SUPERVISORS[process.program]
        return Manager(name, f"use {restart.format(_cwd(process.pid))}")
    if process.program in _INITS and first_living_child(process.pid) == child:
        return Manager(process.program, _CONTAINER, init=True)
    return None


def _through_shell(shell: _Process, child: int, environ: Mapping[str, str]) -> Manager | None:
    """The manager of ``shell``, when the shell only runs ``child`` for it."""
    found: Manager | None
    if shell.pid == 1:
        found = Manager("a shell as PID 1 of a container", _CONTAINER, init=True)
        found.warning = (
            f"PID 1 is a shell ({shell.program}), which passes no signal on: "
            "put exec before the command, or run it under an init (docker run --init)"
        )
    else:
        found = _watcher(_Process(shell.ppid), shell.pid, environ)
        if found is None:
            return None
        found.warning = (
            f"{found.name} runs this command through a shell (pid {shell.pid}, {shell.program}) "
            f"that does not exec it: {found.name}'s signals reach the shell, not the service; "
            "put exec before the command (the service stops when that shell exits)"
        )
    if found.init and not (
        runs_one_command(shell.words) and first_living_child(shell.pid) == child
    ):
        return None  # an entrypoint script, which goes on once start returns
    found.shell = shell.pid
    return found


def _shell_command(words: list[str]) -> str | None:
    """The command string of ``sh -c '...'`` (``-ec``, ``-lc`` too); None for a script file."""
    with_c = False
    for word in words[1:]:
        if word == "--":
            continue
        if word.startswith(("-", "+")):
            with_c = with_c or (word[0] == "-" and "c" in word)
            continue
        return word if with_c else None
    return None


def _supervisord_name(environ: Mapping[str, str]) -> str:
    """The program's name as supervisorctl takes it: ``group:name`` in a group of its own."""
    name = environ.get("SUPERVISOR_PROCESS_NAME", "NAME")
    group = environ.get("SUPERVISOR_GROUP_NAME", name)
    return name if group == name else f"{group}:{name}"


def _cwd(pid: int) -> str:
    """The service directory a supervisor runs in (runsv and s6-supervise chdir into it)."""
    return working_directory(pid) or "DIR"


def _systemctl_restart(pid: int) -> str:
    """``systemctl restart UNIT`` for the unit whose cgroup holds ``pid``."""
    parts = cgroup_path(pid).split("/")
    units = [part for part in parts if part.endswith(".service")]
    user = " --user" if any(part.startswith("user@") for part in parts[:-1]) else ""
    return f"systemctl{user} restart {units[-1] if units else 'UNIT'}"


def _stdin_is_a_socket() -> bool:
    """Stdin is an internet socket: inetd's or systemd's (``Accept=yes``) connection.

    Unix-domain sockets do not count: sshd and job runners hand commands
    socketpairs for their standard streams.
    """
    try:
        if not stat.S_ISSOCK(os.fstat(0).st_mode):
            return False
        import _socket  # noqa: PLC0415 -- loaded by then, via _control

        probe = _socket.socket(fileno=os.dup(0))  # reads SO_DOMAIN
    except OSError:
        return False
    try:
        return probe.family in (_socket.AF_INET, _socket.AF_INET6)
    finally:
        probe.close()
