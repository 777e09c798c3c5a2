"""``slurm-mig simulate``: traces, the scheduler, the policies and the command (fast, pure)."""

from __future__ import annotations

import json
import random
import sys

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.host.config import parse_config
from slurm_mig.rebalance.cycle import policy_of
from slurm_mig.simulate.cluster import ClusterError, parse_cluster
from slurm_mig.simulate.engine import Costs, Engine, Settings
from slurm_mig.simulate.generate import generate
from slurm_mig.simulate.policies import PlannerController
from slurm_mig.simulate.run import Options, simulate, types_of
from slurm_mig.simulate.trace import (SimJob, Trace, TraceError, parse_seconds, read_csv,
                                      read_sacct, read_trace, to_csv)

CAT = load_catalog()


def cluster(text: str):
    return parse_cluster(text, "c.toml", CAT)


def one_node(layout: str, gpus: int = 1, name: str = "n1"):
    return cluster(f'[[node]]\nname = "{name}"\ngpus = ["A100-80GB:{gpus}"]\nlayout = "{layout}"\n')


def job(name, submit, duration, gres, limit=None, priority=0, partitions=()):
    return SimJob(name, float(submit), float(duration), gres, float(limit or duration), priority,
                  tuple(partitions))


def run(cl, jobs, controller=None, **costs):
    eng = Engine(cl, jobs, types_of(cl, jobs, CAT), Costs(**costs), Settings(cycle_s=60),
                 controller)
    return eng, eng.run()


def waits(jobs, out):
    return {j.job: (None if s is None else s - j.submit) for j, s in zip(jobs, out.start)}


# ----------------------------------------------------------------------------- traces


def test_csv_reads_seconds_partitions_priority_timelimit_and_several_types():
    t = read_csv('job,submit,duration,gres,partition,priority,timelimit\n'
                 'a,10,60,gpu:1g.10gb:2,p1;p2,5,1:30:00\n'
                 'b,0,30,"gpu:3g.40gb:1,gpu:1g.10gb:1",,,\n', "t.csv")
    b, a = t.jobs  # sorted by submit
    assert a == SimJob("a", 10.0, 60.0, (("1g.10gb", 2),), 5400.0, 5, ("p1", "p2"))
    # no timelimit: the duration rounded up to a quarter hour, as users ask for round limits
    assert b.request == (("1g.10gb", 1), ("3g.40gb", 1)) and b.timelimit == 900.0
    assert b.priority == 0 and b.partitions == ()


def test_csv_iso_submit_times_count_from_the_earliest():
    t = read_csv("job,submit,duration,gres\n1,2026-11-02T08:01:00,5,gpu:1g.10gb\n"
                 "2,2026-11-02T08:00:00,5,gpu:1g.10gb:1\n", "t.csv")
    assert [(j.job, j.submit) for j in t.jobs] == [("2", 0.0), ("1", 60.0)]
    assert t.start == "2026-11-02T08:00:00Z"


@pytest.mark.parametrize("row, says", [
    ("1,0,60,gpu:2", "t.csv:2: gres 'gpu:2': an untyped gpu:N request names no MIG profile"),
    ("1,0,sixty,gpu:1g.10gb:1", "t.csv:2: duration:"),
    ("1,yesterday,60,gpu:1g.10gb:1", "t.csv:2: submit 'yesterday' is neither seconds"),
    ("1,0,60,gpu:1g.10gb:1,gpu:2g.20gb:1", "t.csv:2: 5 fields, the header has 4; quote a gres"),
    ("1,0,60,gpu:v100:1", "not a MIG profile"),
])
def test_csv_bad_row_is_one_line_naming_file_line_and_fix(row, says):
    with pytest.raises(TraceError) as err:
        read_csv("job,submit,duration,gres\n" + row + "\n", "t.csv")
    text = str(err.value)
    assert says in text and "\n" not in text and err.value.exit_code == 2


def test_csv_header_must_name_the_columns():
    with pytest.raises(TraceError, match=r"t.csv:1: missing column\(s\) gres; the header must be"):
        read_csv("job,submit,duration\n1,0,5\n", "t.csv")


