"""pyslurm against a real Slurm (slurm_mig.sandbox): ``rebalance`` with ``[slurm] reader =
"pyslurm"`` serves a pending 3g.40gb job in one cycle, and the pyslurm reader and the
squeue/sinfo --json reader see the same queue and nodes.

Runs where pyslurm imports (``.ci/matrix 24.11`` installs pyslurm 24.11.0, built by
.ci/pyslurm-wheel, into its root); skipped on the host, whose suite passes without it.
Every read goes through a child process with the sandbox's ``SLURM_CONF``: pyslurm reads
slurm.conf once, at import.

Three nodes of one A100-80GB each: n1 and n2 all-1g (seven 1g.10gb), n3 the cluster's only
3g.40gb instances and drained by an admin (as in tests/test_rebalance_slurm.py, whose
controller/timer/reconfigure machinery this reuses).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from slurm_mig.sandbox import missing_requirements

from sbx import REPO, rebalance_world, until

MISSING = missing_requirements()
if importlib.util.find_spec("pyslurm") is None:
    MISSING.append("pyslurm (bash .ci/matrix 24.11 builds and installs pyslurm 24.11.0)")
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]

GPUS = {"n1": ["A100-80GB"], "n2": ["A100-80GB"], "n3": ["A100-80GB"]}
LAYOUTS = {"n1": [("0", "1g.10gb:7")], "n2": [("0", "1g.10gb:7")], "n3": [("0", "3g.40gb:2")]}
FLOOR = {"1g.10gb": 7, "3g.40gb": 1}

# Both readers' views, as JSON, from a child process (pyslurm binds slurm.conf at import).
VIEWS = textwrap.dedent("""\
    import dataclasses, json, sys
    import pyslurm
    from slurm_mig.slurm.reader import slurm_reader
    out = {"version": pyslurm.__version__}
    for prefer in sys.argv[1:]:
        r = slurm_reader(prefer)
        out[prefer] = {"reader": r.name,
                       "jobs": [dataclasses.asdict(j) for j in r.pending_jobs()],
                       "nodes": {k: dataclasses.asdict(v) for k, v in r.nodes().items()}}
    # The raw shapes pyslurm hands over, for the record (-s shows them).
    out["raw_jobs"] = [{a: repr(getattr(j, a, None)) for a in (
        "id", "state", "state_reason", "partition", "array_id", "array_task_id",
        "array_tasks_waiting", "array_tasks_parallel", "gres_per_node", "num_nodes", "ntasks",
        "sockets_per_node", "cluster")} for j in pyslurm.Jobs.load().values()]
    out["raw_nodes"] = [{a: repr(getattr(n, a, None)) for a in (
        "name", "state", "partitions", "configured_gres", "allocated_gres", "extra")}
        for n in pyslurm.Nodes.load().values()]
    print(json.dumps(out))
    """)


def views(sbx, *prefer: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", VIEWS, *prefer], capture_output=True, text=True,
                          timeout=120, env=sbx.cluster.env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with rebalance_world(str(tmp_path_factory.mktemp("pyslurm")), "sbx-pyslurm-", GPUS, LAYOUTS,
                         FLOOR, reader="pyslurm") as w:
        yield w


def test_rebalance_with_the_pyslurm_reader_serves_a_pending_3g_job_in_one_cycle(world):
    sbx, cluster = world.sbx, world.sbx.cluster
    big = sbx.submit(["--gres=gpu:3g.40gb:1"], sleep=1)
    until("the 3g job pending with a reason", lambda: (
        lambda j: j if j.state == "PENDING" and j.reason not in ("", "None") else None)(cluster.job(big)))
    seen = views(sbx, "pyslurm", "auto")
    print(f"\npyslurm {seen['version']}: jobs {seen['raw_jobs']}\nnodes {seen['raw_nodes']}")
    assert seen["auto"]["reader"] == "pyslurm"  # auto picks pyslurm where it imports
    [job] = seen["pyslurm"]["jobs"]
    assert job["job_id"] == big and job["requests"] == [{"type": "3g.40gb", "count": 1, "per": "node"}]
    assert seen["pyslurm"]["nodes"]["n3"]["gres"] == {"3g.40gb": 2}

    result = world.rebalance()
    print("\n".join(result["actions"]))
    [node] = [c["node"] for c in result["changed"]]  # one of the all-1g nodes, recut
    assert node in ("n1", "n2")
    assert result["finished"] == [node] and result["reconfigured"] and result["failed"] == []
    sbx.write_records()
    done = cluster.wait_job(big, 60)
    assert (done.state, done.nodes) == ("COMPLETED", node), done
    assert world.count_lines() == ["controller"]


# Every request form slurm-mig reads; --begin keeps each pending whatever the nodes hold.
LATER = "--begin=now+1hour"
FORMS = {
    "typed": [LATER, "--gres=gpu:1g.10gb:2"],
    "untyped": [LATER, "--gres=gpu:1"],
    "other-type": [LATER, "--gres=gpu:3g.40gb:1", "-p", "second"],
    "two-partitions": [LATER, "--gres=gpu:1g.10gb:1", "-p", "debug,second"],
    "gpus": [LATER, "--gpus=1g.10gb:2"],
    "gpus-per-node": [LATER, "--gpus-per-node=1g.10gb:1"],
    "gpus-per-task": [LATER, "--gpus-per-task=1g.10gb:1", "-n", "2"],
    "array": [LATER, "--array=0-9%2", "--gres=gpu:1g.10gb:1"],
    "held": ["-H", "--gres=gpu:3g.40gb:1"],
    "two-nodes": [LATER, "-N", "2", "--gres=gpu:1g.10gb:1"],
    "on-drained-n3": ["--gres=gpu:3g.40gb:1", "-w", "n3"],  # ReqNodeNotAvail, with a description
}


def test_pyslurm_and_json_readers_see_the_same_queue_and_nodes(world):
    sbx, cluster = world.sbx, world.sbx.cluster
    cluster.command(["scontrol", "create", "PartitionName=second", "Nodes=n1,n2,n3", "State=UP"])
    ids = {name: sbx.submit(args + ["-J", name]) for name, args in FORMS.items()}
    try:
        until("every job pending", lambda: all(cluster.job(j).state == "PENDING" for j in ids.values()))
        until("n3's job given its reason", lambda: cluster.job(ids["on-drained-n3"]).reason != "None")
        seen = views(sbx, "pyslurm", "json")
        by_py = {j["name"]: j for j in seen["pyslurm"]["jobs"]}
        by_json = {j["name"]: j for j in seen["json"]["jobs"]}
        print(f"\njson: {json.dumps(by_json, sort_keys=True)}\npyslurm: {json.dumps(by_py, sort_keys=True)}")
        assert set(by_json) == set(FORMS)
        assert by_py == by_json
        assert by_py["gpus"]["requests"] == [{"type": "1g.10gb", "count": 2, "per": "job"}]
        assert by_py["gpus-per-task"]["requests"] == [{"type": "1g.10gb", "count": 1, "per": "task"}]
        assert by_py["array"]["array_throttle"] == 2 and by_py["array"]["array_tasks_pending"] == 10
        assert by_py["on-drained-n3"]["reason"] == "ReqNodeNotAvail"
        assert by_py["held"]["held"] and by_py["other-type"]["partition"] == ["second"]
        # A node's partitions come in another order (pyslurm: slurm.conf's; sinfo: its own);
        # the planner takes them as a set (rebalance/planning/problem.py).
        nodes = {r: {n: dict(v, partitions=sorted(v["partitions"]))
                     for n, v in seen[r]["nodes"].items()} for r in ("pyslurm", "json")}
        print(f"nodes json: {nodes['json']}\nnodes pyslurm: {nodes['pyslurm']}")
        assert nodes["pyslurm"] == nodes["json"]
        assert nodes["pyslurm"]["n1"]["partitions"] == ["debug", "second"]
    finally:
        cluster.command(["scancel", *map(str, ids.values())], check=False)
