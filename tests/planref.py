"""An exact reference for the rebalance planner's objective, by brute force.  Test helper.

Independent of slurm_mig.rebalance.planning's search and packing: it shares only the
input values (PlanNode, DemandItem, Policy, condition) and the catalog/layout core.

Objective (docs/planner.md), compared as a tuple, larger is better:
``(weight of jobs that can start, sum over floored types of min(total, floor),
-nodes changed, -GPUs changed, -instances destroyed+created)``; hard limits: busy
instances kept, only changeable nodes change, at most ``max_nodes_per_cycle`` nodes, no
floored type ends below min(its total today, its floor).

Method: every valid layout (``+me`` included) of every changeable GPU that keeps the GPU's
busy instances, merged per node into the distinct (free per type, total per floored
type) vectors at least cost; then a dynamic programme over nodes whose state is the
pending jobs not yet placed, the floored totals so far and the nodes changed so far, each
node taking every packing of the remaining jobs that fits its vector.  A job (node part)
starts only on one node in its partitions with every instance it asks for free there.

Small clusters only (a few nodes, a few GPUs, a few job groups of a few jobs).
``min_gain`` 0 and ``hysteresis_gain`` None only (what the generated cases use).
"""

from __future__ import annotations

import fnmatch
import random
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from slurm_mig.core.catalog import GpuModel, load_catalog, normalize_profile_name
from slurm_mig.core.errors import UnknownProfile
from slurm_mig.core.layout import Layout, enumerate_layouts, is_valid
from slurm_mig.rebalance.planning import DemandItem, PlanGpu, PlanNode, Policy, condition

CATALOG = load_catalog()
Score = Tuple[float, int, int, int, int]


class Case:
    """The inputs, normalised: job groups and per-node facts."""

    def __init__(self, nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Policy, cycle: int):
        self.policy, self.cycle = policy, cycle
        jobs: List[Tuple[Dict[str, int], float, int, Tuple[str, ...]]] = []
        for d in demand:
            if d.count <= 0:
                continue
            req: Dict[str, int] = {}
            for t, n in (d.shape or ((d.profile, 1),)):
                if n > 0:
                    req[normalize_profile_name(t)] = req.get(normalize_profile_name(t), 0) + n
            parts = max(d.nodes, 1)
            jobs.append((req, d.priority_weight / parts, d.count * parts, tuple(d.partitions)))
        self.floor = {normalize_profile_name(t): int(f) for t, f in policy.floor.items() if int(f) > 0}
        self.types = sorted({t for j in jobs for t in j[0]} | set(self.floor))
        self.ftypes = sorted(self.floor)
        self.jobs = jobs
        self.nodes = sorted(nodes, key=lambda n: n.name)

    def eligible(self, job_parts: Tuple[str, ...], node: PlanNode) -> bool:
        return not job_parts or bool(set(job_parts) & set(node.partitions))

    def changeable(self, node: PlanNode) -> bool:
        pol = self.policy
        cond = condition(node.state)
        if cond not in ("idle", "mixed") or (cond == "mixed" and not pol.drain_mixed):
            return False
        if not node.allowed or not node.gpus:
            return False
        if pol.nodes is not None and not any(node.name == p or fnmatch.fnmatchcase(node.name, p)
                                             for p in pol.nodes):
            return False
        if pol.partitions is not None and not set(node.partitions) & set(pol.partitions):
            return False
        recent = (node.last_changed_cycle is not None
                  and self.cycle - node.last_changed_cycle < pol.hysteresis_cycles)
        return not recent

    def supplies(self, node: PlanNode) -> bool:
        return condition(node.state) in ("idle", "mixed", "completing")

    def vectors(self, model: GpuModel, layout: Layout, busy) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        names = {}
        for t in self.types:
            try:
                names[model.profile(t).id] = t
            except UnknownProfile:
                pass
        free = {t: 0 for t in self.types}
        total = {t: 0 for t in self.ftypes}
        for inst in layout:
            t = names.get(inst.profile_id)
            if t is None:
                continue
            if (inst.profile_id, inst.start) not in busy:
                free[t] += 1
            if t in total:
                total[t] += 1
        return tuple(free[t] for t in self.types), tuple(total[t] for t in self.ftypes)


def _gpu_choices(case: Case, gpu: PlanGpu, changeable: bool, layouts_cache: Dict[str, Tuple[Layout, ...]]):
    """(free, floor totals) -> (changed, instance changes) for every layout the GPU may get."""
    model = CATALOG.model(gpu.model_key)
    cur = case.vectors(model, gpu.layout, gpu.busy)
    out: Dict[Tuple, Tuple[int, int]] = {cur: (0, 0)}
    if not changeable:
        return out
    if gpu.model_key not in layouts_cache:
        layouts_cache[gpu.model_key] = enumerate_layouts(model, True)
    cur_keys = gpu.layout.keys()
    for layout in layouts_cache[gpu.model_key]:
        keys = layout.keys()
        if not gpu.busy <= keys or keys == cur_keys:
            continue
        vec = case.vectors(model, layout, gpu.busy)
        cost = (1, len(keys ^ cur_keys))
        if vec not in out or cost < out[vec]:
            out[vec] = cost
    return out


