"""The parts a learner builds in the labs, and the engine runs: plain Python, no tensors needed.

    router.py     top-k routing: which experts each token uses (lab05)
    policies.py   eviction policies: LRU, LFU, ... and the interface a learner's policy fills (lab06)
    cache.py      CacheBook: which experts one tier holds, in which slot, and its hit counts
    prefetch.py   guessing the next layer's experts before it runs (lab07)
    trace.py      routing traces: record once, replay a cache policy many times (lab06)
"""
