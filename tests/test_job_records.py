"""Damaged job records, refused prologs and killed epilog wipes (issue 8, items 4, 5 and 7).

The node is the one of tests/test_hooks.py: three simulated A100-40GB with seven 1g.5gb
instances each, gres.conf and the node include written by slurm-mig.  Hooks run in-process
through :func:`slurm_mig.hooks.run.run_hook` with an environ dict (and, for a killed epilog, as
``python -m slurm_mig.hooks``); ``status`` and ``apply`` through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, Optional

import pytest

from slurm_mig.core.errors import SimulatedCrash
from slurm_mig.core.gresconf import parse_gres_conf, parse_node_gres_types, slurm_order
from slurm_mig.gpu import nvmlcodes
from slurm_mig.hooks import jobenv, run as hooks
from slurm_mig.host.config import load_config
from slurm_mig.node import jobs
from slurm_mig.sim.backend import SimBackend
from slurm_mig.sim.driver import SimDriver

from conftest import tree_snapshot

NODE = "n1"
WIPE = {jobenv.WIPE_ENV: "1"}


class Node:
    def __init__(self, config_path: str):
        self.config_path = config_path
        self.config = load_config(config_path)
        self.state_dir = self.config.paths.state_dir
        self.driver = SimDriver(self.config.sim.root)
        self.backend = SimBackend(self.config.sim.root)

    def env(self, job: str, gpus: Optional[str] = None, **extra) -> Dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURMD_NODENAME": NODE,
               "SLURM_MIG_CONFIG": self.config_path, "SLURM_JOB_UID": "1000", "SLURM_JOB_ID": job}
        if gpus is not None:
            env["SLURM_JOB_GPUS"] = gpus
        env.update(extra)
        return env

    def records(self):
        p = self.config.paths
        recs = parse_gres_conf(open(p.gres_conf).read(), NODE)
        return slurm_order(recs, parse_node_gres_types(open(p.node_gres_include).read(), NODE))

    def instance(self, gpu: int, gi: int):
        return next((m for m in self.backend.instances(gpu) if m.gi_id == gi), None)

    def all_instances(self) -> dict:
        """(gpu, gi) -> (profile id, start, ci, uuid) of every instance on the node."""
        return {(g, m.gi_id): (m.profile_id, m.start, m.ci_id, m.uuid)
                for g in range(3) for m in self.backend.instances(g)}

    def calls(self) -> int:
        """Mutating driver calls so far (the simulator counts them)."""
        return self.driver.snapshot()["calls"].get("any", 0)

    def path(self, job: str) -> str:
        return jobs.job_path(self.state_dir, job)


@pytest.fixture
def node(cli, node_config):
    config_path = node_config(gpus=("A100-40GB",) * 3)
    assert cli("apply", "1g.5gb:7", config=config_path)[0] == 0
    for cmd in ("gres-conf", "node-conf"):
        code, _, err = cli(cmd, "--node", NODE, "--write", config=config_path)
        assert code == 0, err
    return Node(config_path)


def hook(which: str, env: Dict[str, str], capsys) -> tuple:
    code = hooks.run_hook(which, env)
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    return err


def prolog_ok(node: Node, job: str, gpus: str, capsys) -> dict:
    code, err = hook("prolog", node.env(job, gpus), capsys)
    assert code == 0, err
    return jobs.read_job(node.state_dir, job)


def truncate(path: str) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def edit(path: str, change) -> None:
    record = json.load(open(path))
    change(record)
    with open(path, "w") as f:
        json.dump(record, f)


# ----------------------------------------------------------------------------- reading, pure


def good_record(**top) -> dict:
    inst = {"index": 0, "type": "1g.5gb", "files": ["/dev/nvidia0"], "gpu": 0, "profile_id": 19,
            "start": 3, "gi_id": 7, "ci_id": 0, "uuid": "MIG-x", "created": False}
    whole_gpu = dict(inst, type=None, profile_id=None, start=None, gi_id=None, ci_id=None, uuid=None)
    return dict({"version": 1, "job_id": "12", "uid": "1000", "node": "n1", "boot_id": "b",
                 "instances": [inst, whole_gpu]}, **top)


def test_a_well_formed_record_holds_its_instances_and_nothing_else():
    assert jobs.check_record(good_record(), "12") == ([], [(0, 7)], True)


@pytest.mark.parametrize("change, problem", [
    (lambda r: r.update(uid=1000), "uid is 1000, not a string or null"),
    (lambda r: r.update(job_id="13"), "job_id \"13\" is not the file's job 12"),
    (lambda r: r.update(version=2), "version is 2, not 1"),
    (lambda r: r.update(extra=1), "unknown key \"extra\""),
    (lambda r: r.pop("boot_id"), "boot_id is missing"),
    (lambda r: r["instances"][0].update(profile_id="19"), "instances[0].profile_id is \"19\""),
    (lambda r: r["instances"][0].update(start=None), "instances[0].start is null on a MIG instance"),
    (lambda r: r["instances"][0].update(created=1), "instances[0].created is 1, not true or false"),
])
def test_bad_fields_are_named_and_the_well_typed_pairs_stay_held(change, problem):
    record = good_record()
    change(record)
    problems, pairs, whole = jobs.check_record(record, "12")
    assert [p for p in problems if p.startswith(problem)], problems
    assert (pairs, whole) == ([(0, 7)], True)


@pytest.mark.parametrize("change", [
    lambda r: r.update(instances={"0": {"gpu": 0, "gi_id": 7}}),
    lambda r: r.pop("instances"),
    lambda r: r["instances"].append("gpu 1 gi 3"),
    lambda r: r["instances"][1].update(gi_id="3"),
    lambda r: r["instances"][1].update(gi_id=3, gpu=True),
    lambda r: r["instances"][1].pop("gi_id"),
])
def test_a_record_whose_instances_cannot_all_be_read_may_hold_more(change):
    record = good_record()
    change(record)
    problems, pairs, whole = jobs.check_record(record, "12")
    assert problems and not whole
    assert pairs in ([(0, 7)], [])  # what can be read is still held


@pytest.mark.parametrize("data", [[], "x", 12, None])
def test_a_json_value_that_is_not_an_object_holds_unknown_instances(data):
    problems, pairs, whole = jobs.check_record(data, "12")
    assert problems and pairs == [] and not whole


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_a_record_owned_by_another_user_is_not_trusted(tmp_path):
    jobs.write_job(str(tmp_path), good_record())
    os.chown(jobs.job_path(str(tmp_path), "12"), 1000, 1000)
    reading = jobs.read_record(str(tmp_path), "12")
    assert not reading.whole and reading.pairs == []
    assert "is owned by uid 1000" in reading.why()


# ----------------------------------------------------------------------------- item 5: status, apply


DAMAGE = {
    "truncated": truncate,
    "empty": lambda p: open(p, "w").close(),
    "binary": lambda p: open(p, "wb").write(b"\xff\xfe\x00"),
    "json list": lambda p: open(p, "w").write("[1, 2]"),
    "instances not a list": lambda p: edit(p, lambda r: r.update(instances={"a": 1})),
    "gi id a string": lambda p: edit(p, lambda r: r["instances"][0].update(gi_id="x")),
}


def _symlink(path: str) -> None:
    os.unlink(path)
    os.symlink("/etc/hostname", path)


def _directory(path: str) -> None:
    os.unlink(path)
    os.mkdir(path)


FILE_DAMAGE = dict(DAMAGE, **{"a symlink": _symlink, "a directory": _directory})


@pytest.mark.parametrize("kind", sorted(FILE_DAMAGE))
def test_status_shows_every_instance_an_unreadable_record_may_hold_as_busy(node, cli, capsys, kind):
    recs = node.records()
    prolog_ok(node, "50", "5", capsys)
    prolog_ok(node, "60", "2", capsys)
    FILE_DAMAGE[kind](node.path("60"))
    code, out, err = cli("--json", "status", config=node.config_path)
    assert code == 0, err
    data = json.loads(out)
    [warning] = data["warnings"]
    assert warning.startswith(f"job record {node.path('60')} is unreadable (")
    assert warning.endswith("if job 60 has ended, run its epilog (`slurm-mig epilog` with "
                            "SLURM_JOB_ID=60) or remove the file")
    for g in data["gpus"]:
        for i in g["instances"]:
            held = (g["index"], i["gi_id"]) == (recs[5].gpu, recs[5].gi_id)
            assert (i["busy"], i["jobs"]) == (True, ["50"] if held else ["60?"])
    code, out, _ = cli("status", config=node.config_path)
    assert code == 0
    assert out.count("warning: job record") == 1 and " 60? " in out


def test_apply_refuses_to_destroy_what_a_truncated_record_may_hold_and_still_creates(node, cli, capsys):
    recs = node.records()
    prolog_ok(node, "60", "2", capsys)
    truncate(node.path("60"))
    host = os.path.dirname(node.config.sim.root)
    before = tree_snapshot(host)
    code, out, err = cli("apply", "7g.40gb:1", "--gpu", "0", config=node.config_path)
    assert code == 5 and out == ""
    line = one_line(err)
    assert f"1g.5gb@{recs[2].start} (gi {recs[2].gi_id}) is in use by job 60?" in line
    assert f"job record {node.path('60')} is unreadable (not JSON: " in line
    assert "nothing was changed" in line and "if job 60 has ended" in line
    assert tree_snapshot(host) == before

    # Room made by hand (not by apply): an apply that only creates goes ahead.
    gone = recs[1]
    node.backend.destroy_instance(gone.gpu, gone.gi_id)
    code, out, err = cli("apply", "1g.5gb:7", "--gpu", str(gone.gpu), config=node.config_path)
    assert code == 0, err
    assert f"did create 1g.5gb@{gone.start}" in out and out.count("warning: job record") == 1
    assert node.instance(recs[2].gpu, recs[2].gi_id) is not None


def test_a_record_with_wrong_types_holds_its_instances_and_frees_nothing_else(node, cli, capsys):
    recs = node.records()
    prolog_ok(node, "60", "2", capsys)
    edit(node.path("60"), lambda r: r.update(uid=1000, node=["n1"]))
    code, out, _ = cli("--json", "status", config=node.config_path)
    assert code == 0
    data = json.loads(out)
    [warning] = data["warnings"]
    assert warning.startswith(f"job record {node.path('60')} is damaged (uid is 1000, not a string "
                              f"or null; node is list, not a string or null): it still holds gpu "
                              f"{recs[2].gpu} gi {recs[2].gi_id} for job 60;")
    busy = [(g["index"], i["gi_id"], i["jobs"]) for g in data["gpus"] for i in g["instances"] if i["busy"]]
    assert busy == [(recs[2].gpu, recs[2].gi_id, ["60"])]

    code, _, err = cli("apply", "7g.40gb:1", "--gpu", str(recs[2].gpu), config=node.config_path)
    assert code == 5 and "is in use by job 60;" in one_line(err)
    assert cli("apply", "7g.40gb:1", "--gpu", "2", config=node.config_path)[0] == 0  # another GPU
    code, out, _ = cli("apply", "3g.20gb@4", "--gpu", str(recs[2].gpu), "--partial",
                       config=node.config_path)
    assert code == 6 and f"kept busy 1g.5gb@{recs[2].start}" in out


def test_a_count_form_keeps_the_instance_a_job_holds(node, cli, capsys):
    recs = node.records()
    prolog_ok(node, "60", "3", capsys)  # 1g.5gb@3 on gpu 0; "most room" alone would pick @6
    code, out, err = cli("apply", "1g.5gb:1", "--gpu", str(recs[3].gpu), config=node.config_path)
    assert code == 0, err
    assert f"-> 1g.5gb@{recs[3].start}" in out
    assert node.instance(recs[3].gpu, recs[3].gi_id) is not None


@pytest.mark.parametrize("kind", sorted(DAMAGE) + ["uid a number"])
def test_no_command_fails_with_an_internal_error_on_a_damaged_record(node, cli, capsys, kind):
    prolog_ok(node, "60", "2", capsys)
    (DAMAGE.get(kind) or (lambda p: edit(p, lambda r: r.update(uid=7))))(node.path("60"))
    assert cli("status", config=node.config_path)[0] == 0
    assert cli("apply", "1g.5gb:7", config=node.config_path)[0] == 0  # nothing to change
    assert cli("apply", "7g.40gb:1", "--dry-run", config=node.config_path)[0] == 5
    code, err = hook("prolog", node.env("61", "9"), capsys)
    unknown = kind in DAMAGE
    assert code == (5 if unknown else 0), err
    if unknown:
        assert "may be held by job 60: job record" in one_line(err)


# ----------------------------------------------------------------------------- item 5: hooks


def test_a_prolog_refuses_an_instance_an_unreadable_record_may_hold_and_names_the_fix(node, capsys):
    prolog_ok(node, "60", "2", capsys)
    truncate(node.path("60"))
    calls = node.calls()
    code, err = hook("prolog", node.env("61", "9"), capsys)
    assert code == 5
    line = one_line(err)
    assert line.startswith("slurm-mig prolog: error: job 61: gres record 9 (1g.5gb@")
    assert f"may be held by job 60: job record {node.path('60')} is unreadable" in line
    assert line.rstrip().endswith("or remove the file; then resume the node")
    assert node.calls() == calls and not os.path.exists(node.path("61"))
    # The job's own prolog again (slurmd retries) rewrites its record.
    assert prolog_ok(node, "60", "2", capsys)["instances"][0]["index"] == 2


@pytest.mark.parametrize("wipe", [False, True])
@pytest.mark.parametrize("kind", ["truncated", "uid a number", "gi id a string"])
def test_the_epilog_of_a_job_with_a_damaged_record_moves_it_aside_and_frees_its_instances(
        node, cli, capsys, kind, wipe):
    recs = node.records()
    prolog_ok(node, "60", "2", capsys)
    damage = DAMAGE.get(kind) or (lambda p: edit(p, lambda r: r.update(uid=7)))
    damage(node.path("60"))
    before = node.all_instances()
    code, err = hook("epilog", node.env("60", **(WIPE if wipe else {})), capsys)
    assert code == 0
    line = one_line(err)
    assert line.startswith(f"slurm-mig epilog: job 60: job record {node.path('60')} is damaged (")
    assert f"moved to {node.path('60')}.corrupt and its instances are free" in line
    assert ("nothing was wiped" in line) == wipe
    assert node.all_instances() == before  # a damaged record's ids are never wiped
    assert not os.path.exists(node.path("60")) and os.path.exists(node.path("60") + ".corrupt")
    data = json.loads(cli("--json", "status", config=node.config_path)[1])
    assert data["warnings"] == []  # .corrupt files are not records
    assert not any(i["busy"] for g in data["gpus"] for i in g["instances"])
    assert prolog_ok(node, "61", "2", capsys)["instances"][0]["gi_id"] == recs[2].gi_id


def test_a_record_of_an_earlier_boot_is_not_wiped(node, capsys):
    prolog_ok(node, "60", "2,3", capsys)
    edit(node.path("60"), lambda r: r.update(boot_id="an-earlier-boot"))
    before = node.all_instances()
    code, err = hook("epilog", node.env("60", **WIPE), capsys)
    assert code == 0 and "is from an earlier boot: its instances are gone, nothing to wipe" in one_line(err)
    assert node.all_instances() == before and not os.path.exists(node.path("60"))


# ----------------------------------------------------------------------------- item 7: refuse first


def _held_by_another_job(node: Node, capsys) -> None:
    prolog_ok(node, "70", "1", capsys)


def _other_jobs_process(node: Node, capsys) -> None:
    rec = node.records()[1]
    node.driver.attach_process(rec.gpu, rec.gi_id, rec.ci_id, os.getppid())  # not a job's process


def _device_file_missing(node: Node, capsys) -> None:
    os.unlink(node.records()[1].files[0])  # /dev/nvidia<N>: the driver's; a missing cap file is made instead


def _unreadable_record(node: Node, capsys) -> None:
    prolog_ok(node, "70", "5", capsys)
    truncate(node.path("70"))


def _gres_conf_contradicts_itself(node: Node, capsys) -> None:
    from dataclasses import replace

    from slurm_mig.core.gresconf import render_gres_conf

    recs = node.records()
    recs[1] = replace(recs[1], profile_id=14)  # its comment now names 2g.10gb's id
    with open(node.config.paths.gres_conf, "w") as f:
        f.write(render_gres_conf(recs))


REFUSALS = {
    "held by another job": (_held_by_another_job, 5, "is held by job 70"),
    "another job's process": (_other_jobs_process, 5, "has processes not of this job"),
    "device file missing": (_device_file_missing, 4, "missing"),
    "unreadable record": (_unreadable_record, 5, "may be held by job 70"),
    "gres.conf contradicts itself": (_gres_conf_contradicts_itself, 3, "the comment says 14"),
}


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_a_refused_prolog_makes_no_driver_call(node, capsys, reason):
    """SLURM_JOB_GPUS=0,1: record 0's instance is missing, record 1 cannot be given."""
    recs = node.records()
    node.backend.destroy_instance(recs[0].gpu, recs[0].gi_id)
    setup, code, fragment = REFUSALS[reason]
    setup(node, capsys)
    before, calls = node.all_instances(), node.calls()
    got, err = hook("prolog", node.env("71", "0,1"), capsys)
    assert got == code and fragment in one_line(err)
    # A missing instance may be what an unreadable record held (a wipe killed half-way).
    assert f"gres record {0 if reason == 'unreadable record' else 1} " in err
    assert node.calls() == calls  # not one mutating driver call
    assert node.all_instances() == before and node.instance(recs[0].gpu, recs[0].gi_id) is None
    assert not os.path.exists(node.path("71"))


