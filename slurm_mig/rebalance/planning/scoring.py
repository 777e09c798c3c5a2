"""What a change to one node is worth: value tables per type and group, and node scores.  Pure.

Redoing the exact match of :mod:`.flow` for every option of every GPU would be far too
slow, so the match is read once per (type, changeable group) into a *table*: prefix sums
of the value of one more instance (the heaviest unmet demand it could serve) and of the
cost of one fewer (zero while the group has spare instances, zero while the item it
serves could move to spare elsewhere, else the item's weight).  Options are then valued
by lookups.

A score is ``(-floor violation, floor gain, weight, -GPUs changed, -instances changed)``,
compared in that order (weights within a tolerance).  A node's choice comes from
coordinate descent over its GPUs, so the value of several GPUs adding the same type falls
off as demand runs out.  Scores are cached per GPU class or node signature and dropped
when a table they read is rebuilt.
"""

from __future__ import annotations

from typing import Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ...core.catalog import GpuModel
from .candidates import Option
from .model import DemandItem, PlanNode, Policy
from .problem import Node, Problem

#: (-floor violation, floor gain, weight, -GPUs changed, -instances changed)
Score = Tuple[int, int, float, int, int]
Delta = Sequence[Tuple[int, int]]  #: (type index, change in instance count)
#: A node's evaluation: its score, the option taken per GPU (None: kept), the total delta.
Evaluation = Tuple[Score, List[Optional[Option]], List[Tuple[int, int]]]
#: Per group: prefix sums of gains, prefix sums of losses, and the gain runs (item, units).
Table = Tuple[List[float], List[float], List[Tuple[int, int]]]
CacheKey = Tuple[str, Hashable]  #: ("h", (options id, group)) or ("e", node signature)

#: Coordinate-descent passes over a node's GPUs.
PASSES = 2


