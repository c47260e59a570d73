"""Errors a program raises: DaemonError is public, raised by programs too.

Before the change, ``DaemonError`` took the arguments of any Exception: a
custom command raising ``DaemonError()`` or a subclass with two arguments
got one line and status 1 from the command line.  The error now takes
exactly one message, and such a raise becomes a TypeError traceback.
"""

from __future__ import annotations

import pytest
from test_hooks import with_hooks

pytestmark = pytest.mark.timeout(60)

RAISING_COMMANDS = """
from daemonize_deco import DaemonError

class ConfigError(DaemonError):
    '''A program's own error, with the key and the value that are wrong.'''
    def __init__(self, key, value):
        super().__init__(key, value)
        self.key, self.value = key, value

@main.command
def bare():
    '''Fail without a message.'''
    raise DaemonError()

@main.command
def check():
    '''Fail with a subclass of two arguments.'''
    raise ConfigError('port', 'x')
"""


@pytest.mark.parametrize("word", ["bare", "check"])
def test_a_custom_command_raising_daemon_error_gets_one_line_and_status_1(make_service, word):
    svc = with_hooks(make_service, RAISING_COMMANDS)
    result = svc.cli(word)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
