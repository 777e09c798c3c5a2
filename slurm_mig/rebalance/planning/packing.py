"""One node at a time: which pending jobs it can start, and the cheapest layouts that do it.  Pure.

A *requirement* is a vector over ``2K`` dimensions (K types): the first K are free
instances per type the node must offer (the jobs placed on it), the last K are instances
per type it must keep in total (floors).  :func:`cover` answers, for a node with all its
GPUs at once, whether some choice of one option per GPU meets a requirement, and the
cheapest such choice (fewest GPUs changed, then fewest instances destroyed plus
created): a dynamic programme over the GPUs whose states are the requirement's
dimensions capped at what is required, so states stay few however many layouts a GPU
has; it is used for nodes of at most :data:`EXACT_GPUS` GPUs.  :meth:`Packer.pack` fills
a node from a pool of job groups, heaviest job first, each class of identical requests
taken as far as it fits (a class that does not fit once is done on this node), then
:meth:`Packer.exact` checks small choices exactly.  Larger nodes are filled instance by
instance (:meth:`Packer.pack_units`), along memoised node states (docs/planner.md, "How it
stays fast").
"""

from __future__ import annotations

import heapq
import re
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from .candidates import GpuOptions, Option
from .problem import Group, Node, Problem

Req = Tuple[int, ...]
#: (GPUs changed, instances changed, option index per GPU)
Cover = Tuple[int, int, Tuple[int, ...]]

#: At most this many feasibility checks per node for the exact pass over its choices.
EXACT_BUDGET = 400
#: The exact pass runs when the node could take jobs of at most this many groups.
EXACT_GROUPS = 12
#: How often one large node's filling may start over, largest instances first, when a job
#: does not fit as placed so far.
REPACKS = 2
#: Nodes with at most this many GPUs get the exact cover; larger ones are filled instance
#: by instance (:meth:`Packer.pack_units`).
EXACT_GPUS = 4


