"""Which Slurm job a process belongs to (slurm_mig.host.jobprocs), from fake /proc trees.

The layouts are Slurm's own (src/plugins/cgroup/v1/xcgroup.c, src/plugins/cgroup/v2/cgroup_v2.c);
the v1 text with several controllers is the one measured in the sandbox (22.05.8, two slurmd
on one host: ``/slurm_<node>/...`` on freezer and devices only).
"""

from __future__ import annotations

import pytest

from slurm_mig.host import jobprocs
from slurm_mig.host.jobprocs import GONE, MINE, OTHER, STRAY, Judge, owner_of, parse_cgroup

SANDBOX_V1 = ("9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/slurm_n2/uid_0/job_1451268/step_batch\n"
              "5:devices:/slurm_n2/uid_0/job_1451268/step_batch/task_0\n"
              "4:memory:/process_api/f771f71aac8d00ecfdbd2aff5edef77b\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n")


def fake(tmp_path, pid: int, cgroup: str, uid: int = 1000, environ: bytes = b"") -> str:
    d = tmp_path / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    (d / "status").write_text(f"Name:\tx\nUmask:\t0022\nUid:\t{uid}\t0\t0\t0\nGid:\t0\t0\t0\t0\n")
    (d / "environ").write_bytes(environ)
    return str(tmp_path / "proc")


@pytest.mark.parametrize("text, node, job, uid", [
    # cgroup v1, one slurmd (prefix /slurm), several controllers of which Slurm manages some
    ("12:devices:/slurm/uid_1000/job_44/step_0/task_0\n11:freezer:/slurm/uid_1000/job_44/step_0\n"
     "4:memory:/slurm/uid_1000/job_44\n3:cpu,cpuacct:/user.slice\n1:name=systemd:/system.slice/"
     "slurmd.service\n0::/system.slice/slurmd.service\n", "n1", "44", 1000),
    ("5:devices:/slurm/uid_0/job_7\n", None, "7", 0),  # the job's own cgroup (extern, batch)
    # v1, several slurmd on one host: /slurm_<node name>
    (SANDBOX_V1, "n2", "1451268", 0),
    # cgroup v2: /system.slice/slurmstepd.scope, and <node>_slurmstepd.scope for several slurmd
    ("0::/system.slice/slurmstepd.scope/job_812/step_0/user/task_0\n", "n1", "812", None),
    ("0::/system.slice/slurmstepd.scope/job_812\n", None, "812", None),
    ("0::/system.slice/n1_slurmstepd.scope/job_812/step_batch/user/task_0\n", "n1", "812", None),
], ids=["v1", "v1-job-level", "v1-node-prefix", "v2", "v2-job-level", "v2-node-scope"])
def test_slurms_job_cgroups_name_their_job(text, node, job, uid):
    assert parse_cgroup(text, node)[:2] == (job, uid)


@pytest.mark.parametrize("text, node, why", [
    ("0::/user.slice/user-1000.slice/user@1000.service/job_200\n", "n1",
     "its cgroup is /user.slice/user-1000.slice/user@1000.service/job_200"),
    ("0::/job_12x/job_7/\n", "n1", "its cgroup is /job_12x/job_7/"),
    ("0::/user.slice/system.slice/slurmstepd.scope/job_5\n", "n1",
     "its cgroup is /user.slice/system.slice/slurmstepd.scope/job_5"),  # not from the start
    ("0::/system.slice/slurmstepd.scope/job_05\n", "n1", "its cgroup is /system.slice/slurmstepd.scope/job_05"),
    ("0::/system.slice/n2_slurmstepd.scope/job_5/step_0\n", "n1",
     "its cgroup is /system.slice/n2_slurmstepd.scope/job_5/step_0"),  # another slurmd's
    ("0::/system.slice/slurmstepd.scope/system\n", "n1", "its cgroup is /system.slice/slurmstepd.scope/system"),
    ("9:name=systemd:/user.slice/job_200\n5:devices:/user.slice\n6:freezer:/\n0::/user.slice/job_200\n", "n1",
     "its cgroup is devices:/user.slice"),
    ("5:devices:/slurm_n2/uid_0/job_5/step_0\n", "n1",
     "its cgroup devices:/slurm_n2/uid_0/job_5/step_0 is another slurmd's (this node is n1)"),
    ("5:devices:/slurm/job_5\n", "n1", "its cgroup devices:/slurm/job_5 is not a job's (Slurm's are "
                                       "/slurm/uid_N/job_ID)"),
    ("6:freezer:/slurm/uid_0/job_5\n5:devices:/slurm/uid_0/job_6\n", "n1",
     "its cgroups name different jobs: devices:/slurm/uid_0/job_6, freezer:/slurm/uid_0/job_5"),
    ("", "n1", "its cgroup file names no cgroup"),
], ids=["user-made-job_200", "job-in-the-middle", "layout-not-at-the-start", "leading-zero",
        "v2-other-slurmd", "stepd-system", "v1-no-slurm", "v1-other-slurmd", "v1-no-uid",
        "v1-disagreeing", "empty"])
