"""The hooks under a real Slurm (slurm_mig.sandbox): gres.conf from the generator, prolog/epilog.

Two nodes, each with its own simulated GPUs (a config per node under the cluster root):
n1 has one A100-40GB cut into seven 1g.5gb; n2 has two H100-80GB whose types interleave
(GPU0: 1g,1g,3g; GPU1: 3g,2g,1g), so Slurm's record order (by the Gres= type order) differs
from GPU order.  gres.conf and the node Gres= come from ``slurm-mig gres-conf/node-conf
--write``; Prolog=/Epilog= are globs over directories holding the shipped hook scripts
(the setup is tests/sbx.py, shared with tests/test_sync_slurm.py).

Needs root, munge and Slurm; skipped with the reason otherwise.  Set SLURM_MIG_KEEP_SANDBOX=1
to keep the cluster's directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Dict, List

import pytest

from slurm_mig.gpu import nvmlcodes
from slurm_mig.sandbox import missing_requirements
from slurm_mig.sim.backend import SimBackend
from slurm_mig.sim.driver import SimDriver

from sbx import Sbx, sandbox, until

MISSING = missing_requirements()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]

GPUS = {"n1": ["A100-40GB"], "n2": ["H100-80GB", "H100-80GB"]}
LAYOUTS = {"n1": [("0", "1g.5gb:7")],
           "n2": [("0", "1g.10gb@0,1g.10gb@1,3g.40gb@4"), ("1", "3g.40gb@0,2g.20gb@4,1g.10gb@6")]}


@pytest.fixture(scope="module")
def sbx():
    with sandbox("sbx-hooks-", GPUS, LAYOUTS,
                 config_extra='[hooks]\ndcgm_job_mapping_dir = "@NODEROOT@/dcgm"\n') as s:
        yield s


def _wait_all(sbx: Sbx, jobs: List[int], timeout: float) -> Dict[int, object]:
    out = {}
    deadline = time.monotonic() + timeout
    for j in jobs:
        out[j] = sbx.cluster.wait_job(j, timeout=max(1.0, deadline - time.monotonic()))
    return out


def test_generated_files_give_slurm_every_instance(sbx):
    nodes = sbx.cluster.status()
    assert nodes["n1"].gres == {"1g.5gb": 7}
    assert nodes["n2"].gres == {"1g.10gb": 3, "2g.20gb": 1, "3g.40gb": 2}
    assert all(n.state == "idle" for n in nodes.values()), nodes


def test_each_job_reaches_the_instance_slurm_gave_it_and_no_other(sbx):
    recs = {n: sbx.records(n) for n in GPUS}
    jobs = {}
    # Submitted held, then released together, so that they all start in one scheduling
    # pass and each holds its instance at the same time: then every record is used once.
    # (Released one by one, a short job can end before the next starts and Slurm may
    # give the next one the same record, which is correct but proves less.)
    for node, rs in recs.items():
        for i, r in enumerate(rs):
            jobs[sbx.submit(["--hold", f"--gres=gpu:{r.type}:1", "-w", node], sleep=2)] = (node, r.type)
    sbx.cluster.command(["scontrol", "release", ",".join(str(j) for j in jobs)])
    done = _wait_all(sbx, list(jobs), 90)
    assert all(info.state == "COMPLETED" for info in done.values()), done
    held = {}
    for job, (node, gtype) in jobs.items():
        seen = sbx.seen(job)
        [got] = seen["instances"]
        rec = recs[node][int(seen["job_gpus"])]
        assert rec.type == gtype and seen["node"] == node
        assert (got["gpu"], got["gi_id"], got["ci_id"], got["files"]) == (
            rec.gpu, rec.gi_id, rec.ci_id, list(rec.files))
        held.setdefault((node, rec.gpu, rec.gi_id), []).append(job)
        assert open(os.path.join(sbx.root, "marks", f"{job}.prolog")).read() == "ran\n"
        # Prolog= globs run in REVERSE name order on every release measured (22.05, 24.11,
        # 26.05; slurm.conf(5) says so from 24.11): 50-slurm-mig before 10-mark.
        with open(os.path.join(sbx.root, "marks", f"{job}.prolog.order")) as f:
            assert f.read().split() == ["50-slurm-mig", "10-mark"]
        probe = sbx.probe(job)
        if os.environ.get("SLURM_MIG_REQUIRE_FENCING"):  # .ci/run and .ci/matrix: no skipping
            assert sbx.cluster.isolation.devices, sbx.cluster.isolation
        if sbx.cluster.isolation.devices:
            assert set(probe["own"].values()) == {"ENXIO"}, probe
            assert set(probe["other"].values()) == {"EPERM"}, probe
    # Every instance was used, and jobs that ran at once never shared one (prolog records).
    assert len(held) == sum(len(r) for r in recs.values())
    deadline = time.monotonic() + 20  # the last epilogs run after the job is COMPLETED
    while any(sbx.job_records(n) for n in GPUS) and time.monotonic() < deadline:
        time.sleep(0.2)
    for node in GPUS:
        assert sbx.job_records(node) == []


def test_fifty_jobs_at_once_on_seven_instances_all_complete_and_leave_no_state(sbx):
    t0 = time.monotonic()
    jobs = [sbx.submit(["--gres=gpu:1g.5gb:1", "-w", "n1"], sleep=0.2) for _ in range(50)]
    done = _wait_all(sbx, jobs, 150)
    elapsed = time.monotonic() - t0
    assert [j for j, info in done.items() if info.state != "COMPLETED"] == []
    print(f"\n50 jobs on 7 instances: {elapsed:.1f}s")
    time.sleep(0.5)  # the last epilogs run after the job is COMPLETED
    deadline = time.monotonic() + 20
    while sbx.job_records("n1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sbx.job_records("n1") == []
    backend = SimBackend(sbx.config("n1").sim.root)
    assert [m.pids for m in backend.instances(0)] == [()] * 7
    n1 = sbx.cluster.status()["n1"]
    assert n1.state == "idle", (n1, sbx.slurmd_log("n1")[-3000:])


def test_prolog_that_cannot_realise_the_instance_drains_the_node_and_requeues_the_job(sbx):
    cfg = sbx.config("n1")
    rec = sbx.records("n1")[3]
    backend = SimBackend(cfg.sim.root)
    backend.destroy_instance(rec.gpu, rec.gi_id)  # out of band
    SimDriver(cfg.sim.root).inject_fault("create_gi", code=nvmlcodes.NO_PERMISSION)
    job = sbx.submit(["--gres=gpu:1g.5gb:7", "-w", "n1"])
    try:
        node = sbx.cluster.wait_nodes(lambda s: "DRAIN" in s["n1"].flags, 30, "n1 drained")["n1"]
        print(f"\nn1 after the failed prolog: {sorted(node.flags)} reason {node.reason!r}")
        assert node.reason.startswith("Prolog error")
        deadline = time.monotonic() + 30
        while True:
            info = sbx.cluster.job(job)
            if info.state == "PENDING" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        print(f"job {job}: {info.state} ({info.reason}) {info.fields.get('Restarts')}")
        assert info.state == "PENDING" and "held" in info.reason.lower(), info
        line = f"slurm-mig prolog: error: job {job}: gres record 3 (1g.5gb@{rec.start} on gpu 0, gi {rec.gi_id} ci 0)"
        last = open(os.path.join(cfg.paths.state_dir, "last-error")).read()
        assert last.startswith(line) and "permission" in last.lower(), last
        assert line in sbx.slurmd_log("n1"), sbx.slurmd_log("n1")[-2000:]
        assert sbx.job_records("n1") == []
    finally:
        sbx.cluster.command(["scancel", str(job)], check=False)
        SimDriver(cfg.sim.root).clear_faults()
        sbx.cluster.resume("n1")


# Moves process argv[1] out of the Slurm cgroups it is in, to the root of each hierarchy (the
# sandbox runs jobs as root): Slurm's proctrack then no longer ends it with the job, as it
# does not for a user's process that got away where proctrack is not cgroup-based.
ESCAPE = textwrap.dedent("""\
    import sys
    pid = sys.argv[1]
    for line in open(f"/proc/{pid}/cgroup"):
        hier, controllers, path = line.rstrip("\\n").split(":", 2)
        if "slurm" in path:
            root = "/sys/fs/cgroup" if hier == "0" else f"/sys/fs/cgroup/{controllers}"
            with open(f"{root}/cgroup.procs", "w") as f:
                f.write(pid)
    """)
# The job: a process that stays on its instances after it ends, saying it is another job's.
FORGER = textwrap.dedent("""\
    #!/bin/bash
    export SLURM_MIG_CONFIG={root}/nodes/$SLURMD_NODENAME/config.toml
    (
      {python} {root}/escape.py $BASHPID
      exec {python} -m slurm_mig.hooks sim-run --out {root}/seen/$SLURM_JOB_ID.json -- \\
          env -i SLURM_JOB_ID=$((SLURM_JOB_ID - 1)) sleep 600
    ) </dev/null >/dev/null 2>&1 &
    for i in $(seq 600); do [ -s {root}/seen/$SLURM_JOB_ID.json ] && break; sleep 0.05; done
    """)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended: this sandbox's init may not reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 1:].split()[0] != b"Z"


def test_a_process_left_on_the_instances_with_a_forged_job_id_is_ended_and_drains_nothing(sbx):
    with open(os.path.join(sbx.root, "escape.py"), "w") as f:
        f.write(ESCAPE)
    backend = SimBackend(sbx.config("n1").sim.root)
    job = sbx.cluster.submit(["--gres=gpu:1g.5gb:7", "-w", "n1"],
                             FORGER.format(root=sbx.root, python=sys.executable))
    pid = None
    try:
        assert sbx.cluster.wait_job(job, timeout=60).state == "COMPLETED"
        pid = sbx.seen(job)["pid"]
        until("the epilog ended the process", lambda: not _running(pid) and not sbx.job_records("n1"))
        assert [m.pids for m in backend.instances(0)] == [()] * 7
        after = sbx.submit(["--gres=gpu:1g.5gb:7", "-w", "n1"])
        assert sbx.cluster.wait_job(after, timeout=60).state == "COMPLETED"
        n1 = sbx.cluster.status()["n1"]
        assert "DRAIN" not in n1.flags, (n1, sbx.slurmd_log("n1")[-3000:])
    finally:
        if pid is not None and _running(pid):
            os.kill(pid, 9)
        sbx.cluster.command(["scancel", str(job)], check=False)
        if "DRAIN" in sbx.cluster.status()["n1"].flags:
            sbx.cluster.resume("n1")


# TaskProlog (issue 11): the batch step, then one srun step, write their environment and
# wait for the test to have looked at `slurm-mig status` while the job still holds its instances.
ENV_JOB = textwrap.dedent("""\
    #!/bin/bash
    env > {root}/seen/$SLURM_JOB_ID.batch.env
    srun --gres=gpu:1g.10gb:1 -n1 bash -c 'env > {root}/seen/$SLURM_JOB_ID.step.env'
    for i in $(seq 600); do [ -e {root}/seen/$SLURM_JOB_ID.go ] && break; sleep 0.1; done
    """)
CPU_JOB = "#!/bin/bash\nenv > {root}/seen/$SLURM_JOB_ID.batch.env\n"


def _env(path: str) -> Dict[str, str]:
    with open(path) as f:
        return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)


def test_task_prolog_gives_tasks_their_mig_uuids_and_a_cpu_job_nothing(sbx):
    seen = os.path.join(sbx.root, "seen")
    job = sbx.cluster.submit(["--gres=gpu:1g.10gb:2", "-w", "n2"],
                             ENV_JOB.format(root=sbx.root))
    try:
        until("the step wrote its env", lambda: os.path.exists(f"{seen}/{job}.step.env"), 60)
        batch, step = _env(f"{seen}/{job}.batch.env"), _env(f"{seen}/{job}.step.env")
        out = subprocess.run([sys.executable, "-m", "slurm_mig", "--config", sbx.config_path("n2"), "--json",
                              "status"], capture_output=True, text=True, check=True)
        held = {i["uuid"]: (g["index"], i["gi_id"], i["ci_id"], i["profile"])
                for g in json.loads(out.stdout)["gpus"] for i in g["instances"]
                if str(job) in i["jobs"]}
        env_file = os.path.join(sbx.config("n2").paths.run_dir, "task-env", f"{job}.json")
        assert os.path.exists(env_file)
        dcgm = sbx.config("n2").hooks.dcgm_job_mapping_dir
        assert {n: open(os.path.join(dcgm, n)).read() for n in os.listdir(dcgm)} == {
            f"{gpu}.{gi}": f"{job}\n" for gpu, gi, _, _ in held.values()}
    finally:
        open(f"{seen}/{job}.go", "w").close()
    print(f"\njob {job}: batch CUDA_VISIBLE_DEVICES={batch.get('CUDA_VISIBLE_DEVICES')} "
          f"SLURM_JOB_GPUS={batch.get('SLURM_JOB_GPUS')}; step CUDA_VISIBLE_DEVICES="
          f"{step.get('CUDA_VISIBLE_DEVICES')} SLURM_STEP_GPUS={step.get('SLURM_STEP_GPUS')}; "
          f"batch SLURM_STEP_ID={batch.get('SLURM_STEP_ID')}")
    assert len(held) == 2
    # Every release (22.05, 24.11, 26.05).  26.05 sets SLURM_STEP_ID=-5 in the batch step
    # (older ones leave it out there): taskenv.special_step reads it as the batch step.
    uuids = batch["CUDA_VISIBLE_DEVICES"].split(",")
    assert sorted(uuids) == sorted(held) and batch["NVIDIA_VISIBLE_DEVICES"] == batch["CUDA_VISIBLE_DEVICES"]
    assert batch["SLURM_MIG_INSTANCES"] == ",".join("{3}:{0}:{1}:{2}".format(*held[u]) for u in uuids)
    [one] = step["CUDA_VISIBLE_DEVICES"].split(",")
    assert one in held and step["NVIDIA_VISIBLE_DEVICES"] == one
    assert sbx.cluster.wait_job(job, timeout=60).state == "COMPLETED"
    until("the epilog removed the env file", lambda: not os.path.exists(env_file), 20)
    until("the epilog removed the mapping files", lambda: os.listdir(dcgm) == [], 20)

    cpu = sbx.cluster.submit(["-w", "n2"], CPU_JOB.format(root=sbx.root))
    assert sbx.cluster.wait_job(cpu, timeout=60).state == "COMPLETED"
    env = _env(f"{seen}/{cpu}.batch.env")
    assert not {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "SLURM_MIG_INSTANCES"} & set(env)


# Each task of a bound step writes its environment and which of n2's gres records (Slurm's
# order) it may open the ci capability file of (EPERM: its device cgroup says no).
OPEN_PROBE = textwrap.dedent("""\
    import errno, json, os, sys
    ok = []
    for i, files in enumerate(json.load(open(sys.argv[1]))):
        try:
            os.close(os.open(files[2], os.O_RDONLY))
        except OSError as err:
            if err.errno == errno.EPERM:
                continue
        ok.append(i)
    json.dump(ok, open(sys.argv[2], "w"))
    """)
TASKS_JOB = textwrap.dedent("""\
    #!/bin/bash
    srun bash -c 'env > {root}/seen/$SLURM_JOB_ID.task$SLURM_PROCID.env; {python} \\
        {root}/open-probe.py {root}/n2-files.json {root}/seen/$SLURM_JOB_ID.task$SLURM_PROCID.open'
    """)


def test_task_prolog_gives_each_bound_task_the_instance_its_device_cgroup_allows(sbx):
    recs = sbx.records("n2")
    with open(os.path.join(sbx.root, "open-probe.py"), "w") as f:
        f.write(OPEN_PROBE)
    with open(os.path.join(sbx.root, "n2-files.json"), "w") as f:
        json.dump([list(r.files) for r in recs], f)
    job = sbx.cluster.submit(["-n2", "--gpus-per-task=1g.10gb:1", "-w", "n2"],
                             TASKS_JOB.format(root=sbx.root, python=sys.executable))
    assert sbx.cluster.wait_job(job, timeout=60).state == "COMPLETED"
    seen = os.path.join(sbx.root, "seen")
    tasks = [_env(f"{seen}/{job}.task{i}.env") for i in (0, 1)]
    opened = [json.load(open(f"{seen}/{job}.task{i}.open")) for i in (0, 1)]
    for i, (env, ok) in enumerate(zip(tasks, opened)):
        print(f"\njob {job} task {i}: SLURM_STEP_GPUS={env.get('SLURM_STEP_GPUS')} "
              f"SLURMD_TRES_BIND={env.get('SLURMD_TRES_BIND')} opens records {ok}; "
              f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')} "
              f"SLURM_MIG_INSTANCES={env.get('SLURM_MIG_INSTANCES')}")
    got = []
    for env, ok in zip(tasks, opened):
        [uuid] = env["CUDA_VISIBLE_DEVICES"].split(",")
        assert uuid.startswith("MIG-") and env["NVIDIA_VISIBLE_DEVICES"] == uuid, env
        if sbx.cluster.isolation.devices:
            [mine] = ok  # the one record its device cgroup allows
        else:
            mine = int(env["SLURM_STEP_GPUS"])  # no fencing: Slurm's indexes are global
        r = recs[mine]
        assert r.type == "1g.10gb"
        assert env["SLURM_MIG_INSTANCES"] == f"{r.type}:{r.gpu}:{r.gi_id}:{r.ci_id}", (env, ok)
        got.append(uuid)
    assert got[0] != got[1]
