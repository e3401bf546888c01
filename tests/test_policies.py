"""Eviction policies: who leaves a full tier, and the contract a learner's policy must keep."""

from __future__ import annotations

import pytest

from lazymoe.engine.parts.cache import CacheBook
from lazymoe.engine.parts.policies import FIFO, LFU, LRU, EvictionPolicy, make_policy, policy_name


def run(book: CacheBook, keys) -> list:
    """Look up each key, admitting it on a miss; return the evicted keys in order."""
    evicted = []
    for key in keys:
        if book.lookup(key) is None:
            _, victim = book.admit(key)
            if victim is not None:
                evicted.append(victim)
    return evicted


A, B, C, D = (0, 0), (0, 1), (0, 2), (0, 3)


def test_lru_evicts_the_least_recently_used():
    assert run(CacheBook(2, LRU()), [A, B, A, C]) == [B]


def test_fifo_evicts_the_oldest_insert_even_if_it_was_just_used():
    assert run(CacheBook(2, FIFO()), [A, B, A, C]) == [A]


def test_lfu_evicts_the_least_frequently_used():
    assert run(CacheBook(2, LFU()), [A, A, B, B, B, C, A]) == [A, C]


def test_lfu_breaks_ties_by_recency():
    # A and B are used twice each; A's last use is older, so A goes.
    assert run(CacheBook(2, LFU()), [A, B, A, B, C]) == [A]
    assert run(CacheBook(2, LFU()), [A, B, B, A, C]) == [B]


def test_lfu_forgets_counts_on_eviction():
    policy = LFU()
    run(CacheBook(1, policy), [A, A, A, B, A])
    assert policy.count(A) == 1


@pytest.mark.parametrize("policy", [LRU, LFU, FIFO])
def test_protected_keys_are_never_victims(policy):
    book = CacheBook(2, policy())
    book.admit(A)
    book.admit(B)
    # A would be every policy's victim here; protecting it forces B out.
    _, victim = book.admit(C, protected=frozenset({A}))
    assert victim == B


def test_make_policy_accepts_names_classes_and_instances():
    assert isinstance(make_policy("LRU"), LRU)
    assert isinstance(make_policy(LFU), LFU)
    mine = FIFO()
    assert make_policy(mine) is mine
    assert make_policy("lru") is not make_policy("lru")  # fresh state per call
    assert policy_name(FIFO) == "fifo"


def test_make_policy_rejects_unknown_names_and_objects():
    with pytest.raises(ValueError, match="unknown eviction policy 'mru'"):
        make_policy("mru")
    with pytest.raises(TypeError, match="EvictionPolicy"):
        make_policy(42)
    with pytest.raises(TypeError, match="not an EvictionPolicy"):
        make_policy(lambda: "lru")


def test_a_learners_subclass_drives_the_cache():
    class MostRecentlyUsed(EvictionPolicy):
        name = "mru"

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
            return next(k for k in reversed(self.order) if k not in protected)

    assert run(CacheBook(2, MostRecentlyUsed()), [A, B, A, C]) == [A]


def test_a_policy_without_victim_says_so():
    class Lazy(EvictionPolicy):
        name = "lazy"

    book = CacheBook(1, Lazy())
    book.admit(A)
    with pytest.raises(NotImplementedError, match=r"'lazy'.*victim"):
        book.admit(B)
