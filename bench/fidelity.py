"""Fidelity of `slurm-mig simulate`: one small trace replayed on the real sandbox cluster and
in the simulator, side by side, with the gap per metric (docs/simulate.md, "Fidelity").

    flock /tmp/slurm-mig-sandbox-tests.lock .venv/bin/python bench/fidelity.py \\
        bench/fidelity-trace.csv --policy dynamic --out dynamic.json           # ~8 min
    flock /tmp/slurm-mig-sandbox-tests.lock .venv/bin/python bench/fidelity.py \\
        bench/fidelity-trace.csv --policy static --recut none --out static.json
    .venv/bin/python bench/fidelity.py bench/fidelity-trace.csv --from dynamic.json --jobs 3  # simulator side again
    .venv/bin/python bench/fidelity.py --make-trace bench/fidelity-trace.csv         # the trace, rebuilt

The sandbox side (root, real Slurm 22.05 on this machine, simulated GPUs; docs/sandbox.md):

* ``slurm-mig sandbox up --root ROOT --nodes N --gpus MODEL --layout L`` (a fresh sandbox per
  policy, so each starts from the same cut; ``down --purge`` after);
* each trace job is sent with a real ``sbatch`` at its submit offset: ``bin/sim-job sleep
  DURATION`` (attached to its simulated instance, as every sandbox job), ``--time`` the
  trace's limit in whole minutes (what Slurm keeps);
* ``dynamic``: ``slurm-mig --config <root>/controller/config.toml --json rebalance`` every
  ``--cycle`` seconds from time 0 (the sandbox has node timers, ``sync --pending`` every 1.5 s,
  but no controller loop); ``static``: rebalance never runs;
* the times come from **slurmctld's own job records** (``scontrol show job -o``: SubmitTime,
  StartTime, EndTime; whole seconds), read every few seconds while the replay runs (the
  sandbox keeps a finished job 600 s, ``MinJobAge``; it has no slurmdbd and no jobcomp log).

The simulator side: ``slurm-mig --json simulate`` on the same trace (limits rounded up to
minutes, as Slurm keeps them) with a cluster file describing the sandbox, the sandbox's
controller config, the same cycle, and the reconfiguration cost measured on the sandbox
(the median wall time of the rebalance runs that changed a node: drain to resume, the node
idle; ``--reconfigure-seconds`` to override).

Pure parts (trace scaling, metrics from job records, the gap table) are tested in
tests/test_fidelity.py; the sandbox side once against real Slurm (marker ``slurm``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slurm_mig.core.errors import InputError  # noqa: E402
from slurm_mig.simulate.trace import SimJob, read_trace, to_csv  # noqa: E402
from slurm_mig.slurm.scontrol import parse_pairs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ROOT = "/var/lib/slurm-mig-fidelity"
DEFAULT_NODES = 4
DEFAULT_GPUS = "A100-80GB"  # one per node: at most 7 instances, below the sandbox's 8 CPUs
DEFAULT_LAYOUT = "1g.10gb:4,3g.40gb:1"  # the sandbox's default cut (its floors: one of each type)
#: recut before the replay (slurm-mig sync --layout on the node): the small-job cut
DEFAULT_RECUT = ("n1=1g.10gb:7", "n2=1g.10gb:7", "n3=1g.10gb:7")
#: the metrics compared, in table order: key, label, unit
METRICS = (("jobs", "jobs", ""), ("started", "started", ""),
           ("mean_wait_s", "mean wait", "s"), ("p90_wait_s", "p90 wait", "s"),
           ("mean_jct_s", "mean completion", "s"), ("p90_jct_s", "p90 completion", "s"),
           ("makespan_s", "makespan", "s"), ("reconfigurations", "reconfigurations", ""))
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE")


# ----------------------------------------------------------------------------- pure: trace


def scale_trace(jobs: Sequence[SimJob], factor: float) -> Tuple[SimJob, ...]:
    """The trace on a clock ``factor`` times as fast... or slow: submit offsets, durations
    and time limits multiplied by ``factor`` (0.1: an hour of trace in 6 minutes)."""
    if not factor > 0:
        raise ValueError(f"--scale {factor}: give a factor above 0, e.g. 0.1")
    return tuple(replace(j, submit=j.submit * factor, duration=j.duration * factor,
                         timelimit=j.timelimit * factor) for j in jobs)


def slurm_minutes(seconds: float) -> int:
    """The ``--time`` Slurm keeps for a limit of ``seconds``: whole minutes, at least 1."""
    return max(1, math.ceil(seconds / 60.0 - 1e-9))


def as_slurm_keeps(jobs: Sequence[SimJob]) -> Tuple[SimJob, ...]:
    """The trace as the sandbox runs it: limits rounded up to whole minutes (Slurm's unit),
    so the simulator's backfill plans with the same limits as Slurm's."""
    return tuple(replace(j, timelimit=60.0 * slurm_minutes(j.timelimit)) for j in jobs)


def with_overhead(jobs: Sequence[SimJob], seconds: float) -> Tuple[SimJob, ...]:
    """Every job ``seconds`` longer (its limit too, if the longer run would pass it)."""
    return tuple(replace(j, duration=j.duration + seconds,
                         timelimit=max(j.timelimit, j.duration + seconds)) for j in jobs)


def make_trace(seed: int = 12) -> Tuple[SimJob, ...]:
    """The checked-in trace (bench/fidelity-trace.csv), for the sandbox's 4 x A100-80GB with
    n1-n3 cut ``1g.10gb:7`` and n4 ``1g.10gb:4,3g.40gb:1``: small jobs (1g.10gb x1, 30% x2;
    0-120 s), large (3g.40gb; 120-300 s), small again (300-400 s); durations 20-90 s; limits
    the duration + 30 s, rounded up to whole minutes."""
    rng = random.Random(seed)
    jobs: List[SimJob] = []
    phases = (("small", 0, 120, 6.0, (20, 60)), ("large", 120, 300, 10.0, (40, 90)),
              ("small", 300, 400, 8.0, (20, 50)))
    for kind, start, end, gap, (lo, hi) in phases:
        t = float(start)
        while t < end:
            if kind == "small":
                req = (("1g.10gb", 2 if rng.random() < 0.3 else 1),)
            else:
                req = (("3g.40gb", 1),)
            dur = float(rng.randint(lo, hi))
            jobs.append(SimJob(str(len(jobs) + 1), round(t), dur, req,
                               60.0 * slurm_minutes(dur + 30)))
            t += rng.uniform(0.5, 1.5) * gap
    return tuple(jobs)


def node_layouts(nodes: Sequence[str], layout: str, recut: Mapping[str, str]) -> Dict[str, str]:
    """Each node's starting layout: ``layout`` (what ``sandbox up`` cuts), then ``recut``."""
    unknown = sorted(set(recut) - set(nodes))
    if unknown:
        raise ValueError(f"--recut {unknown[0]}: no such node; the sandbox has {', '.join(nodes)}")
    return {n: recut.get(n, layout) for n in nodes}


def parse_recut(items: Sequence[str]) -> Dict[str, str]:
    """``--recut n1=1g.10gb:7`` (repeatable) -> {node: layout}; ``--recut none``: {}."""
    out: Dict[str, str] = {}
    for item in items:
        if item == "none":
            continue
        node, sep, lay = item.partition("=")
        if not sep or not node or not lay:
            raise ValueError(f"--recut {item!r}: write NODE=LAYOUT, e.g. n1=1g.10gb:7")
        out[node] = lay
    return out


# ----------------------------------------------------------------------------- pure: metrics


@dataclass(frozen=True)
class JobRecord:
    """One replayed job as Slurm recorded it, in seconds from the replay's time 0."""

    job: str  #: the trace's job name
    submit: Optional[float]  #: None: Slurm has no record of it
    start: Optional[float]  #: None: never started
    end: Optional[float]  #: None: never ended


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, the simulator's definition (slurm_mig/simulate/run.py)."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def metrics_of(records: Sequence[JobRecord], reconfigurations: int) -> Dict[str, float]:
    """simulate's per-policy numbers (same keys, same definitions) from job records: wait =
    start - submit, completion = end - submit, makespan = time 0 to the last end; means over
    the jobs that ran to their end."""
    done = [(r.submit, r.start, r.end) for r in records
            if r.submit is not None and r.start is not None and r.end is not None]
    waits = [start - sub for sub, start, _ in done]
    jcts = [end - sub for sub, _, end in done]
    n = len(done)
    return {
        "jobs": len(records),
        "started": n,
        "mean_wait_s": round(sum(waits) / n, 1) if n else 0.0,
        "p90_wait_s": round(pct(waits, 0.9), 1),
        "mean_jct_s": round(sum(jcts) / n, 1) if n else 0.0,
        "p90_jct_s": round(pct(jcts, 0.9), 1),
        "makespan_s": round(max((end for _, _, end in done), default=0.0), 1),
        "reconfigurations": reconfigurations,
    }


def gap_rows(sandbox: Mapping[str, float], sim: Mapping[str, float]) -> List[dict]:
    """Per metric: the sandbox's value, the simulator's, the gap (simulator - sandbox) and
    the gap relative to the sandbox (None where the sandbox's value is 0)."""
    rows = []
    for key, label, unit in METRICS:
        a, b = sandbox[key], sim[key]
        gap = round(b - a, 1)
        rel = round(100.0 * gap / a, 1) if a else None
        rows.append({"metric": key, "label": label, "unit": unit, "sandbox": a,
                     "simulator": b, "gap": gap, "gap_pct": rel})
    return rows


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, int) or float(v).is_integer() else f"{v:.1f}"