class Scorer(Problem):
    """The problem plus its value tables and the scores read from them."""

    def __init__(self, nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Policy,
                 cycle: int, models: Mapping[str, GpuModel]) -> None:
        super().__init__(nodes, demand, policy, cycle, models)
        self.tables: List[Dict[int, Table]] = [self._table(t) for t in range(len(self.types))]
        # Cached values, dropped when a table (type, group) they read changes.
        self.hcache: Dict[Hashable, Tuple[int, float]] = {}
        self.ecache: Dict[Hashable, Evaluation] = {}
        self.deps: Dict[Tuple[int, int], Set[CacheKey]] = {}

    # ------------------------------------------------------------------ tables

    def _table(self, t: int) -> Dict[int, Table]:
        """Per changeable group: prefix sums of gains and losses, and the gain runs."""
        m, idx, caps, L = self.matches[t], self.type_items[t], self.caps[t], self.limit
        spare = [c - u for c, u in zip(caps, m.used)]
        out: Dict[int, Table] = {}
        for g in self.changeable_gids:
            gains: List[float] = [0.0]
            runs: List[Tuple[int, int]] = []
            for k, i in enumerate(idx):
                if len(gains) > L:
                    break
                it = self.items[i]
                unmet = it.count - m.served[k]
                if unmet > 0 and g in it.groups:
                    n = min(unmet, L + 1 - len(gains))
                    runs.append((i, n))
                    for _ in range(n):
                        gains.append(gains[-1] + it.weight)
            losses = [0.0] * min(spare[g], L)
            for k, i in enumerate(idx):
                held = m.flow[k].get(g, 0)
                if not held or len(losses) >= L:
                    continue
                it = self.items[i]
                alt = sum(spare[h] for h in it.groups if h != g)
                free = min(held, alt)
                losses.extend([0.0] * free + [it.weight] * (held - free))
            losses.sort()
            prefix = [0.0]
            for x in losses[:L]:
                prefix.append(prefix[-1] + x)
            out[g] = (gains, prefix, runs)
        return out

    def _floor_active(self, t: int, d: int) -> bool:
        """Could the totals change of type t (by d, just made) change any floor value?"""
        f = self.floor[t]
        return bool(f) and min(self.totals[t], self.totals[t] - d) < f + self.limit

    def _floor(self, t: int, d: int) -> int:
        f = self.floor[t]
        if not f:
            return 0
        tot = self.totals[t]
        return min(tot + d, f) - min(tot, f)

    # ------------------------------------------------------------------ evaluation

    def _marginal(self, g: int, D: List[int], delta: Delta) -> Tuple[int, int, float]:
        viol, fgain, weight = 0, 0, 0.0
        tables, floor = self.tables, self.floor
        for t, d in delta:
            before = D[t]
            after = before + d
            gains, losses, _ = tables[t][g]
            if after >= 0:
                weight += gains[after if after < len(gains) else -1]
            else:
                weight -= losses[-after if -after < len(losses) else -1]
            if before >= 0:
                weight -= gains[before if before < len(gains) else -1]
            else:
                weight += losses[-before if -before < len(losses) else -1]
            if floor[t] and self.totals[t] + min(before, after, 0) < floor[t]:
                hb, ha = self._floor(t, before), self._floor(t, after)
                viol += max(0, -ha) - max(0, -hb)
                fgain += max(0, ha) - max(0, hb)
        return viol, fgain, weight

    def _better(self, a: Score, b: Score) -> bool:
        """Is score a better than b: (-violation, floor gain, weight, -gpus, -instances)."""
        for k, (x, y) in enumerate(zip(a, b)):
            if k == 2:
                if x > y + self.tol:
                    return True
                if y > x + self.tol:
                    return False
            elif x != y:
                return x > y
        return False

    def _evaluate(self, node: Node) -> Evaluation:
        """Coordinate descent over the node's GPUs; returns (score, choice, delta)."""
        g, K = node.gid, len(self.types)
        D = [0] * K
        choice: List[Optional[Option]] = [None] * len(node.options)
        for _ in range(PASSES):
            moved = False
            for k, opts in enumerate(node.options):
                cur = choice[k]
                if cur is not None:
                    for t, d in cur.delta:
                        D[t] -= d
                best: Optional[Option] = None
                best_score: Score = (0, 0, 0.0, 0, 0)
                for opt in opts.options:
                    viol, fgain, weight = self._marginal(g, D, opt.delta)
                    score: Score = (-viol, fgain, weight, -1, -opt.changes)
                    if self._better(score, best_score):
                        best, best_score = opt, score
                if best is not cur:
                    moved = True
                choice[k] = best
                if best is not None:
                    for t, d in best.delta:
                        D[t] += d
            if not moved:
                break
        delta = [(t, d) for t, d in enumerate(D) if d]
        viol, fgain, weight = self._marginal(g, [0] * K, delta)
        gpus = sum(1 for c in choice if c is not None)
        changes = sum(c.changes for c in choice if c is not None)
        return (-viol, fgain, weight, -gpus, -changes), choice, delta

    def _heuristic(self, node: Node, cache: Dict[Hashable, Tuple[int, float]]) -> Tuple[int, float]:
        """Sum over the node's GPUs of each GPU's best single change (cached per GPU class)."""
        fsum, wsum = 0, 0.0
        zero = [0] * len(self.types)
        for opts in node.options:
            key = (id(opts), node.gid)
            hit = cache.get(key)
            if hit is None:
                hit = (0, 0.0)
                for opt in opts.options:
                    viol, fgain, weight = self._marginal(node.gid, zero, opt.delta)
                    if viol == 0 and (fgain, weight) > hit:
                        hit = (fgain, weight)
                cache[key] = hit
                self._depend(("h", key), opts.types, node.gid)
            fsum += hit[0]
            wsum += hit[1]
        return fsum, wsum

    def _depend(self, entry: CacheKey, types: Iterable[int], gid: int) -> None:
        for t in types:
            self.deps.setdefault((t, gid), set()).add(entry)

    def _invalidate(self, t: int, gid: int) -> None:
        for kind, key in self.deps.pop((t, gid), ()):
            (self.hcache if kind == "h" else self.ecache).pop(key, None)