def test_an_instance_created_before_a_later_index_fails_stays_idle_and_unrecorded(node, capsys):
    recs = node.records()
    for r in recs[:2]:
        node.backend.destroy_instance(r.gpu, r.gi_id)
    node.driver.inject_fault("create_gi", 2, code=nvmlcodes.NO_PERMISSION)
    code, err = hook("prolog", node.env("72", "0,1"), capsys)
    assert code == 4 and "gres record 1 " in one_line(err) and "no permission" in err
    made = node.instance(recs[0].gpu, recs[0].gi_id)
    assert (made.start, made.ci_id, made.pids) == (recs[0].start, recs[0].ci_id, ())
    assert node.instance(recs[1].gpu, recs[1].gi_id) is None
    assert not os.path.exists(node.path("72"))
    record = prolog_ok(node, "73", "0", capsys)  # the next job on it finds it ready
    assert record["instances"][0]["created"] is False


# ----------------------------------------------------------------------------- item 4: the wipe


@pytest.fixture
def wiping(node, capsys):
    """Job 80 on two instances (gpu 0 and gpu 1), its record written; the instances' state."""
    record = prolog_ok(node, "80", "0,8", capsys)
    assert {i["gpu"] for i in record["instances"]} == {0, 1}
    return node, record, node.all_instances()