def per_job(jobs: Sequence[SimJob], records: Sequence[JobRecord],
            sim_start: Sequence[Optional[float]], threshold: float = 3.0) -> List[dict]:
    """The jobs whose wait differs by ``threshold`` seconds or more between the sandbox
    (``records``, by job name) and the simulator (``sim_start``, in ``jobs``' order)."""
    by_name = {r.job: r for r in records}
    out = []
    for j, s in zip(jobs, sim_start):
        r = by_name.get(j.job)
        if r is None or r.submit is None or r.start is None or s is None:
            continue
        wr, ws = r.start - r.submit, s - j.submit
        if abs(ws - wr) >= threshold:
            out.append({"job": j.job, "gres": ",".join(f"{t}:{n}" for t, n in j.request),
                        "submit": j.submit, "sandbox_wait": round(wr, 1),
                        "simulator_wait": round(ws, 1), "gap": round(ws - wr, 1)})
    return out


def render_table(policy: str, rows: Sequence[dict]) -> str:
    """One policy's rows as a Markdown table (what docs/simulate.md holds)."""
    out = [f"{policy}:", "", "| metric | sandbox | simulator | gap | gap % |", "|---|---|---|---|---|"]
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] else ""
        rel = "n/a" if r["gap_pct"] is None else f"{r['gap_pct']:+.1f}%"
        out.append(f"| {r['label']} | {_num(r['sandbox'])}{unit} | {_num(r['simulator'])}{unit} "
                   f"| {r['gap']:+g}{unit} | {rel} |")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- pure: Slurm's records


