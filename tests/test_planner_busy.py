"""Busy clusters: ``drain_mixed = "auto"`` drains a mixed node by when its running jobs end
(start + time limit), only when the drain pays for the time the node stands idle
(docs/planner.md, "Busy clusters")."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.errors import InputError
from slurm_mig.core.layout import parse_layout
from slurm_mig.rebalance.planning import DemandItem, JobEnd, PlanGpu, PlanNode, Policy, plan

A100 = load_catalog().model("A100-80GB")
AUTO = Policy(max_nodes_per_cycle=None, drain_mixed="auto", drain_horizon=3600)
BUSY_1G = frozenset({(19, 0)})  # 1g.10gb@0 holds a running job


def mixed(name, ends, layout="1g.10gb:7", busy=BUSY_1G, slices=1):
    """A one-GPU A100 node with a running 1g.10gb job per entry of ``ends`` (seconds from now,
    None: no time limit); ``ends=None``: when its jobs end was not read."""
    running = None if ends is None else tuple(JobEnd(e, slices) for e in ends)
    return PlanNode(name, ("gpu",), "mixed", (PlanGpu(0, "A100-80GB", parse_layout(layout, A100), busy),),
                    running=running)


def wants_3g(count=1, weight=10.0):
    return DemandItem("3g.40gb", count, weight, ("gpu",))


def test_auto_drains_the_mixed_node_whose_jobs_end_first():
    nodes = [mixed("n1", [1500]), mixed("n2", [300]), mixed("n3", [900])]
    p = plan(nodes, [wants_3g()], replace(AUTO, max_nodes_per_cycle=1))
    assert [n.name for n in p.changed()] == ["n2"]
    # the busy instance stays where it is
    assert (19, 0) in p.node("n2").gpus[0].after.keys()


def test_auto_does_not_make_a_drain_that_does_not_pay_for_its_idle_time():
    # jobs end in 50 min: one 3g job gains 3 slices x 10 min = 1800 slice-s; the node's 7
    # slices stand idle 6 of them x 50 min = 18000 slice-s while it drains
    nodes = [mixed("n1", [3000])]
    assert plan(nodes, [wants_3g()], replace(AUTO, drain_mixed=True)).changed()  # today: drained
    p = plan(nodes, [wants_3g()], AUTO)
    assert p.changed() == ()
    line = p.node("n1").explain[0]
    assert "its jobs end in 50 min" in line
    assert "gaining 1800 slice-s" in line and "idle 18000 slice-s" in line
    assert "draining does not pay" in line


def test_auto_drains_when_the_jobs_it_starts_outweigh_the_idle_time():
    # the same node, its job ends in 5 min; one 3g job fits beside it: 3 slices x 55 min =
    # 9900 slice-s gained against 6 free slices x 5 min = 1800 slice-s idle
    p = plan([mixed("n1", [300])], [wants_3g(2)], AUTO)
    [changed] = p.changed()
    line = changed.explain[0]
    assert "drain_mixed = auto: its jobs end in 5 min by their time limits" in line
    assert "starting 1 more job gains 9900 slice-s" in line and "against 1800 slice-s idle" in line


def test_auto_never_drains_a_node_whose_jobs_end_after_the_horizon():
    p = plan([mixed("n1", [200, 4000])], [wants_3g(5, 1e6)], AUTO)
    assert p.changed() == ()
    assert "its jobs end in 67 min (by their time limits), not within the drain horizon of 60 min" \
        in p.node("n1").explain[0]


def test_auto_never_drains_a_node_running_a_job_without_a_time_limit():
    p = plan([mixed("n1", [60, None])], [wants_3g(5, 1e6)], AUTO)
    assert p.changed() == ()
    assert "a job without a time limit runs on it" in p.node("n1").explain[0]


def test_auto_leaves_a_mixed_node_whose_job_ends_were_not_read():
    p = plan([mixed("n1", None)], [wants_3g(5, 1e6)], AUTO)
    assert p.changed() == ()
    assert "when its jobs end is not known" in p.node("n1").explain[0]


def test_auto_changes_idle_nodes_as_before():
    idle = PlanNode("n1", ("gpu",), "idle", (PlanGpu(0, "A100-80GB", parse_layout("1g.10gb:7", A100)),))
    for policy in (AUTO, Policy(max_nodes_per_cycle=None)):
        p = plan([idle], [wants_3g()], policy)
        assert [n.name for n in p.changed()] == ["n1"]


def test_auto_prefers_an_idle_node_to_a_mixed_one():
    idle = PlanNode("n9", ("gpu",), "idle", (PlanGpu(0, "A100-80GB", parse_layout("1g.10gb:7", A100)),))
    p = plan([mixed("n1", [60]), idle], [wants_3g()], replace(AUTO, max_nodes_per_cycle=1))
    assert [n.name for n in p.changed()] == ["n9"]


def test_auto_keeps_the_cap():
    nodes = [mixed(f"n{i}", [60 * i]) for i in range(1, 5)]
    p = plan(nodes, [wants_3g(4)], replace(AUTO, max_nodes_per_cycle=2))
    assert [n.name for n in p.changed()] == ["n1", "n2"]


def test_policy_refuses_an_unknown_drain_mixed_or_a_negative_horizon():
    with pytest.raises(InputError, match="drain_mixed"):
        Policy(drain_mixed="sometimes")
    with pytest.raises(InputError, match="drain_horizon"):
        Policy(drain_mixed="auto", drain_horizon=-1)


def test_auto_with_a_horizon_of_zero_drains_no_mixed_node():
    p = plan([mixed("n1", [0.0])], [wants_3g(5, 1e6)], replace(AUTO, drain_horizon=0))
    assert p.changed() == ()


def test_free_in_is_the_last_jobs_end():
    assert mixed("n1", [100, 250.5, 30]).free_in == 250.5
    assert mixed("n1", [100, None]).free_in is None
    assert mixed("n1", None).free_in is None
    assert mixed("n1", []).free_in == 0.0
