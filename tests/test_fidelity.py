"""bench/fidelity.py's pure parts: trace scaling and Slurm's minutes, metrics from job records
(the simulator's definitions), the gap table, Slurm's job records, the sandbox's cluster file.

The replay itself against real Slurm: tests/test_fidelity_slurm.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from types import SimpleNamespace

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.layout import format_counts
from slurm_mig.simulate.cluster import parse_cluster
from slurm_mig.simulate.run import metrics as sim_metrics
from slurm_mig.simulate.trace import SimJob, read_trace, to_csv

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _load():
    spec = importlib.util.spec_from_file_location("fidelity", os.path.join(BENCH, "fidelity.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fidelity"] = mod
    spec.loader.exec_module(mod)
    return mod


fid = _load()
Rec = fid.JobRecord


def job(name, submit, duration, limit=None, req=(("1g.10gb", 1),)):
    return SimJob(name, submit, duration, req, limit if limit is not None else duration)


# ----------------------------------------------------------------------------- the trace


def test_scale_trace_multiplies_submit_duration_and_limit():
    out = fid.scale_trace([job("a", 600, 1200, 3600), job("b", 0, 60)], 0.1)
    assert [(j.job, j.submit, j.duration, j.timelimit) for j in out] == [
        ("a", 60, 120, 360), ("b", 0, 6, 6)]
    assert out[0].request == (("1g.10gb", 1),)


@pytest.mark.parametrize("factor", [0, -1])
def test_scale_trace_refuses_a_factor_that_is_not_above_zero(factor):
    with pytest.raises(ValueError, match="give a factor above 0"):
        fid.scale_trace([job("a", 1, 1)], factor)


@pytest.mark.parametrize("seconds,minutes", [(1, 1), (20, 1), (60, 1), (61, 2), (120, 2), (121, 3)])
def test_slurm_keeps_time_limits_in_whole_minutes_rounded_up(seconds, minutes):
    assert fid.slurm_minutes(seconds) == minutes


def test_the_simulator_gets_the_limits_slurm_keeps():
    out = fid.as_slurm_keeps([job("a", 0, 50, 80), job("b", 0, 30, 60)])
    assert [j.timelimit for j in out] == [120, 60]
    assert [j.duration for j in out] == [50, 30]


def test_the_checked_in_trace_is_the_one_make_trace_writes():
    with open(os.path.join(BENCH, "fidelity-trace.csv")) as f:
        text = f.read()
    assert text == to_csv(fid.make_trace())
    jobs = read_trace(text, "fidelity-trace.csv").jobs
    assert 40 <= len(jobs) <= 60
    assert all(20 <= j.duration <= 90 for j in jobs)
    kinds = [j.request[0][0] for j in jobs]  # small, then large, then small again
    first_large, last_large = kinds.index("3g.40gb"), len(kinds) - 1 - kinds[::-1].index("3g.40gb")
    assert set(kinds[:first_large]) == set(kinds[last_large + 1:]) == {"1g.10gb"}
    assert set(kinds[first_large:last_large + 1]) == {"3g.40gb"}


def test_recut_names_a_node_and_a_layout():
    assert fid.parse_recut(["n1=1g.10gb:7", "n3=3g.40gb:2"]) == {"n1": "1g.10gb:7",
                                                                 "n3": "3g.40gb:2"}
    with pytest.raises(ValueError, match="write NODE=LAYOUT"):
        fid.parse_recut(["1g.10gb:7"])


def test_node_layouts_refuse_a_recut_of_a_node_the_sandbox_lacks():
    assert fid.node_layouts(["n1", "n2"], "L", {"n2": "M"}) == {"n1": "L", "n2": "M"}
    with pytest.raises(ValueError, match="--recut n5: no such node; the sandbox has n1, n2"):
        fid.node_layouts(["n1", "n2"], "L", {"n5": "M"})


# ----------------------------------------------------------------------------- metrics


def test_metrics_of_job_records():
    recs = [Rec("a", 0, 0, 10), Rec("b", 5, 15, 45), Rec("c", 10, 40, 50)]
    m = fid.metrics_of(recs, reconfigurations=2)
    assert m == {"jobs": 3, "started": 3, "mean_wait_s": 13.3, "p90_wait_s": 30,
                 "mean_jct_s": 30.0, "p90_jct_s": 40, "makespan_s": 50,
                 "reconfigurations": 2}


def test_a_job_that_never_ended_counts_as_a_job_but_not_in_the_means():
    m = fid.metrics_of([Rec("a", 0, 2, 10), Rec("b", 1, None, None), Rec("c", 1, 3, None)], 0)
    assert (m["jobs"], m["started"], m["mean_wait_s"], m["makespan_s"]) == (3, 1, 2.0, 10)


def test_metrics_of_agree_with_the_simulators_definitions():
    """The same starts and ends through simulate's own metrics(): the same numbers."""
    jobs = [job(str(i), s, e - st) for i, (s, st, e) in enumerate(
        [(0, 0, 30), (3, 7, 50), (4, 30, 61), (9, 9, 20), (12, 50, 95), (20, 21, 22),
         (30, 61, 100), (31, 95, 130), (40, 44, 80), (41, 100, 101), (50, 55, 57)])]
    starts = [0, 7, 30, 9, 50, 21, 61, 95, 44, 100, 55]
    ends = [30, 50, 61, 20, 95, 22, 100, 130, 80, 101, 57]
    out = SimpleNamespace(start=starts, end=ends, reconfigurations=3, instance_changes=0,
                          drained_s=0.0, plans=0)
    theirs = sim_metrics(jobs, out, {"1g.10gb": 1}, 7)
    ours = fid.metrics_of([Rec(j.job, j.submit, s, e) for j, s, e in zip(jobs, starts, ends)], 3)
    assert {k: theirs[k] for k in ours} == ours


