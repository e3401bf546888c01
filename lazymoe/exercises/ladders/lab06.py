"""Lab 06 (cache policies): LRU, and a policy of your own."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

LRU_HINTS = (
    _("Keep a line of keys: the one used longest ago at the front, the one used just now at the back. "
      "Every use (a hit or an insert) moves a key to the back; the victim is the first key from the "
      "front that is not protected.", lang="en"),
    _("A list kept on the object: create it in __init__ as self.order = [] (self. makes it the "
      "object's own, so every method sees it). on_hit: self.order.remove(key) then append(key). "
      "on_insert: append. on_evict: remove. victim: loop over self.order and return the first key "
      "not in protected.", lang="en"),
    "def __init__(self): self.order = []\ndef on_hit(self, key): self.order.remove(key); "
    "self.order.append(key)\ndef on_insert(self, key): self.order.append(key)\n"
    "def on_evict(self, key): self.order.remove(key)\ndef victim(self, resident, protected):\n"
    "    for key in self.order:\n        if key not in protected:\n            return key",
)
LRU_BLANKS = """\
class MyLRU(EvictionPolicy):
    name = "my-lru"

    def __init__(self):
        self.order = []  # keys, least recently used first

    def on_hit(self, key):
        self.order.remove(key)  # a use: move it to the back
        self.order.___(key)

    def on_insert(self, key):
        self.order.___(key)  # a new key is the most recently used

    def on_evict(self, key):
        self.order.___(key)  # it left the cache: forget it

    def victim(self, resident, protected):
        for key in self.___:  # front first: used longest ago
            if key not in ___:
                return key
"""
LRU_SOLUTION = """\
class MyLRU(EvictionPolicy):
    name = "my-lru"

    def __init__(self):
        self.order = []  # least recently used first

    def on_hit(self, key):
        self.order.remove(key)
        self.order.append(key)

    def on_insert(self, key):
        self.order.append(key)

    def on_evict(self, key):
        self.order.remove(key)

    def victim(self, resident, protected):
        return next(key for key in self.order if key not in protected)
"""

EXERCISES = [
    Exercise(
        key="lab06.lru",
        title=_("LRU", lang="en"),
        check="check_lru(MyLRU)",
        hints=LRU_HINTS,
        blanks=LRU_BLANKS,
        solution=LRU_SOLUTION,
        wrong="""\
class MyLRU(EvictionPolicy):
    name = "my-lru"

    def __init__(self):
        self.order = []

    def on_insert(self, key):
        self.order.append(key)  # a hit does not move the key: this is FIFO

    def on_evict(self, key):
        self.order.remove(key)

    def victim(self, resident, protected):
        return next(key for key in self.order if key not in protected)
""",
    ),
    Exercise(
        key="lab06.policy",
        title=_("a policy that beats LRU", lang="en"),
        check="check_policy(MyPolicy, trace, N_SLOTS)",
        hints=(
            _("The heat map showed that some experts are chosen far more often than others, and that "
              "stays true over the whole text. LRU forgets that the moment an expert leaves the cache.", lang="en"),
            _("Count uses per key in a dict that you never clear on eviction: self.count[key] = "
              "self.count.get(key, 0) + 1 in on_hit and on_insert. The victim is the unprotected "
              "resident key with the smallest count. Then let counts fade: every so many uses, halve "
              "them all, so an expert that stopped being popular can leave.", lang="en"),
            _("class MyPolicy(EvictionPolicy):\n    def __init__(self, half_life=512): self.count, "
              "self.clock, self.half_life = {}, 0, half_life\n    def on_hit(self, key): count it; "
              "every half_life uses halve every count\n    on_insert = on_hit\n    def victim(self, "
              "resident, protected): return min(unprotected resident keys, key=count)", lang="en"),
        ),
        solution="""\
class AgingLFU(EvictionPolicy):
    \"\"\"LFU with a memory (counts survive eviction) and aging (every half_life uses, halve them).\"\"\"

    name = "aging-lfu"

    def __init__(self, half_life: int = 512):
        self.count, self.last_use, self.clock, self.half_life = {}, {}, 0, half_life

    def on_hit(self, key):
        self.clock += 1
        self.count[key] = self.count.get(key, 0.0) + 1.0
        self.last_use[key] = self.clock
        if self.clock % self.half_life == 0:  # age every count, resident or not
            self.count = {k: c / 2 for k, c in self.count.items()}

    on_insert = on_hit  # an insert is a use too; nothing to forget on eviction

    def victim(self, resident, protected):
        candidates = (k for k in resident if k not in protected)
        return min(candidates, key=lambda k: (self.count[k], self.last_use[k]))  # ties: LRU


MyPolicy = AgingLFU
""",
        wrong="""\
class MyPolicy(EvictionPolicy):
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

    def victim(self, resident, protected):  # evicts the most recently used: worse than LRU
        return next(key for key in reversed(self.order) if key not in protected)
""",
    ),
]