def slurm_epoch(text: str) -> Optional[float]:
    """A time ``scontrol show job`` prints (local, whole seconds) -> epoch; None for
    ``Unknown``/``None``/empty."""
    try:
        return time.mktime(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timetuple())
    except (TypeError, ValueError):
        return None


def parse_jobs(text: str) -> Dict[int, dict]:
    """``scontrol show job -o`` -> job id -> {name, state, scheduler, submit, start, end}
    (epochs or None; start and end only once the job has them: a pending job's StartTime is
    Slurm's estimate, a running job's EndTime its time limit).  ``scheduler``: ``Main`` or
    ``Backfill``, the pass that started it."""
    out: Dict[int, dict] = {}
    for line in text.splitlines():
        p = parse_pairs(line)
        if not p.get("JobId", "").isdigit():
            continue
        state = p.get("JobState", "")
        start = slurm_epoch(p.get("StartTime", "")) if state not in ("PENDING",) else None
        end = slurm_epoch(p.get("EndTime", "")) if state in FINAL else None
        out[int(p["JobId"])] = {"name": p.get("JobName", ""), "state": state,
                                "scheduler": p.get("Scheduler", ""),
                                "submit": slurm_epoch(p.get("SubmitTime", "")),
                                "start": start, "end": end}
    return out


def records_from(submitted: Mapping[str, int], seen: Mapping[int, dict], t0: float
                 ) -> List[JobRecord]:
    """The trace's jobs (name -> Slurm job id) as Slurm recorded them, from time 0 = ``t0``."""
    recs = []
    for name, jid in submitted.items():
        s = seen.get(jid, {})
        sub, start, end = (None if s.get(k) is None else s[k] - t0
                           for k in ("submit", "start", "end"))
        recs.append(JobRecord(name, sub, start, end))
    return recs


