"""The event-driven cluster: jobs arrive, wait, start on one node, end; nodes drain, change
layout and come back.  Pure (no clock, no files): time is a number moved from event to event,
never stepped second by second.

Scheduling, close to Slurm's (docs/simulate.md):

* Pending jobs in priority order (higher first, then submit time, then trace order).
* A job starts on the first node (cluster order) in one of its partitions with enough free
  instances of every type it asks for: all of them on that one node.
* Backfill by time limit (EASY style): the first ``reserve`` jobs that cannot start get a
  reservation at the earliest time their instances free up on some node, from the running
  jobs' time limits.  A lower-priority job starts now only where it ends (by its time limit)
  before every reservation of that node, or leaves the reserved instances free.  So a job
  never starts ahead of a reserved job in a way that delays it.

Layout changes (a :class:`Controller` decides them, e.g. the real planner):

* The node drains: no new job lands on it; running jobs go on.
* Once idle, its instances are destroyed and created: ``instance_s`` per instance changed.
* Then the controller's finish: in the same cycle when that is within ``apply_wait`` of the
  cycle that drained it (rebalance waits that long for ``sync --pending``), else at the
  next cycle; then ``reconfigure_s`` (slurmctld's reconfigure and the node registering) and
  the node takes jobs again with its new layout.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Protocol,
                    Sequence, Set, Tuple)

from ..core.layout import Layout, format_counts
from .cluster import Cluster
from .trace import SimJob

UP, DRAINING, APPLYING, APPLIED, RECONFIGURING = "up", "draining", "applying", "applied", "reconf"


@dataclass(frozen=True)
class Costs:
    """What a layout change costs, in seconds (defaults: docs/simulate.md says where from)."""

    instance_s: float = 1.0  #: per instance destroyed or created
    reconfigure_s: float = 4.0  #: reconfigure + the node registering again
    apply_wait_s: float = 90.0  #: [rebalance] apply_wait: a cycle waits this long to finish


@dataclass(frozen=True)
class Settings:
    cycle_s: float = 60.0  #: seconds between two controller cycles
    reserve: int = 1  #: backfill reservations per pass (jobs that cannot start now)
    scan: int = 16  #: jobs of one kind looked at past a reservation-blocked one
    samples: int = 400  #: points of the time series (for --plot)


@dataclass
class NodeState:
    """One node while the simulation runs (mutable, private to the engine)."""

    index: int
    name: str
    partitions: Tuple[str, ...]
    models: Tuple[str, ...]
    layouts: List[Layout]
    cap: List[int]
    free: List[int]
    status: str = UP
    want: Optional[List[Layout]] = None
    changes: int = 0  #: instances destroyed + created by the change in progress
    changed_cycle: Optional[int] = None  #: the cycle that drained it for its change
    last_changed_cycle: Optional[int] = None
    drained_at: float = 0.0
    running: List[Tuple[float, int]] = field(default_factory=list)  #: (limit end, job), sorted


@dataclass(frozen=True)
class Change:
    """A controller's decision: give ``node`` these layouts (one per GPU)."""

    node: str
    layouts: Tuple[Layout, ...]
    instance_changes: int


class View(Protocol):
    """What a controller may read of the running simulation."""

    @property
    def nodes(self) -> Sequence[NodeState]: ...

    @property
    def types(self) -> Sequence[str]: ...

    @property
    def cycle(self) -> int: ...

    @property
    def now(self) -> float:
        """Seconds since the trace's start."""
        ...

    @property
    def layout_version(self) -> int:
        """Changes whenever a node starts or ends a layout change."""
        ...

    def pending_groups(self) -> Iterable[Tuple[Tuple[Tuple[int, int], ...], Tuple[str, ...], int, int]]:
        """(request as (type index, count), partitions, priority, jobs) per kind of pending job."""
        ...

    def job_request(self, j: int) -> Tuple[Tuple[int, int], ...]:
        """Job ``j``'s request as (type index, count): what it holds while it runs."""
        ...


class Controller(Protocol):
    def cycle(self, view: View) -> Sequence[Change]:
        """The changes to start now (nodes that are up only)."""
        ...


