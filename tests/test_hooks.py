"""The prolog and epilog hooks against a simulated node, without Slurm.

The node: three simulated A100-40GB, seven 1g.5gb instances each, gres.conf and the node
include written by ``slurm-mig gres-conf/node-conf --write``.  Hooks run in-process
(:func:`slurm_mig.hooks.run.run_hook`) and as ``python -m slurm_mig.hooks`` subprocesses with the
environment slurmd would give them.

Processes on instances are real (``sleep``); which job each belongs to comes from a fake
``/proc`` tree (``Node.proc``: its ``cgroup`` and ``status`` files, and an ``environ`` a job
could forge), handed to the in-process hooks as ``proc_root``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest

from slurm_mig.core.gresconf import parse_gres_conf, parse_node_gres_types, slurm_order
from slurm_mig.gpu import nvmlcodes
from slurm_mig.hooks import jobenv, run as hooks
from slurm_mig.host.config import load_config
from slurm_mig.node import jobs
from slurm_mig.sim.backend import SimBackend
from slurm_mig.sim.driver import SimDriver

NODE = "n1"
JOB_UID = 1000  #: SLURM_JOB_UID of every hook here


def v1(job: str, uid: int = JOB_UID, prefix: str = f"slurm_{NODE}") -> str:
    """/proc/<pid>/cgroup of a task of ``job`` under Slurm's cgroup/v1 (several controllers,
    as measured in the sandbox: only freezer and devices are Slurm's)."""
    return (f"9:name=systemd:/\n6:freezer:/{prefix}/uid_{uid}/job_{job}/step_0\n"
            f"5:devices:/{prefix}/uid_{uid}/job_{job}/step_0/task_0\n4:memory:/\n1:cpu:/\n0::/\n")


def v2(job: str, scope: str = "slurmstepd.scope") -> str:
    """The same under Slurm's cgroup/v2."""
    return f"0::/system.slice/{scope}/job_{job}/step_0/user/task_0\n"


NO_JOB = "0::/user.slice/user-1000.slice/session-4.scope\n"


@dataclass
class Node:
    config_path: str
    config: object
    driver: SimDriver
    procs: List[subprocess.Popen]
    proc: str  #: the fake /proc tree the in-process hooks read
    squeue: str = ""  #: SLURM_MIG_SQUEUE for hooks: a stand-in that answers "a CPU job"

    def fake_proc(self, pid: int, cgroup: str, uid: int = JOB_UID, environ: bytes = b"") -> None:
        """What ``<proc>/<pid>`` says of a process: its cgroup, real uid and environment."""
        d = os.path.join(self.proc, str(pid))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "cgroup"), "w") as f:
            f.write(cgroup)
        with open(os.path.join(d, "status"), "w") as f:
            f.write(f"Name:\tsleep\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")
        with open(os.path.join(d, "environ"), "wb") as f:
            f.write(environ)

    def env(self, job: Optional[str], gpus: Optional[str] = None, **extra) -> Dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURMD_NODENAME": NODE,
               "SLURM_MIG_CONFIG": self.config_path, "SLURM_JOB_UID": str(JOB_UID)}
        if self.squeue:
            env["SLURM_MIG_SQUEUE"] = self.squeue
        if job is not None:
            env["SLURM_JOB_ID"] = job
        if gpus is not None:
            env["SLURM_JOB_GPUS"] = gpus
        env.update(extra)
        return env

    def records(self):
        p = self.config.paths
        recs = parse_gres_conf(open(p.gres_conf).read(), NODE)
        return slurm_order(recs, parse_node_gres_types(open(p.node_gres_include).read(), NODE))

    def instance(self, gpu: int, gi: int):
        return next((m for m in SimBackend(self.config.sim.root).instances(gpu) if m.gi_id == gi), None)

    def record_of(self, job: str):
        return jobs.read_job(self.config.paths.state_dir, job)

    def spawn(self, cgroup: str, uid: int = JOB_UID, environ: bytes = b"",
              argv: Optional[List[str]] = None) -> subprocess.Popen:
        """A real process whose fake /proc entry says ``cgroup``, ``uid`` and ``environ``."""
        proc = subprocess.Popen(argv or ["sleep", "60"])
        self.procs.append(proc)
        self.fake_proc(proc.pid, cgroup, uid, environ)
        return proc

    def attach(self, proc: subprocess.Popen, index: int) -> None:
        """Show ``proc`` on gres record ``index``'s instance (tracked: dropped once it ends)."""
        rec = self.records()[index]
        self.driver.attach_process(rec.gpu, rec.gi_id, rec.ci_id, proc.pid, track=True)