def test_paths_that_only_mention_a_job_name_none(text, node, why):
    assert parse_cgroup(text, node) == (None, None, why)


def test_v2_is_anchored_under_pid_1s_cgroup_in_a_container():
    text = "0::/docker.slice/docker-1f.scope/system.slice/slurmstepd.scope/job_9/step_0\n"
    assert jobprocs.init_dir_of("0::/docker.slice/docker-1f.scope/init.scope\n") == "/docker.slice/docker-1f.scope"
    assert parse_cgroup(text, "n1", "/docker.slice/docker-1f.scope")[0] == "9"
    assert parse_cgroup(text, "n1", "")[0] is None
    assert jobprocs.init_dir_of("0::/init.scope\n") == "" and jobprocs.init_dir_of("0::/\n") == ""


def test_the_environment_is_never_read(tmp_path):
    proc = fake(tmp_path, 4242, "0::/user.slice/user-1000.slice/session-3.scope\n",
                environ=b"A=1\0SLURM_JOB_ID=200\0")
    assert owner_of(4242, proc, "n1") == (None, 1000, "its cgroup is /user.slice/user-1000.slice/session-3.scope")


def test_a_v1_path_of_another_uid_is_not_the_processs_job(tmp_path):
    proc = fake(tmp_path, 4242, "5:devices:/slurm/uid_1000/job_200/step_0\n", uid=1001)
    assert owner_of(4242, proc, "n1") == (None, 1001, "its cgroup is devices:/slurm/uid_1000/job_200/step_0, "
                                                        "which is uid 1000's, but it runs as uid 1001")


def test_the_init_cgroup_comes_from_the_same_proc_tree(tmp_path):
    proc = fake(tmp_path, 4242, "0::/kubepods/pod1/system.slice/slurmstepd.scope/job_3/step_0\n")
    fake(tmp_path, 1, "0::/kubepods/pod1/init.scope\n", uid=0)
    assert owner_of(4242, proc, "n1")[0] == "3"


@pytest.mark.parametrize("cgroup, uid, kind, why", [
    ("0::/system.slice/slurmstepd.scope/job_5/step_0\n", 1000, MINE,
     "its cgroup is /system.slice/slurmstepd.scope/job_5/step_0"),
    ("0::/system.slice/slurmstepd.scope/job_6/step_0\n", 1000, OTHER,
     "belongs to job 6: its cgroup is /system.slice/slurmstepd.scope/job_6/step_0"),
    ("0::/system.slice/slurmstepd.scope/job_5/step_0\n", 0, STRAY,
     "is in job 5's cgroup but runs as uid 0, not the job's uid 1000"),
    ("0::/\n", 1000, STRAY, "belongs to no Slurm job: its cgroup is /"),
])
def test_a_hook_judges_by_cgroup_then_by_the_jobs_uid(tmp_path, cgroup, uid, kind, why):
    proc = fake(tmp_path, 77, cgroup, uid=uid)
    assert Judge("5", 1000, "n1", proc).judge(77)[:3] == (kind, uid, why)


def test_without_slurm_job_uid_nothing_is_the_jobs(tmp_path):
    proc = fake(tmp_path, 77, "0::/system.slice/slurmstepd.scope/job_5/step_0\n")
    assert jobprocs.parse_uid(None) is None and jobprocs.parse_uid("1x") is None
    assert jobprocs.parse_uid("1000") == 1000
    assert Judge("5", None, "n1", proc).judge(77)[0] == STRAY


def test_a_process_gone_from_proc_is_gone(tmp_path):
    proc = fake(tmp_path, 77, "0::/\n")
    assert Judge("5", 1000, "n1", proc).judge(78)[0] == GONE
    (tmp_path / "proc" / "77" / "status").write_text("Name:\tx\n")  # no Uid line: a dying process
    assert Judge("5", 1000, "n1", proc).judge(77)[0] == GONE


def test_the_real_uid_is_the_first_field():
    assert jobprocs.parse_real_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n") == 1000
    assert jobprocs.parse_real_uid("Uid:\tx\n") is None


def test_describe_names_pid_uid_and_why():
    assert (jobprocs.describe(4242, 1000, "belongs to no Slurm job: its cgroup is /user.slice/x")
            == "pid 4242 (uid 1000) belongs to no Slurm job: its cgroup is /user.slice/x")


