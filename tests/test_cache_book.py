"""CacheBook: slots, hits and misses per layer, evictions, and the errors a learner can act on."""

from __future__ import annotations

import pytest

from lazymoe.engine.parts.cache import CacheBook, CacheFullError
from lazymoe.engine.parts.policies import EvictionPolicy, PolicyError


def test_slots_are_handed_out_until_full_then_reused():
    book = CacheBook(2, "lru", tier="vram")
    assert book.admit((0, 5)) == (0, None)
    assert book.admit((1, 3)) == (1, None)
    slot, evicted = book.admit((2, 7))
    assert evicted == (0, 5) and slot == 0
    assert book.slot_of((2, 7)) == 0 and book.slot_of((0, 5)) is None
    assert len(book) == 2 and book.n_free == 0


def test_lookup_counts_hits_and_misses_per_layer():
    book = CacheBook(4, "lru")
    book.lookup((0, 1))
    book.admit((0, 1))
    book.lookup((0, 1))
    book.lookup((1, 2))
    stats = book.stats
    assert (stats.hits, stats.misses) == (1, 2)
    assert stats.hits_per_layer[0] == 1 and stats.misses_per_layer[1] == 1
    assert stats.hit_rate == pytest.approx(1 / 3)
    assert stats.layer_hit_rate(0) == pytest.approx(0.5)
    assert stats.as_dict()["per_layer"][1]["misses"] == 1


def test_slot_of_is_a_peek_that_counts_nothing():
    book = CacheBook(1, "lru")
    book.admit((0, 0))
    assert book.slot_of((0, 0)) == 0
    assert book.stats.lookups == 0


def test_evictions_are_counted_under_the_victims_layer():
    book = CacheBook(1, "fifo")
    book.admit((3, 0))
    book.admit((5, 0))
    assert book.stats.evictions_per_layer == {3: 1}


def test_admitting_a_resident_key_changes_nothing():
    book = CacheBook(1, "lru")
    book.admit((0, 0))
    assert book.admit((0, 0)) == (0, None)
    assert book.stats.evictions == 0


def test_remove_frees_the_slot_without_counting_an_eviction():
    book = CacheBook(1, "lru")
    book.admit((0, 0))
    book.remove((0, 0))
    assert book.n_free == 1 and book.stats.evictions == 0
    with pytest.raises(KeyError, match="does not hold expert"):
        book.remove((0, 0))


@pytest.mark.parametrize("n_slots", [0, -1, 2.5])
def test_n_slots_must_be_positive(n_slots):
    with pytest.raises(ValueError, match="n_slots must be a positive integer"):
        CacheBook(n_slots, "lru")


def test_a_tier_full_of_protected_experts_says_it_is_too_small():
    book = CacheBook(2, "lru", tier="vram")
    book.admit((0, 0))
    book.admit((0, 1))
    with pytest.raises(CacheFullError, match=r"'vram' has 2 slots.*at least top_k"):
        book.admit((0, 2), protected=frozenset({(0, 0), (0, 1)}))


class ReturnsThis(EvictionPolicy):
    name = "stubborn"

    def __init__(self, key):
        self.key = key

    def victim(self, resident, protected):
        return self.key


def test_a_victim_that_is_not_resident_is_an_error_naming_the_policy():
    book = CacheBook(1, ReturnsThis((9, 9)))
    book.admit((0, 0))
    with pytest.raises(PolicyError, match=r"'stubborn'.*does not hold it"):
        book.admit((0, 1))


def test_a_protected_victim_is_an_error_naming_the_policy():
    book = CacheBook(2, ReturnsThis((0, 0)))
    book.admit((0, 0))
    book.admit((0, 1))
    with pytest.raises(PolicyError, match=r"'stubborn'.*protected"):
        book.admit((0, 2), protected=frozenset({(0, 0)}))


def test_reset_stats_keeps_the_contents():
    book = CacheBook(1, "lru")
    book.admit((0, 0))
    book.lookup((0, 0))
    book.reset_stats()
    assert book.stats.lookups == 0 and (0, 0) in book


def test_a_victim_of_none_says_victim_is_not_written():
    book = CacheBook(1, ReturnsThis(None))
    book.admit((0, 0))
    with pytest.raises(PolicyError, match=r"returned None from victim\(\)"):
        book.admit((0, 1))