@pytest.fixture
def node(cli, node_config, tmp_path, cpu_squeue):
    yield from simulated_node(cli, node_config, tmp_path, cpu_squeue)


def simulated_node(cli, node_config, tmp_path, cpu_squeue, extra: str = ""):
    """The node of these tests (three A100-40GB, seven 1g.5gb each, gres files written);
    ``extra`` is added to its config (test_metrics.py turns metrics on with it)."""
    config_path = node_config(gpus=("A100-40GB",) * 3, extra=extra)
    assert cli("apply", "1g.5gb:7", config=config_path)[0] == 0
    for cmd in ("gres-conf", "node-conf"):
        code, _, err = cli(cmd, "--node", NODE, "--write", config=config_path)
        assert code == 0, err
    config = load_config(config_path)
    proc = tmp_path / "fakeproc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text(jobs.boot_id() or "")
    n = Node(config_path, config, SimDriver(config.sim.root), [], str(proc), cpu_squeue)
    yield n
    for p in n.procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def run(node: Node, which: str, env: Dict[str, str], capsys) -> tuple:
    code = hooks.run_hook(which, env, proc_root=node.proc)
    out, err = capsys.readouterr()
    return code, out, err


def run_sub(which: str, env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slurm_mig.hooks", which], env=env,
                          capture_output=True, text=True, timeout=60)


def one_error_line(err: str, job: str, which: str = "prolog") -> str:
    assert err.count("\n") == 1, err
    assert err.startswith(f"slurm-mig {which}: error: job {job}: "), err
    return err


# ----------------------------------------------------------------------------- parsing


def test_job_gpus_accepts_lists_and_ranges():
    assert jobenv.parse_job_gpus("0-2,5,1") == [0, 1, 2, 5]
    assert jobenv.parse_job_gpus("") == [] and jobenv.parse_job_gpus(None) == []
    for bad in ("0,x", "1-", "-1", "3-1", "0;1", "1.0"):
        with pytest.raises(jobenv.JobGpusError):
            jobenv.parse_job_gpus(bad)


@pytest.mark.parametrize("bad", ["", "12a", "../1", "0", "-3", "1 2", "1" * 21])
def test_job_ids_must_be_plain_digits(bad):
    with pytest.raises(jobs.BadJobId):
        jobs.job_path("/state", bad)


def test_node_name_prefers_option_then_slurmd_nodename():
    from slurm_mig.host.config import node_name

    assert node_name({"SLURMD_NODENAME": "n7"}, "n9") == "n9"
    assert node_name({"SLURMD_NODENAME": "n7"}) == "n7"
    assert node_name({}) == os.uname().nodename.split(".")[0]


# ----------------------------------------------------------------------------- prolog


def test_prolog_records_the_job_and_its_instances(node, capsys):
    recs = node.records()
    code, out, err = run(node, "prolog", node.env("41", "0,8"), capsys)
    assert (code, out, err) == (0, "", "")
    record = node.record_of("41")
    assert [i["index"] for i in record["instances"]] == [0, 8]
    for got, rec in zip(record["instances"], [recs[0], recs[8]]):
        assert (got["gpu"], got["gi_id"], got["ci_id"], got["start"]) == (rec.gpu, rec.gi_id, rec.ci_id, rec.start)
        assert got["files"] == list(rec.files) and got["uuid"].startswith("MIG-")
        assert not got["created"]
    path = jobs.job_path(node.config.paths.state_dir, "41")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert record["uid"] == "1000" and record["node"] == NODE