def test_slurm_time_forms():
    assert parse_seconds("1-02:03:04") == 93784
    assert parse_seconds("02:03:04") == 7384
    assert parse_seconds("03:04") == 184
    assert parse_seconds("90") == 90
    with pytest.raises(ValueError):
        parse_seconds("1 hour")


SACCT = """JobID|Submit|Start|End|Timelimit|Partition|Priority|NNodes|AllocTRES|ReqTRES|State
10|2026-11-02T08:00:00|2026-11-02T08:00:30|2026-11-02T08:10:30|01:00:00|gpu|100|1|billing=1,cpu=1,gres/gpu:3g.40gb=1,gres/gpu=1,node=1|cpu=1|COMPLETED
11|2026-11-02T08:01:00|Unknown|Unknown|01:00:00|gpu|90|1||cpu=1|PENDING
12|2026-11-02T08:02:00|2026-11-02T08:02:00|2026-11-02T08:03:00|UNLIMITED|gpu|90|1|cpu=1,gres/gpu=2,node=1|cpu=1|COMPLETED
13|2026-11-02T08:02:00|2026-11-02T08:02:00|2026-11-02T08:03:00|10:00|gpu|90|2|gres/gpu:1g.10gb=2|cpu=1|COMPLETED
"""


def test_sacct_replays_started_typed_single_node_jobs_and_counts_the_rest():
    t = read_trace(SACCT, "s.txt")
    assert t.jobs == (SimJob("10", 0.0, 600.0, (("3g.40gb", 1),), 3600.0, 100, ("gpu",)),)
    assert dict(t.skipped) == {"never started or still running": 1, "multi-node": 1,
                               "no typed MIG request (gres/gpu:<type>=N)": 1}


def test_sacct_without_a_tres_column_says_which_fields_to_export():
    with pytest.raises(TraceError, match=r"s.txt:1: no AllocTRES or ReqTRES column.*sacct -X -P -o "
                                         r"JobID,Submit"):
        read_sacct("JobID|Submit|Start|End\n1|a|b|c\n", "s.txt")


def test_generated_trace_round_trips_through_csv():
    jobs = generate(gpus=4, duration_s=4 * 3600, seed=3)
    assert jobs and read_csv(to_csv(jobs), "g.csv").jobs == tuple(jobs)


def test_cluster_file_expands_hostlists_and_checks_layouts():
    cl = cluster('[[node]]\nname = "gpu[01-03]"\ngpus = ["A100-80GB:2"]\n'
                 'layout = ["1g.10gb:7", "3g.40gb:2"]\npartitions = ["a"]\n')
    assert [n.name for n in cl.nodes] == ["gpu01", "gpu02", "gpu03"]
    assert [str(lay) for _, lay in cl.nodes[0].gpus][1].count("3g.40gb") == 2
    with pytest.raises(ClusterError, match=r"c.toml: node\[0\].layout: gpu 0: .*9g"):
        cluster('[[node]]\nname = "n1"\ngpus = ["A100-80GB"]\nlayout = "9g.80gb:1"\n')


# ----------------------------------------------------------------------------- the scheduler


def test_backfill_never_delays_the_top_job_and_waits_are_exact():
    # One A100-80GB cut 3g.40gb:2.  A holds one 3g until 100; B wants both (reserved at 100);
    # C ends by its limit before 100 and backfills; D would run past 100 and must wait for B.
    jobs = [job("A", 0, 100, (("3g.40gb", 1),)), job("B", 0, 50, (("3g.40gb", 2),)),
            job("C", 10, 50, (("3g.40gb", 1),)), job("D", 20, 200, (("3g.40gb", 1),))]
    _, out = run(one_node("3g.40gb:2"), jobs)
    assert waits(jobs, out) == {"A": 0, "B": 100, "C": 0, "D": 130}


def test_a_job_that_runs_shorter_than_its_limit_still_counts_its_limit_for_backfill():
    # C runs 50 s but asks for 150 s: it would end after B's reservation, so it waits.
    jobs = [job("A", 0, 100, (("3g.40gb", 1),)), job("B", 0, 50, (("3g.40gb", 2),)),
            job("C", 10, 50, (("3g.40gb", 1),), limit=150)]
    _, out = run(one_node("3g.40gb:2"), jobs)
    assert waits(jobs, out) == {"A": 0, "B": 100, "C": 140}


