"""Text for the ``slurm-mig sandbox`` results (:mod:`.mig`).  Rendering only.

``up``'s text is valid shell: comments and ``export`` lines, so ``eval "$(slurm-mig sandbox
up)"`` points the shell at the cluster.
"""

from __future__ import annotations

import os
import shlex
from typing import Dict, List

from .mig import DEFAULT_ROOT


def table(rows: List[List[str]], headers: List[str]) -> List[str]:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    return ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
            for cells in [headers] + rows]


def gres_text(gres: Dict[str, int]) -> str:
    return ",".join(f"gpu:{t}:{n}" for t, n in sorted(gres.items())) or "-"


def root_option(root: str) -> str:
    return "" if root == DEFAULT_ROOT else f" --root {shlex.quote(root)}"


def export_lines(env: Dict[str, str]) -> List[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def next_steps(result: dict) -> List[str]:
    opt = root_option(result["root"])
    job = shlex.quote(result["sim_job"])
    rows = [
        ["sinfo -N -o '%N %t %G'", "the nodes and their MIG instances as typed gres"],
        [f"sbatch --gres=gpu:3g.40gb:1 {job} sleep 30", "a job that holds a 3g.40gb instance"],
        ["squeue", ""],
        [f"slurm-mig sandbox status{opt}", "layouts, and which job holds which instance"],
        ["slurm-mig status", "node n1's GPUs (SLURM_MIG_CONFIG above)"],
        [f"slurm-mig sandbox down{opt} [--purge]", "stop it (--purge: remove the files too)"],
    ]
    width = max(len(r[0]) for r in rows)
    return [f"#   {c.ljust(width)}  {h}".rstrip() for c, h in rows] + [
        "# Re-cut idle nodes for what the queue waits for (the controller's timer on a real "
        "cluster; docs/rebalance.md):",
        f"#   slurm-mig --config {shlex.quote(result['controller_config'])} rebalance --explain"]


def up_text(result: dict) -> str:
    how = "already up" if result["already_up"] else f"up in {result['seconds']:.1f}s"
    iso = result["isolation"]
    lines = [f"# slurm-mig sandbox {how} under {result['root']}: {len(result['nodes'])} node(s), "
             f"each with {', '.join(result['gpus'])} cut as {result['layout']}"]
    lines += [f"#   {n}: {gres_text(g)}" for n, g in result["gres"].items()]
    lines.append(f"# jobs fenced to their instance's device files: "
                 f"{'yes' if iso['devices'] else 'no'} ({iso['reason']})")
    timers = result["timers"]
    lines.append(f"# node timers: `slurm-mig sync --pending` every {timers['every']:g}s on each "
                 f"node (log/timer-<node>.log), as etc/slurm-mig-node.timer would; "
                 f"`rebalance` (below) relies on them")
    lines += export_lines(result["env"])
    lines.append("# Next (a job's script runs on a node; bin/sim-job picks that node's config):")
    lines += next_steps(result)
    return "\n".join(lines)


def status_text(result: dict) -> str:
    state = "running" if result["running"] else "NOT running (or only partly)"
    lines = [f"sandbox under {result['root']}: {state}; "
             f"export SLURM_CONF={shlex.quote(result['env']['SLURM_CONF'])}"]
    down = [k for k, v in result["daemons"].items() if not v]
    if down and result["running"] is False:
        lines.append(f"  not running: {', '.join(down)}")
    timers = [f"{k[len('timer-'):]} pid {','.join(map(str, v))}"
              for k, v in result["daemons"].items() if k.startswith("timer-") and v]
    if timers:
        lines.append(f"  node timers (slurm-mig sync --pending, log/timer-<node>.log): "
                     f"{', '.join(timers)}")
    lines.append(f"  rebalance: slurm-mig --config {shlex.quote(result['controller_config'])} "
                 f"rebalance --explain")
    for node in result["nodes"]:
        flags = "+".join(node["flags"])
        lines.append(f"\n{node['name']}: {node['state']}{' (' + flags + ')' if flags else ''}  "
                     f"gres {gres_text(node['gres'])}"
                     + (f"  used {node['gres_used']}" if node["gres_used"] else "")
                     + (f"  reason: {node['reason']}" if node["reason"] else ""))
        if node["extra"]:
            lines.append(f"  Extra (rebalance's channel): {node['extra']}")
        for gpu in node["gpus"]:
            lines.append(f"  GPU {gpu['index']} {gpu['model']}: {gpu['layout'] or '(MIG off)'}")
            rows = [[f"{i['profile']}@{i['start']}", i["gi_id"],
                     "-" if i["ci_id"] is None else i["ci_id"], ",".join(i["jobs"]) or "-",
                     ",".join(map(str, i["pids"])) or "-", i["uuid"] or "-"]
                    for i in gpu["instances"]]
            lines += ["    " + l for l in table(rows, ["INSTANCE", "GI", "CI", "JOB", "PIDS",
                                                         "UUID"])]
    if result["queue"]:
        lines.append("")
        rows = [[j["job_id"], j["state"], j["node"] or "-", j["gres"] or "-"]
                for j in result["queue"]]
        lines += table(rows, ["JOB", "STATE", "NODE", "GRES"])
    return "\n".join(lines)


def down_text(result: dict) -> str:
    if not result["was_running"] and not result["stopped"]:
        head = f"sandbox under {result['root']}: nothing was running"
    else:
        names = ", ".join(sorted(result["stopped"]))
        head = f"sandbox under {result['root']}: stopped {names}"
        if result["cancelled"]:
            head += f"; cancelled job(s) {', '.join(map(str, result['cancelled']))}"
    if result["purged"]:
        return head + f"; removed {result['root']}"
    kept = os.path.isdir(result["root"])
    return head + ("; files kept (`--purge` removes them)" if kept else "")


def reconfigure_text(result: dict) -> str:
    restarted = ", ".join(result["restarted"]) or "nothing"
    return (f"sandbox under {result['root']}: reconfigured in {result['seconds']:.1f}s "
            f"(restarted: {restarted})")