# ----------------------------------------------------------------------------- Slurm 26.05: SLUIDs
# cgroup/v2 job directories are named by the job's SLUID from 26.05.0 (cgroup_p_step_create in
# src/plugins/cgroup/v2/cgroup_v2.c: "/%s" of print_sluid, unless cgroup.conf CgroupJobIdPaths=yes,
# 26.05.2+); the step directories below are unchanged (step_0, step_batch, step_extern).  A SLUID
# is "s" and 13 characters of Crockford's base 32, the first 0-F (print_sluid, src/common/sluid.c).
SLUID = "sEKNKTV3WPV500"  #: the example in Slurm 26.05's cgroup.conf(5)
SLUID_B = "s0D4H7Q2ZZ1M9X"
NO_SLUID = "s0000000000000"  #: a job without one (sluid 0): slurmd sets no SLURM_JOB_SLUID


@pytest.mark.parametrize("text, node", [
    (f"0::/system.slice/slurmstepd.scope/{SLUID}/step_0/user/task_0\n", "n1"),
    (f"0::/system.slice/slurmstepd.scope/{SLUID}\n", None),  # the job's own (extern)
    (f"0::/system.slice/n1_slurmstepd.scope/{SLUID}/step_batch/user/task_0\n", "n1"),
    (f"0::/system.slice/slurmstepd.scope/{SLUID}/step_extern/slurm\n", "n1"),
], ids=["v2-sluid", "v2-sluid-job-level", "v2-sluid-node-scope", "v2-sluid-extern"])
def test_slurm_26_05_v2_cgroups_name_their_jobs_sluid(text, node):
    assert parse_cgroup(text, node)[:2] == (SLUID, None)


def test_a_sluid_with_a_legacy_number_or_zero_is_still_a_sluid():
    # a job carried over from 25.05 state has its old db_index as SLUID (job_record.c); 0 = none
    for sluid in ("s00000000001ZZ", NO_SLUID, "sFZZZZZZZZZZZZ"):  # old, none, largest
        assert parse_cgroup(f"0::/system.slice/slurmstepd.scope/{sluid}/step_0\n", "n1")[0] == sluid


@pytest.mark.parametrize("name", [
    "sEKNKTV3WPV50",     # 13 characters
    "sEKNKTV3WPV5000",   # 15
    "SEKNKTV3WPV500",    # print_sluid's "s" is lower case
    "sekNKTV3WPV500",    # and the rest upper case
    "sEKNKTV3WPV5O0",    # O is not in Crockford's base 32 (nor I, L, U)
    "sEKNKTV3WPVU00",
    "sGKNKTV3WPV500",    # the first character carries 4 bits: 0-F
    "sEKNKTV3WPV50_",
    "job_sEKNKTV3WPV500",
], ids=["short", "long", "upper-s", "lower-case", "letter-O", "letter-U", "top-over-F", "underscore",
        "job_-prefix"])
def test_a_name_that_only_looks_like_a_sluid_names_no_job(name):
    assert jobprocs.is_sluid(SLUID) and jobprocs.parse_sluid(SLUID) == SLUID
    text = f"0::/system.slice/slurmstepd.scope/{name}/step_0\n"
    assert parse_cgroup(text, "n1") == (None, None, f"its cgroup is /system.slice/slurmstepd.scope/{name}/step_0")
    assert not jobprocs.is_sluid(name) and jobprocs.parse_sluid(name) is None


@pytest.mark.parametrize("path", [
    f"/user.slice/user-1000.slice/user@1000.service/{SLUID}",  # the user's own delegated cgroup
    f"/user.slice/user-1000.slice/user@1000.service/system.slice/slurmstepd.scope/{SLUID}",
    f"/system.slice/slurmstepd.scope/system/{SLUID}",  # below Slurm's waiting area, not at the job level
    f"/system.slice/n2_slurmstepd.scope/{SLUID}/step_0",  # another slurmd's
    f"/system.slice/{SLUID}/step_0",
], ids=["user-delegated", "layout-not-at-the-start", "under-system", "other-slurmd", "no-scope"])
def test_a_sluid_outside_slurms_anchored_layout_names_no_job(path):
    assert parse_cgroup(f"0::/system.slice/slurmstepd.scope/{SLUID}/step_0\n", "n1")[0] == SLUID
    assert parse_cgroup(f"0::{path}\n", "n1") == (None, None, f"its cgroup is {path}")


def test_a_sluid_is_anchored_under_pid_1s_cgroup_in_a_container(tmp_path):
    proc = fake(tmp_path, 4242, f"0::/kubepods/pod1/system.slice/slurmstepd.scope/{SLUID}/step_0\n")
    fake(tmp_path, 1, "0::/kubepods/pod1/init.scope\n", uid=0)
    assert owner_of(4242, proc, "n1")[0] == SLUID
    assert parse_cgroup(f"0::/kubepods/pod1/system.slice/slurmstepd.scope/{SLUID}\n", "n1", "")[0] is None