def test_higher_priority_starts_first():
    jobs = [job("run", 0, 100, (("7g.80gb", 1),)), job("low", 1, 10, (("7g.80gb", 1),), priority=1),
            job("high", 2, 10, (("7g.80gb", 1),), priority=9)]
    _, out = run(one_node("7g.80gb:1"), jobs)
    assert waits(jobs, out) == {"run": 0, "high": 98, "low": 109}


def test_a_job_never_splits_across_nodes():
    # Two nodes with two free 1g each: a job asking three never starts.
    cl = cluster('[[node]]\nname = "n[1-2]"\ngpus = ["A100-80GB"]\nlayout = "1g.10gb:2,2g.20gb:1,3g.40gb:1"\n')
    jobs = [job("three", 0, 10, (("1g.10gb", 3),)), job("two", 0, 10, (("1g.10gb", 2),))]
    _, out = run(cl, jobs)
    assert out.start == [None, 0.0]


class CheckedEngine(Engine):
    """Checks, after every start, that no node has more of a type in use than its layout
    holds, and that each running job holds all its instances on its one node."""

    def _start(self, j, n, sig, at):
        super()._start(j, n, sig, at)
        for node in self.nodes:
            used = [0] * len(self.types)
            for _, r in node.running:
                assert self.job_node[r] == node.index
                for t, k in self.req[r]:
                    used[t] += k
            assert used == [c - f for c, f in zip(node.cap, node.free)]
            assert all(0 <= f <= c for c, f in zip(node.cap, node.free))
            assert node.status == "up" or node.index != n.index


@pytest.mark.parametrize("drain_mixed", [False, True])
def test_scheduler_never_oversubscribes_a_layout_under_random_load(drain_mixed):
    rng = random.Random(5)
    kinds = [("1g.10gb", 1), ("1g.10gb", 3), ("2g.20gb", 1), ("3g.40gb", 1), ("7g.80gb", 1)]
    jobs = []
    for i in range(300):
        k = rng.choice(kinds)
        d = rng.randint(10, 900)
        jobs.append(job(str(i), rng.uniform(0, 6000), d, (k,), limit=d * rng.uniform(1, 2),
                        priority=rng.randint(0, 3)))
    jobs.sort(key=lambda j: j.submit)
    cl = cluster('[[node]]\nname = "n[1-3]"\ngpus = ["A100-80GB:2"]\nlayout = "3g.40gb:1,2g.20gb:1,1g.10gb:2"\n')
    config = parse_config("version = 1\n[rebalance]\nmax_nodes_per_cycle = 2\n"
                          f"drain_mixed = {'true' if drain_mixed else 'false'}\n", "c")
    eng = CheckedEngine(cl, jobs, types_of(cl, jobs, CAT), Costs(), Settings(cycle_s=60),
                        PlannerController(policy_of(config)))
    out = eng.run()
    assert out.reconfigurations > 0 and all(s is not None for s in out.start)
    for j, s, e in zip(jobs, out.start, out.end):
        assert s >= j.submit and e == pytest.approx(s + j.duration)


# ----------------------------------------------------------------------------- policies

SHIFT_CLUSTER = '[[node]]\nname = "n[1-2]"\ngpus = ["A100-80GB"]\nlayout = "1g.10gb:7"\n'


def shifting_jobs():
    """14 one-slice jobs for an hour, then two full-GPU jobs."""
    small = [job(f"s{i}", 0, 3600, (("1g.10gb", 1),)) for i in range(14)]
    large = [job(f"l{i}", 4000, 3600, (("7g.80gb", 1),)) for i in range(2)]
    return small + large


def test_dynamic_recuts_idle_nodes_with_the_real_planner_and_pays_the_costs():
    # Cycles every 60 s: the one at 4020 s sees the 7g jobs; both idle nodes recut (7 1g
    # destroyed + one 7g created: 8 s), finished in the same cycle, 4 s reconfigure.
    jobs = shifting_jobs()
    config = parse_config("version = 1\n", "c")
    _, out = run(cluster(SHIFT_CLUSTER), jobs, PlannerController(policy_of(config)))
    w = waits(jobs, out)
    assert w["l0"] == w["l1"] == 32.0 and out.reconfigurations == 2 and out.instance_changes == 16


