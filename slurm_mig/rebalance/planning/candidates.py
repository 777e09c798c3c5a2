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
    """A layout a GPU could have: instances per type index, free (not busy) and in total."""

    layout: Layout
    free: Tuple[int, ...]  #: per type index: instances not in use
    total: Tuple[int, ...]  #: per type index: instances
    changes: int  #: instances destroyed plus created against the current layout (0: kept)


@dataclass(frozen=True)
class GpuOptions:
    """One GPU class's choices: ``options[0]`` keeps the current layout; the rest change it,
    one per distinct (free, total) vector, the one nearest the current layout."""

    options: Tuple[Option, ...]

    @property
    def current(self) -> Option:
        return self.options[0]


def count_vector(layout: Layout, type_ids: Sequence[Optional[int]],
                 skip: Keys = frozenset()) -> Tuple[int, ...]:
    """Instances per type index (those in ``skip`` left out); ``type_ids[t]`` is the
    model's profile id for type t (or None)."""
    per: Dict[int, int] = {}
    for inst in layout:
        if (inst.profile_id, inst.start) not in skip:
            per[inst.profile_id] = per.get(inst.profile_id, 0) + 1
    return tuple(per.get(pid, 0) if pid is not None else 0 for pid in type_ids)


class CandidateSet:
    """Options per GPU class (current layout, busy set), cached; built on one model's
    candidate layouts.  ``with_me``: the layouts to use when a busy instance is a ``+me``
    profile (a GPU holding one can only get layouts that keep it)."""

    def __init__(self, layouts: Sequence[Layout], type_ids: Sequence[Optional[int]],
                 with_me: Optional[Sequence[Layout]] = None):
        self.type_ids = tuple(type_ids)
        #: (layout, its instances, its count vector, its text): computed once here, not per
        #: GPU class (a 1,000-node cluster has hundreds of classes)
        self.layouts = [self._row(layout) for layout in layouts]
        self.with_me = None if with_me is None else [self._row(layout) for layout in with_me]
        self._cache: Dict[Tuple[Keys, Keys], GpuOptions] = {}

    def _row(self, layout: Layout) -> Tuple[Layout, Keys, Tuple[int, ...], str]:
        return layout, layout.keys(), count_vector(layout, self.type_ids), format_layout(layout)

    def options(self, current: Layout, busy: Keys, me_busy: bool = False) -> GpuOptions:
        key = (current.keys(), busy)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        cur_keys = current.keys()
        keep = Option(current, count_vector(current, self.type_ids, busy),
                      count_vector(current, self.type_ids), 0)
        best: Dict[Tuple[Tuple[int, ...], Tuple[int, ...]], Tuple[int, str, Layout]] = {}
        pool = self.with_me if (me_busy and self.with_me is not None) else self.layouts
        busy_pids = [pid for pid, _ in busy]
        busy_vec = tuple(busy_pids.count(pid) if pid is not None else 0 for pid in self.type_ids)
        for layout, keys, total, text in pool:
            if not busy <= keys or keys == cur_keys:
                continue
            # busy instances are in every candidate layout: free = total - busy
            vec = (tuple(a - b for a, b in zip(total, busy_vec)) if busy else total, total)
            if vec == (keep.free, keep.total):
                continue
            cost = (len(keys ^ cur_keys), text)
            held = best.get(vec)
            if held is None or cost < held[:2]:
                best[vec] = (cost[0], cost[1], layout)
        opts = [keep]
        for vec in sorted(best):
            changes, _, layout = best[vec]
            opts.append(Option(layout, vec[0], vec[1], changes))
        out = GpuOptions(tuple(opts))
        self._cache[key] = out
        return out
