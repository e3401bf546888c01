"""CacheBook: which experts one cache tier holds, in which slot, and how often it was right.

One tier (the VRAM pool, the pinned-RAM pool) is a fixed number of equal slots, each able to hold
one expert's weights. The book only keeps the map key -> slot and the counts; whoever owns the
device buffers (the engine runtime) copies bytes into the slot number the book hands out. So the
book never touches a tensor and runs the same in a simulation as in the engine.

    book = CacheBook(n_slots=18, policy="lru", tier="vram")
    slot = book.lookup((layer, expert))          # a hit returns the slot; a miss returns None
    if slot is None:
        slot, evicted = book.admit((layer, expert), protected=frozenset(needed_now))
        # copy the expert's bytes into slot `slot`; `evicted` (or None) no longer lives there

    hit rate = hits / (hits + misses)            # per layer and in total, in `book.stats`
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from lazymoe.engine.parts.policies import (
    EvictionPolicy,
    ExpertKey,
    PolicyError,
    PolicyLike,
    make_policy,
)


class CacheFullError(RuntimeError):
    """Every slot holds a protected expert: the tier is too small for one layer's top-k."""


def _per_layer() -> defaultdict[int, int]:
    return defaultdict(int)


@dataclass
class TierStats:
    """Counts for one tier, per layer. Totals and rates are properties.

    hit_rate = hits / (hits + misses)   (0.0 before the first lookup)
    """

    tier: str
    hits_per_layer: defaultdict[int, int] = field(default_factory=_per_layer)
    misses_per_layer: defaultdict[int, int] = field(default_factory=_per_layer)
    evictions_per_layer: defaultdict[int, int] = field(
        default_factory=_per_layer
    )  # by victim's layer

    @property
    def hits(self) -> int:
        return sum(self.hits_per_layer.values())

    @property
    def misses(self) -> int:
        return sum(self.misses_per_layer.values())

    @property
    def evictions(self) -> int:
        return sum(self.evictions_per_layer.values())

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def layer_hit_rate(self, layer: int) -> float:
        """Hit rate of one layer's lookups (0.0 if that layer was never looked up)."""
        hits, misses = self.hits_per_layer.get(layer, 0), self.misses_per_layer.get(layer, 0)
        return hits / (hits + misses) if hits + misses else 0.0

    @property
    def layers(self) -> list[int]:
        return sorted(set(self.hits_per_layer) | set(self.misses_per_layer))

    def reset(self) -> None:
        self.hits_per_layer.clear()
        self.misses_per_layer.clear()
        self.evictions_per_layer.clear()

    def as_dict(self) -> dict:
        """Plain numbers, ready for JSON."""
        return {
            "tier": self.tier,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "hit_rate": self.hit_rate,
            "per_layer": {
                layer: {
                    "hits": self.hits_per_layer.get(layer, 0),
                    "misses": self.misses_per_layer.get(layer, 0),
                    "evictions": self.evictions_per_layer.get(layer, 0),
                    "hit_rate": self.layer_hit_rate(layer),
                }
                for layer in sorted(
                    set(self.hits_per_layer)
                    | set(self.misses_per_layer)
                    | set(self.evictions_per_layer)
                )
            },
        }


