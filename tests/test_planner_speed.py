"""The planner's shared computations (issue 12, planner speed) change no plan.

A large cluster is planned fast because work is shared: nodes with the same GPUs share one
options computation, large nodes fill along memoised node states (a group's one-instance
jobs taken per GPU run), the first group with jobs left per class and each node's spare
room are kept between kept moves.  These tests hold each shortcut to what it replaces.
"""

from __future__ import annotations

import random

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.layout import parse_layout
from slurm_mig.rebalance.planning import DemandItem, PlanGpu, PlanNode, Policy, plan
from slurm_mig.rebalance.planning import packing, search
from slurm_mig.rebalance.planning.packing import Packer, _Units
from slurm_mig.rebalance.planning.problem import Problem

CATALOG = load_catalog()
A100 = CATALOG.model("A100-80GB")
NO_CAP = Policy(max_nodes_per_cycle=None)
LAYOUTS = ["1g.10gb:7", "3g.40gb:2", "2g.20gb:3,1g.10gb:1", "4g.40gb:1,3g.40gb:1", "7g.80gb:1",
           "1g.20gb:4", "3g.40gb:1,1g.10gb:4"]
TYPES = ["1g.10gb", "3g.40gb", "2g.20gb", "7g.80gb", "4g.40gb", "1g.20gb"]


def big_node(name, layout="1g.10gb:7", partitions=("gpu",), state="idle", busy_start=None, gpus=8):
    """``gpus`` A100s cut ``layout`` (one parsed object shared by all, as a reader would);
    ``busy_start``: the instance starting there is busy on every GPU."""
    lay = parse_layout(layout, A100)
    busy = frozenset(k for k in lay.keys() if k[1] == busy_start) if busy_start is not None else frozenset()
    return PlanNode(name, tuple(partitions), state, tuple(PlanGpu(i, "A100-80GB", lay, busy) for i in range(gpus)))


# --------------------------------------------------------------------------- nodes that look alike


def test_identical_nodes_in_different_partitions_are_planned_apart():
    nodes = [big_node("na", partitions=("a",)), big_node("nb", partitions=("b",))]
    demand = [DemandItem("3g.40gb", 4, 5000.0, ("b",))]
    p = plan(nodes, demand, NO_CAP)
    assert [n.name for n in p.changed()] == ["nb"]
    assert sum(str(g.after).count("3g.40gb") for g in p.node("nb").gpus) >= 4
    assert all(not g.changed for g in p.node("na").gpus)


def test_identical_layouts_with_different_busy_instances_are_planned_apart():
    # m1 has a busy 1g.10gb at start 0 on every GPU: no 7g.80gb fits there; m2 has none busy
    nodes = [big_node("m1", state="mixed", busy_start=0), big_node("m2", state="mixed")]
    demand = [DemandItem("7g.80gb", 2, 9000.0)]
    p = plan(nodes, demand, Policy(max_nodes_per_cycle=None, drain_mixed=True))
    assert [n.name for n in p.changed()] == ["m2"]
    assert sum(str(g.after) == "7g.80gb@0" for g in p.node("m2").gpus) == 2
    pb = Problem(nodes, demand, Policy(drain_mixed=True), 0, {})
    assert pb.nodes[0].options[0] is not pb.nodes[1].options[0]
    assert pb.nodes[0].sig != pb.nodes[1].sig


def test_nodes_with_the_same_gpus_share_their_options_but_not_their_lists():
    nodes = [big_node("n1"), big_node("n2"), big_node("n3", partitions=("other",))]
    pb = Problem(nodes, [DemandItem("3g.40gb", 1, 1.0)], NO_CAP, 0, {})
    a, b, c = pb.nodes
    assert all(x is y for x, y in zip(a.options, b.options)) and a.sig == b.sig
    assert all(x is y for x, y in zip(a.options, c.options)) and a.sig != c.sig  # other partition
    a.free[0] += 1  # the search changes per-node lists; a neighbour must not see it
    assert a.free != b.free and a.options is not b.options


# --------------------------------------------------------------------------- one-instance runs


