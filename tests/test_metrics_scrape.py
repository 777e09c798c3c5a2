"""A real Prometheus scrapes the node's textfile through a real node_exporter (docs/metrics.md).

Debian's ``prometheus`` and ``prometheus-node-exporter`` run on free localhost ports
(tests/promscrape.py): node_exporter with only its textfile collector, on the directory that
a real ``slurm-mig apply`` (a subprocess, simulated GPUs) writes; Prometheus scrapes it every
second; a PromQL query through Prometheus' HTTP API returns the instances per profile.
Skipped with the reason where either binary is missing, except under CI (``CI=true``).
About 6 s.  The same on the real sandbox cluster: tests/test_metrics_slurm.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from promscrape import Scrape


@pytest.fixture
def scrape(tmp_path):
    made = []

    def start(textdir: str) -> Scrape:
        made.append(Scrape(textdir, str(tmp_path)))
        return made[-1]
    yield start
    for s in made:
        s.stop()


def test_prometheus_scrapes_instance_counts_per_profile_from_the_textfile(node_config, tmp_path,
                                                                          scrape):
    config_path = node_config(gpus=("A100-40GB", "A100-40GB"), extra=(
        '[metrics]\ntextfile = "/textfile/slurm_mig.prom"\n'))
    env = dict(os.environ, SLURM_MIG_CONFIG=config_path)
    for layout, gpu in (("1g.5gb:7", "0"), ("3g.20gb:2", "1")):
        proc = subprocess.run([sys.executable, "-m", "slurm_mig", "apply", layout, "--gpu", gpu],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    textdir = tmp_path / "host" / "textfile"
    assert (textdir / "slurm_mig.prom").exists()

    s = scrape(str(textdir))
    text = s.wait_for("node_exporter serves the textfile", s.exported)
    assert 'slurm_mig_instances{gpu="1",profile="3g.20gb",state="free"} 2' in text
    assert "node_textfile_scrape_error 0" in text  # node_exporter read our file without error
    got = s.wait_for("Prometheus answers with the scraped counts",
                     lambda: s.by("profile", "sum by (profile) (slurm_mig_instances)"))
    assert got == {"1g.5gb": 7.0, "3g.20gb": 2.0}
    assert s.by("command", "slurm_mig_runs_total{result=\"ok\"}") == {"apply": 2.0}