def cluster_toml(layouts: Mapping[str, str], gpus: Sequence[str]) -> str:
    """The simulator's ``--cluster`` file for the sandbox: node -> its starting layout, every
    node with ``gpus``, in the sandbox's order (the simulator fills nodes in file order).  No
    partitions: the trace's jobs name none, and a node in a partition takes only jobs that
    name one (the sandbox's one partition holds every node)."""
    counts: Dict[str, int] = {}
    for g in gpus:
        counts[g] = counts.get(g, 0) + 1
    gpu_list = json.dumps([f"{g}:{n}" for g, n in counts.items()])
    lines = []
    for name, layout in layouts.items():
        lines += ["[[node]]", f"name = {json.dumps(name)}", f"gpus = {gpu_list}",
                  f"layout = {json.dumps(layout)}", ""]
    return "\n".join(lines)


def reconfigure_cost(cycles: Sequence[dict]) -> Optional[float]:
    """The median wall time of the rebalance runs that changed a node (drain to resume):
    the cost the simulator charges per change (``--reconfigure-seconds``); None if none did."""
    walls = [c["seconds"] for c in cycles if c.get("changed")]
    return round(statistics.median(walls), 1) if walls else None


# ----------------------------------------------------------------------------- the sandbox side


class Sandbox:
    """``slurm-mig sandbox`` in ROOT, driven as an admin would (each command its own process)."""

    def __init__(self, root: str, python: str = sys.executable):
        self.root = root
        self.python = python
        self.env: Dict[str, str] = {}
        self.up_info: dict = {}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "SBATCH"))}
        return subprocess.run([self.python, "-m", "slurm_mig", *args], capture_output=True,
                              text=True, env=env, timeout=timeout)

    def up(self, nodes: int, gpus: str, layout: str) -> dict:
        proc = self.cli("--json", "sandbox", "up", "--root", self.root, "--nodes", str(nodes),
                        "--gpus", gpus, "--layout", layout)
        if proc.returncode != 0:
            raise RuntimeError(f"sandbox up: {proc.stderr.strip()}")
        self.up_info = json.loads(proc.stdout)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "SBATCH"))}
        self.env["SLURM_CONF"] = self.up_info["env"]["SLURM_CONF"]
        return self.up_info

    def recut(self, node: str, layout: str) -> None:
        """What an admin does: ``slurm-mig sync --layout L`` with the node's config."""
        proc = self.cli("--config", self.up_info["node_configs"][node], "sync", "--layout",
                        layout, "--wait", "0")
        if proc.returncode != 0:
            raise RuntimeError(f"sync --layout {layout} on {node}: {proc.stderr.strip()}")

    def down(self, purge: bool = True) -> None:
        self.cli("sandbox", "down", "--root", self.root, *(["--purge"] if purge else []))

    def slurm(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env,
                              timeout=timeout, cwd=os.path.join(self.root, "jobs"))

    def sbatch(self, job: SimJob, tries: int = 5) -> int:
        gres = ",".join(f"gpu:{t}:{n}" for t, n in job.request)
        argv = ["sbatch", "--parsable", f"--gres={gres}", f"--time={slurm_minutes(job.timelimit)}",
                f"--job-name=fid-{job.job}", "--output=/dev/null",
                self.up_info["sim_job"], "sleep", f"{job.duration:g}"]
        for i in range(tries):  # slurmctld restarts on a layout change (22.05): try again
            proc = self.slurm(*argv)
            if proc.returncode == 0:
                return int(proc.stdout.strip().split(";")[0])
            time.sleep(1.0)
        raise RuntimeError(f"sbatch {job.job}: {proc.stderr.strip()}")

    def jobs(self) -> Dict[int, dict]:
        proc = self.slurm("scontrol", "show", "job", "-o")
        return parse_jobs(proc.stdout) if proc.returncode == 0 else {}

    def rebalance(self) -> Tuple[dict, float]:
        t = time.monotonic()
        proc = self.cli("--json", "--config", self.up_info["controller_config"], "rebalance")
        wall = time.monotonic() - t
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            out = {"error": proc.stderr.strip()[-500:], "rc": proc.returncode}
        return out, wall


