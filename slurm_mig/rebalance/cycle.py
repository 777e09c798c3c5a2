"""``slurm-mig rebalance``: one controller-side cycle of queue-driven repartitioning.

The cycle (docs/rebalance.md)::

    lock      <rebalance.lock>; a second run exits 7 at once; held to the end
    read      pending jobs and nodes (one squeue, one sinfo: states, gres, Extra); Slurm not
              answering is SlurmUnreadable (exit 9): nothing planned, the state file untouched
    sort      nodes drained by rebalance with no want: applied (or Slurm disagrees) ->
              to finish; agrees -> resumed (crash repair); nothing published -> wait
    plan      nodes' published layouts (Extra ``have``) + demand -> the pure planner
    record    per changed node: its want in Extra first, then the drain; a greppable line
    save      cycle number and last-changed cycle per node in <rebalance.state_file>; the
              recent demand per type (what spare room gets) in <rebalance.demand_file>
    wait      up to [rebalance] apply_wait for the changed nodes' ``sync --pending``
    finish    for every node that applied: its Gres= in the node include, ONE reconfigure,
              registration, resume (:mod:`slurm_mig.rebalance.finish`); the nodes read
              again before the include and after the reconfigure (a late apply joins)

The node applies its want with ``slurm-mig sync --pending`` (:mod:`slurm_mig.change.pending`) and
hands back with ``applied:<cycle>`` in Extra; it never reconfigures Slurm: on Slurm < 23.11
that is a slurmctld restart, so the controller does it once for all the nodes of a cycle.
With the node's timer running within ``apply_wait``, one rebalance run is a whole change.

Want before drain: a crash between the two leaves a want on a node that is not drained,
which ``sync --pending`` applies anyway (it drains by itself); the reverse order could
leave a drained node with nothing to do.  A node drained by rebalance is finished or
resumed by a later cycle, so no node stays drained without a reason saying what to do.

Orchestration only: the reader, the Slurm client, the channel, the clock and the planner
are parameters, carried as one frozen :class:`Cycle`.  A cycle is cut in two: the sorting
of the nodes (:func:`classify`) and the changes to make (:func:`changes_of`) are pure, on
values read once; then the actions (resume, record, save, wait, finish) make the Slurm
calls and channel writes.  Drain reasons are built and read in :mod:`slurm_mig.change.reasons`.
Returns a frozen :class:`CycleResult` whose ``as_dict()`` has stable keys;
:mod:`slurm_mig.app.render` prints it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import (AbstractSet, Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional,
                    Sequence, Set, Tuple)

from ..change import reasons
from ..change.channel import (MAX_CYCLE, Channel, ChannelError, ExtraChannel, format_channel,
                              have_gres, parse_channel)
from ..change.reasons import REBALANCE, one_line
from ..change.steps import resume_stale_holds
from ..core.catalog import Catalog, load_catalog
from ..core.errors import ConfigError, InputError, LockBusy, SlurmError, SlurmMigError, SlurmUnreadable
from ..core.layout import Layout, format_counts, format_layout, parse_layout
from ..host.atomic import write_json_atomic
from ..host.config import Config
from ..host.locking import node_lock
from ..slurm import SlurmClient
from ..slurm.demand import skipped
from ..slurm.model import NodeInfo, PendingJob, RunningJob
from ..slurm.reader import SlurmReader
from .finish import FinishResult, Ready, finish, verdict
from . import recent as _recent
from .metrics import Recording, cycle_metrics
from .planning import DemandItem, JobEnd, Plan, PlanGpu, PlanNode, Policy, plan
from .planning.model import NodePlan

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- state file


def read_state(path: str) -> dict:
    """The state file, read strictly (never through a symlink).  A damaged one stops
    rebalance with exit 3 instead of being moved aside on its own: the cycle number it keeps
    tags the wants in the nodes' Extra field, so starting again at cycle 1 is the admin's
    call (docs/rebalance.md)."""
    from ..host.safefs import UnsafePath, read_file

    fix = "move it aside (the next cycle starts again at cycle 1, hysteresis forgotten)"
    try:
        raw = read_file(path, "rebalance state file")
        if raw is None:
            return {"cycle": 0, "last_changed": {}}
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError, UnsafePath) as err:
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(f"{path}: cannot read the rebalance state: {reason}; {fix}") from err
    data = data if isinstance(data, dict) else {}
    data.setdefault("last_changed", {})
    cycle, changed = data.get("cycle"), data["last_changed"]
    if (type(cycle) is not int or not 0 <= cycle <= MAX_CYCLE or not isinstance(changed, dict)
            or not all(type(v) is int and 0 <= v <= MAX_CYCLE for v in changed.values())
            or not all(isinstance(data.get(k), (dict, type(None))) for k in ("last", "last_action"))):
        raise ConfigError(f"{path}: not a rebalance state file (cycle, last_changed, last, "
                          f"last_action of the wrong type); {fix}")
    return data


#: What the state file keeps of a cycle's result, for `rebalance --last` (not the whole plan).
LAST_KEYS = ("cycle", "dry_run", "changed", "resumed", "finished", "reconfigured", "reconfigures",
             "failed", "wait", "actions", "notes", "explain")


def _did_something(result: Mapping[str, Any]) -> bool:
    return bool(result["changed"] or result["resumed"] or result["finished"] or result["failed"])


def save_last(path: str, result: Mapping[str, Any], now: float) -> None:
    """Keep the cycle's decisions beside the cycle number: ``last`` (this cycle) and
    ``last_action`` (the latest cycle that changed, finished, resumed or failed something),
    so that `slurm-mig rebalance --last` can say at 3 a.m. why a node was drained, without
    the logs and after many quiet cycles."""
    state = read_state(path)
    kept = {k: result[k] for k in LAST_KEYS}
    kept["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    state["last"] = kept
    if _did_something(result):
        state["last_action"] = kept
    write_json_atomic(path, state)


def read_last(path: str) -> Dict[str, Any]:
    """``{"last": ..., "last_action": ...}`` from the state file (None where absent)."""
    state = read_state(path)
    return {"state_file": path, "last": state.get("last"), "last_action": state.get("last_action")}


# ----------------------------------------------------------------------------- Slurm -> planner


def _state_text(info: NodeInfo) -> str:
    return "+".join([info.state] + [f.lower() for f in info.flags])


#: What the cycle read of one running job on one node: (seconds until its start + time limit,
#: None without a limit; instances per type it holds there).
Ending = Tuple[Optional[float], Mapping[Optional[str], int]]


def job_ends(jobs: Iterable[RunningJob], now: float) -> Dict[str, List[Ending]]:
    """Per node, its running jobs' expected ends (start + time limit, seconds from ``now``,
    never below 0; None for a job without a limit or whose start Slurm did not say) and the
    instances each holds there.  Pure."""
    out: Dict[str, List[Ending]] = {}
    for job in jobs:
        end = job.end_time
        left = None if end is None else max(0.0, float(end) - now)
        held = job.per_node()
        for name in job.nodes:
            out.setdefault(name, []).append((left, held))
    return out


def _job_end(ending: Ending, models: Sequence[Any]) -> JobEnd:
    left, held = ending
    slices = 0
    for name, n in held.items():
        for model in models if name else ():  # an untyped gpu:N: which instance, Slurm does not say
            try:
                slices += n * model.profile(name).compute_slices
                break
            except InputError:
                continue
    return JobEnd(left, slices)


def plan_node(info: NodeInfo, ch: Optional[Channel], last_changed: Optional[int], catalog: Catalog,
              ends: Optional[Sequence[Ending]] = None) -> Tuple[Optional[PlanNode], Optional[str]]:
    """The planner's view of one node, or (None, why it is left out).  ``ends``: its running
    jobs' expected ends (:func:`job_ends`), when the cycle read them."""
    if ch is None or not ch.have:
        return None, (f"node {info.name}: left out: no layout published in its Extra field; "
                      f"run `slurm-mig sync --pending` on it (its timer does)")
    gpus: List[PlanGpu] = []
    counts: Dict[str, int] = {}
    used = {t for t, n in info.gres_used.items() if n > 0}
    want = dict(ch.want)
    for index, key, text in ch.have:
        try:
            layout = parse_layout(text, catalog.model(key))
            wanted = parse_layout(want[index], catalog.model(key)) if index in want else None
        except InputError as err:
            return None, f"node {info.name}: left out: layout of gpu {index} unreadable: {err}"
        for name, n in layout.counts().items():
            counts[name] = counts.get(name, 0) + n
        if wanted is not None:  # a change in progress: the planner sees the layout to come
            gpus.append(PlanGpu(index, key, wanted))
            continue
        # Slurm says how many of a type are in use, not which: every instance of a used
        # type counts as busy (never touched; only matters with drain_mixed).
        busy = frozenset((i.profile_id, i.start) for i in layout if i.name in used)
        gpus.append(PlanGpu(index, key, layout, busy))
    slurm_counts = {t: n for t, n in info.gres.items() if n}
    if counts != slurm_counts:
        return None, (f"node {info.name}: left out: its published layout ({_counts(counts)}) "
                      f"disagrees with Slurm's gres ({_counts(slurm_counts)}); run "
                      f"`slurm-mig sync --pending` on it")
    state = _state_text(info)
    if ch.want:
        state = "drained"  # a change is in progress: not re-planned, still counted for floors
    running = None
    if ends is not None:
        models = [catalog.model(key) for _, key, _ in ch.have]
        running = tuple(_job_end(e, models) for e in ends)
    return PlanNode(info.name, tuple(info.partitions), state, tuple(gpus),
                    last_changed_cycle=last_changed, running=running), None


