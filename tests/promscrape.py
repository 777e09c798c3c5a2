"""A real node_exporter and a real Prometheus on free localhost ports, for the metrics tests
(tests/test_metrics_scrape.py, tests/test_metrics_slurm.py; docs/metrics.md).

Debian's ``prometheus`` and ``prometheus-node-exporter`` (.ci/setup installs both): a test
that needs one skips with the reason where it is missing, except under CI (``CI=true``),
where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional

import pytest

#: How long the daemons get to start and the first scrapes to land (a deadline, not a timing).
DEADLINE = 30.0


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing under CI: .ci/setup installs it from Debian")
        pytest.skip(f"{name} not installed (Debian package {name}; .ci/setup installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


class Scrape:
    """node_exporter (textfile collector only) on ``textdir``, and Prometheus scraping it
    every second; :meth:`query` asks Prometheus' HTTP API.  Stop with :meth:`stop`."""

    def __init__(self, textdir: str, workdir: str):
        prometheus = binary("prometheus")
        exporter = binary("prometheus-node-exporter")
        self.procs: List[subprocess.Popen] = []
        self.exporter_port, self.prom_port = free_port(), free_port()
        try:
            self._start([exporter, f"--web.listen-address=127.0.0.1:{self.exporter_port}",
                         "--collector.disable-defaults", "--collector.textfile",
                         f"--collector.textfile.directory={textdir}"],
                        os.path.join(workdir, "node-exporter.log"))
            config = os.path.join(workdir, "prometheus.yml")
            with open(config, "w") as f:
                f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                        "scrape_configs:\n  - job_name: node\n    static_configs:\n"
                        f"      - targets: ['127.0.0.1:{self.exporter_port}']\n")
            self._start([prometheus, f"--config.file={config}",
                         f"--storage.tsdb.path={os.path.join(workdir, 'tsdb')}",
                         f"--web.listen-address=127.0.0.1:{self.prom_port}"],
                        os.path.join(workdir, "prometheus.log"))
        except BaseException:
            self.stop()
            raise

    def _start(self, argv: List[str], log: str) -> None:
        with open(log, "w") as f:
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def wait_for(self, what: str, probe: Callable[[], object]) -> object:
        """``probe()``'s first truthy answer before :data:`DEADLINE`; fails naming ``what``."""
        end = time.monotonic() + DEADLINE
        last: Optional[BaseException] = None
        while time.monotonic() < end:
            for p in self.procs:
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

    def exported(self) -> str:
        """What node_exporter serves."""
        return get(f"http://127.0.0.1:{self.exporter_port}/metrics").decode()

    def query(self, promql: str) -> List[dict]:
        """The result vector of an instant query."""
        doc = json.loads(get(f"http://127.0.0.1:{self.prom_port}/api/v1/query?query="
                             + urllib.parse.quote(promql)))
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def by(self, label: str, promql: str) -> Dict[str, float]:
        """``{label value: value}`` of an instant query's result."""
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}