def replay(sbx: "Sandbox", jobs: Sequence[SimJob], *, cycle: Optional[float], poll: float = 3.0,
           settle: float = 900.0, log: Callable[[str], None] = lambda s: None) -> dict:
    """Submit ``jobs`` at their offsets on the running sandbox ``sbx``, run rebalance every
    ``cycle`` seconds (None: never), read Slurm's records until every job has ended (or
    ``settle`` seconds after the last submission).  Returns the records, cycles and lags."""
    seen: Dict[int, dict] = {}
    submitted: Dict[str, int] = {}
    lags: List[float] = []
    cycles: List[dict] = []
    stop = threading.Event()
    t0 = math.ceil(time.time()) + 1.0  # a whole second: Slurm's times are whole seconds
    time.sleep(max(0.0, t0 - time.time()))

    def controller(every: float) -> None:
        k = 0
        while not stop.is_set():
            at = t0 + k * every
            if stop.wait(max(0.0, at - time.time())):
                return
            began = time.time() - t0
            try:
                out, wall = sbx.rebalance()
            except (OSError, subprocess.SubprocessError) as err:  # recorded, the replay goes on
                out, wall = {"error": f"rebalance: {err}"}, time.time() - t0 - began
            changed = [c.get("node") for c in out.get("changed", [])]
            cycles.append({"at": round(began, 1), "seconds": round(wall, 2), "changed": changed,
                           "resumed": out.get("resumed", []), "error": out.get("error")})
            if changed or out.get("error"):
                log(f"  t={began:6.1f} rebalance {wall:.1f} s changed {changed} {out.get('error') or ''}")
            k = max(k + 1, math.ceil((time.time() - t0) / every))  # a late run skips, as a timer does

    thread = threading.Thread(target=controller, args=(cycle,), daemon=True) if cycle else None
    if thread:
        thread.start()
    last_poll = 0.0
    for job in sorted(jobs, key=lambda j: j.submit):
        while True:
            now = time.time()
            if now >= t0 + job.submit:
                break
            if now - last_poll >= poll:
                seen.update(sbx.jobs())
                last_poll = time.time()
            time.sleep(min(0.2, t0 + job.submit - now))
        lags.append(time.time() - t0 - job.submit)
        submitted[job.job] = sbx.sbatch(job)
    deadline = time.time() + settle
    while time.time() < deadline:
        seen.update(sbx.jobs())
        if all(seen.get(j, {}).get("end") is not None for j in submitted.values()):
            break
        time.sleep(poll)
    stop.set()
    if thread:
        thread.join(timeout=120)
    records = records_from(submitted, seen, t0)
    return {"t0": t0, "records": [r.__dict__ for r in records], "cycles": cycles,
            "submitted": submitted, "states": {str(j): seen.get(j, {}).get("state")
                                               for j in submitted.values()},
            "started_by": {k: sum(1 for j in submitted.values()
                                  if seen.get(j, {}).get("scheduler") == k)
                           for k in ("Main", "Backfill")},
            "submit_lag_max_s": round(max(lags, default=0.0), 2),
            "reconfigurations": sum(len(c["changed"]) for c in cycles)}


# ----------------------------------------------------------------------------- the simulator side


def simulate_side(trace_csv: str, cluster_text: str, config: Optional[str], policy: str,
                  cycle: float, reconfigure_s: float, python: str = sys.executable) -> dict:
    """``slurm-mig --json simulate`` on the trace and cluster: the policy's row."""
    with tempfile.TemporaryDirectory(prefix="fidelity-") as d:
        cl = os.path.join(d, "cluster.toml")
        with open(cl, "w") as f:
            f.write(cluster_text)
        argv = [python, "-m", "slurm_mig", "--json", "simulate", trace_csv, "--cluster", cl,
                "--policy", policy, "--cycle", f"{cycle:g}", "--instance-seconds", "0",
                "--reconfigure-seconds", f"{reconfigure_s:g}"]
        if config:
            argv += ["--config", config]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"simulate: {proc.stderr.strip()}")
        out = json.loads(proc.stdout)
    return next(p for p in out["policies"] if p["policy"] == policy)


def simulated_starts(jobs: Sequence[SimJob], cluster_text: str, config: Optional[str],
                     policy: str, cycle: float, reconfigure_s: float) -> List[Optional[float]]:
    """Each job's start in the simulator (in-process, the same engine and settings as
    :func:`simulate_side`): for the per-job comparison."""
    from slurm_mig.core.catalog import load_catalog
    from slurm_mig.host.config import default_config, load_config
    from slurm_mig.rebalance.cycle import policy_of
    from slurm_mig.simulate.cluster import parse_cluster
    from slurm_mig.simulate.engine import Costs, Settings
    from slurm_mig.simulate.run import Options, run_policy, types_of
    from slurm_mig.simulate.trace import Trace

    cat = load_catalog()
    cfg = load_config(config) if config else default_config()
    cluster = parse_cluster(cluster_text, "sandbox", cat)
    opts = Options((policy,), Costs(0.0, reconfigure_s, cfg.rebalance.apply_wait),
                   Settings(cycle_s=cycle))
    out = run_policy(policy, cluster, Trace(tuple(jobs)), types_of(cluster, jobs, cat),
                     policy_of(cfg), opts)
    return list(out.start)