def test_prolog_creates_a_missing_instance_with_the_ids_gres_conf_names(node, capsys):
    rec = node.records()[3]
    SimBackend(node.config.sim.root).destroy_instance(rec.gpu, rec.gi_id)
    assert node.instance(rec.gpu, rec.gi_id) is None
    code, _, err = run(node, "prolog", node.env("42", "3"), capsys)
    assert code == 0, err
    again = node.instance(rec.gpu, rec.gi_id)
    assert (again.start, again.ci_id) == (rec.start, rec.ci_id)
    assert node.record_of("42")["instances"][0]["created"] is True


def test_a_cpu_job_needs_nothing(node, capsys):
    assert run(node, "prolog", node.env("43"), capsys) == (0, "", "")
    assert run(node, "prolog", node.env("43", ""), capsys) == (0, "", "")
    assert node.record_of("43") is None


def _rewrite_record(node: Node, index: int, new_gi: int) -> None:
    """Make gres.conf name another (unused) GPU instance id for record ``index``."""
    from dataclasses import replace

    from slurm_mig.core.devices import instance_devices, read_mig_minors
    from slurm_mig.core.gresconf import render_gres_conf

    recs = node.records()
    minors = read_mig_minors(os.path.join(node.config.sim.root, "proc"))
    old = recs[index]
    files = instance_devices(minors, old.minor, new_gi, 0, os.path.dirname(old.files[0])).files()
    recs[index] = replace(old, gi_id=new_gi, files=files)
    with open(node.config.paths.gres_conf, "w") as f:
        f.write(render_gres_conf(recs))


def test_prolog_fails_when_the_driver_gives_other_ids_than_gres_conf(node, capsys):
    rec = node.records()[0]
    used = {m.gi_id for m in SimBackend(node.config.sim.root).instances(rec.gpu)}
    _rewrite_record(node, 0, next(g for g in range(15) if g not in used))
    SimBackend(node.config.sim.root).destroy_instance(rec.gpu, rec.gi_id)
    code, out, err = run(node, "prolog", node.env("44", "0"), capsys)
    assert code == 3 and out == ""
    one_error_line(err, "44")
    assert f"the driver created it as gi {rec.gi_id} ci 0, not the ids gres.conf's cap files name" in err
    assert "slurm-mig gres-conf --write" in err
    assert open(os.path.join(node.config.paths.state_dir, "last-error")).read() == err
    assert node.record_of("44") is None


def test_garbled_job_gpus_is_exit_2(node):
    proc = run_sub("prolog", node.env("45", "0,zero"))
    assert proc.returncode == 2 and proc.stdout == ""
    line = one_error_line(proc.stderr, "45")
    assert ("SLURM_JOB_GPUS='0,zero': 'zero' is not a gpu index (0 to 4095); expected a list of "
            "gpu indexes (e.g. 0,2 or 0-2)") in line


def test_garbled_job_id_is_exit_2(node):
    proc = run_sub("prolog", node.env("4x5", "0"))
    assert proc.returncode == 2
    one_error_line(proc.stderr, "4x5")


def test_index_past_the_records_is_exit_3(node):
    proc = run_sub("prolog", node.env("46", "21"))
    assert proc.returncode == 3
    assert "SLURM_JOB_GPUS index 21 but" in one_error_line(proc.stderr, "46")
    assert "has 21 gpu record(s) for node n1" in proc.stderr


def test_gres_conf_that_no_longer_matches_the_gpu_is_refused(node, cli, capsys):
    rec = node.records()[0]
    assert cli("apply", "7g.40gb@0", "--gpu", str(rec.gpu), config=node.config_path)[0] == 0
    code, _, err = run(node, "prolog", node.env("47", "0"), capsys)
    assert code == 4
    one_error_line(err, "47")
    assert "the instance is missing and creating it failed" in err and "insufficient resources" in err


def test_missing_device_files_are_exit_4(node, capsys):
    rec = node.records()[2]
    os.unlink(rec.files[0])  # /dev/nvidia<N>: the driver's, not made by slurm-mig
    code, _, err = run(node, "prolog", node.env("48", "2"), capsys)
    assert code == 4
    assert f"device file(s) {rec.files[0]} missing" in one_error_line(err, "48")


def test_prolog_makes_a_missing_cap_file_again(node, capsys):
    rec = node.records()[2]
    os.unlink(rec.files[2])  # /dev/nvidia-caps/nvidia-cap<N>: the prolog's repair makes it
    assert run(node, "prolog", node.env("48", "2"), capsys)[0] == 0
    assert os.path.exists(rec.files[2])


