"""The planner: which changeable nodes get which layouts.  Pure and deterministic.

Objective, compared in this order: never lower a floored type below its floor; raise
floored types that are below it; serve the most priority weight of pending demand
(:mod:`.flow`, exact per type); change the fewest GPUs, then the fewest instances.

Greedy, one node per step, over the nodes that may change:

1. Per type, the exact match of demand to today's free instances gives, for each
   partition set a node can sit in, the value of one more instance (the heaviest unmet
   demand it could serve) and the cost of one fewer (zero while the group has spare
   instances, zero while the item it serves could move to spare elsewhere, else the
   item's weight).  These are the *tables*.
2. A GPU's choice is one option per distinct count vector (:mod:`.candidates`), valued
   against the tables; a node's choice is found by coordinate descent over its GPUs
   (two passes), so the value of several GPUs adding the same type falls off as demand
   runs out.
3. Nodes are ranked by the sum of their GPUs' best single choices (cached per GPU class
   and partition set); the best few get the full evaluation; the winner's gain is then
   computed exactly (the matches of its types redone) and the change is kept only when
   it gains more than the threshold (``min_gain``, or ``hysteresis_gain`` for a node
   changed recently) and breaks no floor.  Tables of the changed types are rebuilt and
   the next step starts, until nothing gains or the per-cycle cap is reached.

Identical nodes (same GPUs, layouts, busy sets and partitions) share every cached value.

Layers: :mod:`.problem` indexes the inputs (step 0), :mod:`.scoring` holds the tables and
the scores (steps 1-2), this module runs the greedy and keeps or rejects each change (step 3).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ...core.catalog import GpuModel
from . import explain as _explain
from .model import DemandItem, Plan, PlanNode, Policy
from .scoring import Evaluation, Scorer


def plan(nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Optional[Policy] = None,
         cycle: int = 0, *, models: Optional[Mapping[str, GpuModel]] = None) -> Plan:
    """Pick wanted layouts for changeable nodes from pending ``demand``.

    ``models`` maps a :attr:`PlanGpu.model_key` to its effective model (e.g. from the
    driver); keys not there are looked up in the catalog.
    """
    return _Planner(nodes, demand, policy or Policy(), cycle, models or {}).run()


class _Planner(Scorer):
    """The greedy: one node per step, kept only when its exact gain passes."""

    def run(self) -> Plan:
        pol = self.policy
        cap = pol.max_nodes_per_cycle
        self.changed: Dict[int, Dict[str, Any]] = {}  #: node index -> what its change gains
        self.cap_hit = False
        rejected: Set[Tuple[int, Tuple[int, ...], bool]] = set()
        open_nodes = [i for i, n in enumerate(self.nodes) if n.why_not is None]
        while True:
            if cap is not None and len(self.changed) >= cap:
                self.cap_hit = True
                break
            hcache = self.hcache
            cands: List[Tuple[Tuple[int, float], int]] = []
            by_sig: Dict[Tuple[int, Tuple[int, ...], bool], Tuple[int, float]] = {}
            open_nodes = [i for i in open_nodes if i not in self.changed]
            for i in open_nodes:
                node = self.nodes[i]
                if node.sig in rejected:
                    continue
                key = by_sig.get(node.sig)
                if key is None:
                    key = by_sig[node.sig] = self._heuristic(node, hcache)
                if key[0] > 0 or key[1] > self.tol:
                    cands.append((key, i))
            if not cands:
                break
            cands.sort(key=lambda c: (-c[0][0], -c[0][1], c[1]))
            evals = self.ecache
            accepted = False
            while cands and not accepted:
                best_i, best = -1, None  # best_i is set whenever best is
                for key, i in cands:
                    node = self.nodes[i]
                    if node.sig in rejected:
                        continue
                    if best is not None and (key[0], key[1]) <= (best[0][1], best[0][2] + self.tol):
                        break
                    ev = evals.get(node.sig)
                    if ev is None:
                        ev = evals[node.sig] = self._evaluate(node)
                        self._depend(("e", node.sig),
                                     {t for o in node.options for t in o.types}, node.gid)
                    score = ev[0]
                    if score[0] < 0 or not (score[1] > 0 or score[2] > self.tol):
                        continue
                    if best is None or self._better(score, best[0]):
                        best_i, best = i, ev
                if best is None:
                    break
                if self._try(best_i, best):
                    accepted = True
                else:
                    rejected.add(self.nodes[best_i].sig)
                    cands = [c for c in cands if self.nodes[c[1]].sig not in rejected]
            if not accepted:
                break
        return _explain.build(self)

    def _try(self, i: int, ev: Evaluation) -> bool:
        """Apply node i's change if its exact gain passes; return whether it was kept."""
        node, pol = self.nodes[i], self.policy
        _, choice, delta = ev
        g = node.gid
        old = {t: self.matches[t] for t, _ in delta}
        floor_gain = 0
        for t, d in delta:
            h = self._floor(t, d)
            if h < 0:
                return False
            floor_gain += h
        for t, d in delta:
            self.caps[t][g] += d
        new = {t: self._match(t) for t, _ in delta}
        gain = sum(new[t].weight - old[t].weight for t in new)
        threshold = pol.hysteresis_gain if node.recent else pol.min_gain
        if not (floor_gain > 0 or gain > (threshold or 0.0) + self.tol):
            for t, d in delta:
                self.caps[t][g] -= d
            return False
        served = []
        for t, d in delta:
            if d > 0:
                left, used = d, []
                for item, n in self.tables[t][g][2]:
                    if left <= 0:
                        break
                    take = min(n, left)
                    used.append((item, take))
                    left -= take
                served.append((t, d, used))
        for t, d in delta:
            self.totals[t] += d
            self.matches[t] = new[t]
        for t, d in delta:
            table = self._table(t)
            for gid, entry in table.items():
                if self.tables[t].get(gid) != entry or self._floor_active(t, d):
                    self._invalidate(t, gid)
            self.tables[t] = table
        node.choice = choice
        self.changed[i] = {"gain": gain, "floor_gain": floor_gain, "delta": delta, "served": served}
        return True
