"""Spare room on a recut GPU (issue 12): filled to a maximal layout with what floors and
recent demand make most likely; the recent-demand memory between cycles; the simulator's
dynamic policy keeping the same memory."""

from __future__ import annotations

import json
import logging

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.layout import format_counts, format_layout, parse_layout
from slurm_mig.rebalance.planning import DemandItem, PlanGpu, PlanNode, Policy, plan
from slurm_mig.rebalance.planning.candidates import maximal
from slurm_mig.rebalance.planning.spare import FLOOR, NEAREST, RECENT, complete, remember
from slurm_mig.rebalance.recent import Memory, read_memory, update, write_memory
from slurm_mig.simulate.engine import Costs, Engine, Settings
from slurm_mig.simulate.policies import PlannerController
from slurm_mig.simulate.run import types_of
from slurm_mig.simulate.trace import SimJob

from test_rebalance import Reader, _job, cluster, config  # noqa: F401 - fixtures
from slurm_mig.rebalance.cycle import rebalance

CAT = load_catalog()
A100 = CAT.model("A100-80GB")


def _plan(today, demand, recent=None, floor=None):
    node = PlanNode("n1", ("gpu",), "idle", (PlanGpu(0, "A100-80GB", parse_layout(today, A100)),))
    items = [DemandItem(t, n, 1.0) for t, n in demand]
    p = plan([node], items, Policy(floor=floor or {}), 1, recent=recent)
    return p, p.node("n1").gpus[0].after


def _maximal(layout):
    return layout.keys() in {m.keys() for m in maximal(A100, False)}


# ----------------------------------------------------------------------------- the planner


def test_a_recut_for_waiting_1g_jobs_leaves_no_empty_or_unasked_room():
    # The sandbox demo (docs/rebalance.md): n1 cut 3g.40gb:2 by an admin, six 1g.10gb jobs
    # waiting.  It was recut to 1g.10gb:6,1g.20gb:1 (a type nobody asked for), then, with
    # the planner's trim, 1g.10gb:6 and one slice left empty.  Now the room gets the type
    # asked for, and the layout is maximal.
    p, after = _plan("3g.40gb:2", [("1g.10gb", 6)])
    assert format_counts(after) == "1g.10gb:7" and _maximal(after)
    assert p.explain()[0].endswith("changes gpu0 from 3g.40gb:2 to 1g.10gb:7; "
                                   "spare room: 1x 1g.10gb (recent demand)")


def test_spare_room_gets_the_recently_demanded_type_not_the_pending_one():
    # A 7g.80gb GPU recut for one 3g.40gb job: four slices left.  With nothing remembered
    # they go to the pending type; with 2g.20gb jobs in recent cycles, to 2g.20gb.
    _, alone = _plan("7g.80gb@0", [("3g.40gb", 1)])
    assert format_counts(alone) == "3g.40gb:2"
    p, after = _plan("7g.80gb@0", [("3g.40gb", 1)], recent={"2g.20gb": 6.0, "3g.40gb": 1.0})
    assert format_counts(after) == "2g.20gb:2,3g.40gb:1" and _maximal(after)
    assert "; spare room: 2x 2g.20gb (recent demand)" in p.explain()[0]
    # the job still starts: spare room never costs a job
    assert p.totals.jobs_after == 1


def test_a_floor_comes_before_recent_demand_and_spare_room_never_costs_it():
    p, after = _plan("7g.80gb@0", [("3g.40gb", 1)], recent={"1g.10gb": 50.0}, floor={"1g.20gb": 1})
    assert format_counts(after) == "1g.10gb:2,1g.20gb:1,3g.40gb:1" and _maximal(after)
    assert p.totals.jobs_after == 1
    assert "spare room: 2x 1g.10gb (recent demand)" in p.explain()[0]


def test_a_floor_short_of_its_count_wins_spare_room_over_recent_demand():
    today, chosen = parse_layout("7g.80gb@0", A100), parse_layout("3g.40gb@4", A100)
    layout, why = complete(A100, today, chosen, {"1g.20gb": 1}, ("2g.20gb", "1g.10gb"))
    assert format_layout(layout) == "1g.20gb@0,2g.20gb@2,3g.40gb@4"
    assert sorted(why) == [("1g.20gb", FLOOR), ("2g.20gb", RECENT)]
    # without the floor, recent demand alone
    layout, why = complete(A100, today, chosen, {}, ("2g.20gb", "1g.10gb"))
    assert format_layout(layout) == "2g.20gb@0,2g.20gb@2,3g.40gb@4" and set(why) == {("2g.20gb", RECENT)}


