"""The sync's CRM-neutral rules on their own: what a run searches for changes (around our own
writes), and which changes a frequent run defers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from pql.config import HubSpotTarget
from pql.crm.ledger import (
    CLOCK_SKEW,
    EXCLUDE_FROM,
    Since,
    desired_values,
    material,
    next_ours,
)
from tests.conftest import scores_frame

T = datetime(2026, 11, 2, 9, tzinfo=UTC)


def _at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


def test_the_search_goes_around_our_writes_and_no_further_back_than_its_start():
    assert Since(T).gaps() == [(T, None)]
    ours = ((_at(2), _at(3)), (_at(-9), _at(-8)), (_at(5), _at(6)))
    assert Since(T, ours).gaps() == [(T, _at(2)), (_at(3), _at(5)), (_at(6), None)]
    assert Since(T, ((_at(-1), _at(1)),)).gaps() == [(_at(1), None)]


def test_the_next_run_searches_around_large_writes_it_still_looks_back_on():
    started = _at(10)
    big, small = (_at(10.5), _at(11)), (_at(10.5), _at(10.6))
    assert next_ours(None, started, big, EXCLUDE_FROM) == [big]
    assert next_ours(None, started, small, EXCLUDE_FROM - 1) == []  # read again: part of a page
    old, recent = (_at(-20), _at(-19)), (started - CLOCK_SKEW, _at(6))
    since = Since(_at(-30), (old, recent))
    assert next_ours(since, started, None, 0) == [recent]
    older = (_at(7), _at(8))
    assert next_ours(Since(_at(0), (recent, older)), started, big, 500) == [older, big]


def test_a_frequent_run_writes_flag_flips_and_large_moves_only():
    target = HubSpotTarget(kind="hubspot")
    ledger = desired_values(
        pd.concat([scores_frame(["a@x.io"], 70), scores_frame(["b@x.io"], 30)]), target
    )
    now = desired_values(
        pd.concat([scores_frame([e], s) for e, s in
                   [("a@x.io", 79), ("b@x.io", 60), ("c@x.io", 9), ("d@x.io", 10),
                    ("e@x.io", 55)]]),
        target,
    )  # fmt: skip
    write, later = material(now, ledger, target, 10)
    assert list(write["email"]) == ["b@x.io", "d@x.io", "e@x.io"]  # flips; new from score 0
    assert list(later["email"]) == ["a@x.io", "c@x.io"]
    write, later = material(now, None, target, 10)  # no ledger: everyone is new
    assert list(later["email"]) == ["c@x.io"]


def test_flagged_at_is_when_the_crm_first_held_the_qualification_flagged():
    """Kept for the same qualification (even through an un-flag), the write's CRM time when
    it first flags a qualification, none for who never was: the weekly report counts the
    pipeline's latency from it."""
    from pql.crm.ledger import flagged_at

    q1, q2 = _at(-90).isoformat(), _at(-5).isoformat()
    before = pd.DataFrame({"email": ["kept@a.io", "new@a.io", "off@a.io", "again@a.io"],
                           "pql_flag": ["true", "false", "true", "false"],
                           "pql_qualified_at": [q1, "", q1, q1],
                           "flagged_at": [_at(-60).isoformat(), None, _at(-30).isoformat(),
                                          _at(-80).isoformat()]})  # fmt: skip
    fresh = pd.DataFrame({"email": ["kept@a.io", "new@a.io", "off@a.io", "again@a.io",
                                    "first@a.io"],
                          "pql_flag": ["true", "true", "false", "true", "true"],
                          "pql_qualified_at": [q1, q2, q1, q2, q2],
                          "synced_at": _at(1), "modified_at": [None, _at(0).isoformat(), None,
                                                               None, None]})  # fmt: skip
    got = flagged_at(before, fresh, "email", "pql_flag", "pql_qualified_at")
    assert list(got) == [_at(-60).isoformat(), _at(0).isoformat(), _at(-30).isoformat(),
                         _at(1).isoformat(), _at(1).isoformat()]  # fmt: skip
