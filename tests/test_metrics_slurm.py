"""Metrics on the real sandbox cluster (docs/metrics.md): Slurm's own prolog and epilog and a real
``slurm-mig sync`` keep n1's node_exporter textfile; a real node_exporter serves it and a real
Prometheus answers a PromQL query with the sandbox's instance counts per profile.

n1 has two A100-40GB: GPU 0 in seven 1g.5gb, GPU 1 in two 3g.20gb (also its ``[layout]``, so
``sync`` finds it in sync and leaves Slurm alone).  One job runs on a 1g.5gb instance.
Needs root, munge and Slurm (skipped with the reason otherwise), and Debian's prometheus and
prometheus-node-exporter (tests/promscrape.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from slurm_mig.sandbox import missing_requirements

from promscrape import Scrape, binary
from sbx import sandbox, until

MISSING = missing_requirements()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]

GPUS = {"n1": ["A100-40GB", "A100-40GB"]}
LAYOUTS = {"n1": [("0", "1g.5gb:7"), ("1", "3g.20gb:2")]}
CONFIG = ('[layout.gpus]\n0 = "1g.5gb:7"\n1 = "3g.20gb:2"\n'
          '[metrics]\ntextfile = "@NODEROOT@/textfile/slurm_mig.prom"\n')


def test_prometheus_scrapes_the_sandbox_nodes_instances_hooks_and_sync(tmp_path):
    for name in ("prometheus", "prometheus-node-exporter"):  # before the cluster starts
        binary(name)
    with sandbox("sbx-metrics-", GPUS, LAYOUTS, config_extra=CONFIG) as sbx:
        job = sbx.submit(["--gres=gpu:1g.5gb:1", "-w", "n1"])
        until("the job ran on its instance", lambda: sbx.seen_done(job))
        until("its epilog removed its record", lambda: sbx.job_records("n1") == [])
        proc = subprocess.run([sys.executable, "-m", "slurm_mig", "--config", sbx.config_path("n1"),
                               "sync", "--node", "n1", "--wait", "5"],
                              env=sbx.cluster.env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        textfile = sbx.config("n1").metrics.textfile
        s = Scrape(textfile.rpartition("/")[0], str(tmp_path))
        try:
            got = s.wait_for("Prometheus answers with the sandbox's counts",
                             lambda: s.by("profile", "sum by (profile) (slurm_mig_instances)"))
            assert got == {"1g.5gb": 7.0, "3g.20gb": 2.0}
            assert s.by("state", "sum by (state) (slurm_mig_instances)") == {"free": 9.0,
                                                                             "busy": 0.0}
            hooks = s.by("hook", "sum by (hook) (slurm_mig_hook_duration_seconds_count)")
            assert hooks == {"prolog": 1.0, "epilog": 1.0}
            assert s.by("command", 'slurm_mig_runs_total{result="ok"}') == {"apply": 2.0,
                                                                             "sync": 1.0}
        finally:
            s.stop()