def test_instance_held_by_another_job_is_refused(node, capsys):
    assert run(node, "prolog", node.env("50", "5"), capsys)[0] == 0
    code, _, err = run(node, "prolog", node.env("51", "5"), capsys)
    assert code == 5
    assert "is held by job 50" in one_error_line(err, "51")
    # The same job's prolog again (slurmd retries) is fine.
    assert run(node, "prolog", node.env("50", "5"), capsys)[0] == 0


def test_instance_with_another_jobs_processes_is_refused(node, capsys):
    other = node.spawn(v1("77"))
    node.attach(other, 6)
    code, _, err = run(node, "prolog", node.env("52", "6"), capsys)
    assert code == 5
    assert (f"has processes not of this job: pid {other.pid} (uid 1000) belongs to job 77: its "
            f"cgroup is devices:/slurm_n1/uid_1000/job_77/step_0/task_0; end them") in one_error_line(err, "52")


def test_record_from_an_earlier_boot_does_not_hold_the_instance(node, capsys):
    assert run(node, "prolog", node.env("53", "7"), capsys)[0] == 0
    path = jobs.job_path(node.config.paths.state_dir, "53")
    record = json.load(open(path))
    record["boot_id"] = "an-earlier-boot"
    json.dump(record, open(path, "w"))
    assert run(node, "prolog", node.env("54", "7"), capsys)[0] == 0


# ----------------------------------------------------------------------------- epilog


def _alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def test_epilog_ends_only_the_jobs_processes_and_drops_its_record(node, capsys):
    recs = node.records()
    assert run(node, "prolog", node.env("60", "0,1"), capsys)[0] == 0
    assert run(node, "prolog", node.env("61", "2"), capsys)[0] == 0
    mine = [node.spawn(v1("60")), node.spawn(v2("60"))]
    theirs = node.spawn(v1("61"))
    stray = node.spawn(v1("60"))  # a process of job 60 on job 61's instance: still job 60's
    node.driver.attach_process(recs[0].gpu, recs[0].gi_id, 0, mine[0].pid, track=True)
    node.driver.attach_process(recs[1].gpu, recs[1].gi_id, 0, mine[1].pid, track=True)
    node.driver.attach_process(recs[2].gpu, recs[2].gi_id, 0, theirs.pid, track=True)
    node.driver.attach_process(recs[2].gpu, recs[2].gi_id, 0, stray.pid, track=True)
    code, out, err = run(node, "epilog", node.env("60"), capsys)
    assert code == 0 and out == ""
    assert err == f"slurm-mig epilog: job 60: left pids {theirs.pid} alone (other jobs')\n"
    for p in mine + [stray]:
        p.wait(timeout=10)
    assert _alive(theirs)
    assert node.record_of("60") is None and node.record_of("61") is not None
    assert node.instance(recs[0].gpu, recs[0].gi_id).pids == ()
    assert node.instance(recs[2].gpu, recs[2].gi_id).pids == (theirs.pid,)


def test_epilog_twice_is_fine(node, capsys):
    assert run(node, "prolog", node.env("62", "4"), capsys)[0] == 0
    assert run(node, "epilog", node.env("62"), capsys) == (0, "", "")
    code, out, err = run(node, "epilog", node.env("62"), capsys)
    assert (code, out) == (0, "")
    assert err == ("slurm-mig epilog: job 62: no job record (already cleaned up, or the job had "
                   "no gpu); nothing to do\n")


def test_epilog_can_wipe_the_instance_by_recreating_it(node, capsys):
    rec = node.records()[9]
    assert run(node, "prolog", node.env("63", "9"), capsys)[0] == 0
    before = node.instance(rec.gpu, rec.gi_id).uuid
    code, _, err = run(node, "epilog", node.env("63", **{jobenv.WIPE_ENV: "1"}), capsys)
    assert code == 0, err
    after = node.instance(rec.gpu, rec.gi_id)
    assert after.uuid != before and (after.start, after.ci_id) == (rec.start, rec.ci_id)


