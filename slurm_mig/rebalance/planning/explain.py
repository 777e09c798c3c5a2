"""The planner's result and its one-line reasons.  Pure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ...core.layout import format_counts
from .model import GpuChange, NodePlan, Plan, PlanTotals
from .problem import duration

if TYPE_CHECKING:
    from .problem import Node
    from .search import _Planner


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _parts(partitions: Sequence[str]) -> str:
    if not partitions:
        return "any partition"
    return f"partition{'s' if len(partitions) > 1 else ''} {','.join(partitions)}"


def _gpu_list(indexes: Sequence[int]) -> str:
    """``gpu0-3,gpu6``."""
    out: List[str] = []
    run: List[int] = []
    for i in sorted(indexes):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"gpu{run[0]}" if len(run) == 1 else f"gpu{run[0]}-{run[-1]}")
        run = [i]
    if run:
        out.append(f"gpu{run[0]}" if len(run) == 1 else f"gpu{run[0]}-{run[-1]}")
    return ",".join(out)


def _by_text(pairs: Iterable[Tuple[str, int]]) -> List[Tuple[str, List[int]]]:
    groups: Dict[str, List[int]] = {}
    for text, index in pairs:
        groups.setdefault(text, []).append(index)
    return sorted(groups.items(), key=lambda kv: (min(kv[1]), kv[0]))


def _names(names: Sequence[str], most: int = 2) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def shape_text(req: Sequence[Tuple[str, int]]) -> str:
    """``3g.40gb`` for one instance, ``2x3g.40gb+1g.10gb`` for a job asking more."""
    return "+".join(t if n == 1 else f"{n}x{t}" for t, n in req)


def build(pl: _Planner) -> Plan:
    """Turn the finished search (:class:`.search._Planner`) into a :class:`Plan`."""
    gpu_changes: List[Tuple[GpuChange, ...]] = []
    for node in pl.nodes:
        out = []
        for k, gpu in enumerate(sorted(node.src.gpus, key=lambda g: g.index)):
            opt = node.choice[k] if node.choice else None
            out.append(GpuChange(gpu.index, gpu.model_key, gpu.layout,
                                 opt.layout if opt is not None else gpu.layout, frozenset(gpu.busy)))
        gpu_changes.append(tuple(out))
    holders: Dict[int, List[str]] = {t: [] for t, f in enumerate(pl.floor) if f}
    pids: Dict[int, Any] = {}  # id(layout) -> (layout, its profile ids): layouts repeat across nodes
    for node, gpus in zip(pl.nodes, gpu_changes):
        for t in holders:
            for model, g in zip(node.models, gpus):
                hit = pids.get(id(g.after))
                if hit is None:
                    hit = pids[id(g.after)] = (g.after, {i.profile_id for i in g.after})
                if pl.type_ids(model)[t] in hit[1]:
                    holders[t].append(node.src.name)
                    break
    leftover = _leftover(pl) if pl.cap_hit else {}
    plans = []
    texts: Dict[Any, str] = {}  # a node's layouts as text, by its layout objects (they repeat)
    for i, (node, gpus) in enumerate(zip(pl.nodes, gpu_changes)):
        if i in pl.changed:
            line = _change_line(pl, i, node, gpus, pl.changed[i], holders)
            plans.append(NodePlan(node.src.name, "change", gpus, (line,)))
        else:
            plans.append(NodePlan(node.src.name, "keep", gpus, (_keep_line(pl, i, node, gpus, leftover, texts),)))
    # only a node with a choice can have a GPU whose layout changes
    recut = [gpus for node, gpus in zip(pl.nodes, gpu_changes) if node.choice]
    changed_gpus = sum(1 for gpus in recut for g in gpus if g.changed)
    totals = PlanTotals(
        demand_instances=sum(g.count * g.size for g in pl.groups),
        demand_jobs=sum(g.jobs for g in pl.groups),
        demand_weight=sum(g.count * g.weight for g in pl.groups),
        satisfied_before=pl.before[1],
        satisfied_after=pl.after[1],
        weight_before=pl.before[2],
        weight_after=pl.after[2],
        nodes_changed=len(pl.changed),
        gpus_changed=changed_gpus,
        instance_changes=sum(g.instance_changes for gpus in recut for g in gpus),
        jobs_before=pl.before[0],
        jobs_after=pl.after[0],
    )
    return Plan(cycle=pl.cycle, nodes=tuple(plans), notes=tuple(_notes(pl, totals)), totals=totals)


def _who(pl: _Planner, gi: int, k: int) -> str:
    g = pl.groups[gi]
    jobs = g.jobs if k >= g.count else max(1, k // g.parts)
    prio = g.weight * g.parts
    return f"{_plural(jobs, 'pending job')} (priority {prio:g}) in {_parts(g.partitions)}"


def _change_line(pl: _Planner, i: int, node: Node, gpus: Sequence[GpuChange], rec: Mapping[str, Any],
                 holders: Mapping[int, List[str]]) -> str:
    name = node.src.name
    parts = []
    by_shape: Dict[Tuple[Tuple[str, int], ...], List[Tuple[int, int]]] = {}
    for gi, k in sorted(rec["takes"].items()):
        req = tuple((pl.types[t], n) for t, n in pl.groups[gi].req)
        by_shape.setdefault(req, []).append((gi, k))
    for req, members in sorted(by_shape.items(), key=lambda kv: -max(pl.groups[gi].weight for gi, _ in kv[1])):
        k_all = sum(k for _, k in members)
        parts.append(f"{shape_text(req)} x{k_all} wanted by " + ", ".join(_who(pl, gi, k) for gi, k in members))
    K = len(pl.types)
    new_total = [sum(o.total[t] for o in node.choice or ()) for t in range(K)]
    for t, f in enumerate(pl.floor):
        if f and new_total[t] > node.total[t] and rec["floor_gain"] > 0:
            parts.append(f"{pl.types[t]} x{new_total[t] - node.total[t]} restores floor {pl.types[t]} >= {f}")
    if not parts:
        parts.append("starts no more jobs here, but frees room on other nodes")
    gave = sum(k - rec["takes"].get(gi, 0) for gi, k in rec["held"].items() if k > rec["takes"].get(gi, 0))
    if gave:
        parts.append(f"gives up room for {_plural(gave, 'job')} that could start on today's layout "
                     f"(gain {rec['gain']:g})")
    state = f"{name} {node.cond}"
    if node.cond == "mixed" and pl.policy.drain_auto and node.free_in is not None:
        state += f" ({_drain_text(pl, i, node)}; running jobs keep their instances)"
    elif node.cond == "mixed":
        state += " (policy drains mixed nodes; running jobs keep their instances)"
    if node.recent:
        state += f" (changed in cycle {node.src.last_changed_cycle}; gain {rec['gain']:g} beats hysteresis)"
    parts.append(state)
    moves = _by_text(
        (f"from {format_counts(g.before)} to {format_counts(g.after)}", g.index) for g in gpus if g.changed
    )
    parts.append("changes " + ", ".join(f"{_gpu_list(ix)} {text}" for text, ix in moves))
    if pl.spare.get(i):
        parts.append(pl.spare[i])
    busy = [f"{i} on gpu{g.index}" for g in gpus if g.changed for i in g.after if (i.profile_id, i.start) in g.busy]
    if busy:
        parts.append("keeps busy " + ", ".join(busy))
    for t, f in enumerate(pl.floor):
        if f and new_total[t] < node.total[t]:
            others = [n for n in holders[t] if n != name] or [name]
            parts.append(f"keeps floor {pl.types[t]} >= {f} via {_names(others)}")
    return f"{name}: " + "; ".join(parts)


def _keep_line(pl: _Planner, i: int, node: Node, gpus: Sequence[GpuChange],
               leftover: Mapping[int, bool], texts: Optional[Dict[Any, str]] = None) -> str:
    key = tuple((id(g.before), g.index) for g in gpus)
    what = None if texts is None else texts.get(key)
    if what is None:
        have = _by_text((format_counts(g.before), g.index) for g in gpus)
        what = ", ".join(f"{_gpu_list(ix)} {text}" for text, ix in have) or "no GPUs"
        if texts is not None:
            texts[key] = what  # the layouts stay alive in the plan: ids are not reused
    auto = pl.policy.drain_auto and node.cond == "mixed" and node.free_in is not None
    check = pl.drain_checks.get(i) if auto else None
    if node.why_not is not None:
        why = node.why_not
    elif leftover.get(i):
        why = f"per-cycle cap of {pl.policy.max_nodes_per_cycle} changed nodes reached"
        if auto:
            why += f" ({_drain_text(pl, i, node)})"
    elif check is not None and check[1] <= check[2]:
        jobs, gain, idle = check
        why = (f"mixed; its jobs end in {duration(node.free_in or 0.0)} (by their time limits); a "
               f"new layout would start {_plural(jobs, 'more job')}, gaining {gain:.0f} slice-s "
               f"within the {duration(pl.policy.drain_horizon)} drain horizon, but the node would "
               f"stand idle {idle:.0f} slice-s while its jobs end: draining does not pay")
    else:
        why = "no change here would start more pending jobs"
        if auto:
            why += f" (mixed; its jobs end in {duration(node.free_in or 0.0)} by their time limits)"
    return f"{node.src.name}: keeps {what}; {why}"


def _drain_text(pl: _Planner, i: int, node: Node) -> str:
    """Why an "auto" drain of a mixed node pays: when its jobs end, the gain, the idle cost."""
    text = (f"drain_mixed = auto: its jobs end in {duration(node.free_in or 0.0)} by their "
            f"time limits")
    check = pl.drain_checks.get(i)
    if check is not None:
        jobs, gain, idle = check
        text += (f"; starting {_plural(jobs, 'more job')} gains {gain:.0f} slice-s within the "
                 f"{duration(pl.policy.drain_horizon)} horizon against {idle:.0f} slice-s idle "
                 f"while it drains")
    return text


def _leftover(pl: _Planner) -> Dict[int, bool]:
    """Which unchanged changeable nodes a move would still pay on (the cap stopped them).
    Nodes of one class holding the same jobs get the same answer: evaluated once."""
    out = {}
    seen: Dict[Any, Tuple[bool, int]] = {}
    for i, node in enumerate(pl.nodes):
        if node.why_not is None and i not in pl.changed:
            # a mixed node's drain cost is its own ("auto"): part of the answer's key
            key = (node.sig, node.recent, node.free_in, node.idle_ss,
                   tuple(sorted(pl.hosted[i].items())))
            if key not in seen:
                mv = pl._evaluate(i)
                seen[key] = (mv is not None and pl._passes(i, mv), i)
            out[i], first = seen[key]
            if first != i and first in pl.drain_checks:  # the same check, for its explanation
                pl.drain_checks.setdefault(i, pl.drain_checks[first])
    return out


def _notes(pl: _Planner, totals: PlanTotals) -> List[str]:
    notes = []
    unservable: Dict[Tuple[int, Tuple[str, ...]], List[float]] = {}
    waiting: Dict[Tuple[Tuple[str, int], ...], List[int]] = {}
    for gi, g in enumerate(pl.groups):
        if not pl.servable(g):
            t = next((t for t, _ in g.req if not any(gid in pl.offered[t] for gid in g.gids)), g.req[0][0])
            acc = unservable.setdefault((t, g.partitions), [0, 0.0])
            acc[0] += g.jobs
            acc[1] = max(acc[1], g.weight * g.parts)
        elif pl.pool[gi] > 0:
            req = tuple((pl.types[t], n) for t, n in g.req)
            w = waiting.setdefault(req, [0, 0])
            w[0] += pl.pool[gi]
            w[1] += pl.pool[gi] * g.size
    for (t, parts), (jobs, weight) in sorted(unservable.items(), key=lambda kv: (pl.types[kv[0][0]], kv[0][1])):
        tname = pl.types[t]
        if not pl.offered[t]:
            why = f"no GPU model in the cluster offers {tname}"
        else:
            why = f"no node in {_parts(parts)} has a GPU model that offers {tname}"
        notes.append(f"{tname}: {_plural(int(jobs), 'pending job')} (priority up to {weight:g}) in "
                     f"{_parts(parts)} cannot be served: {why}; fix the job's --gres or the partition")
    for req, (jobs, inst) in sorted(waiting.items()):
        notes.append(f"{shape_text(req)}: {_plural(jobs, 'pending job')} ({_plural(inst, 'instance')}) of "
                     f"servable demand still cannot start after this plan")
    for t, f in enumerate(pl.floor):
        if f and pl.totals[t] < f:
            notes.append(f"floor {pl.types[t]} >= {f} not met: {pl.totals[t]} in the cluster and no "
                         f"changeable node could add one")
    notes.append(
        f"plan: {_plural(totals.nodes_changed, 'node')}, {_plural(totals.gpus_changed, 'GPU')} changed; "
        f"demand {_plural(totals.demand_jobs, 'pending job')} ({_plural(totals.demand_instances, 'instance')}): "
        f"{totals.jobs_before} could start before, {totals.jobs_after} after "
        f"(priority weight {totals.weight_before:g} -> {totals.weight_after:g})"
    )
    return notes