@dataclass
class Sample:
    t: float
    pending: int
    running: int
    instances: Dict[str, int]


@dataclass
class Outcome:
    """What one run produced: per job start/end, and the cluster's changes."""

    start: List[Optional[float]]
    end: List[Optional[float]]
    reconfigurations: int
    instance_changes: int
    drained_s: float
    samples: List[Sample]
    cycles: int
    plans: int  #: controller calls that did work (the rest were skipped as no-ops)
    final: Dict[str, List[str]] = field(default_factory=dict)  #: model -> layouts at the end


#: A backfill reservation on a node: (start time, instances per type left free then, request).
Reservation = Tuple[float, List[int], Tuple[Tuple[int, int], ...]]


class _Sig:
    """Pending jobs of one kind (same request and partitions), in priority order."""

    __slots__ = ("req", "parts", "keys", "jobs", "elig", "elig_set", "holders", "holders_at")

    def __init__(self, req: Tuple[Tuple[int, int], ...], parts: Tuple[str, ...], elig: List[int]):
        self.req = req
        self.parts = parts
        self.keys: List[Tuple[int, float, int]] = []
        self.jobs: List[int] = []
        self.elig = elig
        self.elig_set = frozenset(elig)
        self.holders: List[int] = []  #: eligible nodes whose layout can hold the request
        self.holders_at = -1  #: the engine's layout_version they were found at


