"""Pending jobs -> demand per (GPU type, partitions): the formula, the skips, the recorded queue."""

from __future__ import annotations

import os

import pytest

from slurm_mig.slurm import jsonread
from slurm_mig.slurm.demand import DemandItem, by_type, demand, skipped
from slurm_mig.slurm.model import GresRequest, PendingJob

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "slurm")


def job(job_id, *requests, priority=10, partition=("p",), reason="Resources", **kw):
    return PendingJob(job_id=job_id, requests=tuple(requests), priority=priority,
                      partition=partition, reason=reason, **kw)


def R(gtype, count, per="node"):
    return GresRequest(gtype, count, per)


def test_per_node_request_counts_every_node():
    [item] = demand([job(1, R("1g.10gb", 2), nodes_requested=3)])
    assert (item.instances, item.startable, item.weight) == (6, 6, 60)


def test_per_job_request_counts_once_whatever_the_nodes():
    [item] = demand([job(1, R("1g.10gb", 2, "job"), nodes_requested=3)])
    assert item.instances == 2


def test_per_task_request_counts_every_task():
    [item] = demand([job(1, R("1g.10gb", 1, "task"), tasks=4)])
    assert item.instances == 4


def test_per_socket_request_counts_sockets_on_every_node():
    [item] = demand([job(1, R("1g.10gb", 1, "socket"), sockets_per_node=2, nodes_requested=2)])
    assert item.instances == 4
    [item] = demand([job(2, R("1g.10gb", 1, "socket"))])  # sockets unknown: one
    assert item.instances == 1


def test_array_tasks_multiply_and_throttle_limits_what_starts():
    arr = job(5, R("3g.40gb", 1), array_job_id=5, array_task="0-9%2", array_tasks_pending=10,
              array_throttle=2, priority=7)
    [item] = demand([arr])
    assert (item.instances, item.startable, item.weight, item.jobs) == (10, 2, 70, (5,))


def test_weight_is_count_times_tasks_times_priority_summed():
    jobs = [job(1, R("1g.10gb", 2), priority=100),
            job(2, R("1g.10gb", 1), priority=5, array_job_id=2, array_tasks_pending=3),
            job(3, R("1g.10gb", 1, "task"), priority=1, tasks=4)]
    [item] = demand(jobs)
    assert item.weight == 2 * 1 * 100 + 1 * 3 * 5 + 4 * 1 * 1
    assert (item.instances, item.top_priority, item.jobs) == (9, 100, (1, 2, 3))


def test_several_types_in_one_job_each_count():
    items = demand([job(1, R("1g.10gb", 1), R("3g.40gb", 1))])
    assert {(i.type, i.instances) for i in items} == {("1g.10gb", 1), ("3g.40gb", 1)}


def test_untyped_request_is_its_own_item():
    items = demand([job(1, R(None, 2)), job(2, R("1g.10gb", 1))])
    assert by_type(items) == {None: 2, "1g.10gb": 1}


def test_job_naming_two_partitions_counts_once_under_both():
    items = demand([job(1, R("1g.10gb", 1), partition=("a", "b")), job(2, R("1g.10gb", 1), partition=("a",))])
    assert {(i.partitions, i.instances) for i in items} == {(("a", "b"), 1), (("a",), 1)}


@pytest.mark.parametrize("reason", ["JobHeldUser", "JobHeldAdmin", "Dependency", "BeginTime",
                                    "JobArrayTaskLimit", "AssocGrpGRES", "QOSMaxGRESPerUser"])
def test_jobs_a_layout_cannot_start_are_skipped(reason):
    assert demand([job(1, R("1g.10gb", 1), reason=reason)]) == []


def test_held_flag_skips_whatever_the_reason():
    assert skipped(job(1, R("1g.10gb", 1), held=True, reason="Priority"))
    assert demand([job(1, R("1g.10gb", 1), held=True, reason="Priority")], skip_reasons=()) == []


def test_resource_reasons_count_and_are_tallied():
    items = demand([job(1, R("1g.10gb", 1), reason="Resources"), job(2, R("1g.10gb", 1), reason="Priority"),
                    job(3, R("1g.10gb", 1), reason="Priority")])
    assert items[0].reasons == (("Priority", 2), ("Resources", 1))


def test_jobs_without_gpus_and_non_pending_are_ignored():
    assert demand([job(1), job(2, R("1g.10gb", 1), state="RUNNING")]) == []


def test_heaviest_first_in_a_stable_order():
    items = demand([job(1, R("a", 1), priority=1), job(2, R("b", 1), priority=9), job(3, R("c", 1), priority=9)])
    assert [i.type for i in items] == ["b", "c", "a"]


@pytest.mark.parametrize("path", ["22.05/squeue.json", "handmade/24.11/squeue.json"])
def test_recorded_queue_demand(path):
    """Every request form submitted to the real 22.05 sandbox, aggregated (README.md there)."""
    with open(os.path.join(DATA, path)) as f:
        items = demand(jsonread.read_pending_jobs(f.read()))
    got = {(i.type, i.partitions): i for i in items}
    assert set(got) == {("1g.10gb", ("debug",)), ("3g.40gb", ("debug",)), (None, ("debug",)),
                        ("1g.10gb", ("debug", "big"))}
    one_g = got[("1g.10gb", ("debug",))]
    # arr-split 4 + gres-1g-2 2 + gpus 1 + gpn 1 + gpt 2 (x2 tasks) + arr-pct 10 + bumped 1
    # + multi 1 + two-nodes 2 + gpus-multi 2 + gps 1; held is skipped.
    assert one_g.instances == 4 + 2 + 1 + 1 + 2 + 10 + 1 + 1 + 2 + 2 + 1 == 27
    assert one_g.startable == 27 - 10 + 2  # arr-pct runs two at a time
    assert 8601089 not in one_g.jobs  # held
    three_g = got[("3g.40gb", ("debug",))]
    assert three_g.instances == 1 + 5 + 1 + 1 + 1  # gres-3g-1, arr-list x5, nice, multi, gpus-multi
    assert got[(None, ("debug",))].instances == 3  # gpu:1 and --gpus=2
    assert got[("1g.10gb", ("debug", "big"))].instances == 1
    assert isinstance(items[0], DemandItem) and items[0].type == "1g.10gb"
