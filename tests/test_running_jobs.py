"""When running jobs end: ``squeue --json`` (22.05, 24.11, 26.05 recordings) and pyslurm
objects -> :class:`RunningJob` (start + time limit), and what rebalance hands the planner."""

from __future__ import annotations

import json
import os
import types

import pytest

from slurm_mig.change.channel import Channel, format_channel, parse_channel
from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.errors import ConfigError
from slurm_mig.host.config import parse_config
from slurm_mig.rebalance.cycle import job_ends, plan_node, policy_of
from slurm_mig.slurm import jsonread
from slurm_mig.slurm.model import GresRequest, NodeInfo, RunningJob
from slurm_mig.slurm.pyslurm_adapter import PyslurmReader, running_from_pyslurm

DATA = os.path.join(os.path.dirname(__file__), "data", "slurm")
RELEASES = ("22.05", "24.11", "26.05")


def data(path):
    with open(os.path.join(DATA, path)) as f:
        return f.read()


def raw_running(release):
    doc = json.loads(data(f"{release}/squeue.json"))
    return [j for j in doc["jobs"] if "RUNNING" in (j["job_state"] if isinstance(j["job_state"], list)
                                                      else [j["job_state"]])]


@pytest.mark.parametrize("release", RELEASES)
def test_running_jobs_are_read_with_start_limit_and_slurms_end(release):
    jobs = jsonread.read_running_jobs(data(f"{release}/squeue.json"))
    raw = raw_running(release)
    assert [j.job_id for j in jobs] == [r["job_id"] for r in raw]  # pending ones left out
    src = jsonread.Source("t")
    for job, r in zip(jobs, raw):
        assert job.start_time == jsonread.num(src, r["start_time"], "s")
        assert job.time_limit == jsonread.num(src, r["time_limit"], "l")
        assert job.end_time == jsonread.num(src, r["end_time"], "e")  # Slurm's own end: start + limit
        assert job.nodes and all(n in ("n1", "n2") for n in job.nodes)
    first = jobs[0]
    assert (first.nodes, first.requests) == (("n1",), (GresRequest("1g.10gb", 4, "node"),))
    assert first.per_node() == {"1g.10gb": 4}


def test_every_release_reads_the_same_running_jobs_but_for_ids_and_times():
    def meaning(release):
        return sorted((j.nodes, repr(j.requests), j.time_limit) for j in
                      jsonread.read_running_jobs(data(f"{release}/squeue.json")))
    assert meaning("22.05") == meaning("24.11") == meaning("26.05")


def _one_job(release, **fields):
    doc = json.loads(data(f"{release}/squeue.json"))
    job = raw_running(release)[0]
    job.update(fields)
    doc["jobs"] = [job]
    return jsonread.read_running_jobs(json.dumps(doc))[0]


def test_unlimited_job_has_no_end_in_each_form():
    # 22.05 prints INFINITE as a plain number; 23.02+ as {infinite: true}
    assert _one_job("22.05", time_limit=4294967295).end_time is None
    assert _one_job("22.05", time_limit=4294967294).time_limit is None  # NO_VAL
    for release in ("24.11", "26.05"):
        job = _one_job(release, time_limit={"set": True, "infinite": True, "number": 0})
        assert (job.time_limit, job.end_time) == (None, None)


def test_a_limit_in_minutes_ends_the_job_that_many_minutes_after_its_start():
    job = _one_job("26.05", start_time={"set": True, "infinite": False, "number": 1000},
                   time_limit={"set": True, "infinite": False, "number": 30}, nodes="g[1-2]",
                   node_count={"set": True, "infinite": False, "number": 2})
    assert (job.end_time, job.nodes) == (1000 + 1800, ("g1", "g2"))


def test_an_unreadable_time_limit_names_the_field_and_release():
    with pytest.raises(Exception, match=r"Slurm 24\.11.*jobs\[0\]\.time_limit"):
        _one_job("24.11", time_limit="soon")


def test_per_job_and_per_task_requests_are_spread_over_the_nodes():
    job = RunningJob(1, ("a", "b"), 0, 10, (GresRequest("1g.10gb", 3, "job"),
                                          GresRequest("2g.20gb", 1, "task")), 2, tasks=4)
    assert job.per_node() == {"1g.10gb": 2, "2g.20gb": 2}


