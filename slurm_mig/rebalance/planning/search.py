"""The planner: which changeable nodes get which layouts.  Pure and deterministic.

Objective (docs/planner.md), compared in this order: the priority weight of the pending
jobs that can start (a job starts when every instance it asks for is free on one node in
one of its partitions); then floors (never lowered below, raised where a node can);
then the fewest nodes, GPUs and instances changed.  Hard limits are never traded:
busy instances stay, allow-lists, the per-cycle cap, hysteresis and ``min_gain``.

1. Today: every node that can start jobs is filled from the pool of pending job groups
   (nodes that may not change first, so the changeable ones are left what only they can
   serve), heaviest job first (:func:`.packing.Packer.pack`, then an exact pass).
2. Moves, best first (lazy greedy): a changeable node gives back the jobs it holds and
   is filled again, choosing layouts for all its GPUs at once (:func:`.packing.Packer.cover`);
   its gain is what it then starts minus what it started before, so a loss is priced by
   the jobs actually displaced.  A move is kept when it raises a floor or gains more than
   the threshold (``min_gain``, or ``hysteresis_gain`` for a node changed recently);
   jobs it gave back are offered to spare room on other nodes.  Evaluations are cached
   per node class until the next kept move, and a popped stale one is redone before it
   is kept.
3. Until no move gains or the cap is reached.

Layers: :mod:`.problem` indexes the inputs, :mod:`.packing` holds the per-node search,
this module runs the greedy, :mod:`.explain` writes the reasons.
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ...core.catalog import GpuModel
from . import explain as _explain
from .candidates import Option
from .model import DemandItem, Plan, PlanNode, Policy
from .packing import Packer
from .problem import Problem


def plan(nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Optional[Policy] = None,
         cycle: int = 0, *, models: Optional[Mapping[str, GpuModel]] = None) -> Plan:
    """Pick wanted layouts for changeable nodes from pending ``demand``.

    ``models`` maps a :attr:`PlanGpu.model_key` to its effective model (e.g. from the
    driver); keys not there are looked up in the catalog.
    """
    return _Planner(nodes, demand, policy or Policy(), cycle, models or {}).run()


#: A move: (weight gain, floor gain, GPUs changed, instances changed, jobs taken, choice)
Move = Tuple[float, int, int, int, Dict[int, int], Tuple[Option, ...]]


class _Planner(Problem):
    """The greedy over node moves."""

    def run(self) -> Plan:
        self.packer = Packer(self)
        K = len(self.types)
        self.pool = [g.count for g in self.groups]
        self.hosted: List[Dict[int, int]] = [{} for _ in self.nodes]
        self.free_now: List[List[int]] = [list(n.free) for n in self.nodes]
        self.changed: Dict[int, Dict[str, Any]] = {}
        self.cap_hit = False
        fixed = [i for i, n in enumerate(self.nodes) if n.supplies and n.why_not is not None]
        movable = [i for i, n in enumerate(self.nodes) if n.why_not is None]
        for i in fixed + movable:
            self._fill(i)
        self.before = self._served()
        self._moves(movable)
        for i in fixed + movable:  # room a move freed, or jobs one gave back
            self._fill(i)
        self.after = self._served()
        del K
        return _explain.build(self)

    # ------------------------------------------------------------------ bookkeeping

    def _served(self) -> Tuple[int, int, float]:
        """(jobs, instances, weight) that can start as the nodes are now filled."""
        jobs, inst, weight = 0, 0, 0.0
        for held in self.hosted:
            for gi, k in held.items():
                g = self.groups[gi]
                jobs += k
                inst += k * g.size
                weight += k * g.weight
        return jobs, inst, weight

    def _spare(self, i: int) -> List[int]:
        room = list(self.free_now[i])
        for gi, k in self.hosted[i].items():
            for t, n in self.groups[gi].req:
                room[t] -= k * n
        return room

    def _fill(self, i: int) -> None:
        """Start what still fits in node i's spare room, from the pool."""
        node = self.nodes[i]
        if not node.supplies or not self.groups:
            return
        spare = self._spare(i)
        if not any(spare):
            return
        zero = (0,) * (2 * len(self.types))
        takes, _ = self.packer.pack(node, self.pool, zero, False, spare)
        takes = self.packer.exact(node, self.pool, zero, False, takes, spare)
        for gi, k in takes.items():
            self.pool[gi] -= k
            self.hosted[i][gi] = self.hosted[i].get(gi, 0) + k

    # ------------------------------------------------------------------ moves

    def _floor_base(self, i: int) -> List[int]:
        """The requirement floors put on node i: its instances of a floored type it may not lose."""
        node, K = self.nodes[i], len(self.types)
        base = [0] * (2 * K)
        for t, f in enumerate(self.floor):
            if f:
                slack = max(0, self.totals[t] - f)
                base[K + t] = max(0, node.total[t] - slack)
        return base

    def _evaluate(self, i: int) -> Optional[Move]:
        node, K, pk = self.nodes[i], len(self.types), self.packer
        held = self.hosted[i]
        pool = list(self.pool)
        for gi, k in held.items():
            pool[gi] += k
        base = self._floor_base(i)
        takes, _ = pk.pack(node, pool, tuple(base), True)
        takes = pk.exact(node, pool, tuple(base), True, takes)
        req = list(base)
        for gi, k in takes.items():
            for t, n in self.groups[gi].req:
                req[t] += k * n
        for t, f in enumerate(self.floor):
            short = f - self.totals[t] if f else 0
            for j in range(short, 0, -1):  # raise a floor this node can help with
                trial = list(req)
                trial[K + t] = max(trial[K + t], node.total[t] + j)
                if pk.cover(node, tuple(trial)) is not None:
                    req = trial
                    break
        cov = pk.cover(node, tuple(req))
        if cov is None or cov[0] == 0:
            return None
        gpus, inst, idx = cov
        choice = tuple(opts.options[k] for opts, k in zip(node.options, idx))
        keep, _ = pk.pack(node, pool, (0,) * (2 * K), False, node.free)
        keep = pk.exact(node, pool, (0,) * (2 * K), False, keep, node.free)
        wgain = (sum(self.groups[gi].weight * k for gi, k in takes.items())
                 - sum(self.groups[gi].weight * k for gi, k in keep.items()))
        fgain = 0
        for t, f in enumerate(self.floor):
            if f:
                new = self.totals[t] - node.total[t] + sum(o.total[t] for o in choice)
                fgain += min(new, f) - min(self.totals[t], f)
        return wgain, fgain, gpus, inst, takes, choice

    def _passes(self, i: int, mv: Move) -> bool:
        pol, node = self.policy, self.nodes[i]
        threshold = pol.hysteresis_gain if node.recent else pol.min_gain
        return mv[1] > 0 or mv[0] > (threshold or 0.0) + self.tol

    def _moves(self, movable: Sequence[int]) -> None:
        cap = self.policy.max_nodes_per_cycle
        version = 0
        cache: Dict[Any, Optional[Move]] = {}

        def evaluate(i: int) -> Optional[Move]:
            key = (self.nodes[i].sig, tuple(sorted(self.hosted[i].items())))
            if key not in cache:
                cache[key] = self._evaluate(i)
            return cache[key]

        heap: List[Tuple[float, int, int, int, int, int]] = []
        for i in movable:
            mv = evaluate(i)
            if mv is not None and self._passes(i, mv):
                heap.append((-mv[0], -mv[1], mv[2], mv[3], i, version))
        heapq.heapify(heap)
        while heap:
            if cap is not None and len(self.changed) >= cap:
                self.cap_hit = True
                break
            _, _, _, _, i, ver = heapq.heappop(heap)
            mv = evaluate(i)
            if mv is None or not self._passes(i, mv):
                continue
            if ver != version:
                heapq.heappush(heap, (-mv[0], -mv[1], mv[2], mv[3], i, version))
                continue
            self._commit(i, mv)
            version += 1
            cache.clear()

    def _commit(self, i: int, mv: Move) -> None:
        node, K = self.nodes[i], len(self.types)
        wgain, fgain, _, _, takes, choice = mv
        held = self.hosted[i]
        for gi, k in held.items():
            self.pool[gi] += k
        for gi, k in takes.items():
            self.pool[gi] -= k
        released = [gi for gi, k in held.items() if k > takes.get(gi, 0)]
        self.hosted[i] = dict(takes)
        node.choice = choice
        self.free_now[i] = [sum(o.free[t] for o in choice) for t in range(K)]
        for t in range(K):
            new = sum(o.total[t] for o in choice)
            self.totals[t] += new - node.total[t]
        self.changed[i] = {"gain": wgain, "floor_gain": fgain, "held": held, "takes": dict(takes)}
        if released:
            self._refill(i, released)

    def _refill(self, skip: int, released: Sequence[int]) -> None:
        """Offer jobs a move gave back to spare room on other nodes (fixed layouts)."""
        for gi in released:
            g = self.groups[gi]
            for j, node in enumerate(self.nodes):
                if self.pool[gi] <= 0:
                    break
                if j == skip or not node.supplies or node.gid not in g.gids:
                    continue
                room = self._spare(j)
                k = self.pool[gi]
                for t, n in g.req:
                    k = min(k, room[t] // n)
                if k > 0:
                    self.pool[gi] -= k
                    self.hosted[j][gi] = self.hosted[j].get(gi, 0) + k
