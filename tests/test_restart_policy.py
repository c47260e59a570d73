"""The restart policy in-process: made-up times, no process, no sleep (``_restart_policy``).

The real supervisor's restarts, with real processes and real delays, are in
test_supervisor.py; these pin the arithmetic at every edge.
"""

from __future__ import annotations

import pytest

from daemonize_deco._config import RestartPolicy
from daemonize_deco._restart_policy import GiveUp, NoRestart, Restart, Restarts, after_run

pytestmark = pytest.mark.timeout(10)


def policy(
    mode: str = "always", delay: float = 0.5, delay_max: float = 30.0, limit=(5, 60.0)
) -> RestartPolicy:
    return RestartPolicy(mode, delay, delay_max, limit)


def crashes(rules: RestartPolicy, ends: list[tuple[float, float]]) -> list[object]:
    """What the policy says after each run, given as (began, ended), one after another."""
    history = Restarts.fresh(rules)
    said: list[object] = []
    for started, now in ends:
        decision = after_run(rules, history, started=started, now=now, failed=True)
        said.append(decision)
        if isinstance(decision, Restart):
            history = decision.history
    return said


def delays(decisions: list[object]) -> list[float | str]:
    return [d.delay if isinstance(d, Restart) else type(d).__name__ for d in decisions]


def test_the_delay_doubles_from_restart_delay():
    rules = policy(delay=0.5, limit=(10, 60.0))
    ends = [(t, t + 0.1) for t in range(8)]  # short runs, one a second
    assert delays(crashes(rules, ends)) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_the_delay_stops_at_its_cap():
    rules = policy(delay=1.0, delay_max=3.0, limit=(10, 60.0))
    assert delays(crashes(rules, [(t, t + 0.1) for t in range(5)])) == [1, 2, 3, 3, 3]


def test_a_zero_delay_stays_zero():
    rules = policy(delay=0, limit=(10, 60.0))
    assert delays(crashes(rules, [(t, t + 0.1) for t in range(4)])) == [0, 0, 0, 0]


def test_more_than_burst_restarts_within_the_window_gives_up():
    rules = policy(limit=(3, 60.0))
    said = crashes(rules, [(t, t + 0.1) for t in range(4)])
    assert delays(said) == [0.5, 1.0, 2.0, "GiveUp"]
    last = said[-1]
    assert isinstance(last, GiveUp) and last.reason == "4 failures within 60s"


def test_restarts_older_than_the_window_no_longer_count():
    rules = policy(delay=0, limit=(2, 10.0))
    # Two restarts at 1 and 2; the third end at 11.5 sees only the one at 2.
    said = crashes(rules, [(0, 1), (1.5, 2), (11, 11.5), (11.6, 11.7)])
    assert delays(said) == [0, 0, 0, "GiveUp"]
    assert isinstance(said[-1], GiveUp) and said[-1].reason == "3 failures within 10s"


def test_a_restart_exactly_interval_ago_still_counts():
    rules = policy(delay=0, limit=(1, 10.0))
    assert delays(crashes(rules, [(0, 1), (1.5, 11)])) == [0, "GiveUp"]


def test_a_run_longer_than_the_interval_starts_afresh():
    rules = policy(delay=1.0, limit=(2, 10.0))
    said = crashes(rules, [(0, 1), (2, 3), (4, 15), (15.1, 15.2)])
    # The third run lasted 11 s > 10 s: its end counts as the first, at the first delay.
    assert delays(said) == [1.0, 2.0, 1.0, 2.0]


def test_a_run_of_exactly_the_interval_does_not_start_afresh():
    rules = policy(delay=1.0, limit=(5, 10.0))
    assert delays(crashes(rules, [(0, 1), (2, 12)])) == [1.0, 2.0]


def test_burst_zero_gives_up_at_the_first_failure():
    said = crashes(policy(limit=(0, 60.0)), [(0, 1)])
    assert isinstance(said[0], GiveUp) and said[0].reason == "1 failures within 60s"


@pytest.mark.parametrize(("mode", "restarts"), [("on-failure", False), ("always", True)])
def test_a_clean_end_is_restarted_only_with_always(mode, restarts):
    rules = policy(mode)
    decision = after_run(rules, Restarts.fresh(rules), started=0, now=1, failed=False)
    assert isinstance(decision, Restart if restarts else NoRestart)


def test_the_policy_keeps_nothing_of_its_own():
    rules = policy(limit=(1, 60.0))
    fresh = Restarts.fresh(rules)
    first = after_run(rules, fresh, started=0, now=1, failed=True)
    again = after_run(rules, fresh, started=0, now=1, failed=True)
    assert isinstance(first, Restart) and isinstance(again, Restart)  # the same answer twice
    assert fresh.times == () and fresh.delay == 0.5
    assert first.history.times == (1,) and first.history.delay == 1.0
