"""sacct counts a MIG type only when the generated AccountingStorageTRES line lists it.

A real sandbox cluster (simulated A100-80GB, layout 1g.10gb:7), a private MariaDB and
slurmdbd (tests/acctdb.py).  Two jobs with ``--gres=gpu:1g.10gb:1``: the first with
accounting on but no AccountingStorageTRES, the second after ``slurm-mig accounting-tres``'s
line went into slurm.conf (slurmctld restarted).  Opt in: needs the Debian packages
``mariadb-server`` and ``slurmdbd`` (not in .ci/setup); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import time

import pytest

from slurm_mig.core.accounting import accounting_tres
from slurm_mig.core.catalog import load_catalog
from slurm_mig.sandbox import missing_requirements

import acctdb
from sbx import sandbox, until

MISSING = missing_requirements()
WHY_NOT = acctdb.missing()
pytestmark = [pytest.mark.slurm, pytest.mark.slurmdbd,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING)),
              pytest.mark.skipif(bool(WHY_NOT), reason=f"accounting stack: {WHY_NOT}")]


def _finished_alloc(etc: str, job: int) -> str:
    """The job's AllocTRES once slurmdbd has its end record (the agent sends it late)."""
    found = {}

    def ended() -> bool:
        lines = acctdb.sacct_alloc_tres(etc, job)
        top = [l for l in lines if l.split("|")[0] == str(job)]
        if top and top[0].split("|")[1]:
            found["alloc"] = top[0].split("|")[1]
            return True
        return False

    until(f"sacct record of job {job}", ended, timeout=60)
    return found["alloc"]


def test_sacct_reports_the_mig_type_only_with_the_generated_tres_line():
    timings = {}
    line = accounting_tres([load_catalog().model("A100-80GB")]).value
    with sandbox("slurm-mig-acct-", {"n1": ["A100-80GB"]},
                 {"n1": [("0", "1g.10gb:7")]}) as s:
        c = s.cluster
        etc = c.paths.etc

        def configure(keys):
            c.write_config(s.node_gres(), open(c.paths.gres_conf).read(),
                           {**c.extra_conf, **keys})

        with acctdb.accounting(etc, c.paths.munge_socket, timings, configure):
            t0 = time.monotonic()
            acctdb.sacctmgr(etc, "add", "cluster", "sandbox")
            c.restart_slurmctld()
            for node in c.nodes:
                c.restart_slurmd(node)
            c.wait_nodes(lambda nodes: all(n.base == "idle" and not n.flags for n in nodes.values()),
                         30)
            timings["cluster_on_slurmdbd"] = time.monotonic() - t0

            t0 = time.monotonic()
            before = s.submit(["--gres=gpu:1g.10gb:1", "-n1"])
            assert c.wait_job(before, 60).state == "COMPLETED"
            alloc_before = _finished_alloc(etc, before)
            timings["job_without_line"] = time.monotonic() - t0

            configure({**c.extra_conf, "AccountingStorageTRES": line})
            c.restart_slurmctld()
            t0 = time.monotonic()
            after = s.submit(["--gres=gpu:1g.10gb:1", "-n1"])
            assert c.wait_job(after, 60).state == "COMPLETED"
            alloc_after = _finished_alloc(etc, after)
            timings["job_with_line"] = time.monotonic() - t0
            print("\n" + acctdb.sacct(etc, "-j", f"{before},{after}",
                                      "-o", "JobID,AllocTRES%60,TRESUsageInTot%40"))
        print(f"\nAllocTRES without the line: {alloc_before}\nwith it: {alloc_after}\n"
              f"timings: { {k: round(v, 2) for k, v in timings.items()} }")
    assert "gres/gpu:1g.10gb=1" not in alloc_before.split(",")
    assert "gres/gpu:1g.10gb=1" in alloc_after.split(",")
    assert "gres/gpu=1" in alloc_after.split(",")
