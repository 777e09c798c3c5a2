"""dcgm-exporter's HPC job mapping files (issue 11): ``<dir>/<gpu>.<gi>`` lists the job ids
holding that MIG instance, one per line; written by the prolog, removed by the epilog,
rewritten from the job records by apply/sync.  Off unless ``[hooks] dcgm_job_mapping_dir``.
"""

from __future__ import annotations

import os
import stat

import pytest

from slurm_mig.hooks import run as hooks
from slurm_mig.host.config import load_config
from slurm_mig.node import dcgmmap, jobs

from test_hooks import node  # noqa: F401  (the fixture)


def _enable(node, directory) -> str:
    """Set the directory; returns it as the config has it (paths.root applied)."""
    with open(node.config_path, "a") as f:
        f.write(f'[hooks]\ndcgm_job_mapping_dir = "{directory}"\n')
    node.config = load_config(node.config_path)
    return node.config.hooks.dcgm_job_mapping_dir


def _files(directory) -> dict:
    return {n: open(os.path.join(directory, n)).read() for n in sorted(os.listdir(directory))}


def _rec(job, boot, *pairs, whole_gpu=None):
    insts = [{"index": i, "type": "1g.5gb", "files": [], "gpu": g, "profile_id": 19, "start": 0,
              "gi_id": gi, "ci_id": 0, "uuid": None, "created": False} for i, (g, gi) in enumerate(pairs)]
    if whole_gpu is not None:
        insts.append({"index": 9, "type": None, "files": [], "gpu": whole_gpu, "profile_id": None,
                      "start": None, "gi_id": None, "ci_id": None, "uuid": None, "created": False})
    return {"version": 1, "job_id": job, "uid": "1000", "node": "n1", "boot_id": boot,
            "instances": insts}


def test_each_held_instance_gets_its_file_with_the_job_id(tmp_path):
    state, out = str(tmp_path / "state"), str(tmp_path / "map")
    jobs.write_job(state, _rec("41", "b1", (0, 7), (1, 12)))
    jobs.write_job(state, _rec("42", "b1", (0, 8), whole_gpu=2))
    jobs.write_job(state, _rec("40", "b0", (0, 9)))  # an earlier boot: its job is gone
    dcgmmap.rewrite(out, state, "b1")
    assert _files(out) == {"0.7": "41\n", "0.8": "42\n", "1.12": "41\n", "2": "42\n"}
    assert stat.S_IMODE(os.stat(os.path.join(out, "0.7")).st_mode) == 0o644


def test_files_of_ended_jobs_go_and_other_files_stay(tmp_path):
    state, out = str(tmp_path / "state"), str(tmp_path / "map")
    os.makedirs(out)
    for name in ("0.3", "5", "README", "0.7.bak"):
        open(os.path.join(out, name), "w").write("99\n")
    jobs.write_job(state, _rec("41", "b1", (0, 7)))
    result = dcgmmap.rewrite(out, state, "b1")
    assert _files(out) == {"0.7": "41\n", "0.7.bak": "99\n", "README": "99\n"}
    assert result == {"written": ["0.7"], "removed": ["0.3", "5"]}


def test_a_mapping_directory_others_can_write_is_refused(tmp_path):
    out = tmp_path / "map"
    out.mkdir()
    os.chmod(out, 0o777)
    with pytest.raises(OSError, match="writable only by it"):
        dcgmmap.rewrite(str(out), str(tmp_path / "state"), "b1")


def test_off_by_default(node_config):
    assert load_config(node_config()).hooks.dcgm_job_mapping_dir == ""


def test_a_relative_mapping_dir_is_a_config_error(node_config):
    with pytest.raises(Exception, match="hooks.dcgm_job_mapping_dir.*absolute"):
        load_config(node_config(extra='[hooks]\ndcgm_job_mapping_dir = "run/dcgm"\n'))


@pytest.mark.parametrize("fast", ["0", "1"])
def test_prolog_writes_and_epilog_removes_the_jobs_files(node, tmp_path, fast):
    out = _enable(node, "/run/dcgm")
    if fast == "1":  # a full prolog and epilog first write the facts the fast path needs
        assert hooks.run_hook("prolog", node.env("40", "0,8"), proc_root=node.proc) == 0
        assert hooks.run_hook("epilog", node.env("40"), proc_root=node.proc) == 0
        assert _files(out) == {}
    recs = node.records()
    env = node.env("41", "0,8", SLURM_MIG_HOOK_FAST=fast)
    assert hooks.run_hook("prolog", env, proc_root=node.proc) == 0
    assert _files(out) == {f"{recs[0].gpu}.{recs[0].gi_id}": "41\n",
                           f"{recs[8].gpu}.{recs[8].gi_id}": "41\n"}
    assert hooks.run_hook("prolog", node.env("42", "1"), proc_root=node.proc) == 0
    assert _files(out)[f"{recs[1].gpu}.{recs[1].gi_id}"] == "42\n"
    assert hooks.run_hook("epilog", env, proc_root=node.proc) == 0
    assert _files(out) == {f"{recs[1].gpu}.{recs[1].gi_id}": "42\n"}


@pytest.mark.parametrize("dry_run", [False, True])
def test_apply_rewrites_the_files_from_the_records(node, cli, dry_run):
    out = _enable(node, "/run/dcgm")
    assert hooks.run_hook("prolog", node.env("41", "0"), proc_root=node.proc) == 0
    rec = node.records()[0]
    # an instance id the new layout no longer has (left by an epilog that died before it)
    open(os.path.join(out, "2.13"), "w").write("7\n")
    args = ["apply", "3g.20gb@4,1g.5gb@0", "--gpu", "2"] + (["--dry-run"] if dry_run else [])
    code, _, err = cli(*args, config=node.config_path)
    assert code == 0, err
    want = {f"{rec.gpu}.{rec.gi_id}": "41\n"}
    assert _files(out) == (dict(want, **{"2.13": "7\n"}) if dry_run else want)


def test_apply_text_output_warns_when_the_mapping_files_were_not_rewritten(node, cli):
    """The layout change stands (exit 0), but an admin reading the text output must see that
    dcgm-exporter's mapping files are stale (the JSON output has ``dcgm_mapping.error``)."""
    out = _enable(node, "/run/dcgm")  # under the node's paths.root
    os.makedirs(out)
    os.chmod(out, 0o777)  # refused: writable by others
    code, text, err = cli("apply", "3g.20gb@4,1g.5gb@0", "--gpu", "2", config=node.config_path)
    assert code == 0, err
    [line] = [l for l in text.splitlines() if "dcgm" in l]
    assert line.startswith(f"warning: dcgm-exporter mapping files in {out} not rewritten (")
    assert line.endswith("the next prolog, epilog or sync retries")
