"""The JSON reader against a live sandbox cluster (``slurm-mig sandbox up``): pending jobs,
their requests and the demand they add up to, and the nodes' gres in use, end to end.

Needs root, munge and Slurm (skipped with the reason otherwise).  One sandbox for the module;
``sandbox down --purge`` afterwards.  Set SLURM_MIG_KEEP_SANDBOX=1 to keep the directory.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from typing import Dict, List

import pytest

from slurm_mig.sandbox import missing_requirements
from slurm_mig.sandbox.host import which
from slurm_mig.slurm.demand import demand
from slurm_mig.slurm.model import GresRequest
from slurm_mig.slurm.reader import SlurmJsonClient

MISSING = missing_requirements()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]


def _env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "SBATCH"))}


def _slurm_mig(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slurm_mig", *args], capture_output=True,
                          text=True, env=_env(), timeout=180)


class Live:
    def __init__(self, root: str, slurm_conf: str):
        self.root = root
        self.env = dict(_env(), SLURM_CONF=slurm_conf)
        self.jobs: Dict[str, int] = {}

    def run(self, *argv: str) -> str:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=60,
                              cwd=os.path.join(self.root, "jobs"))
        assert proc.returncode == 0, (argv, proc.stderr)
        return proc.stdout

    def sbatch(self, name: str, *args: str, sleep: int = 0) -> int:
        job = [os.path.join(self.root, "bin", "sim-job")] + (["sleep", str(sleep)] if sleep else [])
        out = self.run("sbatch", "--parsable", "-J", name, *args, *job)
        self.jobs[name] = int(out.strip().split(";")[0])
        return self.jobs[name]

    def wait_running(self, names: List[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = dict(line.split() for line in
                          self.run("squeue", "-h", "-o", "%j %T").splitlines() if line.strip())
            if all(states.get(n) == "RUNNING" for n in names):
                return
            time.sleep(0.5)
        raise AssertionError(f"{names} not running after {timeout}s: {states}")

    def client(self) -> SlurmJsonClient:
        return SlurmJsonClient(squeue=which("squeue") or "squeue", sinfo=which("sinfo") or "sinfo",
                               env=self.env)


@pytest.fixture(scope="module")
def live():
    root = f"/var/tmp/smig-json-{secrets.token_hex(4)}"  # new: up refuses a root it did not make
    up = _slurm_mig("sandbox", "up", "--root", root)
    try:
        assert up.returncode == 0, up.stderr
        conf = re.search(r"^export SLURM_CONF=(\S+)$", up.stdout, re.M)
        assert conf, up.stdout
        cluster = Live(root, conf.group(1))
        # Both 3g.40gb instances busy (record 4 of each node), then the pending forms.
        cluster.sbatch("fill-n1", "-w", "n1", "--gres=gpu:3g.40gb:1", sleep=300)
        cluster.sbatch("fill-n2", "-w", "n2", "--gres=gpu:3g.40gb:1", sleep=300)
        cluster.wait_running(["fill-n1", "fill-n2"])
        cluster.sbatch("wants-3g", "--gres=gpu:3g.40gb:1")
        cluster.sbatch("gpus-3g", "--gpus=3g.40gb:2")
        cluster.sbatch("array-3g", "--array=0-3%2", "--gres=gpu:3g.40gb:1")
        cluster.sbatch("held-1g", "-H", "--gres=gpu:1g.10gb:1")
        cluster.run("scontrol", "update", f"job={cluster.jobs['wants-3g']}", "priority=9000")
        cluster.run("scontrol", "update", "nodename=n1", "extra=slurm-mig:want=3g.40gb:2")
        yield cluster
    finally:
        _slurm_mig("sandbox", "down", "--root", root, *([] if os.environ.get("SLURM_MIG_KEEP_SANDBOX")
                                                        else ["--purge"]))


def test_live_pending_jobs_and_their_requests(live):
    jobs = {j.name: j for j in live.client().pending_jobs()}
    assert set(jobs) == {"wants-3g", "gpus-3g", "array-3g", "held-1g"}  # running ones left out
    assert jobs["wants-3g"].requests == (GresRequest("3g.40gb", 1, "node"),)
    assert jobs["wants-3g"].priority == 9000
    assert jobs["gpus-3g"].requests == (GresRequest("3g.40gb", 2, "job"),)
    arr = jobs["array-3g"]
    assert (arr.array_job_id, arr.array_task, arr.array_tasks_pending, arr.array_throttle) == \
        (live.jobs["array-3g"], "0-3%2", 4, 2)
    assert jobs["held-1g"].held and jobs["held-1g"].priority == 0


def test_live_demand_counts_the_waiting_3g_instances(live):
    jobs = {j.name: j for j in live.client().pending_jobs()}
    items = demand(jobs.values())
    assert [(i.type, i.partitions) for i in items] == [("3g.40gb", ("debug",))]  # held 1g skipped
    [item] = items
    assert (item.instances, item.startable) == (1 + 2 + 4, 1 + 2 + 2)
    assert item.weight == (1 * jobs["wants-3g"].priority + 2 * jobs["gpus-3g"].priority
                           + 4 * jobs["array-3g"].priority)
    assert sorted(item.jobs) == sorted(live.jobs[n] for n in ("wants-3g", "gpus-3g", "array-3g"))


def test_live_nodes_show_the_busy_instance_and_extra(live):
    nodes = live.client().nodes()
    assert set(nodes) == {"n1", "n2"}
    for node in nodes.values():
        assert node.state == "mixed"
        assert node.gres == {"1g.10gb": 4, "3g.40gb": 1}
        assert (node.gres_used, node.gres_used_idx) == ({"3g.40gb": 1}, {"3g.40gb": (4,)})
        assert node.partitions == ("debug",)
    assert nodes["n1"].extra == "slurm-mig:want=3g.40gb:2"


def test_live_running_jobs_end_at_start_plus_time_limit(live):
    job = live.jobs["fill-n1"]
    live.run("scontrol", "update", f"job={job}", "timelimit=7")  # 7 min: the job sleeps 300 s
    running = {j.job_id: j for j in live.client().running_jobs()}
    assert set(running) >= {live.jobs["fill-n1"], live.jobs["fill-n2"]}  # pending ones left out
    fill = running[job]
    assert (fill.nodes, fill.time_limit, fill.per_node()) == (("n1",), 7, {"3g.40gb": 1})
    # Slurm's own expected end, as squeue prints it, is start + limit
    shown = live.run("squeue", "-h", "-j", str(job), "-o", "%S %e").split()
    start, end = (int(time.mktime(time.strptime(t, "%Y-%m-%dT%H:%M:%S"))) for t in shown)
    assert (fill.start_time, fill.end_time) == (start, end) and end - start == 420