def test_driver_error_in_the_epilog_wipe_is_one_line(node, capsys):
    assert run(node, "prolog", node.env("64", "10"), capsys)[0] == 0
    node.driver.inject_fault("create_gi", code=nvmlcodes.NO_PERMISSION)
    code, _, err = run(node, "epilog", node.env("64", **{jobenv.WIPE_ENV: "1"}), capsys)
    assert code == 4
    assert "permission" in one_error_line(err, "64", "epilog").lower()


# ----------------------------------------------------------------------------- together


def test_sim_run_attaches_the_job_and_reports_what_it_reached(node, capsys, tmp_path):
    rec = node.records()[11]
    assert run(node, "prolog", node.env("70", "11"), capsys)[0] == 0
    out = str(tmp_path / "seen.json")
    proc = subprocess.Popen([sys.executable, "-m", "slurm_mig.hooks", "sim-run", "--out", out,
                             "--", "sleep", "60"], env=node.env("70", "11"))
    node.procs.append(proc)
    node.fake_proc(proc.pid, v1("70"))
    deadline = time.monotonic() + 20
    while not os.path.exists(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = json.load(open(out))
    assert seen["job_id"] == "70" and seen["pid"] == proc.pid and seen["job_gpus"] == "11"
    got = seen["instances"][0]
    assert (got["gpu"], got["gi_id"], got["ci_id"], got["files"]) == (rec.gpu, rec.gi_id, rec.ci_id, list(rec.files))
    assert got["uuid"] == node.instance(rec.gpu, rec.gi_id).uuid
    assert set(got["access"]) == set(rec.files)
    assert node.instance(rec.gpu, rec.gi_id).pids == (proc.pid,)  # the exec'd sleep
    assert run(node, "epilog", node.env("70"), capsys)[0] == 0
    proc.wait(timeout=15)  # ended (psutil may reap it first: then no status is left here)
    assert node.instance(rec.gpu, rec.gi_id).pids == ()


def test_sim_run_never_writes_its_report_through_a_planted_link(node, capsys, tmp_path):
    assert run(node, "prolog", node.env("71", "11"), capsys)[0] == 0
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "seen.json"
    out.symlink_to(victim)
    done = subprocess.run([sys.executable, "-m", "slurm_mig.hooks", "sim-run", "--out", str(out)],
                          env=node.env("71", "11"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "symbolic link is never followed" in done.stderr
    assert "Traceback" not in done.stderr
    assert victim.read_text() == "precious\n"


def test_twenty_concurrent_prologs_then_epilogs_lose_no_update(node):
    recs = node.records()
    for r in recs:  # every prolog has to create its instance
        SimBackend(node.config.sim.root).destroy_instance(r.gpu, r.gi_id)
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "slurm_mig.hooks", "prolog"],
                              env=node.env(str(100 + i), str(i)), stderr=subprocess.PIPE, text=True)
             for i in range(20)]
    errs = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in errs), errs
    held = jobs.holders(node.config.paths.state_dir, jobs.boot_id())
    assert (held.warnings, held.unknown) == ([], {})
    assert held.held == {(recs[i].gpu, recs[i].gi_id): str(100 + i) for i in range(20)}
    for r in recs[:20]:
        assert node.instance(r.gpu, r.gi_id).start == r.start
    procs = [subprocess.Popen([sys.executable, "-m", "slurm_mig.hooks", "epilog"],
                              env=node.env(str(100 + i)), stderr=subprocess.PIPE, text=True)
             for i in range(20)]
    errs = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in errs), errs
    assert os.listdir(jobs.jobs_dir(node.config.paths.state_dir)) == []
    print(f"\n20 prologs + 20 epilogs at once: {time.monotonic() - t0:.2f}s")