def _node_options(case: Case, node: PlanNode, changeable: bool, cache) -> List[Tuple]:
    """(free, totals, gpus changed, instances changed): Pareto-best over all GPU choices."""
    acc: Dict[Tuple, Tuple[int, int]] = {(tuple(0 for _ in case.types), tuple(0 for _ in case.ftypes)): (0, 0)}
    need = [sum(n * j[2] for j in case.jobs for t2, n in j[0].items() if t2 == t) for t in case.types]
    for gpu in node.gpus:
        choices = _gpu_choices(case, gpu, changeable, cache)
        nxt: Dict[Tuple, Tuple[int, int]] = {}
        for (f0, t0), (g0, c0) in acc.items():
            for (f1, t1), (g1, c1) in choices.items():
                f = tuple(min(a + b, cap) for a, b, cap in zip(f0, f1, need))
                tt = tuple(min(a + b, case.floor[t]) for a, b, t in zip(t0, t1, case.ftypes))
                v = (g0 + g1, c0 + c1)
                if (f, tt) not in nxt or v < nxt[(f, tt)]:
                    nxt[(f, tt)] = v
        acc = nxt
    opts = [(f, tt, g, c) for (f, tt), (g, c) in acc.items()]
    keep = []
    for o in opts:  # drop options another one beats everywhere at no more cost
        if any(p is not o and all(a >= b for a, b in zip(p[0], o[0])) and all(a >= b for a, b in zip(p[1], o[1]))
               and (p[2], p[3]) <= (o[2], o[3]) for p in opts):
            continue
        keep.append(o)
    return keep


def _packings(case: Case, node: PlanNode, free: Tuple[int, ...], pool: Tuple[int, ...]):
    """Every vector of jobs per group (within pool) that fits ``free`` on ``node``."""
    tindex = {t: i for i, t in enumerate(case.types)}
    out = []

    def rec(j: int, room: List[int], taken: List[int]) -> None:
        if j == len(case.jobs):
            out.append(tuple(taken))
            return
        req, _w, _c, parts = case.jobs[j]
        k_max = pool[j] if case.eligible(parts, node) else 0
        for k in range(k_max + 1):
            if k and any(room[tindex[t]] < k * n for t, n in req.items()):
                break
            r2 = list(room)
            for t, n in req.items():
                r2[tindex[t]] -= k * n
            rec(j + 1, r2, taken + [k])

    rec(0, list(free), [])
    return out


def _solve(case: Case, options: Sequence[Sequence[Tuple]]) -> Optional[Score]:
    """Best score over one option per node and every placement of jobs, or None (no
    option set meets the hard limits)."""
    cap = case.policy.max_nodes_per_cycle
    init_tot = {t: 0 for t in case.ftypes}
    for node in case.nodes:
        for gpu in node.gpus:
            model = CATALOG.model(gpu.model_key)
            _, tt = case.vectors(model, gpu.layout, gpu.busy)
            for t, n in zip(case.ftypes, tt):
                init_tot[t] += n
    start = (tuple(j[2] for j in case.jobs), tuple(0 for _ in case.ftypes), 0)
    states: Dict[Tuple, Tuple[float, int, int]] = {start: (0.0, 0, 0)}
    for node, opts in zip(case.nodes, options):
        nxt: Dict[Tuple, Tuple[float, int, int]] = {}
        supplies = case.supplies(node)
        for (pool, tot, nch), (w0, g0, c0) in states.items():
            for free, tt, g, c in opts:
                n2 = nch + (1 if g else 0)
                if cap is not None and n2 > cap:
                    continue
                tot2 = tuple(min(a + b, case.floor[t]) for a, b, t in zip(tot, tt, case.ftypes))
                packs = _packings(case, node, free, pool) if supplies else [tuple(0 for _ in pool)]
                for k in packs:
                    w = w0 + sum(kk * case.jobs[j][1] for j, kk in enumerate(k))
                    key = (tuple(p - kk for p, kk in zip(pool, k)), tot2, n2)
                    val = (w, g0 + g, c0 + c)
                    if key not in nxt or (val[0], -val[1], -val[2]) > (nxt[key][0], -nxt[key][1], -nxt[key][2]):
                        nxt[key] = val
        states = nxt
    best: Optional[Score] = None
    for (pool, tot, nch), (w, g, c) in states.items():
        if any(n < min(init_tot[t], case.floor[t]) for t, n in zip(case.ftypes, tot)):
            continue
        s = (round(w, 6), sum(tot), -nch, -g, -c)
        if best is None or s > best:
            best = s
    return best


