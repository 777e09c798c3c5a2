"""rebalance under a real Slurm (slurm_mig.sandbox): one cycle turns a pending 3g job into a
running one, with the node side run the way the nodes' timers run it.

Three nodes, one A100-40GB each.  n1 and n2 are all-1g (seven 1g.5gb); two long 1g jobs run
on n2.  n3 holds the cluster's only 3g.20gb instances and is drained by an admin: Slurm
refuses at submission a job for a gres type that no node of the partition has ("Requested
node configuration is not available", measured in tests/test_sync_slurm.py), so some node
must carry the type for the 3g job to be pending at all; the drain keeps it from running
there.  The floor (1g.5gb >= 7, 3g.20gb >= 1) is what keeps every configured profile
submittable whatever rebalance does; the last test submits one job per floor profile.

* the controller: ``slurm-mig rebalance`` as a process (real squeue/sinfo JSON readers, real
  scontrol) with ``[rebalance] apply_wait``; its ``[slurm] reconfigure_command`` is
  RECONFIGURE (tests/sbx.py): it appends a line to a count file, then asks this test process (the
  owner of the sandbox's daemons) to run the sandbox's reconfigure, which restarts slurmctld
  on 22.05 as a site's command must (docs/sync.md);
* the nodes: ``slurm-mig sync --pending --json`` as a process for each node, every ~0.3 s
  (their timers); their reconfigure_command is the same script, which records the call and
  fails: the node side must never reconfigure.

Needs root, munge and Slurm; skipped with the reason otherwise.
"""

from __future__ import annotations

import time

import pytest

from slurm_mig.app.commands import status
from slurm_mig.change.channel import parse_channel
from slurm_mig.sim.backend import SimBackend

from sbx import (ADMIN, NEEDS_SLURM, REBALANCE_GPUS as GPUS, REBALANCE_LAYOUTS as LAYOUTS,
                 rebalance_world, until)

pytestmark = NEEDS_SLURM

