"""Spare room on a recut GPU, and the recent-demand memory that decides what fills it.  Pure.

A recut GPU gets what the jobs and floors of the plan need (:mod:`.search`, then its trim:
created instances nothing needs dropped, destroyed ones that still fit put back).  What is
left of the GPU is *spare room*.  Left empty, it serves nobody until the next recut; filled
with a type nobody asks for (issue 12: ``1g.20gb``), the same.  :func:`complete` fills it up
to a maximal layout (nothing more fits) with the types most likely to be asked for next,
in this order (docs/planner.md, "Spare room"):

1. **floors**: a floored type while the cluster holds fewer than its floor;
2. **recent demand**: types by their :func:`remember`-ed demand, most asked for first;
3. **no signal**: the maximal layout nearest today's (fewest instances destroyed plus
   created, then the canonical text): the rule the candidate layouts use.

Filling only adds instances to free room on a GPU that is recut anyway: the jobs a plan
starts and the floors it keeps are the same with or without it, so the objective order is
unchanged; this picks one of the equally good layouts.

Recent demand: per Slurm type, an exponentially weighted mean of the instances asked for
(pending plus in use) at each cycle, with a half-life in seconds (``[rebalance]
demand_half_life``).  The rebalance cycle and the simulator keep it between cycles and
hand it to :func:`.search.plan` as ``recent``.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from ...core.catalog import GpuModel, normalize_profile_name
from ...core.errors import UnknownProfile
from ...core.layout import Layout, format_layout, is_media_extension
from .candidates import Option, count_vector, maximal
from .model import DemandItem

if TYPE_CHECKING:
    from .search import _Planner

#: Why an instance was put in spare room, as ``--explain`` says it.
FLOOR, RECENT, NEAREST = "floor", "recent demand", "no demand signal: nearest today's layout"

#: Memory values below this are forgotten (a type not asked for in ~10 half-lives).
FORGET = 1e-3


# ----------------------------------------------------------------------------- memory


def asked(demand: Iterable[DemandItem], in_use: Mapping[str, int]) -> Dict[str, float]:
    """Instances asked for now, per type: pending (``demand``, every job of every item)
    plus in use."""
    out: Dict[str, float] = {}
    for d in demand:
        for t, n in d.request:
            name = normalize_profile_name(t)
            out[name] = out.get(name, 0.0) + float(d.count) * max(d.nodes, 1) * int(n)
    for t, n in in_use.items():
        if n > 0:
            name = normalize_profile_name(t)
            out[name] = out.get(name, 0.0) + float(n)
    return out


def remember(memory: Mapping[str, float], now: Mapping[str, float], elapsed_s: Optional[float],
             half_life_s: float) -> Dict[str, float]:
    """The memory after one more cycle: ``memory`` decayed over ``elapsed_s`` seconds
    (halved every ``half_life_s``) blended with what is asked ``now`` (an exponentially
    weighted mean, so its scale is instances whatever the cycle period).  No earlier cycle
    (``elapsed_s`` None) or a half-life of 0: what is asked now."""
    if elapsed_s is None or half_life_s <= 0:
        keep = 0.0
    else:
        keep = math.pow(0.5, max(elapsed_s, 0.0) / half_life_s)
    out: Dict[str, float] = {}
    for t in set(memory) | set(now):
        v = keep * float(memory.get(t, 0.0)) + (1.0 - keep) * float(now.get(t, 0.0))
        if v >= FORGET:
            out[t] = v
    return out


# ----------------------------------------------------------------------------- filling


def ranking(recent: Mapping[str, float]) -> Tuple[str, ...]:
    """Recently demanded types, most asked for first (names break ties)."""
    vals: Dict[str, float] = {}
    for t, v in recent.items():
        if v > 0:
            name = normalize_profile_name(t)
            vals[name] = vals.get(name, 0.0) + float(v)
    return tuple(sorted(vals, key=lambda t: (-vals[t], t)))


def _ids(model: GpuModel, names: Iterable[str]) -> List[Tuple[int, str]]:
    out = []
    for t in names:
        try:
            out.append((model.profile(t).id, t))
        except UnknownProfile:  # the model does not offer the type
            continue
    return out


def complete(model: GpuModel, today: Layout, chosen: Layout, short: Mapping[str, int],
             ranked: Sequence[str], allowed: Optional[Sequence[Layout]] = None
             ) -> Tuple[Layout, Tuple[Tuple[str, str], ...]]:
    """``chosen`` filled up to a maximal layout of ``model``; returns it and (type, why) per
    instance added.  Preferred, in order: instances of floored types up to what each lacks
    (``short``), then as many instances of each recently demanded type as fit, in the order
    of ``ranked`` (:func:`ranking`), then the layout nearest ``today`` (the GPU's current
    layout: fewest instances destroyed plus created), then the canonical text.
    ``allowed``: the only layouts the GPU may get (``Policy.candidates``); then the fill is
    one of them that no other allowed layout containing ``chosen`` contains, or none."""
    return _complete(model, today, chosen, tuple(sorted(short.items())), tuple(ranked),
                     None if allowed is None else tuple(allowed))


@functools.lru_cache(maxsize=4096)
def _complete(model: GpuModel, today: Layout, chosen: Layout, short_items: Tuple[Tuple[str, int], ...],
              ranked: Tuple[str, ...], allowed: Optional[Tuple[Layout, ...]]
              ) -> Tuple[Layout, Tuple[Tuple[str, str], ...]]:
    short = dict(short_items)
    have = chosen.keys()
    floors = [(pid, t, short[t]) for pid, t in _ids(model, sorted(short)) if short[t] > 0]
    recent = _ids(model, ranked)
    me = (any(is_media_extension(model.profile(i.profile_id)) for i in chosen)
          or any("+me" in t for _, t in recent + [(p, t) for p, t, _ in floors]))
    now = today.keys()
    if allowed is None:
        pool: Sequence[Layout] = maximal(model, me)
    else:  # the site's list: the largest of its layouts that keep what the plan needs
        sup = [lay for lay in allowed if have <= lay.keys()]
        pool = [lay for lay in sup if not any(lay.keys() < o.keys() for o in sup)]
    best: Optional[Tuple[Tuple[object, ...], Layout]] = None
    for layout in pool:
        keys = layout.keys()
        if not have <= keys:
            continue
        counts: Dict[int, int] = {}
        for pid, _ in keys - have:
            counts[pid] = counts.get(pid, 0) + 1
        key: Tuple[object, ...] = (
            (-sum(min(counts.get(pid, 0), n) for pid, _, n in floors),)
            + tuple(-counts.get(pid, 0) for pid, _ in recent)
            + (len(keys ^ now), format_layout(layout)))
        if best is None or key < best[0]:
            best = (key, layout)
    if best is None or best[1].keys() == have:
        return chosen, ()
    layout = best[1]
    left = {t: n for _, t, n in floors}
    recent_names = {t for _, t in recent}
    whys: List[Tuple[str, str]] = []
    for inst in layout:
        if (inst.profile_id, inst.start) in have:
            continue
        name = model.profile(inst.profile_id).name
        if left.get(name, 0) > 0:
            left[name] -= 1
            whys.append((name, FLOOR))
        else:
            whys.append((name, RECENT if name in recent_names else NEAREST))
    return layout, tuple(whys)


def text(added: Sequence[Tuple[str, str]]) -> str:
    """``spare room: 2x 1g.10gb (recent demand), 1x 1g.20gb (floor)``."""
    counts: Dict[Tuple[str, str], int] = {}
    for item in added:
        counts[item] = counts.get(item, 0) + 1
    order = {FLOOR: 0, RECENT: 1, NEAREST: 2}
    parts = [f"{n}x {t} ({why})" for (t, why), n in sorted(counts.items(), key=lambda kv: (order[kv[0][1]], kv[0][0]))]
    return "spare room: " + ", ".join(parts)


def fill(pl: "_Planner", recent: Mapping[str, float]) -> Dict[int, str]:
    """Fill the spare room of every GPU the plan recuts (after its trim); node index ->
    its ``--explain`` text.  Updates the nodes' choices, free rooms and the type totals."""
    out: Dict[int, str] = {}
    K = len(pl.types)
    ranked = ranking(recent)
    for i in sorted(pl.changed):
        node = pl.nodes[i]
        if node.choice is None:
            continue
        choice = list(node.choice)
        added_all: List[Tuple[str, str]] = []
        for k, (gpu, opt) in enumerate(zip(sorted(node.src.gpus, key=lambda g: g.index), node.choice)):
            if opt.changes == 0:
                continue
            model = node.models[k]
            short = {pl.types[t]: f - pl.totals[t] for t, f in enumerate(pl.floor) if f and pl.totals[t] < f}
            given = (pl.policy.candidates or {}).get(model.key)
            allowed = None if given is None else [row[0] for row in pl._candidate_set(model).layouts]
            layout, added = complete(model, gpu.layout, opt.layout, short, ranked, allowed)
            if not added:
                continue
            ids = pl.type_ids(model)
            busy: FrozenSet[Tuple[int, int]] = frozenset(gpu.busy)
            new = Option(layout, count_vector(layout, ids, busy), count_vector(layout, ids),
                         len(layout.keys() ^ gpu.layout.keys()))
            for t in range(K):
                pl.totals[t] += new.total[t] - opt.total[t]
                pl.free_now[i][t] += new.free[t] - opt.free[t]
            choice[k] = new
            added_all.extend(added)
        node.choice = tuple(choice)
        if added_all:
            out[i] = text(added_all)
    return out