def test_gap_is_simulator_minus_sandbox_relative_to_the_sandbox():
    sbx = {"jobs": 4, "started": 4, "mean_wait_s": 20.0, "p90_wait_s": 40, "mean_jct_s": 80.0,
           "p90_jct_s": 100, "makespan_s": 400, "reconfigurations": 0}
    sim = dict(sbx, mean_wait_s=15.0, p90_wait_s=50, makespan_s=390, reconfigurations=2)
    rows = {r["metric"]: r for r in fid.gap_rows(sbx, sim)}
    assert [r["metric"] for r in fid.gap_rows(sbx, sim)] == [k for k, _, _ in fid.METRICS]
    assert (rows["mean_wait_s"]["gap"], rows["mean_wait_s"]["gap_pct"]) == (-5.0, -25.0)
    assert (rows["p90_wait_s"]["gap"], rows["p90_wait_s"]["gap_pct"]) == (10, 25.0)
    assert (rows["makespan_s"]["gap"], rows["makespan_s"]["gap_pct"]) == (-10, -2.5)
    assert (rows["jobs"]["gap"], rows["jobs"]["gap_pct"]) == (0, 0.0)
    assert rows["reconfigurations"]["gap"] == 2
    assert rows["reconfigurations"]["gap_pct"] is None  # nothing to be relative to


def test_render_table_prints_one_row_per_metric_with_the_signed_gap():
    sbx = {k: 10 for k, _, _ in fid.METRICS}
    text = fid.render_table("dynamic", fid.gap_rows(sbx, dict(sbx, mean_wait_s=12.5)))
    assert text.startswith("dynamic:\n\n| metric | sandbox | simulator | gap | gap % |\n")
    assert "| mean wait | 10 s | 12.5 s | +2.5 s | +25.0% |" in text
    assert "| jobs | 10 | 10 | +0 | +0.0% |" in text
    assert text.count("\n| ") == len(fid.METRICS) + 1


# ----------------------------------------------------------------------------- Slurm's records


def _line(jid, state, submit, start, end, name="fid-1"):
    return (f"JobId={jid} JobName={name} UserId=root(0) GroupId=root(0) JobState={state} "
            f"Reason=None RunTime=00:00:10 TimeLimit=00:02:00 SubmitTime={submit} "
            f"EligibleTime={submit} StartTime={start} EndTime={end} Deadline=N/A "
            f"Scheduler=Backfill Partition=debug NodeList=n1 "
            f"Command=/var/lib/x/bin/sim-job sleep 53 TresPerNode=gres:gpu:1g.10gb:1 ")


def _epoch(text):
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def test_parse_jobs_takes_start_and_end_only_once_slurm_has_them():
    text = "\n".join([
        _line(7, "PENDING", "2026-12-04T22:15:12", "2026-12-04T22:20:00", "2026-12-04T22:22:00"),
        _line(8, "RUNNING", "2026-12-04T22:15:12", "2026-12-04T22:15:13", "2026-12-04T22:17:13"),
        _line(9, "COMPLETED", "2026-12-04T22:15:19", "2026-12-04T22:15:19", "2026-12-04T22:15:40"),
        _line(10, "COMPLETING", "2026-12-04T22:15:19", "2026-12-04T22:15:20", "2026-12-04T22:15:41"),
        "No jobs in the system"])
    jobs = fid.parse_jobs(text)
    assert sorted(jobs) == [7, 8, 9, 10]
    # a pending job's StartTime is Slurm's estimate, and a running job's EndTime its limit
    assert (jobs[7]["start"], jobs[7]["end"]) == (None, None)
    assert (jobs[8]["start"], jobs[8]["end"]) == (_epoch("2026-12-04T22:15:13"), None)
    assert (jobs[10]["start"], jobs[10]["end"]) == (_epoch("2026-12-04T22:15:20"), None)
    assert jobs[9] == {"name": "fid-1", "state": "COMPLETED", "scheduler": "Backfill",
                       "submit": _epoch("2026-12-04T22:15:19"),
                       "start": _epoch("2026-12-04T22:15:19"), "end": _epoch("2026-12-04T22:15:40")}


def test_slurm_epoch_is_none_for_unknown_times():
    assert fid.slurm_epoch("Unknown") is None
    assert fid.slurm_epoch("None") is None
    assert fid.slurm_epoch("") is None


