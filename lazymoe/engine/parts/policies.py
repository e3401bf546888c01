"""Eviction policies: which resident expert leaves when a full cache tier must take a new one.

A policy is plain bookkeeping: it hears about every hit, insert and eviction of the tier it serves
(through `CacheBook`) and, when asked, names a victim among the resident keys. It never touches
a tensor, so a learner can write and test one without a GPU.

To write your own, subclass `EvictionPolicy`, keep whatever state you need in the three `on_*`
hooks, and return a key from `victim`:

    class MostRecentlyUsed(EvictionPolicy):
        name = "mru"
        def __init__(self):
            self.last = {}
            self.clock = 0
        def on_hit(self, key):
            self.clock += 1
            self.last[key] = self.clock
        on_insert = on_hit
        def on_evict(self, key):
            self.last.pop(key, None)
        def victim(self, resident, protected):
            return max((k for k in resident if k not in protected), key=self.last.__getitem__)

Rules the cache enforces: the victim must be resident and must not be protected (protected keys
are the experts the current layer needs right now). A policy that breaks them gets a `PolicyError`
naming it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

ExpertKey = tuple[int, int]  # (layer, expert)


class PolicyError(RuntimeError):
    """A policy broke the contract (named a victim that is not resident, or is protected)."""


class EvictionPolicy:
    """Base class for eviction policies. Subclass it and override `victim` (and the hooks you need).

    The cache calls, for one tier:
      on_hit(key)     the key was looked up and is resident
      on_insert(key)  the key was just admitted into a slot
      on_evict(key)   the key left the tier (chosen by `victim`, or removed by the engine)
      victim(resident, protected) -> the key to evict; never one in `protected`
    """

    name: str = "base"

    def on_hit(self, key: ExpertKey) -> None:
        """Called when `key` is resident and was just used."""

    def on_insert(self, key: ExpertKey) -> None:
        """Called when `key` was just admitted (counts as its first use)."""

    def on_evict(self, key: ExpertKey) -> None:
        """Called when `key` left the tier; forget what you kept about it if you like."""

    def victim(self, resident: list[ExpertKey], protected: frozenset[ExpertKey]) -> ExpertKey:
        """The resident key to evict. `resident` is never empty of unprotected keys when called."""
        raise NotImplementedError(
            f"policy {self.name!r} ({type(self).__name__}) does not implement victim(resident, protected)"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _OrderPolicy(EvictionPolicy):
    """Evicts the first unprotected key of an ordered dict (oldest first)."""

    def __init__(self) -> None:
        self._order: OrderedDict[ExpertKey, None] = OrderedDict()

    def on_insert(self, key: ExpertKey) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def on_evict(self, key: ExpertKey) -> None:
        self._order.pop(key, None)

    def oldest_first(self) -> list[ExpertKey]:
        """The keys it holds, the next victim first (the order a GPU-side copy of it keeps)."""
        return list(self._order)

    def victim(self, resident: list[ExpertKey], protected: frozenset[ExpertKey]) -> ExpertKey:
        for key in self._order:  # oldest first; O(1) unless the oldest keys are protected
            if key not in protected:
                return key
        raise PolicyError(f"policy {self.name!r} holds no unprotected key to evict")


class LRU(_OrderPolicy):
    """Least recently used: evict the key whose last use (hit or insert) is oldest."""

    name = "lru"

    def on_hit(self, key: ExpertKey) -> None:
        self._order.move_to_end(key)


class FIFO(_OrderPolicy):
    """First in, first out: evict the key admitted longest ago; hits do not refresh it."""

    name = "fifo"


class LFU(EvictionPolicy):
    """Least frequently used: evict the key with the fewest uses since it was admitted.

    A key's count starts at 1 on insert and grows by 1 per hit; it is forgotten on eviction (an
    expert that comes back starts again at 1). Ties are broken by recency: among the keys with the
    lowest count, the least recently used one goes.
    """

    name = "lfu"

    def __init__(self) -> None:
        self._count: dict[ExpertKey, int] = {}
        self._last_use: dict[ExpertKey, int] = {}
        self._clock = 0  # one tick per hit or insert

    def _stamp(self, key: ExpertKey) -> None:
        self._clock += 1
        self._last_use[key] = self._clock

    def on_hit(self, key: ExpertKey) -> None:
        self._count[key] = self._count.get(key, 0) + 1
        self._stamp(key)

    def on_insert(self, key: ExpertKey) -> None:
        self._count[key] = 1
        self._stamp(key)

    def on_evict(self, key: ExpertKey) -> None:
        self._count.pop(key, None)
        self._last_use.pop(key, None)

    def count(self, key: ExpertKey) -> int:
        """Uses of `key` since it was admitted (0 if it is not tracked)."""
        return self._count.get(key, 0)

    def victim(self, resident: list[ExpertKey], protected: frozenset[ExpertKey]) -> ExpertKey:
        candidates = [k for k in resident if k not in protected]
        return min(candidates, key=lambda k: (self._count.get(k, 0), self._last_use.get(k, 0)))


POLICIES: dict[str, type[EvictionPolicy]] = {"lru": LRU, "lfu": LFU, "fifo": FIFO}

PolicyLike = str | EvictionPolicy | type[EvictionPolicy] | Callable[[], EvictionPolicy]


def make_policy(name_or_policy: PolicyLike) -> EvictionPolicy:
    """A fresh policy from a name ("lru", "lfu", "fifo"), a policy class or a zero-argument factory;
    an `EvictionPolicy` instance is returned as it is (it keeps its state)."""
    if isinstance(name_or_policy, EvictionPolicy):
        return name_or_policy
    if isinstance(name_or_policy, str):
        cls = POLICIES.get(name_or_policy.lower())
        if cls is None:
            raise ValueError(
                f"unknown eviction policy {name_or_policy!r}: use one of {sorted(POLICIES)} "
                "or pass an EvictionPolicy object"
            )
        return cls()
    if callable(name_or_policy):
        policy = name_or_policy()
        if isinstance(policy, EvictionPolicy):
            return policy
        raise TypeError(
            f"{name_or_policy!r} made a {type(policy).__name__}, not an EvictionPolicy: "
            "subclass lazymoe.engine.parts.policies.EvictionPolicy"
        )
    raise TypeError(
        f"cannot make an eviction policy from {name_or_policy!r}: pass a name {sorted(POLICIES)}, "
        "an EvictionPolicy object, or its class"
    )


def policy_name(policy: PolicyLike) -> str:
    """A label for plots and tables."""
    if isinstance(policy, str):
        return policy.lower()
    if isinstance(policy, EvictionPolicy) or (
        isinstance(policy, type) and issubclass(policy, EvictionPolicy)
    ):
        return policy.name
    return getattr(policy, "__name__", repr(policy))


__all__: Sequence[str] = [
    "FIFO",
    "LFU",
    "LRU",
    "POLICIES",
    "EvictionPolicy",
    "ExpertKey",
    "PolicyError",
    "make_policy",
    "policy_name",
]
