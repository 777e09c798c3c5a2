"""Records what squeue/sinfo --json print while slurmctld is down (tests/data/slurm/22.05/*-ctld-down.json).

    flock /tmp/slurm-mig-sandbox-tests.lock python tests/data/slurm/record_ctld_down.py OUTDIR

As root: a sandbox cluster (slurm_mig.sandbox, two nodes, no GPUs), slurmctld stopped
(SIGTERM, as `systemctl stop slurmctld`), then killed (SIGKILL) after a restart; each
command's stdout goes to OUTDIR/<case>-<command>.json, and its exit code, seconds and
stderr to OUTDIR/summary.json.  The sandbox is removed afterwards.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from slurm_mig.sandbox import SandboxCluster
from slurm_mig.sandbox.daemons import kill_daemons, stop_daemons
from slurm_mig.sandbox.host import which

COMMANDS = {"squeue": ["squeue", "--json", "--states=PENDING"], "sinfo-N": ["sinfo", "-N", "--json"],
            "sinfo": ["sinfo", "--json"], "ping": ["scontrol", "ping"]}


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    root = tempfile.mkdtemp(prefix="smig-ctld-down-", dir="/var/tmp")  # munged: o+x above it
    cluster = SandboxCluster(root, ["n1", "n2"])
    summary = {}

    def record(case: str) -> None:
        for name, argv in COMMANDS.items():
            t0 = time.monotonic()
            done = subprocess.run([which(argv[0]) or argv[0], *argv[1:]], capture_output=True,
                                  text=True, env=cluster.env(), timeout=300)
            summary[f"{case}-{name}"] = {"argv": argv, "exit": done.returncode,
                                         "seconds": round(time.monotonic() - t0, 2),
                                         "stderr": done.stderr}
            with open(os.path.join(out, f"{case}-{name}.json"), "w") as f:
                f.write(done.stdout)

    try:
        cluster.write_config({"n1": "", "n2": ""}, "")
        cluster.start()
        record("up")
        stop_daemons([cluster._ctld])  # noqa: SLF001 (a test tool: stop only the controller)
        record("stopped")
        cluster._start_ctld_again()  # noqa: SLF001
        kill_daemons([cluster._ctld])  # noqa: SLF001
        record("killed")
        summary["slurm"] = cluster.command(["sinfo", "--version"], check=False).stdout.strip()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
