"""Measure, on the Slurm this machine runs, the controller behaviours slurm-mig relies on that
no test pins to one answer (docs/slurm-versions.md prints them per release).

Run as root, with no other sandbox running (the same loopback ports):

    .venv/bin/python bench/slurm_facts.py                    # the host's Slurm (22.05 on Debian 12)
    bash .ci/matrix 24.11 --exec python bench/slurm_facts.py # inside the Debian 13 root

A two-node sandbox without GPUs (slurm_mig.sandbox) is started in a temporary directory and
stopped at the end.  Prints one line per fact, then the facts as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slurm_mig.sandbox import SandboxCluster  # noqa: E402
from slurm_mig.slurm.scontrol import parse_pairs  # noqa: E402


def main() -> int:
    root = tempfile.mkdtemp(prefix="slurm-facts-", dir="/var/tmp")
    c = SandboxCluster(root, ["n1", "n2"])
    facts: Dict[str, object] = {}

    def node(name: str = "n1") -> Tuple[str, str, str]:
        out = c.command(["scontrol", "show", "node", "-o", name], check=False).stdout
        p = parse_pairs(out.strip())
        return p.get("State", "?"), p.get("Reason", "").rsplit(" [", 1)[0], p.get("Extra", "")

    def update(*args: str) -> str:
        r = c.command(["scontrol", "update", *args], check=False)
        return "ok" if r.returncode == 0 else (r.stderr.strip() or r.stdout.strip())

    def until_registered(timeout: float = 60) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = c.status()
            if all(n in st and st[n].registered for n in ("n1", "n2")):
                return round(time.monotonic() - t0, 2)
            time.sleep(0.05)
        return float("inf")

    try:
        c.write_config({"n1": "", "n2": ""}, "")
        c.start()
        facts["slurm"] = ".".join(map(str, c.version))
        # 1. What a resume does to the drain reason.
        update("nodename=n1", "state=drain", "reason=facts-a")
        update("nodename=n1", "state=resume")
        time.sleep(1)
        state, why, _ = node()
        facts["resume keeps the Reason"] = why == "facts-a"
        # 2. scontrol reconfigure: how long it takes to return, whether slurmctld is a new
        #    process, how long until the nodes are registered again, and what a resume does
        #    before then.
        pid_before = c.command(["scontrol", "ping"], check=False) and _ctld_pid(c)
        update("nodename=n1", "state=drain", "reason=facts-b")
        update("nodename=n1", "extra=facts-extra")
        time.sleep(6)  # past slurmctld's save delay
        t0 = time.monotonic()
        c.command(["scontrol", "reconfigure"])
        facts["reconfigure returns after (s)"] = round(time.monotonic() - t0, 2)
        state, _, _ = node()
        facts["node state right after reconfigure"] = state
        facts["resume right after reconfigure"] = update("nodename=n1", "state=resume")
        facts["nodes registered after reconfigure (s)"] = until_registered()
        facts["reconfigure makes a new slurmctld process"] = _ctld_pid(c) != pid_before
        state, why, extra = node()
        facts["after that resume: state, reason"] = f"{state}, {why or '-'}"
        facts["Extra kept across reconfigure"] = extra == "facts-extra"
        # 3. A slurmctld restart (stop, start; state kept) without a reconfigure.
        update("nodename=n1", "state=drain", "reason=facts-c")
        time.sleep(6)
        from slurm_mig.sandbox.daemons import stop_daemons
        stop_daemons([c._ctld])
        t0 = time.monotonic()
        c._ctld = c._new_ctld()
        c._ctld.start(c.env(), c.die_with_parent)
        while c.command(["scontrol", "ping"], check=False).returncode != 0:
            time.sleep(0.05)
        facts["slurmctld answers after a restart (s)"] = round(time.monotonic() - t0, 2)
        facts["node state right after a restart"] = node()[0]
        facts["nodes registered after a restart, no reconfigure (s)"] = until_registered()
        state, why, extra = node()
        facts["drain, reason, Extra kept across a restart"] = (
            "DRAIN" in state and why == "facts-c" and extra == "facts-extra")
        update("nodename=n1", "state=resume")
        # 4. The JSON the commands print.
        meta = json.loads(c.command(["squeue", "--json"]).stdout).get("meta", {})
        plugin = meta.get("plugin", {})
        facts["squeue --json plugin"] = (plugin.get("data_parser") or plugin.get("name")
                                         or str(plugin) or "?")
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
    for k, v in facts.items():
        print(f"{k}: {v}")
    print(json.dumps(facts, sort_keys=True))
    return 0


def _ctld_pid(c: SandboxCluster) -> str:
    try:
        with open(c.paths.ctld_pid) as f:
            return f.read().strip()
    except (OSError, AttributeError):
        pids = c._ctld.pids() if c._ctld else []
        return ",".join(map(str, pids))


if __name__ == "__main__":
    sys.exit(main())