# -- pyslurm (hand-made objects, as pyslurm 24.11's Job) ---------------------------------------

def _job(**kw):
    base = dict(id=7, state="RUNNING", nodes="n1", start_time=5000, time_limit=20, num_nodes=1,
                ntasks=1, sockets_per_node=None, gres_per_node={"gpu:3g.40gb": 1})
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_pyslurm_running_job_has_start_plus_limit():
    job = running_from_pyslurm(_job())
    assert job == RunningJob(7, ("n1",), 5000, 20, (GresRequest("3g.40gb", 1, "node"),), 1, 1, None)
    assert job.end_time == 5000 + 1200


@pytest.mark.parametrize("limit", [None, "UNLIMITED", "infinite", 4294967295])
def test_pyslurm_job_without_a_limit_never_ends(limit):
    assert running_from_pyslurm(_job(time_limit=limit)).end_time is None


def test_pyslurm_reader_lists_only_running_jobs_and_reads_hostlists():
    jobs = [_job(), _job(id=8, state="PENDING"), _job(id=9, nodes="n[2-3]", num_nodes=2)]

    class Jobs(dict):
        @staticmethod
        def load():
            return Jobs({j.id: j for j in jobs})

    fake = types.SimpleNamespace(Jobs=Jobs, __name__="pyslurm")
    out = PyslurmReader(fake).running_jobs()
    assert [(j.job_id, j.nodes) for j in out] == [(7, ("n1",)), (9, ("n2", "n3"))]


def test_pyslurm_job_with_a_bad_limit_names_it():
    with pytest.raises(Exception, match="pyslurm job 7: time_limit"):
        running_from_pyslurm(_job(time_limit="soon"))


# -- what rebalance hands the planner ----------------------------------------------------------

def test_job_ends_are_seconds_from_now_per_node_never_negative():
    jobs = [RunningJob(1, ("n1",), 1000, 10, (GresRequest("3g.40gb", 1),)),
            RunningJob(2, ("n1", "n2"), 1000, None, (GresRequest("1g.10gb", 2),), 2),
            RunningJob(3, ("n2",), 0, 1, (GresRequest("1g.10gb", 1),))]
    ends = job_ends(jobs, now=1300.0)
    assert ends["n1"] == [(300.0, {"3g.40gb": 1}), (None, {"1g.10gb": 2})]
    assert ends["n2"] == [(None, {"1g.10gb": 2}), (0.0, {"1g.10gb": 1})]


def test_plan_node_carries_each_running_jobs_end_and_slices():
    catalog = load_catalog()
    extra = format_channel(Channel(have=((0, "A100-80GB", "1g.10gb:4,3g.40gb:1"),)))
    info = NodeInfo("n1", "mixed", partitions=("gpu",), gres={"1g.10gb": 4, "3g.40gb": 1},
                    gres_used={"3g.40gb": 1}, extra=extra)
    ch = parse_channel(extra, "n1")
    pn, why = plan_node(info, ch, None, catalog, [(300.0, {"3g.40gb": 1}), (None, {None: 1})])
    assert why is None
    assert [(j.ends_in, j.slices) for j in pn.running] == [(300.0, 3), (None, 0)]
    pn, _ = plan_node(info, ch, None, catalog)
    assert pn.running is None  # not read: "auto" will not drain it


def test_config_drain_mixed_auto_and_horizon_reach_the_policy():
    cfg = parse_config('version = 1\n[rebalance]\ndrain_mixed = "auto"\ndrain_horizon = 1800\n', "c")
    pol = policy_of(cfg)
    assert (pol.drain_mixed, pol.drain_horizon, pol.drain_auto) == ("auto", 1800, True)
    assert policy_of(parse_config("version = 1\n", "c")).drain_mixed is False  # today's default


@pytest.mark.parametrize("text, message", [
    ('drain_mixed = "yes"', 'rebalance.drain_mixed: expected true or false or "auto"'),
    ("drain_horizon = -5", r"rebalance.drain_horizon: -5 is not a number of seconds \(0 to 604800\)"),
])
def test_config_refuses_a_bad_drain_setting_naming_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(f"version = 1\n[rebalance]\n{text}\n", "c")