def test_records_are_seconds_from_time_zero_and_a_job_slurm_lost_has_no_start():
    seen = {11: {"submit": 1005.0, "start": 1007.0, "end": 1030.0}, 12: {"submit": 1006.0,
                                                                          "start": None, "end": None}}
    recs = fid.records_from({"a": 11, "b": 12, "c": 13}, seen, 1000.0)
    assert recs == [Rec("a", 5.0, 7.0, 30.0), Rec("b", 6.0, None, None),
                    Rec("c", None, None, None)]
    m = fid.metrics_of(recs, 0)
    assert (m["jobs"], m["started"]) == (3, 1)


# ----------------------------------------------------------------------------- the sandbox's model


def test_cluster_toml_describes_the_sandbox_to_the_simulator():
    layouts = fid.node_layouts(["n1", "n2", "n3"], fid.DEFAULT_LAYOUT, {"n1": "1g.10gb:7"})
    cluster = parse_cluster(fid.cluster_toml(layouts, ["A100-80GB", "A100-80GB"]), "sbx",
                            load_catalog())
    assert [n.name for n in cluster.nodes] == ["n1", "n2", "n3"]
    assert all(n.partitions == () for n in cluster.nodes)
    assert [[format_counts(lay) for _, lay in n.gpus] for n in cluster.nodes] == [
        ["1g.10gb:7"] * 2, ["1g.10gb:4,3g.40gb:1"] * 2, ["1g.10gb:4,3g.40gb:1"] * 2]


def test_reconfigure_cost_is_the_median_wall_time_of_runs_that_changed_a_node():
    cycles = [{"seconds": 0.8, "changed": []}, {"seconds": 3.0, "changed": ["n1"]},
              {"seconds": 5.0, "changed": ["n2", "n3"]}, {"seconds": 4.1, "changed": ["n1"]}]
    assert fid.reconfigure_cost(cycles) == 4.1
    assert fid.reconfigure_cost(cycles[:1]) is None


def test_recut_none_keeps_the_layout_sandbox_up_cut():
    assert fid.parse_recut(["none"]) == {}
    assert fid.node_layouts(["n1", "n2"], "L", fid.parse_recut(["none"])) == {"n1": "L", "n2": "L"}


def test_job_overhead_lengthens_every_job_and_a_limit_only_where_it_would_be_passed():
    out = fid.with_overhead([job("a", 0, 50, 60), job("b", 5, 59.5, 60)], 0.75)
    assert [(j.submit, j.duration, j.timelimit) for j in out] == [(0, 50.75, 60), (5, 60.25, 60.25)]


def test_per_job_lists_the_jobs_whose_wait_differs_by_the_threshold_or_more():
    jobs = [job("a", 0, 10), job("b", 5, 10), job("c", 6, 10), job("d", 7, 10)]
    recs = [Rec("a", 0, 1, 11), Rec("b", 5, 35, 45), Rec("c", 6, 8, 18), Rec("d", 7, None, None)]
    rows = fid.per_job(jobs, recs, [0, 5, 11, 9], threshold=3)
    assert [(r["job"], r["sandbox_wait"], r["simulator_wait"], r["gap"]) for r in rows] == [
        ("b", 30, 0, -30), ("c", 2, 5, 3)]
    assert rows[0]["gres"] == "1g.10gb:1"


def test_a_bad_trace_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("job,submit,duration,gres\n1,0,x,gpu:1g.10gb:1\n")
    assert fid.run([str(bad), "--from", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fidelity: error: ") and err.count("\n") == 1
    assert "duration: 'x' is not seconds" in err


def test_a_bad_recut_is_one_line_and_exit_2(capsys):
    assert fid.run([os.path.join(BENCH, "fidelity-trace.csv"), "--recut", "n9=1g.10gb:7"]) == 2
    assert capsys.readouterr().err == (
        "fidelity: error: --recut n9: no such node; the sandbox has n1, n2, n3, n4\n")


def test_rebalance_settings_go_into_the_controllers_rebalance_table():
    text = "version = 1\n[slurm]\nscontrol = \"/x/scontrol\"\n[rebalance]\nenabled = true\n"
    got = fid.with_rebalance_settings(text, ['drain_mixed="auto"', "drain_horizon = 600"])
    from slurm_mig.host.config import parse_config
    r = parse_config(got, "t").rebalance
    assert (r.drain_mixed, r.drain_horizon, r.enabled) == ("auto", 600, True)
    assert got.startswith("version = 1\n[slurm]\nscontrol")


@pytest.mark.parametrize("item, message", [
    ("drain_mixed", r"--rebalance 'drain_mixed': give KEY=VALUE"),
    ('drain_mixed="sometimes"', r"^--rebalance: .*drain_mixed"),
])
def test_a_bad_rebalance_setting_is_one_line(item, message):
    with pytest.raises(ValueError, match=message):
        fid.with_rebalance_settings("version = 1\n[rebalance]\n", [item])
