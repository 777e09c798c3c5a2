"""Plan time beside queue-parse time, in the same run (issue 4).

Target: planning 1,000 nodes x 8 GPUs against 20,000 pending jobs takes less time than
parsing that queue's ``squeue --json``.  Prints a table with the priority weight of the
jobs each plan lets start (before -> after), so a faster planner can be checked to start
the same weight on the same input; asserts nothing.  Run from the
repository root:

    .venv/bin/python bench/plan.py [--nodes 1000] [--jobs 20000] [--runs 5] [--seed 1] [--clock cpu]

The queue is a synthetic ``squeue --json`` document in the Slurm 22.05 shape (openapi
v0.0.38): each job is a copy of a pending record recorded on the sandbox's 22.05.8
(tests/data/slurm/22.05/squeue.json), with its own id, priority, partition,
``tres_per_node`` (22.05 writes ``gres:gpu:3g.40gb:1``; 23.02+ writes ``gres/gpu:...``) and
array spec.  The parse side is ``json.loads`` plus a minimal conversion to DemandItems
written here; the real reader (slurm_mig/slurm/, another change) handles every request
form and will be at least this slow, so the comparison is fair to parsing.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import statistics
import sys
import time
from typing import Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from slurm_mig.core.catalog import load_catalog  # noqa: E402
from slurm_mig.core.layout import parse_layout  # noqa: E402
from slurm_mig.rebalance.planning import DemandItem, PlanGpu, PlanNode, Policy, plan  # noqa: E402

#: One pending job as squeue --json printed it on Slurm 22.05.8 (job 8601085, an array).
TEMPLATE = json.loads("""{"account": "", "accrue_time": 1795894278, "admin_comment": "", "array_job_id": 8601085,
"array_task_id": null, "array_max_tasks": 2, "array_task_string": "0-9%2", "association_id": 0,
"batch_features": "", "batch_flag": true, "batch_host": "", "flags": [], "burst_buffer": "",
"burst_buffer_state": "", "cluster": "sandbox", "cluster_features": "", "command": "/SANDBOX/bin/sim-job",
"comment": "", "container": "", "contiguous": false, "core_spec": null, "thread_spec": null,
"cores_per_socket": null, "billable_tres": null, "cpus_per_task": null, "cpu_frequency_minimum": null,
"cpu_frequency_maximum": null, "cpu_frequency_governor": null, "cpus_per_tres": "", "deadline": 0,
"delay_boot": 0, "dependency": "", "derived_exit_code": 0, "eligible_time": 1795894278,
"end_time": 6122397509, "excluded_nodes": "", "exit_code": 0, "features": "", "federation_origin": "",
"federation_siblings_active": "", "federation_siblings_viable": "", "gres_detail": [], "group_id": 0,
"group_name": "root", "job_id": 8601085, "job_state": "PENDING", "last_sched_evaluation": 1795894281,
"licenses": "", "max_cpus": 0, "max_nodes": 0, "mcs_label": "", "memory_per_tres": "", "name": "arr-pct",
"nodes": "", "nice": null, "tasks_per_core": null, "tasks_per_node": 0, "tasks_per_socket": null,
"tasks_per_board": 0, "cpus": 1, "node_count": 1, "tasks": 1, "het_job_id": 0, "het_job_id_set": "",
"het_job_offset": 0, "partition": "debug", "prefer": "", "memory_per_node": null, "memory_per_cpu": null,
"minimum_cpus_per_node": 1, "minimum_tmp_disk_per_node": 0, "preempt_time": 0, "pre_sus_time": 0,
"priority": 4294901749, "profile": null, "qos": "", "reboot": false, "required_nodes": "", "requeue": true,
"resize_time": 0, "restart_cnt": 0, "resv_name": "", "shared": null,
"show_flags": ["SHOW_ALL", "SHOW_DETAIL", "SHOW_LOCAL"], "sockets_per_board": 0, "sockets_per_node": null,
"start_time": 1827430273, "state_description": "", "state_reason": "Priority", "standard_error": "",
"standard_input": "/dev/null", "standard_output": "", "submit_time": 1795894278, "suspend_time": 0,
"system_comment": "", "time_limit": null, "time_minimum": 0, "threads_per_core": null, "tres_bind": "",
"tres_freq": "", "tres_per_job": "", "tres_per_node": "gres:gpu:1g.10gb:1", "tres_per_socket": "",
"tres_per_task": "", "tres_req_str": "cpu=1,mem=1000M,node=1,billing=1", "tres_alloc_str": "", "user_id": 0,
"user_name": "root", "wckey": "", "current_working_directory": "/SANDBOX/jobs"}""")
META = {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
        "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"}}

LAYOUTS = ["1g.10gb:7", "3g.40gb:2", "2g.20gb:3,1g.10gb:1", "4g.40gb:1,3g.40gb:1", "7g.80gb:1",
           "1g.20gb:4", "3g.40gb:1,1g.10gb:4"]
#: (type, share of jobs); 3g.71gb is an H200 profile: no GPU here offers it (unservable)
PROFILES = [("1g.10gb", 40), ("3g.40gb", 22), ("2g.20gb", 14), ("7g.80gb", 10), ("4g.40gb", 5),
            ("1g.20gb", 6), ("1g.10gb+me", 2), ("3g.71gb", 1)]
PARTITIONS = [("gpu", 60), ("inference", 20), ("train", 14), ("inference,train", 5), ("debug", 1)]
STATES = [("idle", 45), ("mixed", 35), ("allocated", 10), ("drained", 7), ("down", 3)]


def pick(rng, table):
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


def cluster(rng, n_nodes: int, gpus: int) -> List[PlanNode]:
    cat = load_catalog()
    models = {k: cat.model(k) for k in ("A100-80GB", "H100-80GB")}
    parsed = {(k, t): parse_layout(t, m) for k, m in models.items() for t in LAYOUTS}
    nodes = []
    for i in range(n_nodes):
        key = "A100-80GB" if i % 5 < 3 else "H100-80GB"
        parts = ["gpu", "inference" if i < 300 else "train"] + (["debug"] if i < 50 else [])
        state = pick(rng, STATES)
        uniform = rng.random() < 0.7
        base = rng.choice(LAYOUTS)
        out = []
        for g in range(gpus):
            layout = parsed[(key, base if uniform else rng.choice(LAYOUTS))]
            busy = frozenset()
            if state == "allocated":
                busy = layout.keys()
            elif state == "mixed":
                busy = frozenset(k for k in layout.keys() if rng.random() < 0.5)
            out.append(PlanGpu(g, key, layout, busy))
        nodes.append(PlanNode(f"gpu{i:04d}", tuple(parts), state, tuple(out)))
    return nodes


def queue(rng, n_jobs: int) -> str:
    jobs = []
    for j in range(n_jobs):
        job = copy.copy(TEMPLATE)
        job["job_id"] = 1000000 + j
        job["priority"] = rng.randint(1000, 50000)
        job["partition"] = pick(rng, PARTITIONS)
        per_node = 2 if rng.random() < 0.05 else 1
        job["tres_per_node"] = f"gres:gpu:{pick(rng, PROFILES)}:{per_node}"
        job["tres_req_str"] = f"cpu=1,mem=1000M,node=1,billing=1,gres/gpu={per_node}"
        if rng.random() < 0.05:
            job["array_job_id"] = job["job_id"]
            job["array_task_string"] = rng.choice(["0-9%2", "1-100", "0,3,5-7", "1-20:2"])
        else:
            job["array_job_id"] = 0
            job["array_task_string"] = ""
            job["array_max_tasks"] = 0
        jobs.append(job)
    return json.dumps({"meta": META, "errors": [], "jobs": jobs})


# --------------------------------------------------------------------------- minimal reader


def _tasks(spec: str) -> int:
    """``0-9%2`` -> 10, ``0,3,5-7`` -> 5, ``1-20:2`` -> 10, empty -> 1."""
    spec = spec.split("%")[0]
    if not spec:
        return 1
    n = 0
    for part in spec.split(","):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        n += (int(hi or lo) - int(lo)) // int(step or 1) + 1
    return n


def demand_from_squeue(text: str) -> List[DemandItem]:
    """json.loads plus pending GPU requests grouped as the rebalance cycle groups them
    (slurm_mig.rebalance.cycle.plan_demand): one item per (request per node, partitions,
    priority rounded to 2 significant digits, nodes), counting jobs (array tasks).

    Minimal: tres_per_node only, ``gres:gpu:TYPE:N`` / ``gres/gpu:TYPE=N`` forms.
    """
    doc = json.loads(text)
    acc: Dict[Tuple[Tuple[Tuple[str, int], ...], Tuple[str, ...], float, int], List[int]] = {}
    for job in doc["jobs"]:
        if job["job_state"] != "PENDING" or not job["tres_per_node"]:
            continue
        tasks = _tasks(job["array_task_string"])
        nodes = job["node_count"] or 1
        parts = tuple(sorted(job["partition"].split(",")))
        shape: Dict[str, int] = {}
        for item in job["tres_per_node"].split(","):
            fields = item.replace("gres/", "gres:").replace("=", ":").split(":")
            if len(fields) != 4 or fields[1] != "gpu":
                continue
            shape[fields[2]] = shape.get(fields[2], 0) + int(fields[3])
        if not shape:
            continue
        key = (tuple(sorted(shape.items())), parts, float(f"{max(job['priority'], 1):.2g}"), nodes)
        spec = job["array_task_string"]
        throttle = int(spec.split("%")[1]) if "%" in spec else tasks
        a = acc.setdefault(key, [0, 0])
        a[0] += min(tasks, throttle)
        a[1] += tasks
    return [DemandItem(sh[0][0], a[0], w, parts, a[1], () if sh == ((sh[0][0], 1),) else sh, nodes)
            for (sh, parts, w, nodes), a in sorted(acc.items())]


# --------------------------------------------------------------------------- timing


#: The clock timed() reads: wall time by default; ``--clock cpu`` reads this process's CPU
#: time, which other work on a shared machine disturbs far less.
CLOCK = time.perf_counter


def timed(fn, runs: int):
    out, times = None, []
    for _ in range(runs):
        gc.collect()
        t0 = CLOCK()
        out = fn()
        times.append(CLOCK() - t0)
    return out, times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (steadier on a busy machine)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    rng = random.Random(args.seed)
    nodes = cluster(rng, args.nodes, args.gpus)
    text = queue(rng, args.jobs)

    t0 = CLOCK()
    demand = demand_from_squeue(text)
    cold_parse = CLOCK() - t0
    policies = [("cap 10 nodes (default-like)", Policy(max_nodes_per_cycle=10, floor={"1g.10gb": 8, "7g.80gb": 2})),
                ("no cap", Policy(max_nodes_per_cycle=None, floor={"1g.10gb": 8, "7g.80gb": 2})),
                ("no cap, drain_mixed", Policy(max_nodes_per_cycle=None, drain_mixed=True,
                                               floor={"1g.10gb": 8, "7g.80gb": 2}))]
    t0 = CLOCK()
    plan(nodes, demand, policies[0][1], cycle=1)  # first call in the process: per-model precompute
    cold_plan = CLOCK() - t0

    _, parse_t = timed(lambda: demand_from_squeue(text), args.runs)
    parse_ms = statistics.median(parse_t) * 1000
    print(f"clock: {args.clock}; cluster: {args.nodes} nodes x {args.gpus} GPUs; queue: {args.jobs} pending jobs, "
          f"{len(text) / 1e6:.1f} MB of squeue --json -> {len(demand)} demand items")
    print(f"first call in the process: parse {cold_parse * 1000:.0f} ms, plan {cold_plan * 1000:.0f} ms "
          f"(includes the per-model layout precompute)")
    print()
    print("| what | median ms | min ms | plan / parse | nodes changed | jobs that can start before -> after "
          "| weight started before -> after |")
    print("|---|---:|---:|---:|---:|---|---|")
    print(f"| parse: json.loads + DemandItems | {parse_ms:.0f} | {min(parse_t) * 1000:.0f} | 1.00 | | | |")
    for label, policy in policies:
        result, plan_t = timed(lambda: plan(nodes, demand, policy, cycle=1), args.runs)
        ms = statistics.median(plan_t) * 1000
        tot = result.totals
        print(f"| plan ({label}) | {ms:.0f} | {min(plan_t) * 1000:.0f} | {ms / parse_ms:.2f} | "
              f"{tot.nodes_changed} | {tot.jobs_before} -> {tot.jobs_after} of {tot.demand_jobs} jobs "
              f"(weight {tot.weight_before / tot.demand_weight:.1%} -> {tot.weight_after / tot.demand_weight:.1%}) | "
              f"{tot.weight_before:.0f} -> {tot.weight_after:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