# ----------------------------------------------------------------------------- main


def with_rebalance_settings(config_text: str, settings: Sequence[str]) -> str:
    """The controller config with ``KEY=VALUE`` lines added to its ``[rebalance]`` table
    (checked by parsing the result: a bad key or value is one line, exit 2)."""
    from slurm_mig.core.errors import ConfigError
    from slurm_mig.host.config import parse_config

    for item in settings:
        if "=" not in item:
            raise ValueError(f"--rebalance {item!r}: give KEY=VALUE, e.g. drain_mixed=\"auto\"")
    lines = "".join(f"{item.strip()}\n" for item in settings)
    if "[rebalance]\n" not in config_text:
        raise ValueError("the sandbox's controller config has no [rebalance] table")
    text = config_text.replace("[rebalance]\n", "[rebalance]\n" + lines, 1)
    try:
        parse_config(text, "controller config")
    except ConfigError as err:
        raise ValueError(f"--rebalance: {err}") from err
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", nargs="?", help="CSV trace (docs/simulate.md)")
    ap.add_argument("--make-trace", metavar="FILE", help="write the bench trace to FILE and stop")
    ap.add_argument("--policy", action="append", choices=("dynamic", "static"))
    ap.add_argument("--cycle", type=float, default=None,
                    help="seconds between rebalance runs (default 30, or the --from file's)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the trace's times")
    ap.add_argument("--root", default=DEFAULT_ROOT)
    ap.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    ap.add_argument("--gpus", default=DEFAULT_GPUS, help="GPU models of each node, comma-separated")
    ap.add_argument("--layout", default=DEFAULT_LAYOUT, help="sandbox up's layout")
    ap.add_argument("--recut", action="append", metavar="NODE=LAYOUT",
                    help=f"recut a node before the replay (default: {' '.join(DEFAULT_RECUT)}; "
                         "none: keep up's layout everywhere)")
    ap.add_argument("--reconfigure-seconds", type=float, default=None,
                    help="the simulator's cost per change (default: measured on the sandbox)")
    ap.add_argument("--job-overhead", type=float, default=0.0, metavar="SECONDS",
                    help="add this to every duration on the simulator's side only (what a "
                         "sandbox job runs beyond its sleep: prolog, sim-run; the replay "
                         "prints it as run_overhead_mean_s)")
    ap.add_argument("--jobs", type=float, default=None, metavar="SECONDS",
                    help="also list the jobs whose wait differs by SECONDS or more")
    ap.add_argument("--rebalance", action="append", metavar="KEY=VALUE", default=[],
                    help="a [rebalance] setting for the controller (TOML value; repeatable), "
                         "e.g. --rebalance 'drain_mixed=\"auto\"'; the simulator side reads "
                         "the same config")
    ap.add_argument("--out", help="write both sides and the gaps as JSON here")
    ap.add_argument("--from", dest="from_json", help="take the sandbox side from an --out file")
    args = ap.parse_args(argv)

    if args.make_trace:
        with open(args.make_trace, "w") as f:
            f.write(to_csv(make_trace()))
        print(f"wrote {args.make_trace}")
        return 0
    if not args.trace:
        ap.error("give a TRACE (or --make-trace FILE)")
    if args.rebalance:  # a bad setting stops here, before a sandbox is started
        with_rebalance_settings("version = 1\n[rebalance]\n", args.rebalance)
    with open(args.trace) as f:
        jobs = as_slurm_keeps(scale_trace(read_trace(f.read(), args.trace).jobs, args.scale))
    policies = args.policy or ["dynamic"]
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    nodes = [f"n{i + 1}" for i in range(args.nodes)]
    layouts = node_layouts(nodes, args.layout, parse_recut(args.recut or DEFAULT_RECUT))

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    cycle = args.cycle
    result: dict = {"trace": args.trace, "scale": args.scale,
                    "nodes": nodes, "gpus": gpus, "layouts": layouts, "policies": {}}
    if args.from_json:
        with open(args.from_json) as f:
            prev = json.load(f)
        result["policies"] = {p: {"sandbox": v["sandbox"], "replay": v.get("replay", {})}
                              for p, v in prev["policies"].items()}
        config_text = prev.get("controller_config_text")
        # the cluster the sandbox side ran on, whatever --recut/--gpus say now
        layouts, gpus = prev.get("layouts", layouts), prev.get("gpus", gpus)
        result.update(layouts=layouts, gpus=gpus, nodes=list(layouts))
        if cycle is None:
            cycle = prev.get("cycle_s")
    else:
        config_text = None
        for policy in policies:
            sbx = Sandbox(args.root)
            sbx.down()
            log(f"{policy}: sandbox up ({args.nodes} x {args.gpus}, {layouts})")
            info = sbx.up(args.nodes, args.gpus, args.layout)
            for node, lay in layouts.items():
                if lay != args.layout:
                    sbx.recut(node, lay)
            with open(info["controller_config"]) as f:
                config_text = f.read()
            if args.rebalance:
                config_text = with_rebalance_settings(config_text, args.rebalance)
                with open(info["controller_config"], "w") as f:
                    f.write(config_text)
            try:
                span = max(j.submit + j.duration for j in jobs)
                log(f"{policy}: replaying {len(jobs)} jobs over ~{span:.0f} s")
                t = time.monotonic()
                rep = replay(sbx, jobs, cycle=(cycle or 30.0) if policy == "dynamic" else None,
                             log=log)
                rep["wall_s"] = round(time.monotonic() - t, 1)
            finally:
                sbx.down()
            recs = [JobRecord(**r) for r in rep["records"]]
            by_name = {j.job: j for j in jobs}
            over = [r.end - r.start - by_name[r.job].duration for r in recs
                    if r.start is not None and r.end is not None]
            rep["run_overhead_mean_s"] = round(sum(over) / len(over), 2) if over else None
            rep["reconfigure_cost_s"] = reconfigure_cost(rep["cycles"])
            result["policies"][policy] = {"sandbox": metrics_of(recs, rep["reconfigurations"]),
                                          "replay": rep}
    cycle = cycle or 30.0
    result["cycle_s"] = cycle
    result["controller_config_text"] = config_text
    cost = args.reconfigure_seconds
    if cost is None:
        cost = next((v["replay"].get("reconfigure_cost_s") for v in result["policies"].values()
                     if v["replay"].get("reconfigure_cost_s")), None) or 4.0
    result["reconfigure_seconds"] = cost
    result["job_overhead_s"] = args.job_overhead
    with tempfile.TemporaryDirectory(prefix="fidelity-") as d:
        trace_csv = os.path.join(d, "trace.csv")
        with open(trace_csv, "w") as f:
            f.write(to_csv(with_overhead(jobs, args.job_overhead)))
        config = None
        if config_text:
            config = os.path.join(d, "config.toml")
            with open(config, "w") as f:
                f.write(config_text)
        for policy, v in result["policies"].items():
            sim = simulate_side(trace_csv, cluster_toml(layouts, gpus), config,
                                policy, cycle, cost)
            v["simulator"] = sim
            v["gaps"] = gap_rows(v["sandbox"], sim)
            print(render_table(policy, v["gaps"]))
            if args.jobs is not None:
                sim_jobs = read_trace(open(trace_csv).read(), trace_csv).jobs
                starts = simulated_starts(sim_jobs, cluster_toml(layouts, gpus), config,
                                          policy, cycle, cost)
                v["per_job"] = per_job(sim_jobs, [JobRecord(**r) for r in v["replay"]["records"]],
                                       starts, args.jobs)
                print(f"{policy}: jobs whose wait differs by {args.jobs:g} s or more "
                      f"(simulator - sandbox):")
                for r in v["per_job"]:
                    print(f"  job {r['job']:>4} {r['gres']:<14} submit {r['submit']:6.0f} s  wait "
                          f"sandbox {r['sandbox_wait']:6.1f} s  simulator {r['simulator_wait']:6.1f} s  "
                          f"gap {r['gap']:+.1f} s")
                print()
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
    return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
    """main() with errors as one line: exit 2 for bad input (the trace, an option), 1 for a
    sandbox or simulator run that failed (its own message says why)."""
    try:
        return main(argv)
    except (InputError, ValueError) as err:
        print(f"fidelity: error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        print(f"fidelity: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
