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
3. Until no move gains or the cap is reached.  Then, on small clusters (at most
   :data:`PAIR_LIMIT` changeable nodes), a pair pass plans every two nodes that can serve
   the same jobs again in both orders, and job placement likewise; the better plan is
   kept.  Last, each recut GPU drops created instances nothing needs and gets back
   destroyed ones that still fit (fewest changes).

Layers: :mod:`.problem` indexes the inputs, :mod:`.packing` holds the per-node search,
this module runs the greedy, :mod:`.explain` writes the reasons.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ...core.catalog import GpuModel
from . import explain as _explain
from . import spare as _spare_room
from ...core.layout import Layout, is_valid
from .candidates import Option, count_vector
from .model import DemandItem, Plan, PlanNode, Policy
from .packing import Cover, Packer
from .problem import Problem


def plan(nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Optional[Policy] = None,
         cycle: int = 0, *, models: Optional[Mapping[str, GpuModel]] = None,
         recent: Optional[Mapping[str, float]] = None) -> Plan:
    """Pick wanted layouts for changeable nodes from pending ``demand``.

    ``models`` maps a :attr:`PlanGpu.model_key` to its effective model (e.g. from the
    driver); keys not there are looked up in the catalog.  ``recent``: instances asked for
    per type in recent cycles (:func:`.spare.remember`), which decides what spare room on
    a recut GPU gets (:mod:`.spare`); None: the pending ``demand`` alone.
    """
    planner = _Planner(nodes, demand, policy or Policy(), cycle, models or {})
    # no memory given: the demand this plan sees is the recent demand
    planner.recent = dict(_spare_room.asked(demand, {}) if recent is None else recent)
    return planner.run()


#: Clusters with at most this many changeable nodes get the pair pass (:meth:`_Planner._pairs`).
PAIR_LIMIT = 24

#: At most this many nodes are looked at for each group of jobs a move gives back.
RELOCATE_SCAN = 16

#: A move: (weight gain, floor gain, GPUs changed, instances changed, jobs taken, choice)
Move = Tuple[float, int, int, int, Dict[int, int], Tuple[Option, ...]]


