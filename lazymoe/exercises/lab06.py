"""Checks for lab06 (cache policies). They never raise on a wrong answer: they say what is wrong.

check_lru(MyLRU)                       your LRU evicts exactly what lazymoe's LRU evicts
check_policy(MyPolicy, trace, n_slots) your own policy keeps the rules and beats LRU's hit rate
"""

from __future__ import annotations

from lazymoe.engine.parts.cache import CacheBook, CacheFullError
from lazymoe.engine.parts.policies import FIFO, LFU, LRU, EvictionPolicy, PolicyError
from lazymoe.engine.parts.trace import RoutingTrace, simulate, synthetic_trace
from lazymoe.exercises.base import CheckResult, explain_error, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _


def zipf_trace(
    tokens: int = 80, layers: int = 3, experts: int = 8, top_k: int = 2, seed: int = 0
) -> RoutingTrace:
    """A small synthetic trace with a few popular experts per layer, as trained routers have."""
    return synthetic_trace(tokens, layers, experts, top_k, skew=1.2, seed=seed)


def _not_written(name: str) -> CheckResult:
    return CheckResult(
        name, False, _("victim() returned None: write your class's methods and run again."),
        started=False,
    )


def _fresh(policy_cls) -> EvictionPolicy | None:
    if isinstance(policy_cls, EvictionPolicy):
        policy_cls = type(policy_cls)
    return policy_cls() if callable(policy_cls) else None


def _evictions(policy: EvictionPolicy, trace: RoutingTrace, n_slots: int) -> list[tuple]:
    """(access number, key looked up, evicted key) for every eviction while replaying `trace`."""
    book, out, step = CacheBook(n_slots, policy, tier="check"), [], 0
    for _step, keys in trace.steps():
        needed = frozenset(keys)
        for key in keys:
            step += 1
            if book.lookup(key) is None:
                _, victim = book.admit(key, protected=needed)
                if victim is not None:
                    out.append((step, key, victim))
    return out


def _first_difference(mine: list[tuple], want: list[tuple], n_slots: int) -> tuple[str, str]:
    """Describe the first access where the learner's evictions and LRU's part ways."""
    i = next(i for i in range(max(len(mine), len(want))) if mine[i : i + 1] != want[i : i + 1])
    a, b = mine[i] if i < len(mine) else None, want[i] if i < len(want) else None
    step = min(x[0] for x in (a, b) if x is not None)
    key = next(x[1] for x in (a, b) if x is not None and x[0] == step)
    got = a[2] if a is not None and a[0] == step else "nothing"
    lru = b[2] if b is not None and b[0] == step else "nothing"
    return (
        f"at access {step} (fetching {key}, cache of {n_slots}) your policy evicted {got}, LRU "
        f"evicts {lru}: LRU's victim is the unprotected key whose last use is oldest.",
        "on_insert and on_hit both count as a use; on_evict must forget the key.",
    )


SCENARIOS = [  # (trace, n_slots): a tiny cache, a middling one, more layers
    (zipf_trace(seed=0), 3),
    (zipf_trace(seed=1), 6),
    (zipf_trace(seed=2, layers=4, experts=6, top_k=3), 5),
]


@tracked("lab06.lru")
def check_lru(policy_cls) -> CheckResult:
    """Your LRU class, replayed next to lazymoe's LRU on small traces: the same victim every time?"""
    name = _('lab06: LRU')
    if policy_cls is None:
        return not_started(name)
    for trace, n_slots in SCENARIOS:
        try:
            policy = _fresh(policy_cls)
            if not isinstance(policy, EvictionPolicy):
                return failed(
                    name, _('pass your class (a subclass of EvictionPolicy), e.g. check_lru(MyLRU).')
                )
            mine = _evictions(policy, trace, n_slots)
        except NotImplementedError:
            return _not_written(name)
        except PolicyError as err:
            if "returned None" in str(err):
                return _not_written(name)
            return failed(name, _('your policy broke a rule of the cache: {err}').format(err=err))
        except CacheFullError as err:
            return failed(name, str(err))
        except Exception as err:  # a learner's bug: show it, do not crash the notebook
            return failed(name, _('your policy raised {error_type}: {err}.{value}').format(error_type=type(err).__name__, err=err, value=explain_error(err)))
        want = _evictions(LRU(), trace, n_slots)
        if mine == want:
            continue
        if mine == _evictions(FIFO(), trace, n_slots):
            return failed(
                name,
                _('your policy evicts in insertion order, like FIFO: a hit must count as a use (on_hit should move the key to the most-recent end).'),
            )
        if mine == _evictions(LFU(), trace, n_slots):
            return failed(
                name,
                _('your policy counts uses (LFU); LRU looks only at how recently a key was used.'),
            )
        return failed(name, *_first_difference(mine, want, n_slots))
    return passed(name, _('your policy evicts exactly what LRU evicts on every test trace.'))