def test_dynamic_beats_best_static_on_shifting_demand_and_static_leaves_jobs_unserved():
    trace = Trace(tuple(shifting_jobs()))
    result = simulate(trace, cluster(SHIFT_CLUSTER), policy_of(parse_config("version = 1\n", "c")),
                      CAT, Options())
    by = {p["policy"]: p for p in result["policies"]}
    assert by["static"]["unserved"] == 2
    assert by["best-static"]["unserved"] == 0 and by["dynamic"]["unserved"] == 0
    # best-static: one GPU 1g.10gb:7, one 7g.80gb: half the room for each phase.
    assert by["best-static"]["mean_jct_s"] == 5400.0
    assert by["dynamic"]["mean_jct_s"] == 3604.0
    assert by["dynamic"]["reconfigurations"] == 2 and by["static"]["reconfigurations"] == 0


def test_drain_mixed_drains_a_busy_node_which_then_waits_for_its_jobs():
    # GPU 0 runs a 3g job for two hours, GPU 1 is idle 1g.10gb:7; a 7g job comes at 60 s.
    cl = cluster('[[node]]\nname = "n1"\ngpus = ["A100-80GB:2"]\n'
                 'layout = ["3g.40gb:2", "1g.10gb:7"]\n')
    jobs = [job("busy", 0, 7200, (("3g.40gb", 1),)), job("big", 60, 60, (("7g.80gb", 1),))]
    # Off: the node is mixed, never changed while the job runs; idle at 7200 (a cycle), the
    # planner recuts GPU 0 (3 instance changes, the fewest): 7200 + 3 + 4.
    _, out = run(cl, jobs, PlannerController(policy_of(parse_config("version = 1\n", "c"))))
    assert out.start[1] == 7207 and out.drained_s == 7
    # On: drained at 60 s for GPU 1 (busy 3g kept), waits for the job, applies (8 s), past
    # apply_wait: finished by the next cycle (7260), 4 s reconfigure.
    cfg = parse_config("version = 1\n[rebalance]\ndrain_mixed = true\n", "c")
    _, out2 = run(cl, jobs, PlannerController(policy_of(cfg)))
    assert out2.start[1] == 7264 and out2.drained_s == 7264 - 60


# ----------------------------------------------------------------------------- the command

JSON_KEYS = {"policy", "jobs", "started", "unserved", "mean_wait_s", "p90_wait_s", "mean_jct_s",
             "p90_jct_s", "makespan_s", "slice_utilization", "reconfigurations",
             "instance_changes", "drained_node_hours", "layouts", "planner_calls"}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "c.toml").write_text(SHIFT_CLUSTER)
    (tmp_path / "t.csv").write_text(to_csv(shifting_jobs()))
    (tmp_path / "config.toml").write_text("version = 1\n")
    return tmp_path


def test_cli_json_has_the_stable_keys_per_policy(cli, files):
    code, out, err = cli("--json", "simulate", files / "t.csv", "--cluster", files / "c.toml",
                         "--config", files / "config.toml")
    assert code == 0, err
    data = json.loads(out)
    assert [p["policy"] for p in data["policies"]] == ["static", "best-static", "dynamic"]
    for p in data["policies"]:
        assert JSON_KEYS <= set(p)
    assert "series" not in data and {"trace", "cluster", "costs", "settings", "config"} <= set(data)


def test_cli_text_table_and_one_policy(cli, files):
    code, out, _ = cli("simulate", files / "t.csv", "--cluster", files / "c.toml", "--policy",
                       "dynamic", "--config", files / "config.toml")
    assert code == 0
    assert out.splitlines()[0].split()[:4] == ["POLICY", "JOBS", "UNSERVED", "WAIT"]
    assert out.splitlines()[1].split()[0] == "dynamic" and "static" not in out.splitlines()[2:3]


