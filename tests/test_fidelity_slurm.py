"""bench/fidelity.py's sandbox side against a real Slurm: a few jobs sent with sbatch at their
offsets, rebalance every few seconds, and a start and an end from slurmctld for every job it
submitted.  Needs root, munge and Slurm (marker ``slurm``); run under
``flock /tmp/slurm-mig-sandbox-tests.lock``.  The full replay is not a test (docs/simulate.md,
"Fidelity").
"""

from __future__ import annotations

import secrets

import pytest

from slurm_mig.sandbox import missing_requirements
from slurm_mig.simulate.trace import SimJob

from test_fidelity import fid

MISSING = missing_requirements()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]


def test_replay_reads_start_and_end_of_every_job_it_submitted_from_slurm():
    jobs = [SimJob("a", 0, 3, (("3g.40gb", 1),), 60),
            SimJob("b", 1, 1, (("3g.40gb", 1),), 60),  # the node's only 3g.40gb: waits for a
            SimJob("c", 1, 1, (("1g.10gb", 2),), 60),
            SimJob("d", 2, 2, (("1g.10gb", 1),), 60)]
    sbx = fid.Sandbox(f"/var/tmp/smig-fid-{secrets.token_hex(4)}")
    try:
        sbx.up(1, "A100-80GB", fid.DEFAULT_LAYOUT)
        rep = fid.replay(sbx, jobs, cycle=5, poll=1.0, settle=40)
    finally:
        sbx.down(purge=True)
    assert sorted(rep["submitted"]) == ["a", "b", "c", "d"]
    assert set(rep["states"].values()) == {"COMPLETED"}, rep["states"]
    recs = {r["job"]: fid.JobRecord(**r) for r in rep["records"]}
    for j in jobs:
        r = recs[j.job]
        assert None not in (r.submit, r.start, r.end), r
        assert r.submit <= r.start <= r.end
        assert r.end - r.start >= j.duration - 1  # Slurm keeps whole seconds
    assert recs["b"].start >= recs["a"].end
    assert rep["cycles"] and all(c["error"] is None for c in rep["cycles"]), rep["cycles"]
    assert sum(rep["started_by"].values()) == 4
    m = fid.metrics_of(list(recs.values()), rep["reconfigurations"])
    assert (m["jobs"], m["started"]) == (4, 4)