class CacheBook:
    """The key -> slot map of one tier with `n_slots` slots, evicting by `policy`."""

    def __init__(self, n_slots: int, policy: PolicyLike = "lru", tier: str = "vram") -> None:
        if not isinstance(n_slots, int) or n_slots <= 0:
            raise ValueError(
                f"tier {tier!r}: n_slots must be a positive integer, got {n_slots!r}; "
                "give the tier a budget of at least one expert (the engine needs top_k slots)"
            )
        self.n_slots = n_slots
        self.tier = tier
        self.policy: EvictionPolicy = make_policy(policy)
        self.stats = TierStats(tier)
        self._slot_of: dict[ExpertKey, int] = {}
        self._free: list[int] = list(range(n_slots - 1, -1, -1))  # pop() hands out slot 0 first

    # -- reading ------------------------------------------------------------------------------
    def slot_of(self, key: ExpertKey) -> int | None:
        """The slot holding `key`, or None. Counts nothing and tells the policy nothing."""
        return self._slot_of.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._slot_of

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def n_free(self) -> int:
        return len(self._free)

    def resident(self) -> list[ExpertKey]:
        """The keys held now, in no particular order."""
        return list(self._slot_of)

    # -- counting use -------------------------------------------------------------------------
    def lookup(self, key: ExpertKey) -> int | None:
        """The slot of `key` if resident (a hit, the policy hears `on_hit`), else None (a miss)."""
        slot = self._slot_of.get(key)
        layer = key[0]
        if slot is None:
            self.stats.misses_per_layer[layer] += 1
        else:
            self.stats.hits_per_layer[layer] += 1
            self.policy.on_hit(key)
        return slot

    # -- changing contents ------------------------------------------------------------------
    def admit(
        self, key: ExpertKey, protected: frozenset[ExpertKey] = frozenset()
    ) -> tuple[int, ExpertKey | None]:
        """Give `key` a slot: a free one, or the slot of the policy's victim.

        Returns (slot, evicted key or None). Keys in `protected` (the experts the current layer
        needs now) are never evicted. Admitting a key that is already resident returns its slot
        and changes nothing.
        """
        if key in self._slot_of:
            return self._slot_of[key], None
        evicted = None
        if self._free:
            slot = self._free.pop()
        else:
            evicted = self._choose_victim(protected)
            slot = self._slot_of.pop(evicted)
            self.stats.evictions_per_layer[evicted[0]] += 1
            self.policy.on_evict(evicted)
        self._slot_of[key] = slot
        self.policy.on_insert(key)
        return slot, evicted

    def remove(self, key: ExpertKey) -> None:
        """Free the slot of `key` (the engine moved or dropped it). Not counted as an eviction."""
        slot = self._slot_of.pop(key, None)
        if slot is None:
            raise KeyError(f"tier {self.tier!r} does not hold expert {key}: nothing to remove")
        self._free.append(slot)
        self.policy.on_evict(key)

    def reset_stats(self) -> None:
        self.stats.reset()

    # -- handing the book to the GPU and back (lazymoe.engine.compute.device_cache) -------------
    def free_slots(self) -> list[int]:
        """The free slots, in the order `admit` hands them out."""
        return self._free[::-1]

    def reload(self, placed: list[tuple[ExpertKey, int]], free: list[int]) -> None:
        """Replace what the book holds: `placed` (key, slot) pairs in the order of their last
        use, oldest first (the policy hears them inserted in that order), and the `free` slots
        in the order `admit` should hand them out. Counts nothing."""
        slots = [slot for _, slot in placed] + list(free)
        if sorted(slots) != list(range(self.n_slots)):
            raise ValueError(
                f"tier {self.tier!r}: reload needs every one of its {self.n_slots} slots once, "
                f"placed or free; got {len(slots)} slots"
            )
        for key in list(self._slot_of):
            self.policy.on_evict(key)
        self._slot_of = {}
        for key, slot in placed:
            self._slot_of[key] = slot
            self.policy.on_insert(key)
        self._free = list(free)[::-1]

    def _choose_victim(self, protected: frozenset[ExpertKey]) -> ExpertKey:
        resident = list(self._slot_of)
        if all(k in protected for k in resident):
            raise CacheFullError(
                f"tier {self.tier!r} has {self.n_slots} slots and every one holds an expert the "
                "current layer needs: give it at least top_k slots (a larger budget)"
            )
        victim = self.policy.victim(resident, frozenset(protected))
        name = f"policy {self.policy.name!r} ({type(self.policy).__name__})"
        if victim is None:
            raise PolicyError(f"{name} returned None from victim(): return one of the resident keys")
        if victim not in self._slot_of:
            raise PolicyError(
                f"{name} chose {victim!r} as the victim, but tier {self.tier!r} does not hold it: "
                "victim() must return one of the `resident` keys it was given"
            )
        if victim in protected:
            raise PolicyError(
                f"{name} chose {victim!r} as the victim, but the current layer needs it (it is in "
                "`protected`): skip protected keys in victim()"
            )
        return victim

    def __repr__(self) -> str:
        return (
            f"CacheBook(tier={self.tier!r}, n_slots={self.n_slots}, used={len(self)}, "
            f"policy={self.policy.name!r}, hit_rate={self.stats.hit_rate:.3f})"
        )
