"""A real Prometheus scrapes the node's textfile through a real node_exporter (docs/metrics.md).

Debian's ``prometheus`` and ``prometheus-node-exporter`` (.ci/setup installs both) run on
free localhost ports: node_exporter with only its textfile collector, on a temp directory
that a real ``slurm-mig apply`` (a subprocess, simulated GPUs) writes; Prometheus scrapes it
every second; a PromQL query through Prometheus' HTTP API returns the instances per profile.
Skipped with the reason where either binary is missing, except under CI (``CI=true``).
About 5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

#: How long the daemons get to start and the first scrapes to land (a deadline, not a timing).
DEADLINE = 30.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing under CI: .ci/setup installs it from Debian")
        pytest.skip(f"{name} not installed (Debian package {name}; .ci/setup installs it)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def _wait_for(what: str, probe, procs) -> object:
    """``probe()``'s first truthy answer before :data:`DEADLINE`; fails naming ``what``."""
    end = time.monotonic() + DEADLINE
    last = None
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"{what}: {p.args[0]} exited {p.returncode}")
        try:
            got = probe()
            if got:
                return got
        except (OSError, ValueError) as err:
            last = err
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {DEADLINE:g} s (last error: {last})")


@pytest.fixture
def daemons():
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_prometheus_scrapes_instance_counts_per_profile_from_the_textfile(node_config, tmp_path,
                                                                          daemons):
    prometheus = _binary("prometheus")
    exporter = _binary("prometheus-node-exporter")
    config_path = node_config(gpus=("A100-40GB", "A100-40GB"), extra=(
        f'[metrics]\ntextfile = "/textfile/slurm_mig.prom"\n'))
    env = dict(os.environ, SLURM_MIG_CONFIG=config_path)
    for layout, gpu in (("1g.5gb:7", "0"), ("3g.20gb:2", "1")):
        proc = subprocess.run([sys.executable, "-m", "slurm_mig", "apply", layout, "--gpu", gpu],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "host" / "textfile" / "slurm_mig.prom").exists()
    textdir = tmp_path / "host" / "textfile"

    exporter_port, prom_port = _free_port(), _free_port()
    daemons.append(subprocess.Popen(
        [exporter, f"--web.listen-address=127.0.0.1:{exporter_port}", "--collector.disable-defaults",
         "--collector.textfile", f"--collector.textfile.directory={textdir}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "exporter.log", "w")))
    scrape = tmp_path / "prometheus.yml"
    scrape.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: node\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n")
    daemons.append(subprocess.Popen(
        [prometheus, f"--config.file={scrape}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w")))

    text = _wait_for("node_exporter serves the textfile", lambda: _get(
        f"http://127.0.0.1:{exporter_port}/metrics").decode(), daemons)
    assert 'slurm_mig_instances{gpu="1",profile="3g.20gb",state="free"} 2' in text
    assert "node_textfile_scrape_error 0" in text  # node_exporter read our file without error

    query = urllib.parse.quote("sum by (profile) (slurm_mig_instances)")

    def counts():
        doc = json.loads(_get(f"http://127.0.0.1:{prom_port}/api/v1/query?query={query}"))
        assert doc["status"] == "success", doc
        return {r["metric"]["profile"]: float(r["value"][1]) for r in doc["data"]["result"]}

    assert _wait_for("Prometheus answers with the scraped counts", counts, daemons) == {
        "1g.5gb": 7.0, "3g.20gb": 2.0}
