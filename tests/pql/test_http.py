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