FLOOR = {"1g.5gb": 7, "3g.20gb": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with rebalance_world(str(tmp_path_factory.mktemp("rebal")), "sbx-rebal-", GPUS, LAYOUTS,
                         FLOOR) as w:
        yield w


def test_one_rebalance_plus_the_node_timer_runs_a_pending_3g_job_and_leaves_running_jobs_alone(world):
    sbx, cluster = world.sbx, world.sbx.cluster
    n1, n2 = SimBackend(sbx.config("n1").sim.root), SimBackend(sbx.config("n2").sim.root)
    small = [sbx.submit(["--gres=gpu:1g.5gb:1", "-w", "n2"], sleep=15) for _ in range(2)]

    def running_and_seen():
        if not all(cluster.job(j).state == "RUNNING" for j in small):
            return None
        got = [sbx.seen_done(j) for j in small]
        return got if all(got) else None

    held = {j: s["instances"][0]["gi_id"] for j, s in zip(small, until("1g jobs running", running_and_seen))}
    pids_before = {m.gi_id: m.pids for m in n2.instances(0)}
    big = sbx.submit(["--gres=gpu:3g.20gb:1"], sleep=2)
    job = until("the 3g job pending with a reason", lambda: (
        lambda j: j if j.state == "PENDING" and j.reason not in ("", "None") else None)(cluster.job(big)))
    print(f"\n3g job {big}: {job.state} ({job.reason})")
    extra_before = {n: world.extra(n) for n in ("n2", "n3")}
    published_before = {n: len(world.timers.published(n)) for n in ("n2", "n3")}

    t0 = time.monotonic()
    result = world.rebalance()
    seconds = time.monotonic() - t0
    world.seen.update(result=result, seconds=seconds, extra_before=extra_before,
                      published_before=published_before,
                      restarted=list(world.server.done), extra_after={n: world.extra(n) for n in ("n2", "n3")},
                      published_after={n: len(world.timers.published(n)) for n in ("n2", "n3")})
    print(f"\nrebalance: {seconds:.1f}s, waited {result['wait']['seconds']}s for sync --pending; "
          f"reconfigures {world.server.done}\n" + "\n".join(result["actions"]))

    assert [c["node"] for c in result["changed"]] == ["n1"]
    assert result["wait"]["applied"] == ["n1"] and result["wait"]["pending"] == []
    assert result["finished"] == ["n1"] and result["reconfigured"] and result["failed"] == []
    assert world.count_lines() == ["controller"]  # exactly one reconfigure, by the controller
    if cluster.version >= (23, 11):  # the release's own `scontrol reconfigure`, nothing restarted
        assert world.server.done == [()], world.server.done
    assert len(world.timers.applied("n1")) == 1

    # The 1g jobs on n2 were never touched: same instances, same processes, still running.
    assert {j: cluster.job(j).state for j in small} == {j: "RUNNING" for j in small}
    now = {m.gi_id: m.pids for m in n2.instances(0)}
    assert all(now[gi] == pids_before[gi] and now[gi] for gi in held.values())

    # The 3g job runs on n1's new instance.
    sbx.write_records()
    done = cluster.wait_job(big, 60)
    assert (done.state, done.nodes) == ("COMPLETED", "n1"), done
    new = {i["gi_id"] for i in status(sbx.config("n1"), n1)["gpus"][0]["instances"]
           if i["profile"] == "3g.20gb"}
    assert new and sbx.seen(big)["instances"][0]["gi_id"] in new
    assert cluster.status()["n1"].gres.get("3g.20gb", 0) >= 1
    for j in small:
        assert cluster.wait_job(j, 40).state == "COMPLETED"


def test_slurm_22_05_keeps_a_nodes_extra_across_a_slurmctld_restart(world):
    """n2's and n3's Extra were written by their first sync --pending, before the cycle; the
    cycle restarted slurmctld (its reconfigure) and wrote neither.  Their timers would have
    published again had the field been lost: they did not, and the field reads the same."""
    seen = world.seen
    assert seen, "the cycle test did not run"
    if world.sbx.cluster.version < (23, 11):
        assert "slurmctld" in seen["restarted"][0]
    print(f"\nExtra before the restart: {seen['extra_before']}\nafter: {seen['extra_after']}")
    assert seen["extra_after"] == seen["extra_before"]
    assert all(seen["extra_after"][n].startswith("slurm-mig;have:") for n in ("n2", "n3"))
    assert seen["published_after"] == seen["published_before"]


def test_rebalance_again_with_the_same_queue_changes_nothing(world):
    cluster = world.sbx.cluster
    extra = {n: world.extra(n) for n in world.sbx.nodes}
    again = world.rebalance()
    assert again["changed"] == [] and again["finished"] == [] and not again["reconfigured"]
    assert again["resumed"] == [] and again["failed"] == []
    assert {n: world.extra(n) for n in world.sbx.nodes} == extra  # no want written
    assert world.count_lines() == ["controller"]
    nodes = cluster.status()
    assert "DRAIN" not in nodes["n1"].flags and "DRAIN" not in nodes["n2"].flags


def test_the_floor_keeps_every_configured_profile_submittable(world):
    cluster = world.sbx.cluster
    nodes = cluster.status()
    for profile, floor in FLOOR.items():
        assert sum(s.gres.get(profile, 0) for s in nodes.values()) >= floor
        proc = cluster.command(["sbatch", "--test-only", f"--gres=gpu:{profile}:1", "--wrap", "true"],
                               check=False)
        assert proc.returncode == 0 and "to start at" in proc.stderr, (profile, proc.stderr)


def test_no_node_is_left_drained_and_only_the_admin_drain_stays(world):
    nodes = world.sbx.cluster.status()
    assert {n: "DRAIN" in s.flags for n, s in nodes.items()} == {"n1": False, "n2": False, "n3": True}
    assert nodes["n3"].reason.startswith(ADMIN)  # scontrol appends " [root@<time>]"
    assert all(parse_channel(world.extra(n), n).want == () for n in world.sbx.nodes)
    assert all(parse_channel(world.extra(n), n).applied is None for n in world.sbx.nodes)
    failures = [r for r in world.timers.runs if r["rc"] != 0]
    print(f"\nnode timer runs: {len(world.timers.runs)}, failed {len(failures)}: "
          + "; ".join(sorted({r['stderr'][:120] for r in failures})))
