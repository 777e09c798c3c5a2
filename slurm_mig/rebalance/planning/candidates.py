"""The layouts a GPU may be given, as count vectors over the types that matter.  Pure.

Per model, computed once per process: the maximal layouts (``+me`` profiles only if
asked), found with a bitmask check that gives the same answer as
:func:`slurm_mig.core.layout.maximal_layouts` about a hundred times faster (a test holds
them equal).  Per GPU (model, current layout, busy set): the options whose layout
contains every busy instance, one per distinct count vector, the one nearest the
current layout (fewest instances destroyed plus created, then canonical text).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional, Sequence, Tuple

#: A layout's instances as (profile id, start) pairs (:meth:`Layout.keys`).
Keys = FrozenSet[Tuple[int, int]]

from ...core.catalog import GpuModel
from ...core.layout import Layout, enumerate_layouts, format_layout, is_media_extension


@functools.lru_cache(maxsize=64)
def maximal(model: GpuModel, include_me: bool) -> Tuple[Layout, ...]:
    """Every maximal layout of ``model``: no instance can be added (canonical order)."""
    cands = []
    for p in model.profiles:
        if not include_me and is_media_extension(p):
            continue
        me = is_media_extension(p)
        for s in p.placements:
            mask = 0
            for u in p.units(s):
                mask |= 1 << u
            cands.append((p.id, p.max_count, p.compute_slices, me, mask))
    out = []
    for layout in enumerate_layouts(model, include_me):
        occupied = 0
        counts: Dict[int, int] = {}
        compute = 0
        media = False
        for inst in layout:
            p = model.profile(inst.profile_id)
            for u in p.units(inst.start):
                occupied |= 1 << u
            counts[p.id] = counts.get(p.id, 0) + 1
            compute += p.compute_slices
            media = media or is_media_extension(p)
        free_compute = model.compute_slices - compute
        if not any(
            not (mask & occupied) and counts.get(pid, 0) < max_count and slices <= free_compute
            and not (me and media)
            for pid, max_count, slices, me, mask in cands
        ):
            out.append(layout)
    return tuple(out)


@dataclass(frozen=True)
class Option:
    """A layout a GPU could be given: its change in instances per type, and its cost."""

    layout: Layout
    delta: Tuple[Tuple[int, int], ...]  #: (type index, change in instance count), non-zero only
    changes: int  #: instances destroyed plus created


@dataclass(frozen=True)
class GpuOptions:
    current: Tuple[int, ...]  #: instances per type index on the current layout
    options: Tuple[Option, ...]  #: the alternatives to keeping the current layout
    types: FrozenSet[int] = frozenset()  #: type indexes any option changes


def count_vector(layout: Layout, type_ids: Sequence[Optional[int]]) -> Tuple[int, ...]:
    """Instances per type index; ``type_ids[t]`` is the model's profile id for type t (or None)."""
    per: Dict[int, int] = {}
    for inst in layout:
        per[inst.profile_id] = per.get(inst.profile_id, 0) + 1
    return tuple(per.get(pid, 0) if pid is not None else 0 for pid in type_ids)


class CandidateSet:
    """Options per GPU class, cached; built on one model's candidate layouts."""

    def __init__(self, layouts: Sequence[Layout], type_ids: Sequence[Optional[int]]):
        self.type_ids = tuple(type_ids)
        self.layouts = [(layout, layout.keys(), count_vector(layout, self.type_ids)) for layout in layouts]
        self._cache: Dict[Tuple[Keys, Keys], GpuOptions] = {}

    def options(self, current: Layout, busy: Keys) -> GpuOptions:
        key = (current.keys(), busy)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        cur_keys = current.keys()
        cur_vec = count_vector(current, self.type_ids)
        best: Dict[Tuple[int, ...], Tuple[int, str, Layout]] = {}
        for layout, keys, vec in self.layouts:
            if not busy <= keys or vec == cur_vec:
                continue
            cost = (len(keys ^ cur_keys), format_layout(layout))
            held = best.get(vec)
            if held is None or cost < held[:2]:
                best[vec] = (cost[0], cost[1], layout)
        opts = []
        for vec in sorted(best):
            changes, _, layout = best[vec]
            delta = tuple((t, v - c) for t, (v, c) in enumerate(zip(vec, cur_vec)) if v != c)
            opts.append(Option(layout=layout, delta=delta, changes=changes))
        out = GpuOptions(current=cur_vec, options=tuple(opts),
                         types=frozenset(t for o in opts for t, _ in o.delta))
        self._cache[key] = out
        return out