@pytest.mark.parametrize("seed", range(6))
def test_a_run_of_one_instance_jobs_lands_where_placing_them_one_by_one_does(seed):
    rng = random.Random(seed)
    layouts = [rng.choice(LAYOUTS) for _ in range(8)]
    src = PlanNode("n", ("gpu",), "mixed", tuple(
        PlanGpu(i, "A100-80GB", parse_layout(t, A100),
                frozenset(k for k in parse_layout(t, A100).keys() if rng.random() < 0.3))
        for i, t in enumerate(layouts)))
    demand = [DemandItem(t, 3, 10.0) for t in TYPES]
    pb = Problem([src], demand, Policy(drain_mixed=True), 0, {})
    pk = Packer(pb)
    node = pb.nodes[0]
    ns = pk._base_state(node, (0,) * pk.D)
    for _ in range(12):
        d = rng.randrange(pk.K)
        most = rng.randint(1, 20)
        k, got = pk._take_one(ns, d, most)
        fit = _Units(pk, pk.nstates[ns])
        want = 0
        while want < most and fit.place(d) is not None:
            want += 1
        assert (k, pk.nstates[got]) == (want, tuple(fit.s))
        ns = got


# --------------------------------------------------------------------------- whole plans


def random_cluster(seed, n_nodes=90):
    rng = random.Random(seed)
    models = ["A100-80GB", "H100-80GB"]
    parsed = {(m, t): parse_layout(t, CATALOG.model(m)) for m in models for t in LAYOUTS}
    nodes = []
    for i in range(n_nodes):
        model = models[i % 2]
        gpus = rng.choice([2, 8, 8, 8])
        state = rng.choice(["idle", "idle", "idle", "mixed", "mixed", "allocated", "down"])
        base = rng.choice(LAYOUTS)
        out = []
        for g in range(gpus):
            lay = parsed[(model, base if rng.random() < 0.7 else rng.choice(LAYOUTS))]
            busy = frozenset()
            if state == "allocated":
                busy = lay.keys()
            elif state == "mixed":
                busy = frozenset(k for k in lay.keys() if rng.random() < 0.5)
            out.append(PlanGpu(g, model, lay, busy))
        parts = ("gpu", "inference" if i % 3 else "train")
        nodes.append(PlanNode(f"g{i:03d}", parts, state, tuple(out)))
    demand = []
    for _ in range(60):
        shape = ()
        t = rng.choice(TYPES)
        if rng.random() < 0.1:
            shape = ((t, 2),)
        elif rng.random() < 0.05:
            shape = ((t, 1), ("1g.10gb", 1))
        demand.append(DemandItem(t, rng.randint(1, 12), float(rng.randint(1, 50) * 100),
                                 rng.choice([("gpu",), ("inference",), ("train",), ()]), shape=shape))
    return nodes, demand


def _direct(monkeypatch):
    """Turn every shared computation off: nodes get their own options, large nodes place
    each job one by one from scratch, classes are scanned from their first group, and each
    node's spare room is read afresh."""
    counter = iter(range(10 ** 9))
    monkeypatch.setattr(Problem, "_node_key", staticmethod(lambda gpus: next(counter)))

    def take(self, ns, rid, req, most):
        fit = _Units(self, self.nstates[ns])
        k = 0
        while k < most and fit.job(req):
            k += 1
        return k, self.node_state(fit.s)

    monkeypatch.setattr(packing.Packer, "_take", take)
    monkeypatch.setattr(search._Planner, "_heads", lambda self: setattr(self, "_head", None))
    monkeypatch.setattr(search._Planner, "_look", lambda self, j: (
        self._spare(j), sorted(self.hosted[j], key=self._wkey.__getitem__)))


POLICIES = [
    Policy(max_nodes_per_cycle=None, floor={"1g.10gb": 8, "7g.80gb": 2}),
    Policy(max_nodes_per_cycle=None, drain_mixed=True, floor={"1g.10gb": 8}),
    Policy(max_nodes_per_cycle=3, drain_mixed=True, floor={"3g.40gb": 60}),
]


@pytest.mark.parametrize("seed", range(3))
def test_plan_with_shared_work_equals_the_plan_computed_directly(seed, monkeypatch):
    nodes, demand = random_cluster(seed)
    shared = [plan(nodes, demand, pol, cycle=1).as_dict() for pol in POLICIES]
    assert any(p["totals"]["nodes_changed"] for p in shared)  # the inputs exercise moves
    _direct(monkeypatch)
    direct = [plan(nodes, demand, pol, cycle=1).as_dict() for pol in POLICIES]
    assert shared == direct