class _Planner(Problem):
    """The greedy over node moves."""

    recent: Mapping[str, float]  #: recent demand per type (:func:`plan`)
    spare: Dict[int, str]  #: changed node -> what its spare room got (:mod:`.spare`)

    def run(self) -> Plan:
        self.packer = Packer(self)
        self._gid_nodes: Dict[Tuple[int, ...], List[int]] = {}
        #: per group: the types it asks for as a bitmask, and its displacement order key
        self._tmask = [sum(1 << t for t in {t for t, _ in g.req}) for g in self.groups]
        self._wkey = [(g.weight, gi) for gi, g in enumerate(self.groups)]
        #: per group: its position in its class; per class: see _heads (None: not kept)
        self._pos = [0] * len(self.groups)
        for members in self.classes:
            for pos, gi in enumerate(members):
                self._pos[gi] = pos
        self._head: Optional[List[int]] = None
        self._looks: Optional[Dict[int, Tuple[List[int], List[int]]]] = None  #: see _look
        self.pool = [g.count for g in self.groups]
        self.hosted: List[Dict[int, int]] = [{} for _ in self.nodes]
        self.free_now: List[List[int]] = [list(n.free) for n in self.nodes]
        self.changed: Dict[int, Dict[str, Any]] = {}
        self.drain_checks: Dict[int, Tuple[int, float, float]] = {}  #: "auto": (jobs, gain, idle)
        self.cap_hit = False
        fixed = [i for i, n in enumerate(self.nodes) if n.supplies and n.why_not is not None]
        movable = [i for i, n in enumerate(self.nodes) if n.why_not is None]
        for i in fixed + movable:
            self._fill(i)
        if len(movable) <= PAIR_LIMIT:
            self._placements(fixed + movable)
        self.before = self._served()
        self._moves(movable)
        for i in fixed + movable:  # room a move freed, or jobs one gave back
            self._fill(i)
        if len(movable) <= PAIR_LIMIT:
            self._pairs(movable, fixed + movable)
            self._placements(fixed + movable)
        for i in self.changed:
            self._trim(i)
        self.spare = _spare_room.fill(self, self.recent)  # spare room, after the trim
        self.after = self._served()
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

    def _heads(self) -> None:
        """Per class, the position of its first group with jobs left in the pool.  Kept
        while the moves are chosen (the pool changes only when one is committed): after
        today's fill the heaviest groups of every class are started, and each node
        evaluation would otherwise scan past them again, class by class."""
        pool = self.pool
        self._head = [next((p for p, gi in enumerate(members) if pool[gi] > 0), len(members))
                      for members in self.classes]

    def _heads_with(self, extra: Mapping[int, int]) -> Optional[List[int]]:
        """:meth:`_heads` for the pool plus ``extra`` jobs (None when not kept)."""
        if self._head is None:
            return None
        heads = list(self._head)
        for gi, k in extra.items():
            if k > 0:
                c = self.groups[gi].cls
                heads[c] = min(heads[c], self._pos[gi])
        return heads

    def _evaluate(self, i: int) -> Optional[Move]:
        node, K, pk = self.nodes[i], len(self.types), self.packer
        held = self.hosted[i]
        pool = list(self.pool)
        for gi, k in held.items():
            pool[gi] += k
        heads = self._heads_with(held)
        base = self._floor_base(i)
        best: Optional[Tuple[float, int, Dict[int, int], List[int], Optional[Cover]]] = None
        # jobs first, then what floors still can get; and, when a floor is short, the
        # floor first, then jobs (an equally heavy choice may also restore it)
        short = [(t, f - self.totals[t]) for t, f in enumerate(self.floor) if f and self.totals[t] < f]
        large = pk.large(node)

        def consider(src: Sequence[int], extra: float, heads_: Optional[List[int]]) -> None:
            nonlocal best
            for floor_first in (False, True) if short else (False,):
                if large:
                    takes, req_t, cov_ = pk.pack_units(node, src, tuple(base), short, floor_first, heads_)
                    req = list(req_t)
                else:
                    start = self._raise(i, base) if floor_first else list(base)
                    takes, _ = pk.pack(node, src, tuple(start), True)
                    takes = pk.exact(node, src, tuple(start), True, takes)
                    req = list(start)
                    for gi, k in takes.items():
                        for t, n in self.groups[gi].req:
                            req[t] += k * n
                    req = self._raise(i, req)
                    cov_ = None
                w = sum(self.groups[gi].weight * k for gi, k in takes.items()) + extra
                fl = sum(min(node.total[t] + max(0, req[K + t] - node.total[t]), f)
                         for t, f in enumerate(self.floor) if f)
                if best is None or (w > best[0] + self.tol or (w > best[0] - self.tol and fl > best[1])):
                    best = (w, fl, takes, req, cov_)

        consider(pool, 0.0, heads)
        # or: its jobs start elsewhere (displacing lighter ones) and it fills from the
        # rest (on large nodes only when filling from everything changes nothing)
        if held and (not large or best is None or best[4] is None or best[4][0] == 0):
            net, moved, evicted = self._relocate(i, held, False)
            if moved:
                rest = list(pool)
                for gi, k in moved.items():
                    rest[gi] -= k
                for gi, k in evicted.items():
                    rest[gi] += k
                rest_heads = None
                if heads is not None:
                    rest_heads = self._heads_with(evicted)
                    assert rest_heads is not None
                    rest_heads = [min(a, b) for a, b in zip(heads, rest_heads)]
                consider(rest, net, rest_heads)
        assert best is not None
        _, _, takes, req, cov = best
        if not large:
            cov = pk.cover(node, tuple(req))
        if cov is None or cov[0] == 0:
            return None
        gpus, inst, idx = cov
        choice = tuple(opts.options[k] for opts, k in zip(node.options, idx))
        keep, _ = pk.pack(node, pool, (0,) * (2 * K), False, node.free, heads)
        keep = pk.exact(node, pool, (0,) * (2 * K), False, keep, node.free)
        released = {gi: k - takes.get(gi, 0) for gi, k in self.hosted[i].items() if k > takes.get(gi, 0)}
        wgain = (sum(self.groups[gi].weight * k for gi, k in takes.items())
                 + (self._relocate(i, released, False)[0] if released else 0.0)
                 - sum(self.groups[gi].weight * k for gi, k in keep.items()))
        fgain = 0
        for t, f in enumerate(self.floor):
            if f:
                new = self.totals[t] - node.total[t] + sum(o.total[t] for o in choice)
                fgain += min(new, f) - min(self.totals[t], f)
        return wgain, fgain, gpus, inst, takes, choice

    def _raise(self, i: int, req: List[int]) -> List[int]:
        """``req`` plus as many instances of each floored type short of its floor as
        node i can add on top."""
        node, K, pk = self.nodes[i], len(self.types), self.packer
        for t, f in enumerate(self.floor):
            short = f - self.totals[t] if f else 0
            for j in range(short, 0, -1):
                trial = list(req)
                trial[K + t] = max(trial[K + t], node.total[t] + j)
                if pk.feasible(node, tuple(trial)):
                    req = trial
                    break
        return req

    def _passes(self, i: int, mv: Move) -> bool:
        pol, node = self.policy, self.nodes[i]
        threshold = pol.hysteresis_gain if node.recent else pol.min_gain
        if mv[1] <= 0 and mv[0] > (threshold or 0.0) + self.tol:
            return self._pays(i, mv)
        return mv[1] > 0

    def _pays(self, i: int, mv: Move) -> bool:
        """``drain_mixed = "auto"``, a mixed node: the jobs the move starts beyond today's
        gain their slices x (horizon - the node's end) slice-seconds; the drain pays when
        that beats the slice-seconds the node stands idle until its jobs end (docs/planner.md)."""
        node = self.nodes[i]
        if not self.policy.drain_auto or node.cond != "mixed" or node.free_in is None:
            return True
        held, jobs, slices = self.hosted[i], 0, 0
        for gi, k in mv[4].items():
            new = k - held.get(gi, 0)
            if new > 0:
                jobs += new
                slices += new * self.job_slices(node, self.groups[gi].req)
        gain = slices * max(0.0, self.policy.drain_horizon - node.free_in)
        self.drain_checks[i] = (jobs, gain, node.idle_ss)
        return gain > node.idle_ss

    def _rank(self, i: int, mv: Move) -> float:
        """The heap's first key: the weight gain, and with ``drain_mixed = "auto"`` that gain
        discounted by how far into the horizon the node's jobs end (the node whose jobs end
        first goes first; an idle node is not discounted)."""
        node = self.nodes[i]
        if self.policy.drain_auto and node.free_in:
            return -mv[0] * max(0.0, 1.0 - node.free_in / self.policy.drain_horizon)
        return -mv[0]

    def _moves(self, movable: Sequence[int]) -> None:
        cache: Dict[Any, Optional[Move]] = {}

        def evaluate(i: int) -> Optional[Move]:
            key = (self.nodes[i].sig, tuple(sorted(self.hosted[i].items())))
            if key not in cache:
                cache[key] = self._evaluate(i)
            return cache[key]

        self._heads()
        self._looks = {}
        try:
            self._greedy(movable, evaluate, cache)
        finally:
            # the pool and the nodes' jobs change from here on without these knowing
            self._head = self._looks = None

    def _greedy(self, movable: Sequence[int], evaluate: Callable[[int], Optional[Move]],
                cache: Dict[Any, Optional[Move]]) -> None:
        """Lazy greedy: the best move first; a stale one is evaluated again before it is
        kept.  ``evaluate`` answers from ``cache`` until a move is kept."""
        cap = self.policy.max_nodes_per_cycle
        version = 0
        heap: List[Tuple[float, int, int, int, int, int]] = []
        # first keys: one evaluation per node class and mix of jobs it starts today (the
        # others get the same key, marked stale, and are evaluated when they come up)
        first: Dict[Any, Optional[Move]] = {}
        for i in movable:
            shape = (self.nodes[i].sig, tuple(sorted(
                (self.groups[gi].cls, k) for gi, k in self.hosted[i].items())))
            fresh = shape not in first
            if fresh:
                first[shape] = evaluate(i)
            mv = first[shape]
            if mv is not None and self._passes(i, mv):
                heap.append((self._rank(i, mv), -mv[1], mv[2], mv[3], i, version if fresh else -1))
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
                heapq.heappush(heap, (self._rank(i, mv), -mv[1], mv[2], mv[3], i, version))
                continue
            self._looks = None  # the commit moves jobs: look at nodes afresh
            self._commit(i, mv)
            self._heads()
            self._looks = {}
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
        released = {gi: k - takes.get(gi, 0) for gi, k in held.items() if k > takes.get(gi, 0)}
        self.hosted[i] = dict(takes)
        node.choice = choice
        self.free_now[i] = [sum(o.free[t] for o in choice) for t in range(K)]
        for t in range(K):
            new = sum(o.total[t] for o in choice)
            self.totals[t] += new - node.total[t]
        self.changed[i] = {"gain": wgain, "floor_gain": fgain, "held": held, "takes": dict(takes)}
        if released:
            self._relocate(i, released, True)

    # ------------------------------------------------------------------ pair pass

    def _score(self) -> Tuple[float, int, int, int, int]:
        """The objective of the plan as it stands (larger is better)."""
        weight = self._served()[2]
        floors = sum(min(self.totals[t], f) for t, f in enumerate(self.floor) if f)
        gpus = inst = 0
        for i in self.changed:
            choice = self.nodes[i].choice or ()
            gpus += sum(1 for o in choice if o.changes)
            inst += sum(o.changes for o in choice)
        return (round(weight / self.tol) if self.tol else 0, floors, -len(self.changed), -gpus, -inst)

    def _snapshot(self) -> Any:
        return (list(self.pool), [dict(h) for h in self.hosted], [list(f) for f in self.free_now],
                list(self.totals), dict(self.changed), [n.choice for n in self.nodes])

    def _restore(self, snap: Any) -> None:
        pool, hosted, free_now, totals, changed, choices = snap
        self.pool, self.hosted, self.free_now, self.totals = list(pool), [dict(h) for h in hosted], \
            [list(f) for f in free_now], list(totals)
        self.changed = dict(changed)
        for n, c in zip(self.nodes, choices):
            n.choice = c

    def _placements(self, supplying: Sequence[int]) -> None:
        """Small clusters: layouts fixed, for two nodes that can start the same jobs, place
        their jobs again in either order; keep what starts more weight."""
        for _ in range(2):
            better = False
            for a, i in enumerate(supplying):
                for j in supplying[a + 1:]:
                    if not set(self.gid_classes[self.nodes[i].gid]) & set(self.gid_classes[self.nodes[j].gid]):
                        continue
                    for order in ((i, j), (j, i)):
                        before, snap = self._served()[2], self._snapshot()
                        for n in order:
                            for gi, k in self.hosted[n].items():
                                self.pool[gi] += k
                            self.hosted[n] = {}
                        for n in order:
                            self._fill(n)
                        for n in supplying:
                            self._fill(n)
                        if self._served()[2] > before + self.tol:
                            better = True
                        else:
                            self._restore(snap)
            if not better:
                break

    def _undo(self, i: int) -> None:
        """Node i back to today's layouts, its jobs back in the pool."""
        node, K = self.nodes[i], len(self.types)
        for gi, k in self.hosted[i].items():
            self.pool[gi] += k
        self.hosted[i] = {}
        if node.choice is not None:
            for t in range(K):
                self.totals[t] += node.total[t] - sum(o.total[t] for o in node.choice)
        node.choice = None
        self.free_now[i] = list(node.free)
        self.changed.pop(i, None)

    def _pairs(self, movable: Sequence[int], supplying: Sequence[int]) -> None:
        """Small clusters: for two changeable nodes that can start the same jobs, at least
        one of them changed, plan both again in either order (the first one filled best,
        then the second from what is left) and keep what scores higher.  The greedy fills
        each node as well as it can on its own; this lets a node leave jobs to another
        that can only serve those."""
        cap = self.policy.max_nodes_per_cycle
        for _ in range(2):
            better = False
            for a, i in enumerate(movable):
                for j in movable[a + 1:]:
                    if i not in self.changed and j not in self.changed:
                        continue
                    ci, cj = self.nodes[i], self.nodes[j]
                    if not set(self.gid_classes[ci.gid]) & set(self.gid_classes[cj.gid]):
                        continue
                    for order in ((i, j), (j, i)):
                        before, snap = self._score(), self._snapshot()
                        self._undo(i)
                        self._undo(j)
                        for n in order:
                            mv = self._evaluate(n)
                            if (mv is not None and self._passes(n, mv)
                                    and (cap is None or len(self.changed) < cap)):
                                self._commit(n, mv)
                            else:
                                self._fill(n)
                        for n in supplying:
                            self._fill(n)
                        if self._score() > before:
                            better = True
                        else:
                            self._restore(snap)
            if not better:
                break

    def _trim(self, i: int) -> None:
        """Fewest changes for the jobs node i now starts: drop created instances nothing
        needs, then put back destroyed ones that still fit (each one change fewer)."""
        node, K = self.nodes[i], len(self.types)
        assert node.choice is not None
        need = [0] * K
        for gi, k in self.hosted[i].items():
            for t, n in self.groups[gi].req:
                need[t] += k * n
        free = list(self.free_now[i])
        out = list(node.choice)
        for k, (gpu, opt) in enumerate(zip(sorted(node.src.gpus, key=lambda g: g.index), node.choice)):
            if opt.changes == 0:
                continue
            model = node.models[k]
            ids = self.type_ids(model)
            cur = gpu.layout.keys()
            insts = list(opt.layout.instances)
            for inst in sorted(opt.layout.instances, key=lambda x: (-x.start, x.profile_id)):
                if (inst.profile_id, inst.start) in cur:
                    continue
                t = ids.index(inst.profile_id) if inst.profile_id in ids else -1
                if t >= 0 and (free[t] - 1 < need[t] or (self.floor[t] and self.totals[t] - 1 < self.floor[t])):
                    continue
                insts.remove(inst)
                if t >= 0:
                    free[t] -= 1
                    self.totals[t] -= 1
            kept = {(x.profile_id, x.start) for x in insts}
            for inst in gpu.layout.instances:
                if (inst.profile_id, inst.start) not in kept and is_valid(model, insts + [inst]):
                    insts.append(inst)
                    if inst.profile_id in ids:
                        t = ids.index(inst.profile_id)
                        free[t] += 1
                        self.totals[t] += 1
            layout = Layout(tuple(insts))
            out[k] = Option(layout, count_vector(layout, ids, gpu.busy), count_vector(layout, ids),
                            len(layout.keys() ^ cur))
        node.choice = tuple(out)
        self.free_now[i] = free

    def _by_gids(self, gids: Sequence[int]) -> List[int]:
        """Nodes that can start jobs, in the given partition sets, by index."""
        key = tuple(gids)
        hit = self._gid_nodes.get(key)
        if hit is None:
            allowed = set(gids)
            hit = [j for j, n in enumerate(self.nodes) if n.supplies and n.gid in allowed]
            self._gid_nodes[key] = hit
        return hit

    def _look(self, j: int) -> Tuple[List[int], List[int]]:
        """Node j's spare room and the jobs it holds, lightest first.  While moves are
        chosen nothing changes between two kept moves, so the answer is kept until the
        next one (:meth:`_moves`); a move's relocation looks at the same first nodes of a
        partition for every node evaluated."""
        if self._looks is not None:
            hit = self._looks.get(j)
            if hit is None:
                hit = self._looks[j] = (self._spare(j), sorted(self.hosted[j], key=self._wkey.__getitem__))
            return hit
        return self._spare(j), sorted(self.hosted[j], key=self._wkey.__getitem__)

    def _relocate(self, skip: int, released: Mapping[int, int], apply: bool
                  ) -> Tuple[float, Dict[int, int], Dict[int, int]]:
        """Where jobs a move gives back can still start: spare room on other nodes first,
        then room held by lighter jobs there (those go back to the pending pool).  Returns
        the weight that still starts, net of the lighter jobs displaced, the jobs moved and
        the jobs displaced; with ``apply`` the jobs are moved (and taken out of the pool),
        else nothing changes."""
        moved: Dict[int, int] = {}
        evicted: Dict[int, int] = {}
        #: per node looked at: its room and jobs, copied when first changed in this call
        hosted: Dict[int, Dict[int, int]] = {}
        spare: Dict[int, List[int]] = {}
        owned: Set[int] = set()  #: nodes whose room and jobs this call has copied
        net = 0.0
        order: Dict[Tuple[int, int], List[int]] = {}
        lightest: Dict[int, List[int]] = {}  #: per node: the jobs it held at first look, lightest first
        groups, tmask = self.groups, self._tmask
        for gi in sorted(released, key=lambda g: (-self.groups[g].weight, g)):
            g, left = self.groups[gi], released[gi]
            scanned = 0
            for j in self._by_gids(g.gids):
                if left <= 0 or scanned >= RELOCATE_SCAN:
                    break
                if j == skip:
                    continue
                scanned += 1
                if j not in spare:
                    spare[j], lightest[j] = self._look(j)
                    hosted[j] = self.hosted[j]
                room, held = spare[j], hosted[j]
                while left > 0:
                    if all(room[t] >= n for t, n in g.req):
                        if j not in owned:
                            owned.add(j)
                            spare[j] = room = list(room)
                            hosted[j] = held = dict(held)
                        k = left
                        for t, n in g.req:
                            k = min(k, room[t] // n)
                        for t, n in g.req:
                            room[t] -= k * n
                        held[gi] = held.get(gi, 0) + k
                        left -= k
                        net += k * g.weight
                        continue
                    # make room for one job by displacing the lightest lighter jobs
                    if (j, gi) not in order:
                        # lighter jobs sharing a type, lightest first (groups placed here
                        # in this call are not lighter: released jobs go heaviest first)
                        mask, w, lighter = tmask[gi], g.weight, []
                        for lj in lightest[j]:
                            if groups[lj].weight >= w:
                                break
                            if tmask[lj] & mask:
                                lighter.append(lj)
                        order[(j, gi)] = lighter
                    if not order[(j, gi)]:
                        break
                    trial, out = list(room), []
                    for hj in order[(j, gi)]:
                        h = groups[hj]
                        if not held.get(hj):
                            continue
                        lacking = 0  # the types the job still lacks, as a bitmask
                        for t, n in g.req:
                            if trial[t] < n:
                                lacking |= 1 << t
                        if not tmask[hj] & lacking:
                            continue
                        for _ in range(held[hj]):
                            for t, n in h.req:
                                trial[t] += n
                            out.append(hj)
                            if all(trial[t] >= n for t, n in g.req):
                                break
                        if all(trial[t] >= n for t, n in g.req):
                            break
                    lost = sum(self.groups[hj].weight for hj in out)
                    if not out or not all(trial[t] >= n for t, n in g.req) or lost >= g.weight:
                        break
                    if j not in owned:
                        owned.add(j)
                        spare[j] = room = list(room)
                        hosted[j] = held = dict(held)
                    for hj in out:
                        held[hj] -= 1
                        evicted[hj] = evicted.get(hj, 0) + 1
                        if not held[hj]:
                            del held[hj]
                        if apply:
                            self.pool[hj] += 1
                    for t, n in g.req:
                        trial[t] -= n
                    room[:] = trial
                    held[gi] = held.get(gi, 0) + 1
                    left -= 1
                    net += g.weight - lost
            if released[gi] - left:
                moved[gi] = released[gi] - left
            if apply:
                self.pool[gi] -= released[gi] - left
        if apply:
            for j in owned:
                self.hosted[j] = hosted[j]
        return net, moved, evicted