def test_with_no_signal_spare_room_follows_the_layout_nearest_today():
    today, chosen = parse_layout("4g.40gb@0,3g.40gb@4", A100), parse_layout("3g.40gb@4", A100)
    layout, why = complete(A100, today, chosen, {}, ())
    assert format_layout(layout) == "4g.40gb@0,3g.40gb@4" and why == (("4g.40gb", NEAREST),)


def test_spare_room_stays_within_the_sites_candidate_layouts():
    node = PlanNode("n1", ("gpu",), "idle", (PlanGpu(0, "A100-80GB", parse_layout("7g.80gb@0", A100)),))
    demand = [DemandItem("3g.40gb", 1, 1.0)]
    for given, want in ((("3g.40gb@4", "7g.80gb@0"), "3g.40gb@4"),
                        (("3g.40gb@4", "2g.20gb@0,3g.40gb@4", "3g.40gb@0,3g.40gb@4"), "2g.20gb@0,3g.40gb@4")):
        p = plan([node], demand, Policy(candidates={"A100-80GB": given}), 1, recent={"2g.20gb": 5.0})
        assert format_layout(p.node("n1").gpus[0].after) == want


def test_a_gpu_the_plan_does_not_recut_is_not_filled():
    # today's layout already has a free 3g.40gb: no recut, its empty room stays as it is
    p, after = _plan("3g.40gb@0", [("3g.40gb", 1)], recent={"1g.10gb": 9.0})
    assert format_layout(after) == "3g.40gb@0" and not p.changed()


# ----------------------------------------------------------------------------- the memory


def test_recent_demand_halves_every_half_life_and_blends_in_what_is_asked_now():
    m = remember({}, {"1g.10gb": 8.0}, None, 3600)
    assert m == {"1g.10gb": 8.0}  # the first cycle: what is asked now
    m = remember(m, {}, 3600, 3600)
    assert m == pytest.approx({"1g.10gb": 4.0})
    m = remember(m, {"3g.40gb": 2.0}, 3600, 3600)
    assert m == pytest.approx({"1g.10gb": 2.0, "3g.40gb": 1.0})
    assert remember(m, {"2g.20gb": 1.0}, 60, 0) == {"2g.20gb": 1.0}  # half-life 0: now only
    assert remember({"1g.10gb": 1.0}, {}, 3600 * 20, 3600) == {}  # forgotten


def test_recent_demand_decays_over_cycles_with_the_time_between_them():
    mem = Memory()
    for t in (0.0, 300.0, 600.0):  # three cycles, 5 minutes apart, 1g.10gb asked
        mem = update(mem, {"1g.10gb": 7.0}, t, 900)
    assert mem.types == pytest.approx({"1g.10gb": 7.0}) and mem.at == 600.0
    for t in (900.0, 1200.0, 1500.0):  # demand moves to 3g.40gb
        mem = update(mem, {"3g.40gb": 2.0}, t, 900)
    # 900 s after the last 1g.10gb cycle: one half-life
    assert mem.types["1g.10gb"] == pytest.approx(3.5)
    assert mem.types["3g.40gb"] == pytest.approx(1.0)


def test_the_memory_file_round_trips(tmp_path):
    path = str(tmp_path / "d.json")
    write_memory(path, Memory({"1g.10gb": 2.5}, 100.0))
    assert read_memory(path) == (Memory({"1g.10gb": 2.5}, 100.0), None)


@pytest.mark.parametrize("content, says", [
    (None, "not found (normal on the first cycle)"),
    ("{not json", "cannot read it"),
    ('{"types": {"1g.10gb": -1}, "at": 5}', "not a rebalance demand file"),
    ('{"types": [1], "at": 5}', "not a rebalance demand file"),
    ('{"types": {"1g.10gb": 1}, "at": "noon"}', "not a rebalance demand file"),
])
def test_a_missing_or_damaged_memory_file_is_one_warning_line_and_an_empty_memory(tmp_path, content, says):
    path = tmp_path / "d.json"
    if content is not None:
        path.write_text(content)
    mem, warning = read_memory(str(path))
    assert mem == Memory()
    assert warning.startswith(f"{path}: {says}") and "\n" not in warning
    assert warning.endswith("starting with an empty memory of recent demand; the next cycle writes it again")


