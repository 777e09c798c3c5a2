"""The prolog's guard (slurm_mig/hooks/guard.py) under a real Slurm (slurm_mig.sandbox).

* squeue's real output for each way of asking for gpus reads as a request (and a CPU job's
  does not): the format the guard parses is this release's, not a fixture's;
* a CPU job runs through the guard's question in a real prolog, and a gpu job still gets
  its instance;
* the window of issue 10: a gpu job allocated while its node has not registered its gres
  with a restarted slurmctld.  Made deterministic: n1 registers once with no gpu records
  (so slurmctld keeps no gres bitmap for it), its slurmd is stopped (SIGSTOP) so it cannot
  register again, slurmctld is restarted, n1 resumed, a gpu job allocated there, then
  slurmd continued: the job's prolog sees no SLURM_JOB_GPUS.

Needs root, munge and Slurm; run under the sandbox lock (docs/testing.md).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from slurm_mig.change import reasons
from slurm_mig.hooks import guard
from slurm_mig.sandbox import missing_requirements

from sbx import sandbox, until

MISSING = missing_requirements()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]

GPUS = {"n1": ["A100-40GB"]}
LAYOUTS = {"n1": [("0", "1g.5gb:7")]}

FORMS = {  # sbatch arguments -> does the job ask for a gpu on its node
    "--gres=gpu:1g.5gb:1": True,
    "--gres=gpu:1": True,
    "--gpus=1": True,
    "--gpus=1g.5gb:2": True,
    "-n1 --gpus-per-task=1": True,
    "--gpus-per-node=1g.5gb:1": True,
    "": False,
}


@pytest.fixture(scope="module")
def sbx():
    with sandbox("sbx-guard-", GPUS, LAYOUTS) as s:
        yield s


def test_real_squeue_output_of_each_request_form_reads_as_asked(sbx):
    env = sbx.cluster.env()
    jobs = {}
    for form in FORMS:
        args = ["--hold", "-w", "n1", *form.split()]
        jobs[form] = sbx.submit(args)
    try:
        for form, asks in FORMS.items():
            job = str(jobs[form])
            done = guard._run(guard.squeue_argv("squeue", job), env, 30)
            print(f"\n{form or '(cpu)'}: squeue printed {done.stdout.strip()!r}")
            assert (guard.ask(job, env) is not None) == asks, (form, done.stdout, done.stderr)
    finally:
        sbx.cluster.command(["scancel", *map(str, jobs.values())], check=False)


def test_a_cpu_job_and_a_gpu_job_run_through_the_real_prolog(sbx):
    cpu = sbx.cluster.submit(["-w", "n1"], "#!/bin/bash\ntrue\n")
    gpu = sbx.submit(["--gres=gpu:1g.5gb:1", "-w", "n1"])
    assert sbx.cluster.wait_job(cpu, 60).state == "COMPLETED"
    assert open(os.path.join(sbx.root, "marks", f"{cpu}.prolog")).read() == "ran\n"
    assert sbx.cluster.wait_job(gpu, 60).state == "COMPLETED"
    assert len(sbx.seen(gpu)["instances"]) == 1
    assert sbx.cluster.status()["n1"].state == "idle"


def _slurmd_pid(sbx) -> int:
    [pid] = sbx.cluster.daemon_pids()["slurmd-n1"]
    return pid


def test_a_gpu_job_allocated_before_its_node_registered_never_runs_without_its_instance(sbx):
    cluster = sbx.cluster
    gres_conf = cluster.paths.gres_conf
    text = open(gres_conf).read()
    # 1. n1 registers once with no gpu record: slurmctld drops its gres bitmap (INVALID_REG).
    with open(gres_conf, "w") as f:
        f.write("")
    cluster.restart_slurmd("n1")
    until("n1 drained for its gres", lambda: "DRAIN" in cluster.status()["n1"].flags, 30)
    with open(gres_conf, "w") as f:
        f.write(text)
    # 2. Its slurmd stopped, so it cannot register again; slurmctld restarted; n1 resumed.
    pid = _slurmd_pid(sbx)
    os.kill(pid, signal.SIGSTOP)
    try:
        cluster.restart_slurmctld()
        cluster.command(["scontrol", "update", "nodename=n1", "state=resume"], check=False)
        print(f"\nn1 after the restart: {cluster.status()['n1']}")
        job = sbx.submit(["--gres=gpu:1g.5gb:1", "-w", "n1"])
        info = until("job allocated", lambda: (lambda i: i if i.state != "PENDING" else None)(
            cluster.job(job)), 30)
        print(f"job {job}: {info.state} {info.fields.get('NodeList')} "
              f"{cluster.command(['scontrol', 'show', 'job', '-d', str(job)]).stdout}")
    finally:
        os.kill(pid, signal.SIGCONT)
    # 3. The prolog (no SLURM_JOB_GPUS) must refuse it: it never reaches `sim run`.
    node = until("n1 drained by the guard",
                 lambda: (lambda n: n if reasons.is_ours(n.reason) else None)(cluster.status()["n1"]),
                 60)
    print(f"n1: {node}")
    assert reasons.parse_reason(node.reason).kind == reasons.NO_GPUS
    time.sleep(1)
    assert not os.path.exists(os.path.join(sbx.root, "seen", f"{job}.json"))
    info = until("job requeued", lambda: (lambda i: i if i.state == "PENDING" else None)(
        cluster.job(job)), 30)
    assert "held" in info.reason.lower(), info
    # 4. Once n1 registered its gres: resume, release, and the job runs with its instance.
    until("n1 registered", lambda: cluster.status()["n1"].gres == {"1g.5gb": 7}, 60)
    cluster.resume("n1")
    cluster.command(["scontrol", "release", str(job)])
    assert cluster.wait_job(job, 60).state == "COMPLETED"
    assert len(sbx.seen(job)["instances"]) == 1