class Packer:
    """Covers and packs for the nodes of one problem.  Everything is memoised per GPU class
    (:meth:`cls`) and node state, for the life of one plan: nodes alike share the work."""

    def __init__(self, pb: Problem) -> None:
        self.pb = pb
        self.K = len(pb.types)
        self._covers: Dict[Tuple[Tuple[int, Tuple[int, ...]], Req], Optional[Cover]] = {}
        self._proj: Dict[Tuple[int, Tuple[int, ...], Req], List[Tuple[Req, int, int, int]]] = {}
        self._fits: Dict[Tuple[int, Req], bool] = {}
        self._cheapest: Dict[Tuple[int, Req], Tuple[int, int]] = {}
        self._vecs: Dict[int, List[List[int]]] = {}
        self._cls: Dict[int, int] = {}
        self._feasible: Dict[Tuple[Tuple[int, ...], Req], bool] = {}
        self._cls_of: Dict[Tuple[Tuple[Req, Req, int], ...], int] = {}
        self._alive: List[GpuOptions] = []  #: the classes' options, so their ids stay theirs
        #: per-GPU fill states of :meth:`gpu_state` / :meth:`step`
        self.D = 2 * self.K
        self.zero: Req = (0,) * self.D
        self._sid: Dict[Tuple[int, Req], int] = {}
        self.state_vec: List[Req] = []
        self.state_sum: List[int] = []
        self._state_opts: List[GpuOptions] = []
        self.state_cur: List[Req] = []  #: the GPU's current layout, as a vector
        self.state_changed: List[bool] = []  #: something placed exceeds the current layout
        self.state_zero: List[int] = []  #: the same GPU with nothing placed
        self._step: Dict[int, int] = {}
        #: node states (tuples of GPU states) and their memoised steps, see pack_units
        self._nsid: Dict[Tuple[int, ...], int] = {}
        self.nstates: List[Tuple[int, ...]] = []
        self._based: Dict[Tuple[Tuple[int, ...], Req], int] = {}
        self._jobs: Dict[int, int] = {}
        self._runs: Dict[int, Tuple[List[int], List[bool]]] = {}
        self._chains: Dict[int, List[int]] = {}
        self._segs: Dict[Tuple[int, int], Tuple[List[Tuple[int, int]], int]] = {}
        self._took: Dict[Tuple[int, int, int], int] = {}
        self._repacks: Dict[Tuple[int, int, Req], int] = {}
        self._covers_ns: Dict[int, Cover] = {}
        rids: Dict[Tuple[Tuple[int, int], ...], int] = {}
        self._rid = [rids.setdefault(g.req, len(rids)) for g in pb.groups]  #: request id per group
        self._R = max(1, len(rids))
        #: compute slices per type (``3g.40gb`` -> 3), for placing large instances first
        self.slices = [int(m.group(1)) if (m := re.match(r"(\d+)g", t)) else 1 for t in pb.types]

    # ------------------------------------------------------------------ covers

    def _vector(self, opt: Option) -> Tuple[int, ...]:
        return opt.free + opt.total

    def _project(self, opts: GpuOptions, active: Tuple[int, ...], need: Req) -> List[Tuple[Req, int, int, int]]:
        """The GPU's options on the active dimensions, capped at ``need``: one per vector
        (the cheapest), none dominated by a cheaper one with as much everywhere."""
        key = (self.cls(opts), active, need)
        hit = self._proj.get(key)
        if hit is not None:
            return hit
        best: Dict[Req, Tuple[int, int, int]] = {}
        for idx, opt in enumerate(opts.options):
            full = self._vector(opt)
            vec = tuple(min(full[d], n) for d, n in zip(active, need))
            cost = (0 if idx == 0 else 1, opt.changes, idx)
            held = best.get(vec)
            if held is None or cost < held:
                best[vec] = cost
        items = sorted(best.items(), key=lambda kv: kv[1])
        out: List[Tuple[Req, int, int, int]] = []
        for vec, (g, c, idx) in items:
            if any(all(a >= b for a, b in zip(o[0], vec)) for o in out):
                continue  # a cheaper (or equal) option offers at least as much
            out.append((vec, g, c, idx))
        self._proj[key] = out
        return out

    def _cover_setup(self, node: Node, req: Req
                     ) -> Tuple[Tuple[int, ...], Req, List[List[Tuple[Req, int, int, int]]], List[Req]]:
        """What :meth:`cover` and the fit check search over: the dimensions ``req`` asks
        for, its amounts there, each GPU's options projected on them, and the most the GPUs
        from k on could still add (``rest[k]``), a bound that prunes both searches."""
        active = tuple(d for d in range(2 * self.K) if req[d] > 0)
        need = tuple(req[d] for d in active)
        projs = [self._project(o, active, need) for o in node.options]
        rest: List[Req] = [tuple(0 for _ in active)]
        for proj in reversed(projs):
            top = tuple(max(v[0][j] for v in proj) for j in range(len(active)))
            rest.append(tuple(a + b for a, b in zip(rest[-1], top)))
        rest.reverse()
        return active, need, projs, rest

    def cover(self, node: Node, req: Req) -> Optional[Cover]:
        """The cheapest choice of one option per GPU meeting ``req``, or None."""
        key = (node.sig, req)
        if key in self._covers:
            return self._covers[key]
        cur = node.free + node.total
        if all(c >= r for c, r in zip(cur, req)):
            out: Optional[Cover] = (0, 0, (0,) * len(node.options))
            self._covers[key] = out
            return out
        active, need, projs, rest = self._cover_setup(node, req)
        # value: (GPUs changed, instances changed, which GPUs keep (earlier ones change first), choice)
        State = Tuple[int, int, Tuple[int, ...], Tuple[int, ...]]
        states: Dict[Req, State] = {tuple(0 for _ in active): (0, 0, (), ())}
        for k, proj in enumerate(projs):
            nxt: Dict[Req, State] = {}
            after = rest[k + 1]
            for s, (g0, c0, kept, ch) in states.items():
                for vec, g, c, idx in proj:
                    s2 = tuple(min(a + b, n) for a, b, n in zip(s, vec, need))
                    if any(a + b < n for a, b, n in zip(s2, after, need)):
                        continue
                    val = (g0 + g, c0 + c, kept + (0 if idx else 1,), ch + (idx,))
                    held = nxt.get(s2)
                    if held is None or val < held:
                        nxt[s2] = val
            states = nxt
            if not states:
                break
        hit = states.get(need)
        out = None if hit is None else (hit[0], hit[1], hit[3])
        self._covers[key] = out
        return out

    def feasible(self, node: Node, req: Req) -> bool:
        """Whether some choice of one option per GPU meets ``req``: :meth:`cover` is not
        None, answered by a depth-first search that stops at the first choice found.

        Filling a small node asks this thousands of times and needs the cheapest choice
        once; the dynamic programme of :meth:`cover` builds every reachable state of every
        GPU (a few ms each on 4 GPUs), the search usually walks one path."""
        classes = tuple(self.cls(o) for o in node.options)
        key = (classes, req)
        hit = self._feasible.get(key)
        if hit is not None:
            return hit
        done = self._covers.get((node.sig, req), False)
        if done is not False:
            hit = done is not None
        elif all(c >= r for c, r in zip(node.free + node.total, req)):
            hit = True
        else:
            active, need, projs, rest = self._cover_setup(node, req)
            failed: Set[Tuple[int, Req]] = set()  # (GPU, state) from which nothing meets req

            def search(k: int, st: Req) -> bool:
                if st == need:
                    return True
                if k == len(projs) or (k, st) in failed:
                    return False
                if any(a + b < n for a, b, n in zip(st, rest[k], need)):
                    failed.add((k, st))
                    return False
                nexts = {tuple(min(a + b, n) for a, b, n in zip(st, vec, need)) for vec, _, _, _ in projs[k]}
                for s2 in sorted(nexts, key=lambda v: -sum(v)):  # the most useful option first
                    if search(k + 1, s2):
                        return True
                failed.add((k, st))
                return False

            hit = search(0, tuple(0 for _ in active))
        self._feasible[key] = hit
        return hit

    # ------------------------------------------------------------------ packing

    def _room(self, node: Node, changeable: bool, spare: Optional[Sequence[int]]
              ) -> Tuple[Callable[[List[int]], bool], List[int]]:
        """What :meth:`pack` and :meth:`exact` test a request against on ``node``: whether it
        fits (any layouts with ``changeable``, else ``spare``, default today's free
        instances), and the most of each type the node could offer."""
        K = self.K
        room = list(node.free if spare is None else spare)

        def fits(req: List[int]) -> bool:
            if changeable:
                return self.feasible(node, tuple(req))
            return all(req[t] <= room[t] for t in range(K))

        if changeable:
            most = [sum(max(o.free[t] for o in opts.options) for opts in node.options) for t in range(K)]
        else:
            most = room
        return fits, most

    def pack(self, node: Node, pool: Sequence[int], base: Req, changeable: bool,
             spare: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None
             ) -> Tuple[Dict[int, int], Req]:
        """Jobs (group index -> node parts) ``node`` can start from ``pool`` on top of
        ``base``; with ``changeable`` any layouts, else ``spare`` (free per type, default:
        today's free instances).  ``heads``: per class, a position before which every
        member's pool is 0 (:meth:`.search._Planner._heads`), so the scan for a class's
        first job left skips the groups already started."""
        pb, K = self.pb, self.K
        groups = pb.groups
        fits, most = self._room(node, changeable, spare)
        req = list(base)
        takes: Dict[int, int] = {}
        heap: List[Tuple[float, int, int, int]] = []
        for c in pb.gid_classes[node.gid]:
            if any(most[t] - req[t] < n for t, n in groups[pb.classes[c][0]].req):
                continue  # not one job of the class can fit: skip scanning its groups
            members = pb.classes[c]
            for pos in range(heads[c] if heads else 0, len(members)):
                gi = members[pos]
                if pool[gi] > 0:
                    g = groups[gi]
                    heap.append((-g.weight, g.size, gi, pos))
                    break
        heapq.heapify(heap)
        while heap:
            _, _, gi, pos = heapq.heappop(heap)
            g = groups[gi]
            k = self._most(g, pool[gi], req, most, fits)
            if k:
                for t, n in g.req:
                    req[t] += k * n
                takes[gi] = k
            if (k == pool[gi] or k == g.per_node) and all(most[t] - req[t] >= n for t, n in g.req):
                members = pb.classes[g.cls]
                for p2 in range(pos + 1, len(members)):
                    g2 = members[p2]
                    if pool[g2] > 0:
                        heapq.heappush(heap, (-groups[g2].weight, groups[g2].size, g2, p2))
                        break
        return takes, tuple(req)

    @staticmethod
    def _most(g: Group, avail: int, req: Sequence[int], most: Sequence[int],
              fits: Callable[[List[int]], bool]) -> int:
        """The most jobs of group ``g`` (at most ``avail``) that fit on top of ``req``."""
        hi = min(avail, g.per_node)
        for t, n in g.req:
            hi = min(hi, (most[t] - req[t]) // n)
        if hi <= 0:
            return 0

        def ok(k: int) -> bool:
            trial = list(req)
            for t, n in g.req:
                trial[t] += k * n
            return fits(trial)

        if ok(hi):
            return hi
        if not ok(1):
            return 0
        lo = 1  # ok(lo), not ok(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def exact(self, node: Node, pool: Sequence[int], base: Req, changeable: bool,
              first: Dict[int, int], spare: Optional[Sequence[int]] = None) -> Dict[int, int]:
        """Branch and bound over how many jobs of each group the node takes, when the
        groups it could take are few: the greedy's answer ``first`` unless a heavier
        choice fits (within :data:`EXACT_BUDGET` checks)."""
        pb, K = self.pb, self.K
        cands: List[int] = []
        for c in pb.gid_classes[node.gid]:
            for gi in pb.classes[c]:
                if pool[gi] > 0:
                    cands.append(gi)
                    if len(cands) > EXACT_GROUPS:
                        return first
        if len(cands) <= 1:
            return first
        groups = pb.groups
        cands.sort(key=lambda gi: (-groups[gi].weight, groups[gi].size, gi))
        best_w = sum(groups[gi].weight * k for gi, k in first.items())
        best = dict(first)
        budget = [EXACT_BUDGET]
        node_fits, most = self._room(node, changeable, spare)

        def fits(req: List[int]) -> bool:
            budget[0] -= 1
            return node_fits(req)
        # an upper bound on what each group could add, alone on the node
        caps = []
        for gi in cands:
            g = groups[gi]
            hi = min(pool[gi], g.per_node)
            for t, n in g.req:
                hi = min(hi, max(0, most[t] - base[t]) // n)
            caps.append(hi)
        suffix = [0.0] * (len(cands) + 1)
        for j in range(len(cands) - 1, -1, -1):
            suffix[j] = suffix[j + 1] + groups[cands[j]].weight * caps[j]

        def dfs(j: int, req: List[int], w: float, chosen: Dict[int, int]) -> None:
            nonlocal best_w, best
            if budget[0] <= 0:
                return
            if w > best_w + pb.tol:
                best_w, best = w, dict(chosen)
            if j == len(cands) or w + suffix[j] <= best_w + pb.tol:
                return
            gi = cands[j]
            g = groups[gi]
            for k in range(caps[j], -1, -1):
                if k:
                    trial = list(req)
                    for t, n in g.req:
                        trial[t] += k * n
                    if any(trial[t] > most[t] for t in range(K)) or not fits(trial):
                        continue
                    chosen[gi] = k
                    dfs(j + 1, trial, w + k * g.weight, chosen)
                    del chosen[gi]
                else:
                    dfs(j + 1, req, w, chosen)
                if budget[0] <= 0:
                    return

        dfs(0, list(base), 0.0, {})
        return best

    # ------------------------------------------------------------------ large nodes

    def large(self, node: Node) -> bool:
        """Nodes with more GPUs than :data:`EXACT_GPUS` are filled instance by instance."""
        return len(node.options) > EXACT_GPUS

    def cls(self, opts: GpuOptions) -> int:
        """The GPU class's id for everything here: classes whose options offer the same
        vectors at the same cost, in the same order, are one (GPUs whose busy instances sit
        at other places often are), so their fills are computed once."""
        c = self._cls.get(id(opts))
        if c is None:
            key = tuple((o.free, o.total, o.changes) for o in opts.options)
            c = self._cls_of.setdefault(key, len(self._cls_of))
            self._cls[id(opts)] = c
            self._alive.append(opts)
        return c

    def _masks(self, opts: GpuOptions) -> List[List[int]]:
        """Per dimension d and count n: the bitmask of this GPU class's options offering at
        least n in d (built once per class), so a fit check is a few ANDs."""
        hit = self._vecs.get(self.cls(opts))
        if hit is None:
            vecs = [self._vector(o) for o in opts.options]
            hit = []
            for d in range(self.D):
                top = max(v[d] for v in vecs)
                hit.append([sum(1 << j for j, v in enumerate(vecs) if v[d] >= n) for n in range(top + 1)])
            self._vecs[self.cls(opts)] = hit
        return hit

    def _offering(self, opts: GpuOptions, vec: Req) -> int:
        """The bitmask of options offering at least ``vec``."""
        masks = self._masks(opts)
        ok = (1 << len(opts.options)) - 1
        for d, n in enumerate(vec):
            if n:
                row = masks[d]
                if n >= len(row):
                    return 0
                ok &= row[n]
                if not ok:
                    return 0
        return ok

    def fits_gpu(self, opts: GpuOptions, vec: Req) -> bool:
        """Does some option of this GPU class offer at least ``vec``?"""
        key = (self.cls(opts), vec)
        hit = self._fits.get(key)
        if hit is None:
            hit = self._offering(opts, vec) != 0
            self._fits[key] = hit
        return hit

    def cheapest(self, opts: GpuOptions, vec: Req) -> Tuple[int, int]:
        """(instances changed, option index) of the cheapest option offering ``vec``."""
        key = (self.cls(opts), vec)
        hit = self._cheapest.get(key)
        if hit is None:
            ok = self._offering(opts, vec)
            hit = min((o.changes if j else 0, j) for j, o in enumerate(opts.options) if ok >> j & 1)
            self._cheapest[key] = hit
        return hit

    def gpu_state(self, opts: GpuOptions, vec: Req) -> int:
        """The id of (GPU class, requirement placed on it so far), so that :meth:`step`
        is one dict lookup on an int."""
        key = (self.cls(opts), vec)
        sid = self._sid.get(key)
        if sid is None:
            sid = len(self.state_vec)
            self._sid[key] = sid
            self.state_vec.append(vec)
            self.state_sum.append(sum(vec))
            self._state_opts.append(opts)
            cur = self._vector(opts.current)
            self.state_cur.append(cur)
            self.state_changed.append(any(a > c for a, c in zip(vec, cur)))
            self.state_zero.append(sid if not any(vec) else self.gpu_state(opts, self.zero))
        return sid

    def step(self, sid: int, d: int) -> int:
        """The state after one more instance of dimension ``d`` on that GPU, or -1 when
        no option of its class offers it.  Memoised: a 1,000-node plan asks this a few
        hundred thousand times about a few thousand distinct states."""
        key = sid * self.D + d
        nxt = self._step.get(key)
        if nxt is None:
            vec = list(self.state_vec[sid])
            vec[d] += 1
            opts = self._state_opts[sid]
            nxt = self.gpu_state(opts, tuple(vec)) if self.fits_gpu(opts, tuple(vec)) else -1
            self._step[key] = nxt
        return nxt

    # Filling a large node is a walk through *node states*: the tuple of its GPUs' states
    # (:meth:`gpu_state`).  Which state a job, a repack or the floors' instances lead to
    # depends only on the state and the request, not on the node or the weights, so the
    # step is memoised across nodes, evaluations and moves: nodes with the same GPU classes
    # fill along the same steps, and a 1,000-node plan computes each step once.

    def node_state(self, sids: Sequence[int]) -> int:
        """The id of a node state (its GPUs' state ids, in GPU order)."""
        key = tuple(sids)
        ns = self._nsid.get(key)
        if ns is None:
            ns = len(self.nstates)
            self._nsid[key] = ns
            self.nstates.append(key)
        return ns

    def _base_state(self, node: Node, base: Req) -> int:
        """The node's state with the instances ``base`` keeps placed (-1: they do not fit)."""
        key = (tuple(self.cls(o) for o in node.options), base)
        ns = self._based.get(key)
        if ns is None:
            fit = _Units(self, [self.gpu_state(o, self.zero) for o in node.options])
            ok = all(fit.place_kept(d) is not None for d, n in enumerate(base) for _ in range(n))
            ns = self.node_state(fit.s) if ok else -1
            self._based[key] = ns
        return ns

    def _take(self, ns: int, rid: int, req: Sequence[Tuple[int, int]], most: int) -> Tuple[int, int]:
        """How many more jobs asking ``req`` fit from node state ``ns`` as placed so far
        (at most ``most``), and the state after them."""
        if most <= 0:
            return 0, ns
        if len(req) == 1 and req[0][1] == 1:
            return self._take_one(ns, req[0][0], most)
        run = self._run(ns, rid, req, most)
        k = min(len(run), most)
        return k, (run[k - 1] if k else ns)

    def _chain(self, sid: int, d: int) -> List[int]:
        """A GPU's states after 1, 2, ... more instances of dimension ``d``, while they fit."""
        key = sid * self.D + d
        hit = self._chains.get(key)
        if hit is None:
            hit = []
            at = self.step(sid, d)
            while at >= 0:
                hit.append(at)
                at = self.step(at, d)
            self._chains[key] = hit
        return hit

    def _segments(self, ns: int, d: int) -> Tuple[List[Tuple[int, int]], int]:
        """Where :meth:`_Units.place` puts one instance of ``d`` after another from ``ns``
        until none fits, as (GPU, instances) runs, and how many that is in all.

        The same order as placing them one by one, computed per GPU: first the room
        today's layouts have, GPU by GPU; then the GPUs already changing, in order, each
        until it is full; then, again and again, the fullest unchanged GPU that can take
        one, until it is full (it is changing from its first instance on)."""
        key = (ns, d)
        hit = self._segs.get(key)
        if hit is not None:
            return hit
        s = list(self.nstates[ns])
        vecs, cur, changed, sums = self.state_vec, self.state_cur, self.state_changed, self.state_sum
        segs: List[Tuple[int, int]] = []
        total = 0
        for k, sid in enumerate(s):
            room = cur[sid][d] - vecs[sid][d]
            if not changed[sid] and room > 0:
                segs.append((k, room))
                total += room
                s[k] = self._chain(sid, d)[room - 1]
        for k, sid in enumerate(s):
            if changed[sid]:
                ch = self._chain(sid, d)
                if ch:
                    segs.append((k, len(ch)))
                    total += len(ch)
                    s[k] = ch[-1]
        # the unchanged GPUs that can take one: filling one leaves the others as they are
        left = [k for k, sid in enumerate(s) if not changed[sid] and self.step(sid, d) >= 0]
        while left:
            best = max(left, key=lambda k: (sums[s[k]], -k))  # the fullest, the first of equals
            left.remove(best)
            ch = self._chain(s[best], d)
            segs.append((best, len(ch)))
            total += len(ch)
            s[best] = ch[-1]
        hit = self._segs[key] = (segs, total)
        return hit

    def _take_one(self, ns: int, d: int, most: int) -> Tuple[int, int]:
        """:meth:`_take` for jobs asking one instance of ``d``: along :meth:`_segments`."""
        segs, total = self._segments(ns, d)
        k = min(total, most)
        if k == 0:
            return 0, ns
        key = (ns, d, k)
        hit = self._took.get(key)
        if hit is None:
            s = list(self.nstates[ns])
            left = k
            for gpu, n in segs:
                n = min(n, left)
                s[gpu] = self._chain(s[gpu], d)[n - 1]
                left -= n
                if not left:
                    break
            hit = self._took[key] = self.node_state(s)
        return k, hit

    def _run(self, ns: int, rid: int, req: Sequence[Tuple[int, int]], most: int) -> List[int]:
        """The states after 1, 2, ... more jobs asking ``req`` from ``ns``, as far as they
        fit without a repack (at least ``most`` of them when that many fit), so a group's
        jobs are taken in one step.  Memoised, and extended when asked for more."""
        key = ns * self._R + rid
        hit = self._runs.get(key)
        if hit is None:
            hit = self._runs[key] = ([], [False])
        run, full = hit
        if len(run) < most and not full[0]:
            at = run[-1] if run else ns
            fit: Optional[_Units] = None
            while len(run) < most:
                key = at * self._R + rid
                nxt = self._jobs.get(key)
                if nxt is None:  # place it (one _Units for the rest of the run)
                    if fit is None:
                        fit = _Units(self, self.nstates[at])
                    nxt = self.node_state(fit.s) if fit.job(req) else -1
                    self._jobs[key] = nxt
                else:
                    fit = None
                if nxt < 0:
                    full[0] = True  # no further job fits: the run is complete
                    break
                run.append(nxt)
                at = nxt
        return run

    def _repack_step(self, ns: int, rid: int, req: Sequence[Tuple[int, int]], base: Req) -> int:
        """The state after placing everything again plus one more job, largest first, or -1."""
        key = (ns, rid, base)
        hit = self._repacks.get(key)
        if hit is None:
            fit = _Units(self, self.nstates[ns])
            hit = self.node_state(fit.s) if fit.repack(req, base, self.slices) else -1
            self._repacks[key] = hit
        return hit

    def _floors_step(self, ns: int, floors: Sequence[Tuple[int, int]]) -> int:
        if not floors:
            return ns
        fit = _Units(self, self.nstates[ns])
        fit.floors(floors, self.K)
        return self.node_state(fit.s)

    def pack_units(self, node: Node, pool: Sequence[int], base: Req,
                   floors: Sequence[Tuple[int, int]], floors_first: bool,
                   heads: Optional[Sequence[int]] = None) -> Tuple[Dict[int, int], Req, Optional[Cover]]:
        """:meth:`pack` for a large changeable node: every instance a job needs is put on a
        GPU that can still take it (one that needs no change first, then one already
        changing, then the fullest other one); a job whose instances do not all find a
        GPU is not taken, and its class is done.  ``floors``: (type, instances) to add to
        the node's total if they fit, before or after the jobs.  ``heads`` as for
        :meth:`pack`.  Returns the jobs, the requirement met and the choice per GPU."""
        ns = self._base_state(node, base)
        if ns < 0:
            return {}, base, None
        if floors_first:
            ns = self._floors_step(ns, floors)
        pb, groups, rids = self.pb, self.pb.groups, self._rid
        takes: Dict[int, int] = {}
        heap: List[Tuple[float, int, int, int]] = []
        for c in pb.gid_classes[node.gid]:
            members = pb.classes[c]
            for pos in range(heads[c] if heads else 0, len(members)):
                gi = members[pos]
                if pool[gi] > 0:
                    heap.append((-groups[gi].weight, groups[gi].size, gi, pos))
                    break
        heapq.heapify(heap)
        repacks = REPACKS
        while heap:
            _, _, gi, pos = heapq.heappop(heap)
            g = groups[gi]
            rid, avail = rids[gi], pool[gi]
            most = min(avail, g.per_node)
            k, ns = self._take(ns, rid, g.req, most)
            while k < most:  # the next job does not fit as placed: repack (at most REPACKS times)
                if repacks <= 0:
                    break
                repacks -= 1
                nxt = self._repack_step(ns, rid, g.req, base)
                if nxt < 0:
                    break
                j, ns = self._take(nxt, rid, g.req, most - k - 1)
                k += 1 + j
            if k:
                takes[gi] = k
            if k == avail or k == g.per_node:
                members = pb.classes[g.cls]
                for p2 in range(pos + 1, len(members)):
                    if pool[members[p2]] > 0:
                        heapq.heappush(heap, (-groups[members[p2]].weight, groups[members[p2]].size,
                                              members[p2], p2))
                        break
        if not floors_first:
            ns = self._floors_step(ns, floors)
        return takes, self._req_of(ns), self._cover_of(ns)

    def _req_of(self, ns: int) -> Req:
        """The requirement a node state meets (instances placed per dimension)."""
        vecs = self.state_vec
        return tuple(sum(col) for col in zip(*(vecs[sid] for sid in self.nstates[ns])))

    def _cover_of(self, ns: int) -> Cover:
        """The choice per GPU for a node state: unchanged GPUs keep option 0, the others
        take the cheapest option offering what was placed on them."""
        hit = self._covers_ns.get(ns)
        if hit is not None:
            return hit
        idx: List[int] = []
        gpus = inst = 0
        for sid in self.nstates[ns]:
            if not self.state_changed[sid]:
                idx.append(0)
                continue
            best = self.cheapest(self._state_opts[sid], self.state_vec[sid])
            idx.append(best[1])
            if best[1]:
                gpus += 1
                inst += best[0]
        out = (gpus, inst, tuple(idx))
        self._covers_ns[ns] = out
        return out


class _Units:
    """The instances placed on each GPU of one large node: a list of GPU state ids
    (:meth:`Packer.gpu_state`), worked on when a node-state step is not memoised yet.

    A GPU is *changed* once something placed on it exceeds its current layout
    (``Packer.state_changed``); rows only grow while a node is filled, so that is the
    same as remembering when it first happened.  Trying one more instance on a GPU is
    one memoised lookup (:meth:`Packer.step`).
    """

    def __init__(self, pk: Packer, sids: Sequence[int]) -> None:
        self.pk = pk
        self.s = list(sids)  #: per GPU: its state id
        self.cur = [pk.state_cur[sid] for sid in sids]

    def row(self, k: int) -> Req:
        """What GPU k holds so far, per requirement dimension."""
        return self.pk.state_vec[self.s[k]]

    def place(self, d: int) -> Optional[int]:
        """Put one instance of dimension ``d`` on a GPU: one whose layout already has it
        free, else one already changing, else the fullest other one that can take it
        (the first of equals)."""
        pk, s, cur = self.pk, self.s, self.cur
        vecs, changed, step = pk.state_vec, pk.state_changed, pk.step
        G = len(s)
        pick = nxt = -1
        for k in range(G):
            if not changed[s[k]] and vecs[s[k]][d] < cur[k][d]:
                pick = k
                break
        if pick < 0:
            sums = pk.state_sum
            best_fill = -1
            for k in range(G):
                if changed[s[k]]:
                    n = step(s[k], d)
                    if n >= 0:
                        pick, nxt = k, n
                        break
                elif sums[s[k]] > best_fill:
                    n = step(s[k], d)
                    if n >= 0:
                        pick, nxt, best_fill = k, n, sums[s[k]]
            if pick < 0:
                return None
        else:
            nxt = step(s[pick], d)
        s[pick] = nxt
        return pick

    def place_kept(self, d: int) -> Optional[int]:
        """Put one instance a floor keeps (a total dimension) on the GPU least likely to be
        recut for jobs: the most busy instances of the type first, then the most of it."""
        K = self.pk.K
        s, cur, vecs, changed = self.s, self.cur, self.pk.state_vec, self.pk.state_changed
        best, best_key = -1, None
        for k in range(len(s)):
            if not changed[s[k]] and vecs[s[k]][d] < cur[k][d]:
                key = (-(cur[k][d] - cur[k][d - K]) if d >= K else 0, -cur[k][d], k)
                if best_key is None or key < best_key:
                    best, best_key = k, key
        if best < 0:
            return self.place(d)
        s[best] = self.pk.step(s[best], d)  # within today's layout: always offered
        return best

    def repack(self, req: Sequence[Tuple[int, int]], base: Req, slices: Sequence[int]) -> bool:
        """Place everything placed so far plus one more job again, largest instances first
        (what a floor keeps first); keep the result if it all fits, else change nothing."""
        saved = list(self.s)
        K = self.pk.K
        units = [d for k in range(len(self.s)) for d, n in enumerate(self.row(k)) if d < K for _ in range(n)]
        units += [t for t, n in req for _ in range(n)]
        units.sort(key=lambda d: (-slices[d], d))
        self.s = [self.pk.state_zero[sid] for sid in self.s]
        ok = all(self.place_kept(d) is not None for d, n in enumerate(base) for _ in range(n))
        ok = ok and all(self.place(d) is not None for d in units)
        if not ok:
            self.s = saved
        return ok

    def job(self, req: Sequence[Tuple[int, int]]) -> bool:
        """Place every instance of one job, or none."""
        saved = list(self.s)
        for t, n in req:
            for _ in range(n):
                if self.place(t) is None:
                    self.s = saved
                    return False
        return True

    def floors(self, floors: Sequence[Tuple[int, int]], K: int) -> None:
        for t, n in floors:
            for _ in range(n):
                if self.place(K + t) is None:
                    break