@pytest.mark.parametrize("cgroup, uid, kind, why", [
    (f"0::/system.slice/slurmstepd.scope/{SLUID}/step_0\n", 1000, MINE,
     f"its cgroup is /system.slice/slurmstepd.scope/{SLUID}/step_0"),
    (f"0::/system.slice/n1_slurmstepd.scope/{SLUID}/step_batch/user/task_0\n", 1000, MINE,
     f"its cgroup is /system.slice/n1_slurmstepd.scope/{SLUID}/step_batch/user/task_0"),
    (f"0::/system.slice/slurmstepd.scope/{SLUID_B}/step_0\n", 1000, OTHER,
     f"belongs to job {SLUID_B}: its cgroup is /system.slice/slurmstepd.scope/{SLUID_B}/step_0"),
    (f"0::/system.slice/slurmstepd.scope/{NO_SLUID}/step_0\n", 1000, OTHER,
     f"belongs to job {NO_SLUID}: its cgroup is /system.slice/slurmstepd.scope/"
     f"{NO_SLUID}/step_0"),
    (f"0::/system.slice/slurmstepd.scope/{SLUID}/step_0\n", 0, STRAY,
     f"is in job {SLUID}'s cgroup but runs as uid 0, not the job's uid 1000"),
    # CgroupJobIdPaths=yes (or a step started before the upgrade): the numeric id still counts
    ("0::/system.slice/slurmstepd.scope/job_5/step_0\n", 1000, MINE,
     "its cgroup is /system.slice/slurmstepd.scope/job_5/step_0"),
], ids=["mine", "mine-node-scope", "other-job", "no-sluid-job", "wrong-uid", "job-id-path"])
def test_a_hook_with_slurm_job_sluid_matches_sluid_paths_by_it(tmp_path, cgroup, uid, kind, why):
    proc = fake(tmp_path, 77, cgroup, uid=uid)
    assert Judge("5", 1000, "n1", proc, SLUID).judge(77)[:3] == (kind, uid, why)


def test_without_slurm_job_sluid_a_sluid_process_is_neither_the_jobs_nor_a_stray(tmp_path):
    # a hook run by hand (SLURM_JOB_ID=5 slurm-mig epilog) has no SLURM_JOB_SLUID: the process
    # may be job 5's (never ended as a stray) or another's (never taken for job 5's)
    proc = fake(tmp_path, 77, f"0::/system.slice/slurmstepd.scope/{SLUID}/step_0\n")
    assert Judge("5", 1000, "n1", proc).judge(77) == (
        OTHER, 1000, f"belongs to job {SLUID}, which this hook cannot tell from its own: slurmd gave "
                     f"it no SLURM_JOB_SLUID: its cgroup is /system.slice/slurmstepd.scope/{SLUID}/step_0",
        SLUID)


@pytest.mark.parametrize("env, kind", [
    ({"SLURM_JOB_SLUID": SLUID}, MINE),
    ({"SLURM_JOB_SLUID": SLUID_B}, OTHER),
    ({}, OTHER),
    ({"SLURM_JOB_SLUID": SLUID.lower()}, OTHER),  # not as slurmd prints it: as if absent
    ({"SLURM_JOB_SLUID": NO_SLUID}, OTHER),
], ids=["its-sluid", "another-sluid", "none", "malformed", "zero"])
def test_the_full_hooks_judge_takes_the_sluid_from_slurmd(tmp_path, env, kind):
    from slurm_mig.hooks.full import _judge

    proc = fake(tmp_path, 77, f"0::/system.slice/slurmstepd.scope/{SLUID}/step_0\n")
    judge = _judge({"SLURM_JOB_ID": "5", "SLURM_JOB_UID": "1000", **env}, "5", "n1", proc)
    assert judge.judge(77)[0] == kind


def test_the_fast_epilog_finds_a_process_left_in_the_jobs_sluid_cgroup(tmp_path):
    from slurm_mig.hooks.fast import job_process

    proc = fake(tmp_path, 77, f"0::/system.slice/slurmstepd.scope/{SLUID}/step_0/user/task_0\n")
    fake(tmp_path, 78, f"0::/system.slice/slurmstepd.scope/{SLUID_B}/step_0\n")
    fake(tmp_path, 79, f"0::/user.slice/user-1000.slice/user@1000.service/{SLUID}\n")
    assert job_process("5", "n1", proc, SLUID) == 77
    assert job_process("5", "n1", proc, SLUID_B) == 78
    assert job_process("5", "n1", proc, "sZZZZZZZZZZZZZ") is None
    assert job_process("5", "n1", proc) is None  # no SLUID: as the full epilog, which ends none
