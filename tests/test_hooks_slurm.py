"""The hooks under a real Slurm (slurm_mig.sandbox): gres.conf from the generator, prolog/epilog.

Two nodes, each with its own simulated GPUs (a config per node under the cluster root):
n1 has one A100-40GB cut into seven 1g.5gb; n2 has two H100-80GB whose types interleave
(GPU0: 1g,1g,3g; GPU1: 3g,2g,1g), so Slurm's record order (by the Gres= type order) differs
from GPU order.  gres.conf and the node Gres= come from ``slurm-mig gres-conf/node-conf
--write``; Prolog=/Epilog= are globs over directories holding the shipped hook scripts.

Needs root, munge and Slurm; skipped with the reason otherwise.  Set SLURM_MIG_KEEP_SANDBOX=1
to keep the cluster's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from typing import Dict, List

import pytest

from slurm_mig.cli import main as cli_main
from slurm_mig.config import load_config
from slurm_mig.gpu import nvmlcodes
from slurm_mig.gpu.sim import SimBackend
from slurm_mig.gpu.simdriver import SimDriver
from slurm_mig.gresconf import parse_gres_conf, parse_node_gres_types, slurm_order
from slurm_mig.sandbox import SandboxCluster, missing_requirements

MISSING = missing_requirements()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPUS = {"n1": ["A100-40GB"], "n2": ["H100-80GB", "H100-80GB"]}
LAYOUTS = {"n1": [("0", "1g.5gb:7")],
           "n2": [("0", "1g.10gb@0,1g.10gb@1,3g.40gb@4"), ("1", "3g.40gb@0,2g.20gb@4,1g.10gb@6")]}

# The job: attach to its instance(s) through `sim run`, then probe every cap file of its node.
JOB = textwrap.dedent("""\
    #!/bin/bash
    export SLURM_MIG_CONFIG={root}/nodes/$SLURMD_NODENAME/config.toml
    exec {python} -m slurm_mig.hooks sim-run --out {root}/seen/$SLURM_JOB_ID.json -- \\
        {python} {root}/probe.py {root}/records.json {root}/seen/$SLURM_JOB_ID.probe.json {sleep}
    """)
PROBE = textwrap.dedent("""\
    import errno, json, os, sys, time
    records = json.load(open(sys.argv[1]))[os.environ["SLURMD_NODENAME"]]
    mine = {int(i) for i in os.environ.get("SLURM_JOB_GPUS", "").split(",") if i}
    out = {"mine": sorted(mine), "own": {}, "other": {}}
    for idx, files in enumerate(records):
        for path in files[1:]:
            try:
                os.close(os.open(path, os.O_RDONLY))
                name = "OPENED"
            except OSError as err:
                name = errno.errorcode.get(err.errno, str(err.errno))
            out["own" if idx in mine else "other"][path] = name
    json.dump(out, open(sys.argv[2], "w"))
    time.sleep(float(sys.argv[3]))
    """)


class Sbx:
    def __init__(self, cluster: SandboxCluster):
        self.cluster = cluster
        self.root = cluster.root

    def config_path(self, node: str) -> str:
        return os.path.join(self.root, "nodes", node, "config.toml")

    def config(self, node: str):
        return load_config(self.config_path(node))

    def records(self, node: str):
        etc = self.cluster.paths
        recs = parse_gres_conf(open(etc.gres_conf).read(), node)
        return slurm_order(recs, parse_node_gres_types(open(etc.nodes_conf).read(), node))

    def submit(self, args: List[str], sleep: float = 0.0) -> int:
        script = JOB.format(root=self.root, python=sys.executable, sleep=sleep)
        return self.cluster.submit(args, script)

    def seen(self, job: int) -> dict:
        with open(os.path.join(self.root, "seen", f"{job}.json")) as f:
            return json.load(f)

    def probe(self, job: int) -> dict:
        with open(os.path.join(self.root, "seen", f"{job}.probe.json")) as f:
            return json.load(f)

    def slurmd_log(self, node: str) -> str:
        with open(self.cluster.paths.slurmd_log(node)) as f:
            return f.read()

    def job_records(self, node: str) -> List[str]:
        d = os.path.join(self.config(node).paths.state_dir, "jobs")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []


def _cli(*args: str) -> None:
    assert cli_main([str(a) for a in args]) == 0, args


def _write_hooks(root: str) -> None:
    with open(os.path.join(root, "slurm-mig.env"), "w") as f:
        f.write(f"SLURM_MIG_PYTHON={sys.executable}\n"
                f"SLURM_MIG_CONFIG={root}/nodes/${{SLURMD_NODENAME}}/config.toml\n")
    for which in ("prolog", "epilog"):
        d = os.path.join(root, f"{which}.d")
        os.makedirs(d)
        scripts = {
            # Proves the glob runs every file, in order.
            "10-mark": f"#!/bin/bash\necho ran >> {root}/marks/$SLURM_JOB_ID.{which}\n",
            "50-slurm-mig": (f"#!/bin/bash\nexport SLURM_MIG_DEFAULTS={root}/slurm-mig.env\n"
                             f"exec {REPO}/{which}.d/50-slurm-mig\n"),
        }
        for name, text in scripts.items():
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o755)


@pytest.fixture(scope="module")
def sbx():
    root = tempfile.mkdtemp(prefix="sbx-hooks-", dir="/var/tmp")
    # 8 CPUs a node on a smaller machine (config_overrides): 7 jobs at once on n1's instances.
    cluster = SandboxCluster(root, ["n1", "n2"], cpus_per_node=8)
    try:
        for d in ("seen", "marks"):
            os.makedirs(os.path.join(root, d))
        with open(os.path.join(root, "probe.py"), "w") as f:
            f.write(PROBE)
        _write_hooks(root)
        cluster.write_config({n: "" for n in GPUS}, "", {
            "Prolog": f"{root}/prolog.d/*", "Epilog": f"{root}/epilog.d/*",
            "SlurmdParameters": "config_overrides"})
        for node, models in GPUS.items():
            nroot = os.path.join(root, "nodes", node)
            os.makedirs(nroot)
            with open(os.path.join(nroot, "config.toml"), "w") as f:
                f.write(textwrap.dedent(f"""\
                    version = 1
                    backend = "sim"
                    [paths]
                    state_dir = "{nroot}/state"
                    gres_conf = "{cluster.paths.gres_conf}"
                    node_gres_include = "{cluster.paths.nodes_conf}"
                    [sim]
                    root = "{nroot}/sim"
                    gpus = {json.dumps(models)}
                    """))
            cfg = os.path.join(nroot, "config.toml")
            SimDriver.create(os.path.join(nroot, "sim"), models)
            for gpu, layout in LAYOUTS[node]:
                _cli("--config", cfg, "apply", layout, "--gpu", gpu)
            _cli("--config", cfg, "gres-conf", "--node", node, "--write")
            _cli("--config", cfg, "node-conf", "--node", node, "--write")
        # Tell the sandbox what Gres= each node has (it renders nodes.conf the same way).
        nodes_conf = open(cluster.paths.nodes_conf).read()
        gres = {n: next(w[5:] for l in nodes_conf.splitlines() if l.startswith(f"NodeName={n} ")
                        for w in l.split() if w.startswith("Gres=")) for n in GPUS}
        cluster.write_layout(gres, open(cluster.paths.gres_conf).read())
        assert open(cluster.paths.nodes_conf).read() == nodes_conf  # same text either way
        sbx = Sbx(cluster)
        records = {n: [list(r.files) for r in sbx.records(n)] for n in GPUS}
        with open(os.path.join(root, "records.json"), "w") as f:
            json.dump(records, f)
        cluster.start()
        yield sbx
    finally:
        cluster.stop()
        print(f"\n{root}: timings {cluster.timings}; isolation {cluster.isolation}")
        if not os.environ.get("SLURM_MIG_KEEP_SANDBOX"):
            shutil.rmtree(root, ignore_errors=True)


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
    for node, rs in recs.items():
        for i, r in enumerate(rs):
            jobs[sbx.submit([f"--gres=gpu:{r.type}:1", "-w", node], sleep=0.5)] = (node, r.type)
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
        probe = sbx.probe(job)
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
    assert sbx.cluster.status()["n1"].state == "idle"


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