def test_cli_bad_trace_row_is_exit_2_one_line(cli, files):
    (files / "bad.csv").write_text("job,submit,duration,gres\n1,0,60,gpu:1g.10gb:1\n2,0,x,gpu:1g.10gb:1\n")
    code, out, err = cli("simulate", files / "bad.csv", "--cluster", files / "c.toml",
                         "--config", files / "config.toml")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{files / 'bad.csv'}:3: duration:" in err


def test_cli_plot_without_matplotlib_says_how_to_get_it(cli, files, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = cli("simulate", files / "t.csv", "--cluster", files / "c.toml", "--policy",
                       "static", "--config", files / "config.toml", "--plot", files / "p.png")
    assert code == 2 and "pip install 'slurm-mig[plot]'" in err and err.count("\n") == 1
    assert not (files / "p.png").exists()


def test_cli_plot_writes_a_png(cli, files):
    pytest.importorskip("matplotlib")
    code, out, _ = cli("simulate", files / "t.csv", "--cluster", files / "c.toml", "--policy",
                       "static", "--policy", "dynamic", "--config", files / "config.toml",
                       "--plot", files / "p.png")
    assert code == 0 and (files / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_generate_writes_a_trace_the_simulator_reads(cli, files):
    code, out, _ = cli("simulate", "--generate", files / "g.csv", "--gpus", "4", "--hours", "2")
    assert code == 0 and out.startswith("wrote ")
    assert read_csv((files / "g.csv").read_text(), "g.csv").jobs


def test_dynamic_can_start_from_best_static_layouts():
    trace = Trace(tuple(shifting_jobs()))
    pol = policy_of(parse_config("version = 1\n", "c"))
    result = simulate(trace, cluster(SHIFT_CLUSTER), pol, CAT,
                      Options(("dynamic",), dynamic_from="best-static"))
    (dyn,) = result["policies"]
    # From best-static's one 1g.10gb:7 GPU and one 7g.80gb: the first cycle (0 s) sees seven
    # 1g jobs waiting and recuts the idle 7g node (8 + 4 s); at 4020 s both nodes go 7g.
    assert dyn["policy"] == "dynamic" and dyn["unserved"] == 0 and dyn["reconfigurations"] == 3
    assert dyn["mean_jct_s"] == round((7 * 3600 + 7 * 3612 + 2 * 3632) / 16, 1)
    assert result["settings"]["dynamic_from"] == "best-static"


def test_a_job_no_node_can_hold_takes_no_reservation_from_the_next():
    # "huge" (priority 9) asks for two 7g on a one-GPU node: it can never start and must not
    # hold the reservation slot; "big" gets it, so "long" may not jump ahead of it.
    jobs = [job("run", 0, 100, (("3g.40gb", 1),)), job("huge", 1, 10, (("7g.80gb", 2),), priority=9),
            job("big", 2, 10, (("3g.40gb", 2),), priority=5), job("long", 3, 500, (("3g.40gb", 1),))]
    _, out = run(one_node("3g.40gb:2"), jobs)
    assert waits(jobs, out) == {"run": 0, "huge": None, "big": 98, "long": 107}


def test_jobs_in_partitions_no_node_has_are_named_in_a_note():
    trace = Trace((job("x", 0, 10, (("1g.10gb", 1),), partitions=("gpu",)),))
    result = simulate(trace, one_node("1g.10gb:7"), policy_of(parse_config("version = 1\n", "c")),
                      CAT, Options(("static",)))
    assert result["policies"][0]["unserved"] == 1
    assert any("partitions no node" in n for n in result["notes"])


def sinfo_snapshot(extras):
    """The recorded 22.05 ``sinfo -N --json`` (two nodes) with our own Extra fields."""
    import pathlib

    path = pathlib.Path(__file__).parent / "data" / "slurm" / "22.05" / "sinfo-N.json"
    doc = json.loads(path.read_text())
    for node in doc["nodes"]:
        node["extra"] = extras.get(node["name"], "")
    return json.dumps(doc)


def test_a_sinfo_snapshot_gives_partitions_from_slurm_and_layouts_from_extra():
    from slurm_mig.change.channel import Channel, format_channel
    from slurm_mig.simulate.cluster import read_cluster

    have = ((0, "A100-80GB", "1g.10gb@0,1g.10gb@1,1g.10gb@2,1g.10gb@3,3g.40gb@4"),)
    text = sinfo_snapshot({"n1": format_channel(Channel(have=have)),
                           "n2": format_channel(Channel(have=((0, "A100-80GB", "7g.80gb@0"),)))})
    cl = read_cluster(text, "snap.json", CAT)
    assert [(n.name, n.partitions) for n in cl.nodes] == [("n1", ("debug",)), ("n2", ("big", "debug"))]
    assert [str(lay) for _, lay in cl.nodes[0].gpus] == [have[0][2]]


def test_a_sinfo_snapshot_node_with_nothing_published_names_the_fix():
    from slurm_mig.simulate.cluster import read_cluster

    with pytest.raises(ClusterError, match=r"snap.json: node n1: no layout published in its "
                                           r"Extra field; run `slurm-mig sync --pending`"):
        read_cluster(sinfo_snapshot({}), "snap.json", CAT)


TWO_BUSY = ('[[node]]\nname = "n1"\ngpus = ["A100-80GB:1"]\nlayout = "3g.40gb:1,1g.10gb:4"\n'
            'partitions = ["p1"]\n[[node]]\nname = "n2"\ngpus = ["A100-80GB:1"]\n'
            'layout = "3g.40gb:1,1g.10gb:4"\npartitions = ["p2"]\n')


def test_drain_mixed_auto_drains_the_node_whose_job_ends_first_and_only_when_it_pays():
    # n1 runs a 3g job with a 50 min limit, n2 one with a 5 min limit; a 2g job comes at 30 s.
    cl = cluster(TWO_BUSY)
    jobs = [job("long", 0, 3000, (("3g.40gb", 1),), partitions=("p1",)),
            job("short", 0, 300, (("3g.40gb", 1),), partitions=("p2",)),
            job("2g", 30, 600, (("2g.20gb", 1),), partitions=("p1", "p2"))]
    auto = parse_config('version = 1\n[rebalance]\ndrain_mixed = "auto"\ndrain_horizon = 3600\n', "c")
    _, out = run(cl, jobs, PlannerController(policy_of(auto)))
    # only n2 is drained, at 60 s (n1 would stand idle 4 slices x 50 min for 2 x 10 min
    # gained); its job ends at 300, 6 instance changes (6 s), past apply_wait: finished by
    # the 360 s cycle, 4 s reconfigure
    assert out.reconfigurations == 1
    assert out.start[2] == 364 and out.drained_s == 364 - 60
    # drain_mixed = true drains the first node in name order, whose job runs 50 min
    on = parse_config("version = 1\n[rebalance]\ndrain_mixed = true\n", "c")
    _, out2 = run(cl, jobs, PlannerController(policy_of(on)))
    assert out2.start[2] > 3000


def test_planner_sees_the_traces_time_limits_as_the_jobs_ends():
    cl = cluster(TWO_BUSY)
    jobs = [job("a", 0, 100, (("1g.10gb", 2),), limit=900, partitions=("p1",))]  # 2 slices
    auto = parse_config('version = 1\n[rebalance]\ndrain_mixed = "auto"\n', "c")
    ctl = PlannerController(policy_of(auto))
    eng = Engine(cl, jobs, types_of(cl, jobs, CAT), Costs(), Settings(cycle_s=60), ctl)
    eng.now = 0.0
    eng._submit(0)
    eng.now = 40.0
    eng._schedule()
    eng.now = 100.0 - 1  # the job runs 100 s, but Slurm (and rebalance) know only its limit
    nodes, _ = ctl.plan_nodes(eng)
    n1 = {n.name: n for n in nodes}["n1"]
    assert [(j.ends_in, j.slices) for j in n1.running] == [(40.0 + 900 - 99, 2)]
    assert {n.name: n for n in nodes}["n2"].running == ()


def test_trace_without_a_time_limit_gets_its_duration_rounded_up_to_a_quarter_hour():
    t = read_csv("job,submit,duration,gres\na,0,61,gpu:1g.10gb:1\nb,0,900,gpu:1g.10gb:1\n"
                 "c,0,901,gpu:1g.10gb:1\n", "t.csv")
    assert [j.timelimit for j in t.jobs] == [900.0, 900.0, 1800.0]
