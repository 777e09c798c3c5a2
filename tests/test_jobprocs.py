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
