"""The client-side budget spreads calls to stay inside every window."""

from pql.http import Budget


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_budget_waits_for_the_hourly_and_per_second_windows():
    clock = FakeClock()
    budget = Budget([(60, 3600.0), (3, 1.0)], clock=clock, sleep=clock.sleep)
    stamps = []
    for _ in range(65):
        budget.acquire()
        stamps.append(clock.now)
    for i in range(len(stamps)):
        in_second = [t for t in stamps if stamps[i] <= t < stamps[i] + 1.0]
        in_hour = [t for t in stamps if stamps[i] <= t < stamps[i] + 3600.0]
        assert len(in_second) <= 3 and len(in_hour) <= 60
    assert stamps[60] >= 3600.0  # the 61st call waited for the hour to roll
    assert stamps[2] == 0.0 and stamps[3] == 1.0


def test_a_shared_budget_counts_the_calls_of_every_process(tmp_path):
    """Two budgets on one file (two processes: an intraday run and a backfill) share the hour;
    a caller that may not wait long is told how long instead of sleeping."""
    import pytest

    from pql.http import Budget, BudgetSpent

    now = [1_000.0]
    slept = []
    shared = tmp_path / "budget.log"

    def make(limit):
        return Budget([(limit, 3600.0)], clock=lambda: now[0], sleep=slept.append, shared=shared)

    backfill, fresh = make(2), make(3)
    backfill.acquire()
    fresh.acquire()
    assert len(shared.read_text().split()) == 2
    with pytest.raises(BudgetSpent) as spent:
        fresh.acquire()  # the third slot of the hour is fresh's own
        fresh.acquire(max_wait=60)
    assert spent.value.wait == pytest.approx(3600.0)
    now[0] += 3600.0
    assert backfill.acquire() == 0.0 and slept == []
