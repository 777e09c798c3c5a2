"""The prolog's guard (slurm_mig/hooks/guard.py) under a real Slurm (slurm_mig.sandbox).

* squeue's real output for each way of asking for gpus reads as a request (and a CPU job's
  does not): the format the guard parses is this release's, not a fixture's;
* a CPU job runs through the guard's question in a real prolog, and a gpu job still gets
  its instance.

The window of issue 10 itself (a gpu job allocated before its node re-registered its gres
with a restarted slurmctld) is not reproduced here: on 22.05.8 a stopped slurmd makes the
node NOT_RESPONDING/unavailable and a live one registers at slurmctld's start, before a job
submitted after the restart is scheduled (docs/slurm-prolog-env.md, (c)).  The refusal is
tested with squeue stand-ins in tests/test_prolog_guard.py.

Needs root, munge and Slurm; run under the sandbox lock (docs/testing.md).
"""

from __future__ import annotations

import os
import time

import pytest

from slurm_mig.hooks import guard
from slurm_mig.sandbox import missing_requirements

from sbx import sandbox

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
            t0 = time.perf_counter()
            asked = guard.ask(job, env)
            print(f"  guard.ask: {asked!r} in {(time.perf_counter() - t0) * 1000:.1f} ms")
            assert (asked is not None) == asks, (form, done.stdout, done.stderr)
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
