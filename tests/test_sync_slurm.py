"""sync under a real Slurm (slurm_mig.sandbox): a busy node changes layout after its jobs.

n1 has one A100-40GB in seven 1g.5gb; n2 one A100-40GB with a 3g.20gb.  Two 1g jobs run on
n1; two jobs ask for ``gpu:3g.20gb:1``, which n1 does not have yet.  Slurm refuses at
submission a job for a gres type that no node of the partition has ("Requested node
configuration is not available"), so n2 carries the type; n2 is drained, so the 3g jobs
stay pending until some node offers the type: only n1 will, once sync is done.  (A job
pinned with ``-w n1`` would be refused at submission, n1 lacking the type then.)

sync runs in-process with the real scontrol adapter; its reconfigure() is the sandbox's,
which restarts slurmctld on 22.05 when gres.conf changed (docs/sandbox-notes.md), as a
site's ``[slurm] reconfigure_command`` must do there.

Needs root, munge and Slurm; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Dict, List

import pytest

from slurm_mig.change.sync import STEPS, sync_node
from slurm_mig.core.errors import SlurmError
from slurm_mig.sandbox import missing_requirements
from slurm_mig.sandbox.host import which
from slurm_mig.sim.backend import SimBackend
from slurm_mig.slurm.client import CommandSlurm

from sbx import SandboxSlurm, sandbox, until

MISSING = missing_requirements()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]

GPUS = {"n1": ["A100-40GB"], "n2": ["A100-40GB"]}
LAYOUTS = {"n1": [("0", "1g.5gb:7")], "n2": [("0", "3g.20gb:1")]}


#: dcgm-exporter mapping files per node (issue 11), checked across the layout change below.
DCGM = '[hooks]\ndcgm_job_mapping_dir = "@NODEROOT@/dcgm"\n'


def dcgm_files(sbx, node: str) -> Dict[str, str]:
    d = sbx.config(node).hooks.dcgm_job_mapping_dir
    return {n: open(os.path.join(d, n)).read() for n in sorted(os.listdir(d))} if os.path.isdir(d) else {}


@pytest.fixture(scope="module")
def sbx():
    with sandbox("sbx-sync-", GPUS, LAYOUTS, config_extra=DCGM) as s:
        yield s


def test_sync_waits_for_running_jobs_then_changes_the_layout_and_new_jobs_use_it(sbx):
    cluster = sbx.cluster
    cfg = sbx.config("n1")
    backend = SimBackend(cfg.sim.root)
    cluster.drain("n2", "test: 3g.20gb jobs wait for n1")
    try:
        small = [sbx.submit(["--gres=gpu:1g.5gb:1", "-w", "n1"], sleep=4) for _ in range(2)]

        def running_and_seen():
            if not all(cluster.job(j).state == "RUNNING" for j in small):
                return None
            got = [sbx.seen_done(j) for j in small]
            return got if all(got) else None

        seen = until("1g jobs running and on their instances", running_and_seen)
        held = {j: s["instances"][0]["gi_id"] for j, s in zip(small, seen)}
        # While they run, dcgm-exporter's file of each instance names its job.
        assert dcgm_files(sbx, "n1") == {f"0.{gi}": f"{j}\n" for j, gi in held.items()}
        big = [sbx.submit(["--gres=gpu:3g.20gb:1"], sleep=3) for _ in range(2)]
        assert [cluster.job(j).state for j in big] == ["PENDING", "PENDING"]

        looks: List[Dict[int, tuple]] = []  # n1's instances (gi -> pids) at each poll

        def sleep(seconds: float) -> None:
            looks.append({m.gi_id: m.pids for m in backend.instances(0)})
            time.sleep(seconds)

        t0 = time.monotonic()
        client = sbx.slurm_client()
        result = sync_node(cfg, backend, client, "n1", layout="3g.20gb:2", wait=60,
                           sleep=sleep, poll=0.2).as_dict()
        elapsed = time.monotonic() - t0
        print(f"\nsync: {elapsed:.1f}s; " + ", ".join(f"{s['step']} {s['seconds']:.1f}s"
                                                     for s in result["steps"])
              + f"; sandbox reconfigure: {client.reconfigured}")

        assert [(s["step"], s["status"]) for s in result["steps"]] == [(s, "done") for s in STEPS]
        assert result["drained_by_us"] and result["resumed"]
        # The 1g jobs ran to the end on their instances: untouched at every look during the wait.
        assert looks, "sync did not have to wait: the jobs ended too early for this test"
        for look in looks:
            for gi in held.values():
                assert gi in look
        assert any(all(look[gi] for gi in held.values()) for look in looks)  # busy while looked at
        for j in small:
            assert cluster.wait_job(j, 30).state == "COMPLETED"

        nodes = cluster.status()
        assert nodes["n1"].gres == {"3g.20gb": 2}
        assert nodes["n1"].state == "idle" and "DRAIN" not in nodes["n1"].flags, nodes["n1"]
        assert sorted(m.start for m in backend.instances(0)) == [0, 4]
        recs = sbx.records("n1")
        assert [r.type for r in recs] == ["3g.20gb", "3g.20gb"]
        assert "NodeName=n1 " in open(cluster.paths.nodes_conf).read()
        assert sbx.node_gres()["n1"] == "gpu:3g.20gb:2"

        # The waiting 3g jobs now run on n1, each on one of the new instances; the mapping
        # files follow the new GPU-instance ids (the 1g jobs' files went with their epilogs).
        sbx.write_records()
        seen_big = until("both 3g jobs on their instances",
                         lambda: [sbx.seen_done(j) for j in big] if all(sbx.seen_done(j) for j in big)
                         else None)
        assert dcgm_files(sbx, "n1") == {f"0.{recs[int(s['job_gpus'])].gi_id}": f"{j}\n"
                                         for j, s in zip(big, seen_big)}
        done = {j: cluster.wait_job(j, 30) for j in big}
        assert {j: (i.state, i.nodes) for j, i in done.items()} == {
            j: ("COMPLETED", "n1") for j in big}
        until("the epilogs removed the mapping files", lambda: dcgm_files(sbx, "n1") == {}, 20)
        got = set()
        for j in big:
            [inst] = sbx.seen(j)["instances"]
            rec = recs[int(sbx.seen(j)["job_gpus"])]
            assert (inst["gi_id"], inst["files"]) == (rec.gi_id, list(rec.files))
            got.add(inst["gi_id"])
            if cluster.isolation.devices:  # fenced to the new instance's files, not the other's
                probe = sbx.probe(j)
                assert set(probe["own"].values()) == {"ENXIO"}, probe
                assert set(probe["other"].values()) == {"EPERM"}, probe
        assert got <= {r.gi_id for r in recs}
    finally:
        for j in locals().get("big", []):
            cluster.command(["scancel", str(j)], check=False)
        cluster.resume("n2")


def test_sync_again_finds_the_node_in_sync_and_leaves_slurm_alone(sbx):
    cfg = sbx.config("n1")
    client = sbx.slurm_client()
    result = sync_node(cfg, SimBackend(cfg.sim.root), client, "n1", layout="3g.20gb:2", wait=5).as_dict()
    assert result["already_in_sync"] and not result["drained_by_us"]
    assert client.reconfigured == []
    assert sbx.cluster.status()["n1"].state == "idle"


def test_plain_reconfigure_on_22_05_leaves_the_node_drained_until_slurmctld_restarts(sbx):
    """The documented failure: ``scontrol reconfigure`` alone (the default command) does not
    apply a new gres count before 23.11; sync then stops at register with the node drained
    and a reason saying what to do; after a slurmctld restart a rerun resumes the node."""
    cluster = sbx.cluster
    cfg = replace(sbx.config("n1"), slurm=replace(sbx.config("n1").slurm, register_timeout=5))
    backend = SimBackend(cfg.sim.root)
    plain = CommandSlurm(which("scontrol") or "scontrol", env=cluster.env())  # scontrol reconfigure
    if cluster.version >= (23, 11):
        result = sync_node(cfg, backend, plain, "n1", layout="1g.5gb:7", wait=5, poll=0.2).as_dict()
        assert result["resumed"]  # reconfigure restarts the daemons there
        return
    with pytest.raises(SlurmError) as err:
        sync_node(cfg, backend, plain, "n1", layout="1g.5gb:7", wait=5, poll=0.2)
    print(f"\n{err.value}")
    assert "did not register with gres gpu:1g.5gb:7 within 5s" in str(err.value)
    node = cluster.status()["n1"]
    print(f"n1: {node.base} {sorted(node.flags)} gres={node.gres_text} reason={node.reason!r}")
    assert "DRAIN" in node.flags
    assert node.reason.startswith("slurm-mig sync failed at register: node n1 did not register")
    assert "needs a slurmctld restart" in node.reason and "; fix and rerun slurm-mig sync" in node.reason
    # The fix: restart slurmctld (the sandbox's reconfigure does), then rerun sync.
    sbx.adopt_files()
    cluster.reconfigure()
    result = sync_node(cfg, backend, plain, "n1", layout="1g.5gb:7", wait=5, poll=0.2).as_dict()
    assert result["already_in_sync"] and result["resumed"]
    node = cluster.status()["n1"]
    assert node.gres == {"1g.5gb": 7} and node.state == "idle", node


HOLD_N1 = "slurm-mig hold: reconfigure by slurm-mig sync on n1; resumed when the node has registered"


@pytest.mark.parametrize("meanwhile", ["gpu-job-pending", "admin-drain"])
def test_sync_holds_the_other_gpu_node_across_its_reconfigure(sbx, meanwhile):
    """Issue 10's window: a GPU job pending for n2 while sync on n1 reconfigures Slurm (a
    slurmctld restart on 22.05).  The job is held (``--hold``) until the reconfigure_command
    starts, so the scheduler looks at it only then.  With the hold: n2 is drained with the
    hold's reason during the whole command, the job is still pending when it ends (the
    scheduler saw it and left it: ReqNodeNotAvail), and once n2 registered and sync resumed
    it the job runs there with its gpu (SLURM_JOB_GPUS in the prolog's environment).
    (Without the hold the window cannot be hit on purpose: a job lands in it only if the
    scheduler runs in the ~80 ms between slurmctld's restart and n2's registration.)
    ``admin-drain``: an admin drains n2 during the reconfigure; sync leaves it drained."""
    cluster = sbx.cluster
    cfg = sbx.config("n1")
    backend = SimBackend(cfg.sim.root)
    sbx.write_records()
    if "DRAIN" in cluster.status()["n2"].flags:
        cluster.resume("n2")
    until("n2 idle", lambda: cluster.status()["n2"].state == "idle")
    job = sbx.submit(["--gres=gpu:3g.20gb:1", "-w", "n2", "--hold"], sleep=0.5)
    seen: Dict[str, object] = {}

    class Watching(SandboxSlurm):
        def reconfigure(self) -> None:
            seen["n2 before"] = cluster.status()["n2"]
            if meanwhile == "gpu-job-pending":
                cluster.command(["scontrol", "release", str(job)])
                # the scheduler looked at the released job and left it: n2 is drained
                seen["reasons"] = []

                def refused():
                    info = cluster.job(job)
                    seen["reasons"].append((info.state, info.reason))
                    # 22.05: Nodes_required_for_job_are_DOWN,_DRAINED...; later: ReqNodeNotAvail
                    return info.state == "PENDING" and any(
                        w in info.reason for w in ("DRAINED", "ReqNodeNotAvail"))
                try:
                    until("the job refused a drained node", refused, 10)
                finally:
                    print("job states seen:", sorted(set(seen["reasons"])))
            super().reconfigure()
            if meanwhile == "admin-drain":
                cluster.drain("n2", "test: admin maintenance", wait=False)
            seen["n2 after"] = cluster.status()["n2"]
            seen["job after"] = cluster.job(job)

    layout = "1g.5gb:7" if "3g.20gb" in sbx.node_gres()["n1"] else "3g.20gb:2"
    try:
        t0 = time.monotonic()
        result = sync_node(cfg, backend, Watching(sbx), "n1", layout=layout, wait=60,
                           poll=0.2).as_dict()
        print(f"\nsync with the hold: {time.monotonic() - t0:.1f}s; "
              + ", ".join(f"{s['step']} {s['seconds']:.2f}s" for s in result["steps"])
              + f"; hold: {result['hold']}")
        before, after = seen["n2 before"], seen["n2 after"]
        # (22.05 shows the reason with " [user@time]" after it)
        assert "DRAIN" in before.flags and before.reason.startswith(HOLD_N1), before
        assert result["hold"]["held"] == ["n2"] and result["hold"]["failed"] == {}
        nodes = cluster.status()
        if meanwhile == "admin-drain":
            assert result["hold"]["resumed"] == [] and "n2" in result["hold"]["kept"]
            assert "DRAIN" in nodes["n2"].flags
            assert nodes["n2"].reason.startswith("test: admin maintenance")
            return
        assert "DRAIN" in after.flags and after.reason.startswith(HOLD_N1), after
        assert seen["job after"].state == "PENDING", seen["job after"]
        assert result["hold"]["resumed"] == ["n2"] and "DRAIN" not in nodes["n2"].flags
        done = cluster.wait_job(job, 60)
        assert (done.state, done.nodes) == ("COMPLETED", "n2"), done
        assert sbx.seen(job)["job_gpus"] not in (None, ""), sbx.seen(job)
        [inst] = sbx.seen(job)["instances"]
        assert inst["gi_id"] in {r.gi_id for r in sbx.records("n2")}
    finally:
        cluster.command(["scancel", str(job)], check=False)
        if "DRAIN" in cluster.status()["n2"].flags:
            cluster.resume("n2", wait=False)


def test_mode_off_then_on_with_a_reset_drains_and_resumes_a_real_node(sbx):
    """``slurm-mig mode`` on a real slurmd (simulated A100, so --reset works): off destroys
    n2's idle instance, resets the GPU and Slurm sees one whole GPU; on again leaves the GPU
    in MIG mode with no instance and no gres.  The node is drained and resumed each time."""
    from slurm_mig.change.mode import set_mode

    cluster = sbx.cluster
    cfg = sbx.config("n2")
    backend = SimBackend(cfg.sim.root)
    try:
        off = set_mode(cfg, backend, sbx.slurm_client(), "n2", False, reset=True, wait=30,
                       poll=0.2).as_dict()
        print("\nmode off: " + ", ".join(f"{s['step']} {s['status']} {s['seconds']:.1f}s"
                                        for s in off["steps"]))
        assert off["drained_by_us"] and off["resumed"]
        assert off["gpus"][0]["after"] == {"current": False, "pending": False}
        assert sbx.node_gres()["n2"] == "gpu:1"
        node = cluster.status()["n2"]
        assert node.state == "idle" and "DRAIN" not in node.flags, node
        on = set_mode(cfg, backend, sbx.slurm_client(), "n2", True, reset=True, wait=30,
                      poll=0.2).as_dict()
        assert on["resumed"] and on["gpus"][0]["after"] == {"current": True, "pending": True}
        assert sbx.node_gres()["n2"] == ""
        node = cluster.status()["n2"]
        assert node.state == "idle" and "DRAIN" not in node.flags, node
    finally:  # n2 as the module's other tests found it (when the GPU got back to MIG mode)
        if backend.gpus()[0].mig_current:
            sync_node(cfg, backend, sbx.slurm_client(), "n2", layout="3g.20gb:1", wait=30, poll=0.2)