def _counts(counts: Mapping[str, int]) -> str:
    return ",".join(f"{t}:{n}" for t, n in sorted(counts.items())) or "none"


def priority_weight(priority: int) -> float:
    """A job's priority as the planner weighs it: at least 1, rounded to 2 significant
    digits, so jobs whose priorities differ by a few percent form one group."""
    return float(f"{max(int(priority), 1):.2g}")


def plan_demand(jobs: Iterable[PendingJob],
                coming: Optional[Mapping[str, int]] = None) -> List[DemandItem]:
    """The planner's demand: pending jobs grouped by what one job needs on one node
    (types and counts), partitions, weight (:func:`priority_weight`) and node count.

    Skipped as in :func:`slurm_mig.slurm.demand.skipped` (held, dependency, begin time,
    throttle, limits); an array record counts its tasks that may run at once (``%N``);
    untyped ``gpu:N`` requests are left out (any instance serves them; no layout helps).
    A request per job or per task on a multi-node job is spread evenly over its nodes
    (rounded up).  ``coming``: instances per type that changes in progress will offer
    (wants not yet applied): the heaviest jobs they can hold are taken off first, so the
    same demand is not served twice."""
    acc: Dict[Tuple[Tuple[Tuple[str, int], ...], Tuple[str, ...], float, int], List[int]] = {}
    for job in jobs:
        if job.state.upper() != "PENDING" or not job.requests or skipped(job):
            continue
        nodes = max(job.nodes_requested, 1)
        shape: Dict[str, int] = {}
        for req in job.requests:
            if req.type is None:
                continue
            per_node = -(-job.instances(req) // nodes)
            if per_node > 0:
                shape[req.type] = shape.get(req.type, 0) + per_node
        if not shape or job.runnable_at_once <= 0:
            continue
        key = (tuple(sorted(shape.items())), tuple(sorted(set(job.partition))),
               priority_weight(job.priority), nodes)
        a = acc.setdefault(key, [0, 0])
        a[0] += job.runnable_at_once
        a[1] += job.array_tasks_pending
    left = dict(coming or {})
    out = []
    for (shape_, parts, weight, nodes), (count, tasks) in sorted(
            acc.items(), key=lambda kv: (-kv[0][2], kv[0][0], kv[0][1], kv[0][3])):
        while count > 0 and left and all(left.get(t, 0) >= n * nodes for t, n in shape_):
            for t, n in shape_:
                left[t] -= n * nodes
            count -= 1
        if count <= 0:
            continue
        single = len(shape_) == 1 and shape_[0][1] == 1
        out.append(DemandItem(shape_[0][0], count, weight, parts, tasks,
                              () if single else shape_, nodes))
    return out


def _coming(nodes: Sequence[PlanNode], in_progress: AbstractSet[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for n in nodes:
        if n.name in in_progress:
            for g in n.gpus:
                for name, k in g.layout.counts().items():
                    out[name] = out.get(name, 0) + k
    return out


def policy_of(config: Config) -> Policy:
    r = config.rebalance
    return Policy(max_nodes_per_cycle=r.max_nodes_per_cycle, floor=dict(r.floor),
                  hysteresis_cycles=r.hysteresis_cycles, drain_mixed=r.drain_mixed,
                  drain_horizon=r.drain_horizon, nodes=r.nodes, partitions=r.partitions)


def drain_reason(cycle: int, wanted: Mapping[int, Layout]) -> str:
    """The record step's drain reason (:func:`slurm_mig.change.reasons.new_layout`)."""
    return reasons.new_layout(cycle, reasons.summary(
        {gpu: format_counts(layout) for gpu, layout in wanted.items()}))


def finishing_node(info: NodeInfo, ch: Channel, catalog: Catalog,
                   last_changed: Optional[int]) -> PlanNode:
    """A node that applied its layout and waits for the finish step, as the planner sees it:
    drained (not changeable), with the layout it is about to offer."""
    gpus = tuple(PlanGpu(index, key, parse_layout(text, catalog.model(key)))
                 for index, key, text in ch.have)
    return PlanNode(info.name, tuple(info.partitions), "drained", gpus,
                    last_changed_cycle=last_changed)


@dataclass(frozen=True)
class Waited:
    """What waiting for the changed nodes' ``sync --pending`` saw (:func:`wait_applied`)."""

    seconds: float = 0.0
    applied: Tuple[str, ...] = ()  #: nodes that now say ``applied``
    pending: Tuple[str, ...] = ()  #: nodes whose want is still there
    failed: Tuple[str, ...] = ()  #: nodes whose own ``sync --pending`` failed

    def as_dict(self) -> Dict[str, Any]:
        return {"seconds": self.seconds, "applied": list(self.applied),
                "pending": list(self.pending), "failed": list(self.failed)}


def wait_applied(channel: ExtraChannel, slurm: SlurmClient, names: Sequence[str], wait: float, *,
                 clock: Callable[[], float], sleep: Callable[[float], None],
                 poll: float) -> Waited:
    """Look at the nodes' Extra (one ``scontrol show node`` each) until none of them has a
    want left, or ``wait`` seconds have passed.  A node whose own ``sync --pending`` failed
    (its drain reason says so, read through ``slurm``) is not waited for: waiting longer for
    it would only hold the lock and the other nodes' finish."""
    t0 = clock()
    deadline = t0 + wait
    left: Set[str] = set(names)
    applied: List[str] = []
    failed: List[str] = []
    while left:
        try:
            states = slurm.nodes(sorted(left))
        except SlurmError:
            states = {}
        for n, st in states.items():
            # drain_flagged: since 23.11 (measured on 24.11) a resume keeps the old Reason
            if st.drain_flagged and reasons.is_node_failure(st.reason):
                left.discard(n)
                failed.append(n)
        for n in sorted(left):
            try:
                ch = parse_channel(channel.read(n), n)
            except ChannelError:  # not ours any more: nothing to wait for
                left.discard(n)
                continue
            except SlurmError:  # slurmctld busy or restarting: look again
                continue
            if ch is None or not ch.want:
                left.discard(n)
                if ch is not None and ch.applied is not None:
                    applied.append(n)
        if not left or clock() >= deadline:
            break
        sleep(max(0.0, min(poll, deadline - clock())))
    return Waited(round(clock() - t0, 3), tuple(sorted(applied)), tuple(sorted(left)),
                  tuple(sorted(failed)))


# ----------------------------------------------------------------------------- the cycle


@dataclass(frozen=True)
class Cycle:
    """What one cycle works with, handed down to its actions: the collaborators, the clock,
    and the cycle number."""

    config: Config
    reader: SlurmReader
    slurm: SlurmClient
    channel: ExtraChannel
    number: int
    dry_run: bool = False
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll: float = 1.0
    wall: Callable[[], float] = time.time  #: Unix time: running jobs' ends, recent demand's decay

    @property
    def head(self) -> str:
        """``slurm-mig rebalance: cycle N``: how every action line starts."""
        return f"{REBALANCE}: cycle {self.number}"

    def line(self, text: str) -> str:
        """An action line; a dry run says so."""
        return text + (" (dry run)" if self.dry_run else "")


@dataclass(frozen=True)
class Sorted:
    """The cycle's nodes sorted before planning (:func:`classify`)."""

    nodes: Tuple[PlanNode, ...]  #: the planner's view of every node it may count
    in_progress: FrozenSet[str]  #: changes under way: their layout to come is counted
    resume: Tuple[Tuple[str, str], ...]  #: (node, why): drained by rebalance, nothing to do
    held: Tuple[str, ...]  #: finishing them failed before: no new change until that is fixed
    notes: Tuple[str, ...]


@dataclass(frozen=True)
class Change:
    """One node's new layout: its want for Extra, its drain reason, the action line."""

    node: str
    want: Tuple[Tuple[int, str], ...]  #: (gpu, canonical layout)
    reason: str
    line: str

    def as_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "want": {str(g): l for g, l in self.want},
                "reason": self.reason}


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did (or would do); ``as_dict()`` is its ``--json`` output."""

    cycle: int
    dry_run: bool
    changed: Tuple[Change, ...]
    resumed: Tuple[str, ...]
    done: FinishResult
    wait: Waited
    actions: Tuple[str, ...]
    notes: Tuple[str, ...]
    plan: Plan

    @property
    def failed(self) -> Tuple[Dict[str, str], ...]:
        return self.done.failed

    def as_dict(self) -> Dict[str, Any]:
        return {
            "cycle": self.cycle,
            "dry_run": self.dry_run,
            "changed": [c.as_dict() for c in self.changed],
            "resumed": list(self.resumed),
            "finished": list(self.done.finished),
            "reconfigured": self.done.reconfigured,
            "reconfigures": self.done.reconfigures,
            "hold": self.done.hold.as_dict(),
            "failed": list(self.done.failed),
            "wait": self.wait.as_dict(),
            "actions": list(self.actions),
            "notes": list(self.notes),
            "explain": list(self.plan.explain()),
            "plan": self.plan.as_dict(),
        }


def rebalance(config: Config, reader: SlurmReader, slurm: SlurmClient, channel: ExtraChannel, *,
              dry_run: bool = False, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep, poll: float = 1.0,
              wall: Callable[[], float] = time.time) -> CycleResult:
    """One cycle; see the module doc.  ``reader``: pending jobs, nodes with Extra;
    ``slurm``: node state, drain, resume, reconfigure; ``channel``: read/write a node's
    Extra.  ``poll``: seconds between two looks while waiting."""
    r = config.rebalance
    if not r.enabled and not dry_run:
        raise ConfigError(f"{config.source}: rebalance.enabled: rebalance is off; set "
                          f"[rebalance] enabled = true (try `slurm-mig rebalance --dry-run` first)")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(node_lock(r.lock, 0))
        except LockBusy as err:
            raise LockBusy(f"another slurm-mig rebalance is running (lock {r.lock}); it ends by "
                           f"itself, find it with `fuser {r.lock}`") from err
        state = read_state(r.state_file)
        seen = Recording(reader)  # what Slurm said at the start, for the metrics
        cy = Cycle(config, seen, slurm, channel, state["cycle"] + 1, dry_run, clock, sleep,
                   max(poll, 0.0), wall)
        with cycle_metrics(cy, seen, wall) as metered:
            result = metered.result = _cycle(cy, state)
        if not dry_run:
            save_last(r.state_file, result.as_dict(), wall())
        return result


def _ours(info: NodeInfo) -> bool:
    """Drained by rebalance (or by ``sync --pending`` for rebalance's want)."""
    return info.drain_flagged and reasons.is_rebalance(info.reason)


def _late_invalid(info: NodeInfo, ch: Optional[Channel]) -> bool:
    """Drained by slurmctld itself for its gres count (``INVALID_REG``, ``gres/...``) while
    its Extra says it applied a layout: a node whose gres.conf went new before its ``Gres=``
    did (a late apply that a reconfigure saw first).  Finishing it is the cure."""
    return (ch is not None and ch.applied is not None and not ch.want
            and reasons.slurmctld_gres_drain(info.flags, info.reason))


def _to_finish(infos: Mapping[str, NodeInfo], catalog: Catalog,
               names: Optional[AbstractSet[str]] = None) -> Dict[str, Tuple[Ready, str]]:
    """Nodes drained by rebalance, no want left, and a layout Slurm has not been told of."""
    out = {}
    for name, info in sorted(infos.items()):
        if names is not None and name not in names:
            continue
        try:
            ch = parse_channel(info.extra, name)
        except ChannelError:
            continue
        if not _ours(info) and not _late_invalid(info, ch):
            continue
        if ch is not None and ch.want:
            continue
        what, why = verdict(info, ch, catalog)
        if what == "finish":
            assert ch is not None  # verdict: no channel is "wait"
            out[name] = (Ready(name, ch, have_gres(name, ch, catalog)), why)
    return out


def classify(infos: Mapping[str, NodeInfo], ready: Mapping[str, Tuple[Ready, str]],
             catalog: Catalog, last_changed: Mapping[str, int],
             ends: Optional[Mapping[str, Sequence[Ending]]] = None) -> Sorted:
    """Sort the nodes before planning (pure): finishing in this cycle (the planner counts
    their layout to come), drained by rebalance with nothing to do (to resume), a change in
    progress, plannable, or left out (a note says why).  ``ends``: running jobs' expected
    ends per node (:func:`job_ends`); None when not read."""
    notes: List[str] = []
    nodes: List[PlanNode] = []
    in_progress: Set[str] = set()
    resume: List[Tuple[str, str]] = []
    held: List[str] = []
    for name, info in sorted(infos.items()):
        try:
            ch = parse_channel(info.extra, name)
        except ChannelError as err:
            notes.append(f"node {name}: left out: {err}")
            continue
        if name in ready:
            _, why = ready[name]
            nodes.append(finishing_node(info, ready[name][0].channel, catalog,
                                        last_changed.get(name)))
            in_progress.add(name)
            notes.append(f"node {name}: {why}; finishing it in this cycle")
            if reasons.is_failure(info.reason):
                held.append(name)
            continue
        if _ours(info) and (ch is None or not ch.want):
            what, why = verdict(info, ch, catalog)
            if what == "wait":
                notes.append(why)
            else:
                resume.append((name, why))
            continue  # a resumed node is planned again next cycle, from its state then
        if ch is not None and ch.applied is not None and not ch.want:
            notes.append(f"node {name}: left out: it applied the layout of cycle {ch.applied} but "
                         f"is not drained by rebalance any more ({_state_text(info)}); drain it "
                         f"with a reason starting '{REBALANCE}' and the next cycle reconfigures "
                         f"Slurm and resumes it")
            continue
        pn, why_not = plan_node(info, ch, last_changed.get(name), catalog,
                                None if ends is None else ends.get(name, ()))
        if pn is None:
            notes.append(why_not or f"node {name}: left out")
            continue
        if ch is not None and ch.want:
            in_progress.add(name)
            notes.append(f"node {name}: layout change from cycle {ch.cycle} in progress "
                         f"(want {'; '.join(f'gpu {g} {l}' for g, l in ch.want)}); waits for "
                         f"`slurm-mig sync --pending` on the node")
        nodes.append(pn)
    return Sorted(tuple(nodes), frozenset(in_progress), tuple(resume), tuple(held), tuple(notes))


def changes_of(the_plan: Plan, cycle: int, held: Sequence[str]) -> Tuple[Change, ...]:
    """The plan's changed nodes as changes to record (pure); none while ``held``."""
    if held:
        return ()
    return tuple(_change(np_, cycle) for np_ in the_plan.changed())


def _change(np_: NodePlan, cycle: int) -> Change:
    wanted = np_.wanted()
    line = (f"{REBALANCE}: cycle {cycle}: node {np_.name}: drain for "
            f"{'; '.join(f'gpu {g} {format_counts(l)}' for g, l in sorted(wanted.items()))} "
            f"({' '.join(np_.explain)})")
    return Change(np_.name, tuple(sorted((g, format_layout(l)) for g, l in wanted.items())),
                  drain_reason(cycle, wanted), line)


def _resume(cy: Cycle, nodes: Sequence[Tuple[str, str]]) -> List[str]:
    """Resume nodes drained by rebalance that have nothing left to do; their action lines."""
    actions = []
    for name, why in nodes:
        line = f"{cy.head}: node {name}: resume: {why}"
        actions.append(cy.line(line))
        if not cy.dry_run:
            cy.slurm.resume(name)
            log.info("%s", line)
    return actions


def _stale_holds(cy: Cycle, infos: Mapping[str, NodeInfo]) -> List[str]:
    """Nodes left drained with the hold's reason by a run that died before resuming them
    (docs/rebalance.md, crash table): resumed once registered; action lines."""
    names = sorted(n for n, i in infos.items() if i.drain_flagged and reasons.is_hold(i.reason))
    if not names:
        return []
    if cy.dry_run:
        return [cy.line(f"{cy.head}: node {n}: resume once registered: left held by a run that "
                        f"died ({infos[n].reason})") for n in names]
    try:
        resumed, left = resume_stale_holds(cy.slurm, names, log)
    except SlurmError as err:
        return [cy.line(f"{cy.head}: nodes {','.join(names)}: still held by a run that died; "
                        f"reading them failed ({one_line(err)}); the next cycle tries again")]
    lines = [f"{cy.head}: node {n}: resume: held across a reconfigure by a run that died; "
             f"registered" for n in resumed]
    lines += [f"{cy.head}: node {n}: still held by a run that died, not registered yet; the "
              f"next cycle resumes it" for n in left]
    for line in lines:
        log.info("%s", line)
    return [cy.line(line) for line in lines]


def _record(cy: Cycle, changes: Sequence[Change], infos: Mapping[str, NodeInfo],
            last_changed: Dict[str, int]) -> List[str]:
    """Each change's want in the node's Extra first, then its drain (module doc: why)."""
    actions = []
    for c in changes:
        if not cy.dry_run:
            ch = parse_channel(infos[c.node].extra, c.node) or Channel()
            cy.channel.write(c.node, format_channel(ch.with_want(dict(c.want), cy.number)))
            cy.slurm.drain(c.node, c.reason)
            last_changed[c.node] = cy.number
            log.info("%s", c.line)
        actions.append(cy.line(c.line))
    return actions


def _wait(cy: Cycle, changes: Sequence[Change], catalog: Catalog,
          ready: Dict[str, Tuple[Ready, str]]) -> Tuple[Waited, List[str]]:
    """Wait for the changed nodes' ``sync --pending``; those that applied join ``ready``.
    Returns what the wait saw and its notes."""
    r = cy.config.rebalance
    notes: List[str] = []
    if not changes or r.apply_wait <= 0:
        return Waited(), notes
    waited = wait_applied(cy.channel, cy.slurm, [c.node for c in changes], r.apply_wait,
                          clock=cy.clock, sleep=cy.sleep, poll=cy.poll)
    if waited.applied:  # read again: the nodes' reasons and Extra have changed
        try:
            more = _to_finish(cy.reader.nodes(list(waited.applied)), catalog, set(waited.applied))
        except SlurmUnreadable as err:  # changes are recorded: not exit 9; next cycle
            more = {}
            notes.append(f"applied {', '.join(waited.applied)}, but reading the nodes "
                         f"again failed ({err}); a later cycle finishes them")
        ready.update(more)
    if waited.pending:
        notes.append(f"not applied within [rebalance] apply_wait ({r.apply_wait:g}s): "
                     f"{', '.join(waited.pending)}; a later cycle finishes them")
    if waited.failed:
        notes.append(f"sync --pending failed on {', '.join(waited.failed)} (see the "
                     f"node's drain reason); the node's timer retries once it is fixed")
    return waited, notes


def _late(cy: Cycle, catalog: Catalog) -> Callable[[AbstractSet[str]], List[Ready]]:
    """The finish step's re-read (docs/rebalance.md, "A late apply"): one ``sinfo`` of every
    node; those ready to finish now that the step does not have yet."""
    def late(known: AbstractSet[str]) -> List[Ready]:
        found = _to_finish(cy.reader.nodes(), catalog)
        return [r for n, (r, _) in sorted(found.items()) if n not in known]
    return late


def _save_memory(path: str, memory: _recent.Memory) -> List[str]:
    """Write the recent-demand memory; a failure is a note (it is a hint for spare room,
    and this cycle's changes are already recorded)."""
    try:
        _recent.write_memory(path, memory)
    except (OSError, SlurmMigError) as err:
        line = f"{path}: recent demand not saved ({one_line(err)}); the next cycle starts it again"
        log.warning("%s", line)
        return [line]
    return []


def _cycle(cy: Cycle, state: Mapping[str, Any]) -> CycleResult:
    r = cy.config.rebalance
    last_changed: Dict[str, int] = dict(state["last_changed"])
    try:  # the queue first: with slurmctld down the first read's wait is the only one
        jobs = cy.reader.pending_jobs()
        infos = cy.reader.nodes()
        # drain_mixed = "auto" plans mixed nodes by when their jobs end: one more squeue
        ends = None
        if r.drain_mixed == "auto" and any(i.state in ("mixed", "allocated") for i in infos.values()):
            ends = job_ends(cy.reader.running_jobs(), cy.wall())
    except SlurmUnreadable as err:  # nothing read: no plan, no state written (exit 9)
        raise SlurmUnreadable(f"{err}; rebalance planned and changed nothing") from err
    memory, memory_warning = _recent.read_memory(r.demand_file)
    catalog = load_catalog()
    # Pure: sort the nodes, plan, decide the changes.
    ready = _to_finish(infos, catalog)
    sorted_ = classify(infos, ready, catalog, last_changed, ends)
    demand = plan_demand(jobs, _coming(sorted_.nodes, sorted_.in_progress))
    pending = plan_demand(jobs) if sorted_.in_progress else demand  # all of it is asked for
    memory = _recent.update(memory, _recent.asked_now(pending, infos.values()), cy.wall(),
                            r.demand_half_life)
    the_plan = plan(list(sorted_.nodes), demand, policy_of(cy.config), cy.number,
                    recent=memory.types)
    changes = changes_of(the_plan, cy.number, sorted_.held)
    notes = list(sorted_.notes)
    if memory_warning:
        log.warning("%s", memory_warning)
        notes.append(memory_warning)
    if sorted_.held and the_plan.changed():
        notes.append(f"no new layout in this cycle: finishing {', '.join(sorted_.held)} failed "
                     f"before (see its drain reason); fix that first")
    # The actions: Slurm calls and channel writes.
    actions = _resume(cy, sorted_.resume)
    actions += _record(cy, changes, infos, last_changed)
    waited = Waited()
    if not cy.dry_run:
        kept = {k: state[k] for k in ("last", "last_action") if k in state}
        write_json_atomic(r.state_file, {"cycle": cy.number, "last_changed": last_changed, **kept})
        notes += _save_memory(r.demand_file, memory)
        waited, wait_notes = _wait(cy, changes, catalog, ready)
        notes += wait_notes
    done = finish(cy.config, cy.slurm, cy.channel, [ready[n][0] for n in sorted(ready)],
                  cy.number, late=_late(cy, catalog), dry_run=cy.dry_run, clock=cy.clock,
                  sleep=cy.sleep, poll=cy.poll)
    if not done.reconfigures:  # a reconfigure takes the stale holds over itself
        actions += _stale_holds(cy, infos)
    return CycleResult(cy.number, cy.dry_run, changes, tuple(n for n, _ in sorted_.resume), done,
                       waited, tuple(actions) + done.actions, tuple(notes + list(the_plan.notes)),
                       the_plan)


def default_collaborators(config: Config, environ: Optional[Mapping[str, str]] = None
                          ) -> Tuple[SlurmReader, SlurmClient, ExtraChannel]:
    """The reader ([slurm] reader: pyslurm when it imports against this Slurm, else the
    commands' JSON), the scontrol client and the Extra channel."""
    from ..change.channel import ScontrolExtra
    from ..slurm.client import CommandSlurm
    from ..slurm.reader import slurm_reader

    scontrol = config.slurm.scontrol
    bindir = os.path.dirname(scontrol)
    squeue = os.path.join(bindir, "squeue") if bindir else "squeue"
    sinfo = os.path.join(bindir, "sinfo") if bindir else "sinfo"
    reader = slurm_reader(config.slurm.reader, squeue=squeue, sinfo=sinfo, env=environ)
    return (reader,
            CommandSlurm(scontrol, config.slurm.reconfigure_command, env=environ),
            ScontrolExtra(scontrol, env=environ))


__all__ = ["rebalance", "read_state", "plan_node", "plan_demand", "job_ends", "priority_weight", "policy_of", "drain_reason",
           "wait_applied"]
