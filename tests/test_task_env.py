"""The TaskProlog (issue 11): the prolog writes the job's env file, the task prolog prints
``export`` lines for the step's MIG instances, the epilog removes the file.

Pure mapping (environment in, lines out) first, then the hooks on a simulated node
(tests/test_hooks.py's node), then the shipped script as a subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys

import pytest

from slurm_mig.hooks import run as hooks, taskenv
from slurm_mig.host.config import load_config

from test_hooks import JOB_UID, node  # noqa: F401  (the fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
U0 = "MIG-0c7a9a5e-1b2d-5a39-9b6e-3f0e2b1c4d5a"
U1 = "MIG-5d1f0f5c-7e3a-5c1b-8a2d-0e9f8a7b6c5d"
U2 = "MIG-9a8b7c6d-5e4f-5a3b-9c2d-1e0f2a3b4c5d"
DATA = {"version": 1, "job_id": "7", "instances": [
    {"index": 0, "profile": "1g.10gb", "gpu": 0, "gi": 7, "ci": 0, "uuid": U0},
    {"index": 1, "profile": "1g.10gb", "gpu": 0, "gi": 8, "ci": 0, "uuid": U1},
    {"index": 5, "profile": "3g.40gb", "gpu": 1, "gi": 1, "ci": 0, "uuid": U2}]}


def lines(uuids, described):
    return [f"export CUDA_VISIBLE_DEVICES={','.join(uuids)}",
            f"export NVIDIA_VISIBLE_DEVICES={','.join(uuids)}",
            f"export SLURM_MIG_INSTANCES={','.join(described)}"]


def test_the_batch_step_gets_every_instance_of_the_job_in_record_order():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "5,0"}
    assert taskenv.exports(env, DATA) == lines([U0, U2], ["1g.10gb:0:7:0", "3g.40gb:1:1:0"])


def test_a_step_gets_only_the_records_slurm_gave_the_step():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0,1,5", "SLURM_STEP_ID": "0",
           "SLURM_STEP_GPUS": "1"}
    assert taskenv.exports(env, DATA) == lines([U1], ["1g.10gb:0:8:0"])


def test_a_step_without_gpus_inside_a_gpu_job_gets_nothing():
    # srun --gres=none: Slurm unsets SLURM_STEP_GPUS; SLURM_JOB_GPUS is the batch script's
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0,1", "SLURM_STEP_ID": "3"}
    assert taskenv.exports(env, DATA) == []


@pytest.mark.parametrize("step", ["4294967294", "4294967290"])
def test_the_batch_and_interactive_steps_use_the_jobs_gpus(step):
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0-1", "SLURM_STEP_ID": step}
    assert taskenv.exports(env, DATA)[0] == f"export CUDA_VISIBLE_DEVICES={U0},{U1}"


@pytest.mark.parametrize("step", ["-5", "-6"])
def test_the_batch_and_interactive_steps_of_slurm_26_05_use_the_jobs_gpus(step):
    # 26.05 sets SLURM_STEP_ID in the batch step, signed (measured: -5); older releases
    # leave it out there
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0,1", "SLURM_STEP_ID": step}
    assert taskenv.exports(env, DATA)[0] == f"export CUDA_VISIBLE_DEVICES={U0},{U1}"


@pytest.mark.parametrize("step", ["0", "12", "-7", "-0", "4294967289", "-4294967291", "4294967291x",
                                  " -5", "--5", "99999999999"])
def test_other_step_ids_are_regular_steps(step):
    assert not taskenv.special_step(step)
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0,1", "SLURM_STEP_ID": step}
    assert taskenv.exports(env, DATA) == []  # a regular step without SLURM_STEP_GPUS


def test_a_bound_task_gets_the_records_its_device_cgroup_allows_not_slurms_first_ones():
    # Measured on 22.05, 24.11, 26.05 with ConstrainDevices=yes and --gpus-per-task=1: both
    # tasks get SLURM_STEP_GPUS=0; task 1's device cgroup allows record 1 only.
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0,1", "SLURM_STEP_ID": "0",
           "SLURM_STEP_GPUS": "0"}
    assert taskenv.exports(env, DATA, reachable_indexes={1}) == lines([U1], ["1g.10gb:0:8:0"])
    assert taskenv.exports(env, DATA, reachable_indexes={0}) == lines([U0], ["1g.10gb:0:7:0"])


@pytest.mark.parametrize("slurm,reachable,want", [
    ([0], None, [0]),            # not tried: Slurm's word
    ([0], {0, 1, 5}, [0]),       # no device fencing: every record opens
    ([1], {0, 1}, [1]),          # fenced per step, not per task: Slurm's indexes are right
    ([0], {5}, [5]),             # bound task: the one it can open
    ([0, 1], {1, 5}, [1, 5]),
    ([0], set(), []),            # it can open none: keep Slurm's values
    ([0], {1, 5}, []),           # disagree in number: keep Slurm's values
])
def test_task_indexes_trust_slurm_unless_the_task_cannot_open_what_it_names(slurm, reachable, want):
    assert taskenv.task_indexes(slurm, reachable) == want


def test_the_device_check_runs_only_for_a_step_of_part_of_the_job():
    assert taskenv.wants_probe([0], DATA)
    assert not taskenv.wants_probe([0, 1, 5], DATA)  # the batch step, a step of all of it
    assert not taskenv.wants_probe([], DATA) and not taskenv.wants_probe([0], None)


def _caps(tmp_path):
    data = json.loads(json.dumps(DATA))
    for n, item in enumerate(data["instances"]):
        item["ci_cap"] = str(tmp_path / f"nvidia-cap{n + 10}")
    return data


@pytest.mark.parametrize("errors,want", [
    ({}, {0, 1, 5}),                                       # every one opens
    ({0: errno.EPERM, 2: errno.EPERM}, {1}),               # the device cgroup allows one
    ({0: errno.ENXIO, 1: errno.EPERM, 2: errno.ENODEV}, {0, 5}),  # allowed, no driver (the sim)
    ({1: errno.EACCES}, None),                             # cannot tell
    ({1: errno.ENOENT}, None),
])
def test_reachable_reads_the_device_cgroup_from_open_errors(tmp_path, monkeypatch, errors, want):
    data = _caps(tmp_path)
    paths = {item["ci_cap"]: n for n, item in enumerate(data["instances"])}
    real_open, real_stat = os.open, os.stat

    def fake_stat(path, *a, **k):
        if path in paths:
            return os.stat_result((stat.S_IFCHR | 0o444,) + (0,) * 9)
        return real_stat(path, *a, **k)

    def fake_open(path, flags, *a, **k):
        if path in paths:
            err = errors.get(paths[path])
            if err:
                raise OSError(err, os.strerror(err), path)
            return real_open(os.devnull, os.O_RDONLY)
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "stat", fake_stat)
    monkeypatch.setattr(os, "open", fake_open)
    assert taskenv.reachable(data) == want


def test_reachable_cannot_tell_without_character_devices(tmp_path):
    data = _caps(tmp_path)
    assert taskenv.reachable(data) is None  # missing
    for item in data["instances"]:
        open(item["ci_cap"], "w").close()
    assert taskenv.reachable(data) is None  # regular files
    del data["instances"][0]["ci_cap"]
    assert taskenv.reachable(data) is None  # an env file from before ci_cap


@pytest.mark.parametrize("path,ok", [
    ("/dev/nvidia-caps/nvidia-cap21", True), ("/var/tmp/s/dev/nvidia-caps/nvidia-cap7", True),
    ("dev/nvidia-caps/nvidia-cap21", False), ("/dev/nvidia-caps/../sda/nvidia-cap1", False),
    ("/dev/nvidia0", False), ("/dev/nvidia-caps/nvidia-cap21\nx", False), (None, False),
    ("/dev//nvidia-caps/nvidia-cap2", False)])
def test_only_capability_file_paths_are_opened(path, ok):
    assert taskenv.cap_file(path) == ok


def test_a_cpu_job_gets_nothing():
    assert taskenv.exports({"SLURM_JOB_ID": "7"}, DATA) == []


@pytest.mark.parametrize("gpus", ["0;touch /tmp/x", "0\nexport LD_PRELOAD=/x", "-1", "0-", "１",
                                  "5-0", "9999", "0,,1", " 0 ,1"])
def test_malformed_gpu_indexes_print_nothing(gpus):
    assert taskenv.exports({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": gpus}, DATA) == []


def test_an_index_the_prolog_did_not_record_prints_nothing():
    assert taskenv.exports({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0,2"}, DATA) == []


@pytest.mark.parametrize("field,value", [
    ("uuid", U0 + "\nexport LD_PRELOAD=/tmp/evil.so"), ("uuid", "GPU-0c7a9a5e-1b2d-5a39-9b6e-3f0e2b1c4d5a"),
    ("uuid", U0.upper()), ("uuid", None), ("profile", "1g.10gb x"), ("profile", 7),
    ("gpu", -1), ("gi", "7"), ("ci", True)])
def test_a_value_outside_its_strict_pattern_prints_nothing(field, value):
    data = json.loads(json.dumps(DATA))
    data["instances"][0][field] = value
    assert taskenv.exports({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0"}, data) == []


@pytest.mark.parametrize("data", [None, [], {"instances": "x"}, {"instances": [1]}])
def test_a_damaged_env_file_prints_nothing(data):
    assert taskenv.exports({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0"}, data) == []


def test_the_env_file_is_the_jobs_uids_alone_in_a_directory_nobody_can_list(tmp_path):
    record = {"job_id": "7", "instances": [
        {"index": 0, "type": "1g.10gb", "gpu": 0, "gi_id": 7, "ci_id": 0, "uuid": U0},
        {"index": 3, "type": None, "gpu": 1, "gi_id": None, "ci_id": None, "uuid": None}]}
    path = taskenv.write_env_file(str(tmp_path / "run"), record, "4242")
    st = os.stat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (4242, 0o400)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o711
    assert json.load(open(path))["instances"] == [
        {"index": 0, "profile": "1g.10gb", "gpu": 0, "gi": 7, "ci": 0, "uuid": U0}]
    assert taskenv.remove_env_file(str(tmp_path / "run"), "7")
    assert not os.path.exists(path)


def test_the_env_file_names_each_instances_ci_capability_file():
    record = {"job_id": "7", "instances": [
        {"index": 0, "type": "1g.10gb", "gpu": 0, "gi_id": 7, "ci_id": 0, "uuid": U0,
         "files": ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap66", "/dev/nvidia-caps/nvidia-cap67"]},
        {"index": 1, "type": "1g.10gb", "gpu": 0, "gi_id": 8, "ci_id": 0, "uuid": U1,
         "files": ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap75", "/dev/sda"]}]}
    assert [i.get("ci_cap") for i in taskenv.entries(record)] == ["/dev/nvidia-caps/nvidia-cap67", None]


def test_no_env_file_without_a_job_uid(tmp_path):
    record = {"job_id": "7", "instances": [
        {"index": 0, "type": "1g.10gb", "gpu": 0, "gi_id": 7, "ci_id": 0, "uuid": U0}]}
    assert taskenv.write_env_file(str(tmp_path), record, None) is None
    assert taskenv.write_env_file(str(tmp_path), record, "1000x") is None
    assert not os.path.exists(taskenv.env_dir(str(tmp_path)))


# ----------------------------------------------------------------------------- with the hooks

def _env_file(node, job):
    return taskenv.env_path(node.config.paths.run_dir, job)


@pytest.mark.parametrize("fast", ["0", "1"])
def test_the_prolog_writes_the_env_file_and_the_epilog_removes_it(node, capsys, fast):
    env = node.env("41", "0,8", SLURM_MIG_HOOK_FAST=fast)
    if fast == "1":  # a first full prolog and epilog write the facts the fast path needs
        assert hooks.run_hook("prolog", node.env("40", "0,8"), proc_root=node.proc) == 0
        assert hooks.run_hook("epilog", node.env("40"), proc_root=node.proc) == 0
    assert hooks.run_hook("prolog", dict(env, SLURM_MIG_HOOK_REPORT="1"), proc_root=node.proc) == 0
    assert ("fast path" in capsys.readouterr().err) == (fast == "1")
    record = node.record_of("41")
    data = json.load(open(_env_file(node, "41")))
    assert [i["uuid"] for i in data["instances"]] == [i["uuid"] for i in record["instances"]]
    assert [i["ci_cap"] for i in data["instances"]] == [i["files"][2] for i in record["instances"]]
    assert os.stat(_env_file(node, "41")).st_uid == JOB_UID
    out = taskenv.task_prolog({"SLURM_JOB_ID": "41", "SLURM_JOB_GPUS": "0,8",
                               taskenv.RUN_DIR_ENV: node.config.paths.run_dir})
    assert out[0] == "export CUDA_VISIBLE_DEVICES=" + ",".join(i["uuid"] for i in record["instances"])
    assert hooks.run_hook("epilog", env, proc_root=node.proc) == 0
    assert not os.path.exists(_env_file(node, "41"))


def test_task_env_slurm_writes_no_env_file(node, capsys):
    with open(node.config_path, "a") as f:
        f.write('[hooks]\ntask_env = "slurm"\n')
    assert hooks.run_hook("prolog", node.env("41", "0"), proc_root=node.proc) == 0
    assert node.record_of("41") is not None
    assert not os.path.exists(_env_file(node, "41"))


def test_an_unknown_task_env_is_a_config_error(node_config):
    with pytest.raises(Exception, match=r"hooks.task_env.*not one of mig-uuids, slurm"):
        load_config(node_config(extra='[hooks]\ntask_env = "uuids"\n'))


# ----------------------------------------------------------------------------- the script

def _script(tmp_path, env, defaults_text=None):
    args = [os.path.join(REPO, "taskprolog.d", "50-slurm-mig")]
    if defaults_text is not None:
        d = tmp_path / "defaults"
        d.write_text(defaults_text)
        os.chmod(d, 0o644)
        args.append(str(d))
    return subprocess.run(args, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=60)


def test_the_script_prints_the_exports_from_the_env_file(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "task-env").mkdir(parents=True)
    (run_dir / "task-env" / "7.json").write_text(json.dumps(DATA))
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0,1",
           "SLURMD_NODENAME": "n1"}
    result = _script(tmp_path, env, f"SLURM_MIG_PYTHON={sys.executable}\n"
                                    f"SLURM_MIG_RUN_DIR={tmp_path}/run\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == lines([U0, U1], ["1g.10gb:0:7:0", "1g.10gb:0:8:0"])


def test_the_script_ignores_slurm_mig_variables_the_user_set(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "task-env").mkdir(parents=True)
    (run_dir / "task-env" / "7.json").write_text(json.dumps(DATA))
    marker = tmp_path / "ran"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0",
           "SLURM_MIG_PYTHON": str(fake), "SLURM_MIG_RUN_DIR": str(run_dir)}
    result = _script(tmp_path, env, f"SLURM_MIG_PYTHON={sys.executable}\n")
    assert result.returncode == 0 and not marker.exists()
    assert result.stdout == ""  # the user's SLURM_MIG_RUN_DIR was not used


def test_the_script_without_an_env_file_prints_nothing_and_succeeds(tmp_path):
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0"}
    result = _script(tmp_path, env, f"SLURM_MIG_PYTHON={sys.executable}\n"
                                    f"SLURM_MIG_RUN_DIR={tmp_path}/nothing-here\n")
    assert (result.returncode, result.stdout) == (0, "")


def test_the_entry_point_exits_0_even_on_a_bug(monkeypatch, capsys):
    def boom(environ):
        raise RuntimeError("bug")

    monkeypatch.setattr(taskenv, "task_prolog", boom)
    assert hooks.task_prolog({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0"}) == 0
    out, err = capsys.readouterr()
    assert out == "" and "internal error RuntimeError" in err


@pytest.mark.parametrize("mode", [0o777, 0o733])
def test_a_task_env_directory_others_can_write_is_refused(tmp_path, mode):
    d = tmp_path / "task-env"
    d.mkdir()
    os.chmod(d, mode)
    record = {"job_id": "7", "instances": [
        {"index": 0, "type": "1g.10gb", "gpu": 0, "gi_id": 7, "ci_id": 0, "uuid": U0}]}
    with pytest.raises(OSError, match="writable only by it"):
        taskenv.write_env_file(str(tmp_path), record, "4242")
    assert os.listdir(d) == []


def test_a_task_env_directory_that_is_a_link_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "task-env")
    record = {"job_id": "7", "instances": [
        {"index": 0, "type": "1g.10gb", "gpu": 0, "gi_id": 7, "ci_id": 0, "uuid": U0}]}
    with pytest.raises(OSError):
        taskenv.write_env_file(str(tmp_path), record, "4242")
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_run_dir_made_under_a_tight_umask_is_still_traversable(tmp_path):
    record = {"job_id": "7", "instances": [
        {"index": 0, "type": "1g.10gb", "gpu": 0, "gi_id": 7, "ci_id": 0, "uuid": U0}]}
    old = os.umask(0o077)
    try:
        taskenv.write_env_file(str(tmp_path / "run"), record, "4242")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "task-env").st_mode) == 0o711