@tracked("lab06.policy")
def check_policy(policy_cls, trace: RoutingTrace, n_slots: int) -> CheckResult:
    """Your own policy on a real trace: it keeps the cache's rules and its hit rate is >= LRU's."""
    name = _('lab06: your policy at {n_slots} slots').format(n_slots=n_slots)
    if policy_cls is None:
        return not_started(name)
    try:
        policy = _fresh(policy_cls)
        if not isinstance(policy, EvictionPolicy):
            return failed(
                name,
                _('pass your class (a subclass of EvictionPolicy), e.g. check_policy(MyPolicy, ...).'),
            )
        mine = simulate(trace, n_slots, policy).hit_rate
    except NotImplementedError:
        return _not_written(name)
    except (PolicyError, CacheFullError) as err:
        if "returned None" in str(err):
            return _not_written(name)
        return failed(name, _('your policy broke a rule of the cache: {err}').format(err=err))
    except Exception as err:
        return failed(name, _('your policy raised {error_type}: {err}.{value}').format(error_type=type(err).__name__, err=err, value=explain_error(err)))
    lru = simulate(trace, n_slots, "lru").hit_rate
    opt = simulate(trace, n_slots, "opt").hit_rate
    detail = _('hit rate {mine:.1%}; LRU {lru:.1%}; the optimum (OPT) {opt:.1%}').format(mine=mine, lru=lru, opt=opt)
    if mine + 1e-12 < lru:
        return failed(
            name,
            _('{detail}: below LRU.').format(detail=detail),
            *_tuning_hint(policy_cls, trace, n_slots, mine),
            _('experts a layer uses a lot come back again and again: a policy that remembers how often a key was used (with some forgetting, so old favourites can leave) tends to win.'),
        )
    closed = (mine - lru) / (opt - lru) if opt > lru else 1.0
    return passed(
        name, _('{detail}: you closed {closed:.0%} of the gap between LRU and the optimum.').format(detail=detail, closed=closed)
    )


def _tuning_hint(policy_cls, trace: RoutingTrace, n_slots: int, mine: float) -> list[str]:
    """Try each number your policy keeps on itself (a half-life, a fading factor) up to 100x larger and
    smaller: if one does better, say which way to turn it (forgetting too fast or too slow)."""
    base = _fresh(policy_cls)
    knobs = {k: v for k, v in vars(base).items()
             if isinstance(v, int | float) and not isinstance(v, bool) and v > 0}
    best = None
    for attr, value in knobs.items():
        for factor in (0.01, 0.1, 0.25, 4, 10, 100):
            new = type(value)(value * factor) if isinstance(value, float) else max(1, int(value * factor))
            try:
                policy = _fresh(policy_cls)
                setattr(policy, attr, new)
                rate = simulate(trace, n_slots, policy).hit_rate
            except Exception:  # a knob that is not a knob (a counter): skip it
                continue
            if rate > mine + 0.002 and (best is None or rate > best[3]):
                best = (attr, value, new, rate)
    if best is None:
        return []
    attr, value, new, rate = best
    way = "larger" if new > value else "smaller"
    return [f"with self.{attr} = {new} instead of {value} your policy gets {rate:.1%}: try a {way} "
            f"{attr}. If it sets how long counts last, a {way} value means your policy was forgetting "
            f"too {'fast' if way == 'larger' else 'slowly'}."]