class Engine:
    """One run of one policy over one trace (see the module doc)."""

    def __init__(self, cluster: Cluster, jobs: Sequence[SimJob], types: Sequence[str],
                 costs: Costs = Costs(), settings: Settings = Settings(),
                 controller: Optional[Controller] = None):
        self.jobs = jobs
        self.types = list(types)
        self.tindex = {t: i for i, t in enumerate(self.types)}
        self.costs, self.settings, self.controller = costs, settings, controller
        nt = len(self.types)
        self.nodes: List[NodeState] = []
        for i, spec in enumerate(cluster.nodes):
            layouts = [lay for _, lay in spec.gpus]
            cap = self._cap(layouts)
            self.nodes.append(NodeState(i, spec.name, spec.partitions,
                                        tuple(m for m, _ in spec.gpus), layouts, cap, list(cap)))
        self.by_name = {n.name: n for n in self.nodes}
        self.with_free: List[Set[int]] = [set() for _ in range(nt)]
        for n in self.nodes:
            self._index(n)
        self.now = 0.0
        self.cycle = 0
        self.sigs: Dict[Tuple[Tuple[Tuple[int, int], ...], Tuple[str, ...]], _Sig] = {}
        self.groups: Dict[Tuple[Tuple[Tuple[int, int], ...], Tuple[str, ...], int], int] = {}
        self.pending = 0
        self.running = 0
        self.req = [tuple(sorted((self.tindex[t], k) for t, k in j.request)) for j in jobs]
        self.start: List[Optional[float]] = [None] * len(jobs)
        self.end: List[Optional[float]] = [None] * len(jobs)
        self.job_node: List[int] = [-1] * len(jobs)
        self.events: List[Tuple[float, int, str, int]] = []
        self.seq = 0
        self.reconfigurations = 0
        self.instance_changes = 0
        self.drained_s = 0.0
        self.samples: List[Sample] = []
        self.plans = 0
        self._elig_cache: Dict[Tuple[str, ...], List[int]] = {}
        self.last_change = 0
        self.layout_version = 0
        self._lazy: List[_Sig] = []  #: blocked kinds whose reservation is not made yet
        self._made = 0  #: reservations made in this pass
        self.hysteresis = 0  #: the controller's hysteresis, in cycles (how long to keep looking)

    # ------------------------------------------------------------------ bookkeeping

    def _cap(self, layouts: Sequence[Layout]) -> List[int]:
        cap = [0] * len(self.types)
        for lay in layouts:
            for name, k in lay.counts().items():
                if name in self.tindex:
                    cap[self.tindex[name]] += k
        return cap

    def _index(self, n: NodeState) -> None:
        for t, f in enumerate(n.free):
            if f > 0 and n.status == UP:
                self.with_free[t].add(n.index)
            else:
                self.with_free[t].discard(n.index)

    def _elig(self, parts: Tuple[str, ...]) -> List[int]:
        hit = self._elig_cache.get(parts)
        if hit is None:
            hit = [n.index for n in self.nodes if not parts or set(parts) & set(n.partitions)]
            self._elig_cache[parts] = hit
        return hit

    def _push(self, t: float, kind: str, what: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, what))

    def job_request(self, j: int) -> Tuple[Tuple[int, int], ...]:
        return self.req[j]

    def pending_groups(self) -> Iterable[Tuple[Tuple[Tuple[int, int], ...], Tuple[str, ...], int, int]]:
        for (req, parts, prio), k in self.groups.items():
            if k > 0:
                yield req, parts, prio, k

    # ------------------------------------------------------------------ jobs

    def _submit(self, j: int) -> None:
        job = self.jobs[j]
        key = (self.req[j], job.partitions)
        sig = self.sigs.get(key)
        if sig is None:
            sig = self.sigs[key] = _Sig(self.req[j], job.partitions, self._elig(job.partitions))
        k = (-job.priority, job.submit, j)
        if not sig.keys or k > sig.keys[-1]:
            sig.keys.append(k)
            sig.jobs.append(j)
        else:
            at = bisect.bisect(sig.keys, k)
            sig.keys.insert(at, k)
            sig.jobs.insert(at, j)
        g = (self.req[j], job.partitions, job.priority)
        self.groups[g] = self.groups.get(g, 0) + 1
        self.pending += 1

    def _start(self, j: int, n: NodeState, sig: _Sig, at: int) -> None:
        del sig.keys[at]
        del sig.jobs[at]
        job = self.jobs[j]
        g = (self.req[j], job.partitions, job.priority)
        self.groups[g] -= 1
        if not self.groups[g]:
            del self.groups[g]
        self.pending -= 1
        self.running += 1
        for t, k in self.req[j]:
            n.free[t] -= k
            if n.free[t] <= 0:
                self.with_free[t].discard(n.index)
        bisect.insort(n.running, (self.now + job.timelimit, j))
        self.start[j] = self.now
        self.job_node[j] = n.index
        self._push(self.now + job.duration, "end", j)

    def _end(self, j: int) -> None:
        n = self.nodes[self.job_node[j]]
        job = self.jobs[j]
        self.end[j] = self.now
        self.running -= 1
        limit = self.start[j]
        assert limit is not None
        n.running.remove((limit + job.timelimit, j))
        for t, k in self.req[j]:
            n.free[t] += k
            if n.status == UP:
                self.with_free[t].add(n.index)
        if n.status == DRAINING and not n.running:
            self._apply(n)

    # ------------------------------------------------------------------ layout changes

    def _drain(self, c: Change) -> None:
        n = self.by_name[c.node]
        if n.status != UP:
            return
        n.status = DRAINING
        n.want = list(c.layouts)
        n.changes = c.instance_changes
        n.changed_cycle = self.cycle
        n.last_changed_cycle = self.cycle
        n.drained_at = self.now
        self.layout_version += 1
        self.reconfigurations += 1
        self.instance_changes += c.instance_changes
        self._index(n)
        if not n.running:
            self._apply(n)

    def _apply(self, n: NodeState) -> None:
        n.status = APPLYING
        self._push(self.now + n.changes * self.costs.instance_s, "applied", n.index)

    def _applied(self, n: NodeState) -> None:
        cycle_at = self._cycle_time(n.changed_cycle or 0)
        if self.now <= cycle_at + self.costs.apply_wait_s:
            self._finish(n)
        else:
            n.status = APPLIED  # the next cycle finishes it

    def _finish(self, n: NodeState) -> None:
        n.status = RECONFIGURING
        self._push(self.now + self.costs.reconfigure_s, "resume", n.index)

    def _resume(self, n: NodeState) -> None:
        assert n.want is not None
        n.layouts = n.want
        n.want = None
        n.cap = self._cap(n.layouts)
        n.free = list(n.cap)  # idle: nothing ran while it changed
        n.status = UP
        self.layout_version += 1
        self.drained_s += self.now - n.drained_at
        self._index(n)

    def _cycle_time(self, cycle: int) -> float:
        """When cycle ``cycle`` runs: cycle 1 at time 0."""
        return (cycle - 1) * self.settings.cycle_s

    # ------------------------------------------------------------------ scheduling

    def _fits(self, n: NodeState, req: Tuple[Tuple[int, int], ...]) -> bool:
        free = n.free
        for t, k in req:
            if free[t] < k:
                return False
        return True

    def _schedule(self) -> None:
        """One pass: start what may start now (module doc)."""
        if not self.pending:
            return
        heads = [(s.keys[0], id(s), s, 0, 0) for s in self.sigs.values() if s.jobs]
        heapq.heapify(heads)
        reservations: Dict[int, List[Reservation]] = {}
        # Reservations are made lazily: only once a later job fits somewhere (most passes start
        # nothing after the first blocked job).  Nothing starts between a blocked job and the
        # moment its reservation is made, so it sees the same cluster either way.
        self._lazy = []
        self._made = 0
        while heads:
            _, _, sig, at, scanned = heapq.heappop(heads)
            j = sig.jobs[at]
            node, blocked = self._place(sig, self.now + self.jobs[j].timelimit, reservations)
            if node is not None:
                self._start(j, node, sig, at)
                if at < len(sig.jobs):
                    heapq.heappush(heads, (sig.keys[at], id(sig), sig, at, scanned))
                continue
            if blocked:  # fits now, but would delay a reserved job: a shorter one may fit
                if at + 1 < len(sig.jobs) and scanned < self.settings.scan:
                    heapq.heappush(heads, (sig.keys[at + 1], id(sig), sig, at + 1, scanned + 1))
                continue
            # Fits nowhere now: every later job of this kind neither; reserve for this one.
            if self._made + len(self._lazy) < self.settings.reserve + 64:
                self._lazy.append(sig)

    def _materialize(self, reservations: Dict[int, List[Reservation]]) -> None:
        """Make the reservations of the jobs found blocked so far, in priority order, up to
        ``reserve`` of them (a job no node could hold takes none)."""
        for sig in self._lazy:
            if self._made >= self.settings.reserve:
                break
            if self._reserve(sig, reservations):
                self._made += 1
        self._lazy = []

    def _place(self, sig: _Sig, ends: float, reservations: Dict[int, List[Reservation]]
               ) -> Tuple[Optional[NodeState], bool]:
        """The node to start on now, or (None, whether some node fits but a reservation blocks)."""
        req = sig.req
        if not req:
            return None, False
        cands = self.with_free[req[0][0]]
        if not cands:
            return None, False
        blocked = False
        elig = sig.elig_set if sig.parts else None
        for i in sorted(cands) if len(cands) > 1 else cands:
            if elig is not None and i not in elig:
                continue
            n = self.nodes[i]
            if not self._fits(n, req):
                continue
            if self._lazy:
                self._materialize(reservations)
            res = reservations.get(i)
            if res and not self._respects(res, req, ends):
                blocked = True
                continue
            if res:
                for when, slack, _ in res:
                    if when < ends:
                        for t, k in req:
                            slack[t] -= k
            return n, False
        return None, blocked

    @staticmethod
    def _respects(res: List[Reservation], req: Tuple[Tuple[int, int], ...],
                  ends: float) -> bool:
        for when, slack, _ in res:
            if when < ends:
                for t, k in req:
                    if slack[t] < k:
                        return False
        return True

    def _reserve(self, sig: _Sig, reservations: Dict[int, List[Reservation]]) -> bool:
        """The earliest time and node ``sig``'s head could start, from the running jobs' time
        limits; its slack (what stays free there then) is what later jobs may still use.
        False when no node in service could hold it (then it takes no reservation slot)."""
        best: Optional[Tuple[float, int, List[int]]] = None
        req = sig.req
        if sig.holders_at != self.layout_version:
            sig.holders = [i for i in sig.elig
                           if all(self.nodes[i].cap[t] >= k for t, k in req)]
            sig.holders_at = self.layout_version
        for i in sig.holders:
            n = self.nodes[i]
            if n.status != UP:
                continue
            avail = list(n.free)
            for _, _, held in reservations.get(i, ()):
                for t, k in held:  # an earlier reservation holds its instances from then on
                    avail[t] -= k
            at = self.now
            ok = all(avail[t] >= k for t, k in req)
            if not ok:
                for end, j in n.running:
                    if best is not None and end >= best[0]:
                        break
                    for t, k in self.req[j]:
                        avail[t] += k
                    if all(avail[t] >= k for t, k in req):
                        at, ok = end, True
                        break
            if ok and (best is None or at < best[0]):
                slack = list(avail)
                for t, k in req:
                    slack[t] -= k
                best = (at, i, slack)
        if best is None:  # no node in service could ever hold it: no reservation
            return False
        reservations.setdefault(best[1], []).append((best[0], best[2], req))
        return True

    # ------------------------------------------------------------------ the run

    def _sample(self, t: float) -> None:
        inst: Dict[str, int] = {}
        for n in self.nodes:
            for t_i, k in enumerate(n.cap):
                if k:
                    inst[self.types[t_i]] = inst.get(self.types[t_i], 0) + k
        self.samples.append(Sample(t, self.pending, self.running, inst))

    def run(self) -> Outcome:
        order = range(len(self.jobs))  # jobs come sorted by submit time
        nxt = 0
        span = max((j.submit + j.duration for j in self.jobs), default=0.0)
        every = max(span / max(self.settings.samples, 1), self.settings.cycle_s, 1.0)
        next_sample = 0.0
        cycles = 0
        if self.controller is not None:
            self._push(0.0, "cycle", 0)
        while nxt < len(self.jobs) or self.events:
            t_sub = self.jobs[nxt].submit if nxt < len(self.jobs) else math.inf
            t_ev = self.events[0][0] if self.events else math.inf
            self.now = min(t_sub, t_ev)
            while next_sample <= self.now:
                self._sample(next_sample)
                next_sample += every
            tick = False
            while self.events and self.events[0][0] <= self.now:
                _, _, kind, what = heapq.heappop(self.events)
                if kind == "end":
                    self._end(what)
                elif kind == "applied":
                    self._applied(self.nodes[what])
                elif kind == "resume":
                    self._resume(self.nodes[what])
                else:
                    tick = True
            while nxt < len(self.jobs) and self.jobs[order[nxt]].submit <= self.now:
                self._submit(order[nxt])
                nxt += 1
            self._schedule()
            if tick:
                cycles += 1
                self._tick(nxt < len(self.jobs))
        self._sample(self.now)
        final: Dict[str, List[str]] = {}
        for n in self.nodes:
            for model, lay in zip(n.models, n.want or n.layouts):
                text = format_counts(lay)
                if text not in final.setdefault(model, []):
                    final[model].append(text)
        return Outcome(self.start, self.end, self.reconfigurations, self.instance_changes,
                       self.drained_s, self.samples, cycles, self.plans, final)

    def _tick(self, more_jobs: bool) -> None:
        assert self.controller is not None
        self.cycle += 1
        for n in self.nodes:  # the finish step: nodes that applied since the last cycle
            if n.status == APPLIED:
                self._finish(n)
        changes = self.controller.cycle(self)
        for c in changes:
            self._drain(c)
        if changes:
            self.last_change = self.cycle
        busy = any(n.status != UP for n in self.nodes)
        # Nothing left to change the cluster: pending jobs that no layout change starts
        # within a few quiet cycles (hysteresis included) are left unserved.
        quiet = self.cycle - self.last_change > 20 + self.hysteresis
        if more_jobs or self.running or busy or (self.pending and not quiet):
            self._push(self._cycle_time(self.cycle + 1), "cycle", self.cycle + 1)

    def count_plan(self) -> None:
        self.plans += 1