def check_wiped(node: Node, record: dict, before: dict) -> None:
    """Record gone; the job's instances exist with the ids gres.conf names, made anew;
    every other instance untouched."""
    assert not os.path.exists(node.path("80"))
    recs = node.records()
    now = node.all_instances()
    mine = set()
    for inst in record["instances"]:
        rec = recs[inst["index"]]
        key = (rec.gpu, rec.gi_id)
        mine.add(key)
        profile, start, ci, uuid = now[key]
        assert (profile, start, ci) == (inst["profile_id"], rec.start, rec.ci_id)
        assert uuid != before[key][3]  # wiped at least once
    assert {k: v for k, v in now.items() if k not in mine} == {k: v for k, v in before.items() if k not in mine}
    assert set(now) == set(before)


def test_a_wipe_of_two_instances_is_eight_driver_calls(wiping, capsys):
    node, record, before = wiping
    calls = node.calls()
    assert hook("epilog", node.env("80", **WIPE), capsys) == (0, "")
    assert node.calls() - calls == 8
    check_wiped(node, record, before)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("n", range(1, 9))
def test_an_epilog_killed_at_any_driver_call_of_its_wipe_is_finished_by_the_next(wiping, capsys, n, when):
    node, record, before = wiping
    node.driver.inject_fault("any", n, crash="raise", when=when)
    with pytest.raises(SimulatedCrash):
        hooks.run_hook("epilog", node.env("80", **WIPE))
    assert os.path.exists(node.path("80"))  # the record stays until the wipe is done
    capsys.readouterr()
    assert hook("epilog", node.env("80", **WIPE), capsys) == (0, "")
    check_wiped(node, record, before)