def optimum(nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Policy, cycle: int = 0
            ) -> Optional[Score]:
    """The best score any plan can reach."""
    case = Case(nodes, demand, policy, cycle)
    cache: Dict[str, Tuple[Layout, ...]] = {}
    options = [_node_options(case, n, case.changeable(n), cache) for n in case.nodes]
    return _solve(case, options)


def score(nodes: Sequence[PlanNode], demand: Sequence[DemandItem], policy: Policy,
          after: Mapping[str, Sequence[Layout]], cycle: int = 0) -> Optional[Score]:
    """The score of one plan (node name -> layout per GPU, in the node's GPU order), or
    None when it breaks a hard limit."""
    case = Case(nodes, demand, policy, cycle)
    options = []
    for node in case.nodes:
        layouts = list(after.get(node.name, [g.layout for g in node.gpus]))
        gpus = []
        for gpu, layout in zip(node.gpus, layouts):
            model = CATALOG.model(gpu.model_key)
            if not is_valid(model, layout.instances) or not gpu.busy <= layout.keys():
                return None
            gpus.append(PlanGpu(gpu.index, gpu.model_key, layout, gpu.busy))
        changed = [g for g, new in zip(node.gpus, layouts) if g.layout.keys() != new.keys()]
        if changed and not case.changeable(node):
            return None
        vec_f = [0] * len(case.types)
        vec_t = [0] * len(case.ftypes)
        for gpu in gpus:
            f, tt = case.vectors(CATALOG.model(gpu.model_key), gpu.layout, gpu.busy)
            vec_f = [a + b for a, b in zip(vec_f, f)]
            vec_t = [a + b for a, b in zip(vec_t, tt)]
        inst = sum(len(g.layout.keys() ^ new.keys()) for g, new in zip(node.gpus, layouts))
        options.append([(tuple(vec_f), tuple(vec_t), len(changed), inst)])
    return _solve(case, options)


def plan_score(nodes, demand, policy, the_plan, cycle: int = 0) -> Optional[Score]:
    """:func:`score` of a :class:`Plan` from the planner."""
    after = {np_.name: [g.after for g in np_.gpus] for np_ in the_plan.nodes}
    return score(nodes, demand, policy, after, cycle)


# --------------------------------------------------------------------------- generated cases

MODELS = ["A100-40GB", "A100-80GB", "H100-80GB", "A30"]
STATES = ["idle", "idle", "idle", "mixed", "mixed", "allocated", "drained"]
PARTS = ["a", "b"]


def random_case(rng: random.Random, max_nodes: int = 6, max_gpus: int = 4, max_count: int = 3):
    """A small random cluster, demand and policy, as the issue describes them: 1-6 nodes x
    1-4 GPUs of A100-40GB/80GB, H100, A30; busy instances; 2-5 demanded types with
    priorities (some jobs asking for several instances); floors; caps."""
    n_nodes = rng.randint(1, max_nodes)
    nodes = []
    offered: List[str] = []
    for i in range(n_nodes):
        key = rng.choice(MODELS)
        model = CATALOG.model(key)
        layouts = [l for l in enumerate_layouts(model, False) if len(l)]
        state = rng.choice(STATES)
        gpus = []
        for g in range(rng.randint(1, max_gpus)):
            layout = rng.choice(layouts)
            busy = frozenset()
            if state in ("mixed", "allocated"):
                busy = frozenset(k for k in layout.keys() if state == "allocated" or rng.random() < 0.4)
            gpus.append(PlanGpu(g, key, layout, busy))
            offered += [p.name for p in model.profiles if not p.name.endswith("+me")]
        parts = tuple(sorted(rng.sample(PARTS, rng.randint(1, 2))))
        nodes.append(PlanNode(f"n{i}", parts, state, tuple(gpus), True,
                              rng.choice([None, None, None, 0])))
    types = sorted(set(offered))
    chosen = rng.sample(types, min(len(types), rng.randint(2, 5)))
    demand = []
    for _ in range(rng.randint(2, 5)):
        t = rng.choice(chosen)
        shape: Tuple[Tuple[str, int], ...] = ()
        r = rng.random()
        if r < 0.25:
            shape = ((t, 2),)
        elif r < 0.35:
            other = rng.choice(chosen)
            shape = tuple(sorted({t: 1, other: 1}.items())) if other != t else ((t, 2),)
        demand.append(DemandItem(t, rng.randint(1, max_count), float(rng.choice([1, 2, 3, 5, 8, 13, 20])),
                                 rng.choice([(), ("a",), ("b",)]), None, shape))
    floor = {}
    if rng.random() < 0.5:
        floor[rng.choice(types)] = rng.randint(1, 2)
    policy = Policy(max_nodes_per_cycle=rng.choice([None, None, 1, 2]), floor=floor,
                    drain_mixed=rng.random() < 0.5, hysteresis_cycles=2)
    return nodes, demand, policy


def cases(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        yield random_case(rng)

