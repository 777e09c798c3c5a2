"""The rebalance planner (slurm_mig.rebalance.planning): pure inputs in, a plan with reasons out."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.errors import InputError
from slurm_mig.core.layout import enumerate_layouts, is_valid, maximal_layouts, parse_layout
from slurm_mig.rebalance.planning import DemandItem, PlanGpu, PlanNode, Policy, condition, plan
from slurm_mig.rebalance.planning.candidates import maximal

CATALOG = load_catalog()
A100 = CATALOG.model("A100-80GB")
H100 = CATALOG.model("H100-80GB")
NO_CAP = Policy(max_nodes_per_cycle=None)


def lay(text, model=A100):
    return parse_layout(text, model)


def node(name, layouts=("1g.10gb:7",), state="idle", partitions=("gpu",), busy=None, model="A100-80GB",
         last_changed=None, allowed=True):
    m = CATALOG.model(model)
    busy = busy or {}
    gpus = tuple(PlanGpu(i, model, lay(text, m), frozenset(busy.get(i, ()))) for i, text in enumerate(layouts))
    return PlanNode(name, tuple(partitions), state, gpus, allowed, last_changed)


def want(profile, count=1, weight=1000.0, partitions=("gpu",), jobs=None):
    return DemandItem(profile, count, weight, tuple(partitions), jobs)


def after(p, name):
    """Node name -> list of canonical layout texts after the plan."""
    return [str(g.after) for g in p.node(name).gpus]


def rerun(nodes, p, cycle):
    """The nodes as they would be once ``p`` is applied in ``cycle``."""
    out = []
    for n in nodes:
        np_ = p.node(n.name)
        if not np_.changed:
            out.append(n)
            continue
        gpus = tuple(replace(g, layout=c.after) for g, c in zip(n.gpus, np_.gpus))
        out.append(replace(n, gpus=gpus, last_changed_cycle=cycle))
    return out


ALL_1G = [node("n1", ("1g.10gb:7",) * 2), node("n2", ("1g.10gb:7",) * 2)]


# --------------------------------------------------------------------------- the main case


def test_pending_3g_job_on_all_1g_idle_nodes_changes_one_node_to_include_3g():
    p = plan(ALL_1G, [want("3g.40gb", jobs=1)], NO_CAP, cycle=1)
    changed = p.changed()
    assert [n.name for n in changed] == ["n1"]
    assert sum(1 for g in changed[0].gpus if g.changed) == 1
    assert any("3g.40gb" in g.after.counts() for g in changed[0].gpus)
    assert p.totals.satisfied_before == 0 and p.totals.satisfied_after == 1
    assert p.node("n2").decision == "keep"


def test_demand_already_served_keeps_every_layout():
    nodes = [node("n1", ("3g.40gb:2",)), node("n2", ("1g.10gb:7",))]
    p = plan(nodes, [want("3g.40gb", 2), want("1g.10gb", 5)], NO_CAP)
    assert p.changed() == ()
    assert p.totals.satisfied_before == p.totals.satisfied_after == 7


def test_change_keeps_as_many_instances_as_it_can():
    p = plan([node("n1", ("1g.10gb:7",))], [want("3g.40gb")], NO_CAP)
    gpu = p.node("n1").gpus[0]
    # one 3g.40gb takes four of the seven 1g slices' units: three destroyed, one created
    assert gpu.instance_changes == 4
    assert gpu.after.counts() == {"3g.40gb": 1, "1g.10gb": 4}


def test_running_plan_again_on_its_result_changes_nothing():
    demand = [want("3g.40gb", 3, jobs=3), want("1g.10gb", 4, weight=10.0), want("2g.20gb", 1, weight=50.0)]
    nodes = ALL_1G + [node("n3", ("7g.80gb:1",) * 2)]
    first = plan(nodes, demand, NO_CAP, cycle=1)
    assert first.changed()
    second = plan(rerun(nodes, first, 1), demand, replace(NO_CAP, hysteresis_cycles=0), cycle=2)
    assert second.changed() == ()


def test_equal_value_swap_is_not_made():
    # n1 could equally serve the job from 3g.40gb@4 instead of @0: no gain, so no change
    nodes = [node("n1", ("3g.40gb@0,1g.10gb@4,1g.10gb@5,1g.10gb@6",))]
    p = plan(nodes, [want("3g.40gb"), want("1g.10gb", 3)], NO_CAP)
    assert p.changed() == ()


# --------------------------------------------------------------------------- busy instances


def test_busy_instances_stay_at_their_placements():
    busy = {0: {(19, 0), (19, 5)}}  # 1g.10gb@0 and 1g.10gb@5 are in use
    nodes = [node("n1", ("1g.10gb:7", "1g.10gb:7"), state="mixed", busy=busy)]
    p = plan(nodes, [want("3g.40gb", 2), want("2g.20gb", 2)], replace(NO_CAP, drain_mixed=True))
    g0 = p.node("n1").gpus[0]
    assert {(19, 0), (19, 5)} <= g0.after.keys()
    assert p.changed()


def test_gpu_whose_busy_instances_block_every_useful_layout_is_left_alone():
    busy = {0: {(19, 1), (19, 5)}}  # a 3g.40gb would need units 0-3 or 4-7
    nodes = [node("n1", ("1g.10gb:7",), state="mixed", busy=busy)]
    p = plan(nodes, [want("3g.40gb")], replace(NO_CAP, drain_mixed=True))
    assert p.changed() == ()


# --------------------------------------------------------------------------- policy


def test_hysteresis_keeps_a_recently_changed_node():
    nodes = [node("n1", ("3g.40gb:2",), last_changed=4)]
    demand = [want("1g.10gb", 7)]
    kept = plan(nodes, demand, replace(NO_CAP, hysteresis_cycles=3), cycle=5)
    assert kept.changed() == ()
    assert "hysteresis" in kept.node("n1").explain[0]
    later = plan(nodes, demand, replace(NO_CAP, hysteresis_cycles=3), cycle=7)
    assert [n.name for n in later.changed()] == ["n1"]


def test_hysteresis_gain_lets_a_big_enough_gain_through():
    nodes = [node("n1", ("3g.40gb:2",), last_changed=4)]
    small = replace(NO_CAP, hysteresis_gain=10_000.0)
    assert plan(nodes, [want("1g.10gb", 7, weight=1000.0)], small, cycle=5).changed() == ()
    big = plan(nodes, [want("1g.10gb", 7, weight=5000.0)], small, cycle=5)
    assert [n.name for n in big.changed()] == ["n1"]


def test_max_nodes_per_cycle_caps_changed_nodes():
    nodes = [node(f"n{i}", ("1g.10gb:7",)) for i in range(1, 6)]
    p = plan(nodes, [want("7g.80gb", 5)], Policy(max_nodes_per_cycle=2))
    assert len(p.changed()) == 2
    kept = [n for n in p.nodes if not n.changed]
    assert all("per-cycle cap of 2" in n.explain[0] for n in kept)
    assert plan(nodes, [want("7g.80gb", 5)], Policy(max_nodes_per_cycle=0)).changed() == ()


def test_floor_keeps_every_floored_profile_present():
    nodes = [node("n1", ("1g.10gb:7",)), node("n2", ("1g.10gb:7",))]
    policy = replace(NO_CAP, floor={"1g.10gb": 2})
    p = plan(nodes, [want("7g.80gb", 2)], policy)
    total = sum(g.after.counts().get("1g.10gb", 0) for n in p.nodes for g in n.gpus)
    assert total >= 2
    assert len(p.changed()) == 1  # the other 7g.80gb would take the last 1g.10gb instances
    assert "keeps floor 1g.10gb >= 2 via n2" in p.changed()[0].explain[0]


def test_floor_refuses_removing_the_last_instance_of_a_floored_profile():
    nodes = [node("n1", ("2g.20gb:3,1g.10gb:1",))]
    p = plan(nodes, [want("3g.40gb", 2, weight=1e6)], replace(NO_CAP, floor={"2g.20gb": 1}))
    counts = p.node("n1").gpus[0].after.counts()
    assert counts.get("2g.20gb", 0) >= 1


def test_floor_below_its_level_is_restored_on_an_idle_node():
    nodes = [node("n1", ("1g.10gb:7",)), node("n2", ("1g.10gb:7",))]
    p = plan(nodes, [], replace(NO_CAP, floor={"3g.40gb": 1}))
    assert len(p.changed()) == 1
    assert "restores floor 3g.40gb >= 1" in p.changed()[0].explain[0]


def test_node_allow_list_is_honoured():
    nodes = ALL_1G
    p = plan(nodes, [want("3g.40gb", 2)], replace(NO_CAP, nodes=("n2",)))
    assert [n.name for n in p.changed()] == ["n2"]
    assert "node allow-list" in p.node("n1").explain[0]
    denied = [replace(n, allowed=False) for n in nodes]
    assert plan(denied, [want("3g.40gb")], NO_CAP).changed() == ()


def test_partition_allow_list_is_honoured():
    nodes = [node("a1", partitions=("gpu", "a")), node("b1", partitions=("gpu", "b"))]
    p = plan(nodes, [want("3g.40gb", 1)], replace(NO_CAP, partitions=("b",)))
    assert [n.name for n in p.changed()] == ["b1"]


def test_demand_only_counts_on_nodes_in_the_jobs_partitions():
    nodes = [node("a1", partitions=("a",)), node("b1", partitions=("b",))]
    p = plan(nodes, [want("3g.40gb", 1, partitions=("b",))], NO_CAP)
    assert [n.name for n in p.changed()] == ["b1"]
    # a 3g.40gb on a node of another partition does not serve the job
    served = [node("a1", ("3g.40gb:2",), partitions=("a",)), node("b1", partitions=("b",))]
    p = plan(served, [want("3g.40gb", 1, partitions=("b",))], NO_CAP)
    assert [n.name for n in p.changed()] == ["b1"]


@pytest.mark.parametrize("state", ["drained", "down", "IDLE+DRAIN", "down*", "idle*", "MIXED+DRAIN"])
def test_drained_and_down_nodes_are_untouched(state):
    p = plan([node("n1", state=state)], [want("3g.40gb")], replace(NO_CAP, drain_mixed=True))
    assert p.changed() == ()
    assert "not changeable" in p.node("n1").explain[0]


def test_mixed_node_changes_only_with_drain_mixed():
    nodes = [node("n1", state="mixed", busy={0: {(19, 6)}})]
    assert plan(nodes, [want("3g.40gb")], NO_CAP).changed() == ()
    assert "does not drain mixed" in plan(nodes, [want("3g.40gb")], NO_CAP).node("n1").explain[0]
    p = plan(nodes, [want("3g.40gb")], replace(NO_CAP, drain_mixed=True))
    assert [n.name for n in p.changed()] == ["n1"]
    assert (19, 6) in p.node("n1").gpus[0].after.keys()


def test_free_instances_on_mixed_nodes_count_as_supply():
    nodes = [node("n1", ("3g.40gb:2",), state="mixed", busy={0: {(9, 0)}}), node("n2")]
    assert plan(nodes, [want("3g.40gb")], NO_CAP).changed() == ()


# --------------------------------------------------------------------------- explanations


def test_profile_no_model_offers_is_explained_as_unservable():
    p = plan(ALL_1G, [want("3g.71gb", 2, jobs=2)], NO_CAP)
    assert p.changed() == ()
    note = next(n for n in p.notes if n.startswith("3g.71gb"))
    assert "2 pending jobs" in note and "no GPU model in the cluster offers 3g.71gb" in note


def test_profile_offered_only_outside_the_jobs_partition_is_unservable():
    nodes = [node("a1", partitions=("a",)), node("h1", partitions=("h",), model="H100-80GB")]
    p = plan(nodes + [node("c1", ("4g.20gb:1,3g.20gb:1",), partitions=("c",), model="A100-40GB")],
             [want("3g.20gb", 1, partitions=("a",))], NO_CAP)
    assert any("no node in partition a has a GPU model that offers 3g.20gb" in n for n in p.notes)


def test_explain_names_node_profile_jobs_and_partition():
    p = plan(ALL_1G, [want("3g.40gb", 2, weight=1200.0, jobs=4)], Policy(floor={"1g.10gb": 2}))
    line = p.changed()[0].explain[0]
    assert line.startswith("n1: 3g.40gb x2 wanted by 4 pending jobs (priority 1200) in partition gpu")
    assert "n1 idle" in line and "changes gpu0 from 1g.10gb:7 to 3g.40gb:2" in line
    assert "keeps floor 1g.10gb >= 2 via n1" not in line
    assert all("\n" not in x for x in p.explain())


def test_profile_aliases_match_demand():
    p = plan([node("n1")], [want("3g.39gb")], NO_CAP)  # the older driver name of 3g.40gb
    assert p.changed()


def test_same_input_gives_the_same_plan():
    rng = random.Random(7)
    nodes, demand = random_cluster(rng, 12)
    a = plan(nodes, demand, Policy(max_nodes_per_cycle=5, floor={"1g.10gb": 3}))
    b = plan(list(reversed(nodes)), list(reversed(demand)), Policy(max_nodes_per_cycle=5, floor={"1g.10gb": 3}))
    assert a.as_dict() == b.as_dict()


def test_plan_as_dict_has_stable_keys():
    d = plan(ALL_1G, [want("3g.40gb")], NO_CAP).as_dict()
    assert list(d) == ["cycle", "nodes", "notes", "totals"]
    assert list(d["nodes"][0]) == ["node", "decision", "gpus", "explain"]
    assert list(d["nodes"][0]["gpus"][0]) == ["gpu", "model", "before", "after", "before_counts",
                                              "after_counts", "changed"]


def test_duplicate_node_is_refused():
    with pytest.raises(InputError):
        plan([node("n1"), node("n1")], [], NO_CAP)


def test_negative_floor_is_refused():
    with pytest.raises(InputError):
        Policy(floor={"1g.10gb": -1})


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("key", sorted({m.key for m in CATALOG.models}))
def test_fast_maximal_layouts_equal_layout_maximal_layouts(key):
    model = CATALOG.model(key)
    for include_me in (False, True):
        assert maximal(model, include_me) == maximal_layouts(model, include_me)


@pytest.mark.parametrize("state, want_", [
    ("idle", "idle"), ("MIXED", "mixed"), ("alloc", "allocated"), ("mixed+drain", "unavailable"),
    ("idle*", "unavailable"), ("down", "unavailable"), ("idle+completing", "completing"), ("", "unavailable"),
])
def test_condition_reads_slurm_states(state, want_):
    assert condition(state) == want_


# --------------------------------------------------------------------------- property


PROFILES = ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.10gb+me"]
STATES = ["idle", "idle", "mixed", "allocated", "drained"]


def random_cluster(rng, n_nodes):
    nodes = []
    for i in range(n_nodes):
        model = rng.choice([A100, H100])
        state = rng.choice(STATES)
        gpus = []
        for g in range(rng.randint(1, 3)):
            layout = rng.choice(enumerate_layouts(model, False))
            busy = frozenset()
            if state in ("mixed", "allocated") and len(layout):
                busy = frozenset((i.profile_id, i.start) for i in layout if rng.random() < 0.4)
            gpus.append(PlanGpu(g, model.key, layout, busy))
        parts = tuple(sorted(rng.sample(["a", "b", "gpu"], rng.randint(1, 2))))
        nodes.append(PlanNode(f"n{i:02d}", parts, state, tuple(gpus), rng.random() > 0.1,
                              rng.choice([None, None, 0, 1])))
    demand = [DemandItem(rng.choice(PROFILES), rng.randint(1, 6), float(rng.choice([1, 10, 100, 1000])),
                         tuple(rng.sample(["a", "b", "gpu"], rng.randint(0, 2))), None)
              for _ in range(rng.randint(0, 8))]
    return nodes, demand


@pytest.mark.parametrize("seed", range(40))
def test_random_clusters_get_valid_layouts_that_keep_busy_instances(seed):
    rng = random.Random(seed)
    nodes, demand = random_cluster(rng, rng.randint(1, 10))
    policy = Policy(max_nodes_per_cycle=rng.choice([None, 1, 3]), drain_mixed=rng.random() < 0.5,
                    floor={rng.choice(PROFILES): rng.randint(0, 2)})
    p = plan(nodes, demand, policy, cycle=2)
    by_name = {n.name: n for n in nodes}
    for np_ in p.nodes:
        src = by_name[np_.name]
        for gpu, change in zip(src.gpus, np_.gpus):
            model = CATALOG.model(gpu.model_key)
            assert is_valid(model, change.after.instances)
            assert gpu.busy <= change.after.keys()
        if np_.changed:
            assert src.allowed and condition(src.state) in ("idle", "mixed")
            assert condition(src.state) == "idle" or policy.drain_mixed
    assert p.totals.weight_after >= p.totals.weight_before - 1e-6
    if policy.max_nodes_per_cycle is not None:
        assert p.totals.nodes_changed <= policy.max_nodes_per_cycle
    for t, f in policy.floor.items():
        before = sum(g.layout.counts().get(t, 0) for n in nodes for g in n.gpus)
        now = sum(c.after.counts().get(t, 0) for n in p.nodes for c in n.gpus)
        assert now >= min(before, f)


# --------------------------------------------------------------------------- issue 12: A-D


def test_job_asking_two_instances_counts_only_when_both_fit_on_one_node():
    # A: two 7g.80gb never fit one A100-80GB; the 4g.40gb job is the one that can start
    nodes = [node("n1", ("1g.10gb:7",))]
    demand = [DemandItem("7g.80gb", 1, 9.0, ("gpu",), None, (("7g.80gb", 2),)),
              DemandItem("4g.40gb", 1, 5.0, ("gpu",))]
    p = plan(nodes, demand, NO_CAP)
    counts = p.node("n1").gpus[0].after.counts()
    assert counts.get("4g.40gb") == 1 and "7g.80gb" not in counts
    assert p.totals.jobs_after == 1 and p.totals.weight_after == 5.0


def test_multi_instance_job_gets_all_its_instances_on_one_node():
    # a job asking 2x 3g.40gb: one 3g.40gb on each of two nodes starts nothing
    nodes = [node("n1", ("3g.40gb@0,1g.10gb@4,1g.10gb@5,1g.10gb@6",)), node("n2", ("1g.10gb:7",))]
    p = plan(nodes, [DemandItem("3g.40gb", 1, 10.0, ("gpu",), None, (("3g.40gb", 2),))], NO_CAP)
    assert p.totals.jobs_after == 1
    assert [n.name for n in p.changed()] == ["n1"]  # its 3g.40gb stays; one more beside it
    assert p.node("n1").gpus[0].after.counts() == {"3g.40gb": 2}


def test_loss_is_priced_by_the_jobs_actually_displaced():
    # B: na's 2g.20gb jobs (priority 8, any partition) can run on nb instead, where they
    # displace priority-2 jobs: recutting na to 7g.80gb starts 44 instead of 30
    nodes = [node("na", ("2g.20gb:3,1g.10gb:1",), partitions=("a",)),
             node("nb", ("2g.20gb:3,1g.10gb:1",), state="mixed", partitions=("b",), busy={0: {(19, 6)}})]
    demand = [want("2g.20gb", 3, 8.0, ()), want("2g.20gb", 3, 2.0, ("b",)), want("7g.80gb", 1, 20.0, ())]
    p = plan(nodes, demand, NO_CAP)
    assert [n.name for n in p.changed()] == ["na"]
    assert after(p, "na") == ["7g.80gb@0"]
    assert p.totals.weight_before == 30.0 and p.totals.weight_after == 44.0


def test_gpu_with_busy_me_instance_can_still_be_recut():
    # C: the busy 1g.6gb+me stays; the three idle 1g.6gb make room for a 2g.12gb
    a30 = CATALOG.model("A30")
    me = a30.profile("1g.6gb+me").id
    nodes = [node("n1", ("1g.6gb+me@0,1g.6gb@1,1g.6gb@2,1g.6gb@3",), state="mixed", model="A30",
                  busy={0: {(me, 0)}})]
    p = plan(nodes, [want("2g.12gb", 1)], replace(NO_CAP, drain_mixed=True))
    assert after(p, "n1") == ["1g.6gb+me@0,1g.6gb@1,2g.12gb@2"]


def test_node_gpus_are_recut_together_when_only_that_pays():
    # D: the 3g.40gb on gpu0 and gpu2 must move onto one GPU so three can take 7g.80gb:
    # two 3g.40gb jobs (priority 20) and three 7g.80gb jobs (priority 3) all start
    nodes = [node("n0", ("4g.40gb@0,1g.20gb@4,1g.10gb@6", "2g.20gb@0,1g.20gb@2,2g.20gb@4,1g.10gb@6",
                         "3g.40gb@0,1g.20gb@4,1g.20gb@6", "4g.40gb@0,1g.20gb@4,1g.20gb@6"), partitions=("a",))]
    demand = [want("3g.40gb", 2, 20.0, ("a",)), want("7g.80gb", 1, 5.0, ("b",)), want("7g.80gb", 3, 3.0, ())]
    p = plan(nodes, demand, Policy(max_nodes_per_cycle=1, drain_mixed=True))
    assert p.totals.weight_after == 49.0
    assert sorted(after(p, "n0")) == ["3g.40gb@0,3g.40gb@4"] + ["7g.80gb@0"] * 3


# --------------------------------------------------------------------------- against the exact reference


@pytest.mark.parametrize("seed", range(12))
def test_planner_matches_the_exact_optimum_on_small_random_clusters(seed):
    from planref import optimum, plan_score, random_case

    nodes, demand, policy = random_case(random.Random(1000 + seed), max_nodes=3, max_gpus=3)
    best = optimum(nodes, demand, policy, cycle=2)
    got = plan_score(nodes, demand, policy, plan(nodes, demand, policy, cycle=2), cycle=2)
    assert got is not None, "the plan breaks a hard limit"
    assert got[:2] == best[:2]  # priority weight of startable jobs, then floors


def test_multi_node_job_puts_one_part_on_each_of_its_nodes():
    # a job needing 3g.40gb on each of two nodes: one part per node, each worth half
    nodes = [node("n1"), node("n2")]
    p = plan(nodes, [DemandItem("3g.40gb", 1, 10.0, ("gpu",), None, (), 2)], NO_CAP)
    assert sorted(n.name for n in p.changed()) == ["n1", "n2"]
    assert p.totals.jobs_after == 2 and p.totals.weight_after == 10.0