@pytest.mark.parametrize("n, when", [(2, "after"), (3, "before"), (4, "after"), (7, "before")])
def test_a_killed_epilog_process_is_finished_by_the_next(wiping, n, when):
    node, record, before = wiping
    node.driver.inject_fault("any", n, crash="exit", when=when)
    argv = [sys.executable, "-m", "slurm_mig.hooks", "epilog"]
    env = node.env("80", **WIPE)
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == 137, killed.stderr
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stderr) == (0, "")
    check_wiped(node, record, before)


def test_a_wipe_that_fails_keeps_the_record_and_says_to_run_the_epilog_again(wiping, capsys):
    node, record, before = wiping
    node.driver.inject_fault("create_gi", 1, code=nvmlcodes.NO_PERMISSION)
    code, err = hook("epilog", node.env("80", **WIPE), capsys)
    assert code == 4
    assert "the job record stays so that no job gets the instance" in one_line(err)
    assert "run the epilog again (it finishes the wipe)" in err
    assert os.path.exists(node.path("80"))
    assert hook("epilog", node.env("80", **WIPE), capsys) == (0, "")
    check_wiped(node, record, before)


def test_a_wipe_leaves_alone_an_instance_that_is_no_longer_the_jobs(node, capsys):
    recs = node.records()
    prolog_ok(node, "81", "2", capsys)
    edit(node.path("81"), lambda r: r["instances"][0].update(start=recs[2].start + 1))
    before = node.all_instances()
    code, err = hook("epilog", node.env("81", **WIPE), capsys)
    assert code == 0
    assert one_line(err) == (f"slurm-mig epilog: job 81: gpu {recs[2].gpu} gi {recs[2].gi_id} is now "
                             f"another instance (profile id 19 at {recs[2].start}, the job had 19 at "
                             f"{recs[2].start + 1}); not wiped\n")
    assert node.all_instances() == before and not os.path.exists(node.path("81"))