def test_the_shipped_scripts_exec_the_fast_entry_point(node, tmp_path):
    defaults = tmp_path / "defaults"
    defaults.write_text(f"SLURM_MIG_PYTHON={sys.executable}\nSLURM_MIG_CONFIG={node.config_path}\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = node.env("80", "1", SLURM_MIG_DEFAULTS=str(defaults))
    del env["SLURM_MIG_CONFIG"]
    env.pop("PATH")  # slurmd gives hooks no PATH
    pro = subprocess.run([os.path.join(root, "prolog.d", "50-slurm-mig")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert pro.returncode == 0, pro.stderr
    assert node.record_of("80") is not None
    epi = subprocess.run([os.path.join(root, "epilog.d", "50-slurm-mig")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert epi.returncode == 0, epi.stderr
    assert node.record_of("80") is None
    bad = subprocess.run([os.path.join(root, "prolog.d", "50-slurm-mig")],
                         env=dict(env, SLURM_JOB_GPUS="x"), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("slurm-mig prolog: error: job 80: ")


def test_cli_prolog_and_epilog_are_the_same_hooks(node, cli, monkeypatch):
    for k, v in node.env("90", "12").items():
        monkeypatch.setenv(k, v)
    code, out, err = cli("prolog", config=node.config_path)
    assert (code, out, err) == (0, "", "")
    assert node.record_of("90") is not None
    monkeypatch.setenv("SLURM_JOB_GPUS", "99")
    monkeypatch.setenv("SLURM_JOB_ID", "91")
    code, _, err = cli("prolog", config=node.config_path)
    assert code == 3 and err.startswith("slurm-mig prolog: error: job 91: SLURM_JOB_GPUS index 99")
    monkeypatch.setenv("SLURM_JOB_ID", "90")
    assert cli("epilog", config=node.config_path)[0] == 0
    assert node.record_of("90") is None


# ----------------------------------------------------------------------------- who owns a process

FORGED = b"PATH=/bin\0SLURM_JOB_ID=200\0"  # `env -i SLURM_JOB_ID=200 ...`: anyone can write it


def full(env: Dict[str, str]) -> Dict[str, str]:
    """The hook without its fast path: the epilog that lists processes on the instances
    through the driver (the fast epilog cannot see strays or other jobs' processes; only
    every FAST_EPILOGS_IN_A_ROW + 1-th epilog on an instance asks the driver, docs/hooks.md),
    whose judgment of whose a process is these tests check."""
    return dict(env, SLURM_MIG_HOOK_FAST="0")
USER_JOB_200 = "0::/user.slice/user-1000.slice/user@1000.service/job_200\n"  # the user's own cgroup


@pytest.mark.parametrize("cgroup", [NO_JOB, USER_JOB_200], ids=["no-job-cgroup", "user-made-job_200"])
def test_a_forged_slurm_job_id_does_not_make_a_process_that_jobs(node, capsys, cgroup):
    assert run(node, "prolog", node.env("300", "4"), capsys)[0] == 0
    assert run(node, "prolog", node.env("200", "5"), capsys)[0] == 0
    forged = node.spawn(cgroup, environ=FORGED)
    node.attach(forged, 4)  # on job 300's instance
    code, out, err = run(node, "epilog", full(node.env("200")), capsys)
    assert (code, out) == (0, "")
    assert err == (f"slurm-mig epilog: job 200: left pids {forged.pid} alone (no job's, on instances "
                   f"this job did not hold; a prolog there refuses them)\n")
    assert _alive(forged)
    code, out, err = run(node, "epilog", full(node.env("300")), capsys)
    assert (code, out) == (0, "")
    assert err == (f"slurm-mig epilog: job 300: ended stray processes on its instances: pid "
                   f"{forged.pid} (uid 1000) belongs to no Slurm job: its cgroup is {cgroup[3:-1]}\n")
    forged.wait(timeout=10)
    assert node.record_of("300") is None


def test_a_forged_slurm_job_id_does_not_let_that_job_share_the_instance(node, capsys):
    forged = node.spawn(USER_JOB_200, environ=FORGED)
    node.attach(forged, 6)
    why = (f"pid {forged.pid} (uid 1000) belongs to no Slurm job: its cgroup is "
           f"/user.slice/user-1000.slice/user@1000.service/job_200")
    for job in ("200", "400"):
        code, _, err = run(node, "prolog", node.env(job, "6"), capsys)
        assert code == 5
        assert f"has processes not of this job: {why}; end them" in one_error_line(err, job)
        assert node.record_of(job) is None


@pytest.mark.parametrize("cgroup, uid, why", [
    (v2("60"), 1001, "is in job 60's cgroup but runs as uid 1001, not the job's uid 1000"),
    (v1("60", uid=1001), 1001, "is in job 60's cgroup but runs as uid 1001, not the job's uid 1000"),
    (v1("60"), 1001, "belongs to no Slurm job: its cgroup is devices:/slurm_n1/uid_1000/job_60/step_0/"
                     "task_0, which is uid 1000's, but it runs as uid 1001"),
], ids=["v2", "v1-path-and-process-uid-1001", "v1-path-uid-1000-process-uid-1001"])
def test_a_process_of_another_uid_is_not_the_jobs(node, capsys, cgroup, uid, why):
    assert run(node, "prolog", node.env("61", "2"), capsys)[0] == 0
    other = node.spawn(cgroup, uid=uid)
    node.attach(other, 2)  # on job 61's instance: job 60's epilog must leave it alone
    node.attach(other, 3)  # on a free instance: job 60's prolog must refuse it
    code, _, err = run(node, "prolog", full(node.env("60", "3")), capsys)
    assert code == 5
    assert f"has processes not of this job: pid {other.pid} (uid {uid}) {why}; end" in one_error_line(err, "60")
    code, _, err = run(node, "epilog", full(node.env("60")), capsys)
    assert code == 0 and f"left pids {other.pid} alone (no job's" in err
    assert _alive(other)


def test_the_epilog_ends_a_stray_on_its_instance_after_the_grace(node, capsys, tmp_path):
    got = tmp_path / "got-term"
    ready = tmp_path / "ready"
    script = (f"import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: "
              f"open({str(got)!r}, 'w').write('TERM'))\nopen({str(ready)!r}, 'w').close()\n"
              f"time.sleep(60)\n")
    stray = node.spawn(NO_JOB, uid=0, argv=[sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run(node, "prolog", node.env("65", "13"), capsys)[0] == 0
    node.attach(stray, 13)
    code, out, err = run(node, "epilog", full(node.env("65", **{jobenv.GRACE_ENV: "0.2"})), capsys)
    assert (code, out) == (0, "")
    assert err == (f"slurm-mig epilog: job 65: ended stray processes on its instances: pid {stray.pid} "
                   f"(uid 0) belongs to no Slurm job: its cgroup is /user.slice/user-1000.slice/"
                   f"session-4.scope\n")
    stray.wait(timeout=10)
    assert got.read_text() == "TERM"  # it ignored SIGTERM: SIGKILL, after the grace, ended it
    assert node.instance(node.records()[13].gpu, node.records()[13].gi_id).pids == ()


# ----------------------------------------------------------------------------- Slurm 26.05: SLUIDs


def v2_sluid(sluid: str) -> str:
    """A task's cgroup under Slurm 26.05's cgroup/v2: the job directory is the job's SLUID."""
    return f"0::/system.slice/slurmstepd.scope/{sluid}/step_0/user/task_0\n"


def test_a_26_05_epilog_ends_the_jobs_processes_in_its_sluid_cgroup(node, capsys):
    env = node.env("70", "3", SLURM_JOB_SLUID="sEKNKTV3WPV500")
    assert run(node, "prolog", env, capsys)[0] == 0
    mine = node.spawn(v2_sluid("sEKNKTV3WPV500"))
    theirs = node.spawn(v2_sluid("s0D4H7Q2ZZ1M9X"))
    node.attach(mine, 3)
    node.attach(theirs, 3)
    code, out, err = run(node, "epilog", node.env("70", SLURM_JOB_SLUID="sEKNKTV3WPV500"), capsys)
    assert (code, out) == (0, "")
    assert err == f"slurm-mig epilog: job 70: left pids {theirs.pid} alone (other jobs')\n"
    mine.wait(timeout=10)
    assert _alive(theirs) and node.record_of("70") is None


def test_an_epilog_without_slurm_job_sluid_leaves_a_sluid_process_alone(node, capsys):
    assert run(node, "prolog", node.env("71", "4"), capsys)[0] == 0
    maybe_mine = node.spawn(v2_sluid("sEKNKTV3WPV500"))
    node.attach(maybe_mine, 4)
    code, out, err = run(node, "epilog", full(node.env("71")), capsys)
    assert (code, out) == (0, "")
    assert err == f"slurm-mig epilog: job 71: left pids {maybe_mine.pid} alone (other jobs')\n"
    assert _alive(maybe_mine)