# ----------------------------------------------------------------------------- the cycle


def _cycle(cfg, cl, now):
    return rebalance(cfg, Reader(cl), cl.client, cl.channel, clock=lambda: 0.0,
                     sleep=lambda s: None, poll=1.0, wall=lambda: now).as_dict()


def test_the_cycle_keeps_recent_demand_between_cycles_in_demand_file(config, cluster, caplog):
    cfg = config("apply_wait = 0\ndemand_half_life = 600\n")
    path = cfg.rebalance.demand_file
    assert path.endswith("/state/rebalance-demand.json")
    with caplog.at_level(logging.WARNING):
        first = _cycle(cfg, cluster, 1000.0)
    assert any("not found (normal on the first cycle)" in n for n in first["notes"])
    with open(path) as f:
        saved = json.load(f)
    # one pending 3g.20gb job; 7 idle 1g.5gb are not in use
    assert saved["at"] == 1000.0 and saved["types"] == {"3g.20gb": 1.0}
    cluster.jobs = [_job(11, "1g.5gb")]
    second = _cycle(cfg, cluster, 1600.0)
    assert not any("demand" in n and "empty memory" in n for n in second["notes"])
    with open(path) as f:
        saved = json.load(f)
    assert saved["at"] == 1600.0
    assert saved["types"] == pytest.approx({"3g.20gb": 0.5, "1g.5gb": 0.5})


def test_a_dry_run_does_not_write_the_memory(config, cluster):
    cfg = config()
    rebalance(cfg, Reader(cluster), cluster.client, cluster.channel, dry_run=True, clock=lambda: 0.0,
              sleep=lambda s: None, poll=1.0, wall=lambda: 5.0)
    assert read_memory(cfg.rebalance.demand_file)[0] == Memory()


def test_a_damaged_memory_file_does_not_stop_the_cycle_and_is_written_again(config, cluster):
    cfg = config("apply_wait = 0\n")
    path = cfg.rebalance.demand_file
    import os
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\0garbage")
    result = _cycle(cfg, cluster, 50.0)
    assert [c["node"] for c in result["changed"]] == ["n1"]
    [note] = [n for n in result["notes"] if n.startswith(path)]
    assert "cannot read it" in note and "empty memory" in note
    assert read_memory(path) == (Memory({"3g.20gb": 1.0}, 50.0), None)


# ----------------------------------------------------------------------------- the simulator


def _sim(half_life):
    from slurm_mig.simulate.cluster import parse_cluster
    cl = parse_cluster('[[node]]\nname = "n1"\ngpus = ["A100-80GB:1"]\nlayout = "7g.80gb:1"\n'
                       '[[node]]\nname = "n2"\ngpus = ["A100-80GB:1"]\nlayout = "2g.20gb:3,1g.10gb:1"\n',
                       "c.toml", CAT)
    # 2g.20gb work on n2 first, then, 30 minutes after it ended, one 3g.40gb job
    jobs = [SimJob(str(i), 0.0, 600.0, (("2g.20gb", 1),), 600.0, 1, ()) for i in range(3)]
    jobs.append(SimJob("big", 2400.0, 600.0, (("3g.40gb", 1),), 600.0, 1, ()))
    ctl = PlannerController(Policy(), half_life)
    eng = Engine(cl, jobs, types_of(cl, jobs, CAT), Costs(), Settings(cycle_s=60), ctl)
    out = eng.run()
    return out, ctl


def test_the_simulator_plans_with_the_same_recent_demand_memory():
    out, ctl = _sim(3600.0)
    assert all(s is not None for s in out.start)
    # n1's recut for the 3g.40gb job gave its spare room to 2g.20gb, asked for 30 min before
    assert out.final["A100-80GB"] == ["2g.20gb:2,3g.40gb:1", "1g.10gb:1,2g.20gb:3"]
    assert ctl.memory.types["2g.20gb"] > 0 and ctl.memory.at is not None
    out, _ = _sim(0.0)  # no memory: the current queue alone
    assert out.final["A100-80GB"] == ["3g.40gb:2", "1g.10gb:1,2g.20gb:3"]
