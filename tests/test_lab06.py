"""lab06's checks: a correct LRU and a good policy pass; typical mistakes get a specific message."""

from __future__ import annotations

from lazymoe.engine.parts.policies import FIFO, LFU, LRU, EvictionPolicy
from lazymoe.exercises.lab06 import check_lru, check_policy, zipf_trace


class ListLRU(EvictionPolicy):
    """A learner's LRU: a list, most recent at the end."""

    name = "my-lru"

    def __init__(self):
        self.order = []

    def on_hit(self, key):
        self.order.remove(key)
        self.order.append(key)

    def on_insert(self, key):
        self.order.append(key)

    def on_evict(self, key):
        self.order.remove(key)

    def victim(self, resident, protected):
        return next(k for k in self.order if k not in protected)


class ForgetsHits(ListLRU):
    def on_hit(self, key):
        pass


class IgnoresProtected(ListLRU):
    def victim(self, resident, protected):
        return self.order[0]


class MostRecent(ListLRU):
    def victim(self, resident, protected):
        return next(k for k in reversed(self.order) if k not in protected)


class RememberingLFU(EvictionPolicy):
    """Counts every use of a key, and keeps counting after it leaves (a learner's policy)."""

    name = "lfu-remember"

    def __init__(self):
        self.count, self.last, self.clock = {}, {}, 0

    def on_hit(self, key):
        self.clock += 1
        self.count[key] = self.count.get(key, 0) + 1
        self.last[key] = self.clock

    on_insert = on_hit

    def victim(self, resident, protected):
        unprotected = (k for k in resident if k not in protected)
        return min(unprotected, key=lambda k: (self.count[k], self.last[k]))


class Starter(EvictionPolicy):
    """The notebook's starter: every hook empty, victim() not written yet."""

    name = "mine"

    def victim(self, resident, protected):
        return None


def test_a_correct_lru_passes():
    assert check_lru(ListLRU).passed
    assert check_lru(LRU).passed


def test_nothing_written_yet_is_not_started():
    assert "returned None" in check_lru(None).message
    assert "returned None" in check_lru(Starter).message
    assert "returned None" in check_policy(Starter, zipf_trace(), n_slots=4).message


def test_an_lru_that_ignores_hits_is_told_it_is_fifo():
    result = check_lru(ForgetsHits)
    assert not result.passed and "like FIFO" in result.message
    assert "like FIFO" in check_lru(FIFO).message


def test_lfu_is_told_it_counts_uses():
    assert "counts uses" in check_lru(LFU).message


def test_evicting_a_protected_key_names_the_rule():
    result = check_lru(IgnoresProtected)
    assert not result.passed and "protected" in result.message


def test_other_mistakes_point_at_the_first_wrong_eviction():
    result = check_lru(MostRecent)
    assert not result.passed and "at access" in result.message and "LRU evicts" in result.message


def test_check_policy_compares_with_lru_and_the_optimum():
    trace = zipf_trace(tokens=150, seed=3)
    good = check_policy(RememberingLFU, trace, n_slots=6)  # popularity persists: counting wins
    assert good.passed and "gap between LRU and the optimum" in good.message
    bad = check_policy(MostRecent, trace, n_slots=6)
    assert not bad.passed and "below LRU" in bad.message
    assert not check_policy(IgnoresProtected, trace, n_slots=6).passed
