"""The node's metrics: what they are, how a hook or a command changes them, and the
families the textfile holds.  Pure (:mod:`slurm_mig.node.metrics` reads and writes the files).

The state (a JSON object, ``[metrics] state_file``) holds ``series`` (the counters and
histograms, kept across processes: :mod:`slurm_mig.core.metrics`) and ``inventory``, the
node's GPUs and MIG instances as apply, sync, ``mode`` or ``slurm-mig metrics`` last read
them from the driver.  Which instance is busy is not kept: every render counts the job
records of the moment (``held``), so a prolog or an epilog moves an instance between free
and busy without asking the driver.

Cardinality is bounded: labels are GPU indexes, GPU models, MIG profiles, GPU-instance
ids, hook names, the command, a result and an error class; never a job id.
"""

from __future__ import annotations

from . import metrics as m

TYPE_CHECKING = False  # no `typing` at run time (the hooks' fast path imports this module)
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Tuple

STATE_VERSION = 1
COMMANDS = ("apply", "sync", "sync_pending", "mode")

HOOK_DURATION = "slurm_mig_hook_duration_seconds"
HOOK_FAILURES = "slurm_mig_hook_failures_total"
RUNS = "slurm_mig_runs_total"
LAST_SUCCESS = "slurm_mig_last_run_success"
LAST_DURATION = "slurm_mig_last_run_duration_seconds"
LAST_TIMESTAMP = "slurm_mig_last_run_timestamp_seconds"
LAYOUT_CHANGES = "slurm_mig_layout_changes_total"
CREATED = "slurm_mig_instances_created_total"
DESTROYED = "slurm_mig_instances_destroyed_total"
INSTANCES = "slurm_mig_instances"
INSTANCE_JOBS = "slurm_mig_instance_jobs"
MIG_MODE = "slurm_mig_gpu_mig_mode"
MIG_MODE_PENDING = "slurm_mig_gpu_mig_mode_pending"
INVENTORY_TIME = "slurm_mig_inventory_timestamp_seconds"

#: The kept series: name -> (kind, help).  docs/metrics.md lists the same (a test checks).
KEPT = {
    HOOK_DURATION: (m.HISTOGRAM, "Seconds a slurm-mig prolog or epilog took inside its process, "
                                 "by hook and path (fast or full)."),
    HOOK_FAILURES: (m.COUNTER, "Prologs and epilogs that failed (exit non-zero: Slurm drains "
                               "the node), by hook and reason (the error class)."),
    RUNS: (m.COUNTER, "Runs of apply, sync, sync --pending and mode (not dry runs), by command "
                      "and result (ok or failed)."),
    LAST_SUCCESS: (m.GAUGE, "Whether the last run of the command succeeded (1) or failed (0)."),
    LAST_DURATION: (m.GAUGE, "Seconds the last run of the command took."),
    LAST_TIMESTAMP: (m.GAUGE, "When the last run of the command ended, in seconds since the epoch."),
    LAYOUT_CHANGES: (m.COUNTER, "GPUs whose MIG layout apply, sync, sync --pending or mode "
                                "changed."),
    CREATED: (m.COUNTER, "MIG instances created by apply, sync, sync --pending or mode."),
    DESTROYED: (m.COUNTER, "MIG instances destroyed by apply, sync, sync --pending or mode."),
}
#: What each render computes from the inventory and the job records.
COMPUTED = {
    INSTANCES: (m.GAUGE, "MIG instances by GPU, profile and state (busy: a job holds it)."),
    INSTANCE_JOBS: (m.GAUGE, "Jobs holding each MIG instance, by GPU, GPU-instance id and "
                             "profile."),
    MIG_MODE: (m.GAUGE, "MIG mode of each GPU: 1 on, 0 off."),
    MIG_MODE_PENDING: (m.GAUGE, "MIG mode each GPU takes at its next reset: 1 on, 0 off."),
    INVENTORY_TIME: (m.GAUGE, "When the GPUs and MIG instances were last read from the driver, "
                              "in seconds since the epoch."),
}
KINDS = {name: kind for name, (kind, _) in KEPT.items()}


def new_state() -> Dict[str, Any]:
    return {"version": STATE_VERSION, "series": {}, "inventory": None}


def clean_state(data: Any) -> Dict[str, Any]:
    """A state read back from its file, keeping only what is well formed (a damaged file
    starts again: Prometheus takes the counters' drop as a reset)."""
    state = new_state()
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return state
    state["series"] = m.clean_series(data.get("series"), KINDS)
    inventory = data.get("inventory")
    if _valid_inventory(inventory):
        state["inventory"] = inventory
    return state


# ----------------------------------------------------------------------------- changes


def reason_of(error_class: str) -> str:
    """An error class name as a label value: ``InstanceInUse`` -> ``instance_in_use``."""
    out = []
    for i, c in enumerate(error_class):
        if c.isupper() and i and not error_class[i - 1].isupper():
            out.append("_")
        out.append(c.lower() if c.isascii() and c.isalnum() else "_")
    return "".join(out) or "unknown"


def record_hook(state: Dict[str, Any], hook: str, path: str, seconds: float,
                failure: Optional[str] = None) -> None:
    """One prolog or epilog: its duration (``path``: ``fast`` or ``full``) and, when it
    failed, its reason (an error class name, or ``internal``: :func:`reason_of`)."""
    series = state["series"]
    m.observe(series, HOOK_DURATION, {"hook": hook, "path": path}, max(seconds, 0.0),
              m.HOOK_BUCKETS)
    if failure is not None:
        m.inc(series, HOOK_FAILURES, {"hook": hook, "reason": reason_of(failure)})


def _apply_results(result: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    """The per-GPU apply results in a command's result: ``gpus`` (apply), ``apply`` (sync,
    sync --pending), ``gpus[].destroyed`` (mode off: the steps of the instances it destroyed)."""
    out: List[Mapping[str, Any]] = []
    for key in ("apply", "gpus"):
        for entry in result.get(key) or ():
            if not isinstance(entry, dict):
                continue
            if "steps" in entry and "changed" in entry:
                out.append(entry)
            elif isinstance(entry.get("destroyed"), list) and entry["destroyed"]:
                out.append({"changed": True, "steps": entry["destroyed"]})
    return out


def record_run(state: Dict[str, Any], command: str, seconds: float, now: float,
               result: Optional[Mapping[str, Any]] = None) -> None:
    """One run of ``command`` (:data:`COMMANDS`): ``result`` is its result dict, None when it
    failed."""
    series = state["series"]
    ok = result is not None
    labels = {"command": command}
    m.inc(series, RUNS, {"command": command, "result": "ok" if ok else "failed"})
    m.set_value(series, LAST_SUCCESS, labels, 1 if ok else 0)
    m.set_value(series, LAST_DURATION, labels, round(max(seconds, 0.0), 6))
    m.set_value(series, LAST_TIMESTAMP, labels, round(now, 3))
    for entry in _apply_results(result or {}):
        if entry.get("dry_run"):
            continue
        actions = [s.get("action") for s in entry.get("steps") or () if isinstance(s, dict)]
        created = sum(1 for a in actions if a == "create")
        destroyed = sum(1 for a in actions if a == "destroy")
        if entry.get("changed") and (created or destroyed):
            m.inc(series, LAYOUT_CHANGES)
        if created:
            m.inc(series, CREATED, (), created)
        if destroyed:
            m.inc(series, DESTROYED, (), destroyed)


def set_inventory(state: Dict[str, Any], gpus: List[Dict[str, Any]], now: float) -> None:
    """The node's GPUs as read from the driver: ``[{"index", "model", "mig", "mig_pending",
    "instances": [{"gi", "profile", "start"}]}]``."""
    inventory = {"time": round(now, 3), "gpus": gpus}
    if not _valid_inventory(inventory):
        raise m.MetricsError("inventory: not the shape set_inventory documents")
    state["inventory"] = inventory


def _valid_inventory(inv: Any) -> bool:
    if not isinstance(inv, dict) or type(inv.get("time")) not in (int, float):
        return False
    gpus = inv.get("gpus")
    if not isinstance(gpus, list):
        return False
    for g in gpus:
        if not (isinstance(g, dict) and type(g.get("index")) is int and isinstance(g.get("model"), str)
                and type(g.get("mig")) is bool and type(g.get("mig_pending")) is bool
                and isinstance(g.get("instances"), list)):
            return False
        for i in g["instances"]:
            if not (isinstance(i, dict) and type(i.get("gi")) is int
                    and isinstance(i.get("profile"), str) and type(i.get("start")) is int):
                return False
    return True


# ----------------------------------------------------------------------------- render


def families(state: Mapping[str, Any], held: Mapping[Tuple[int, int], int]) -> List[m.Family]:
    """The node's families: the kept series, and from the inventory with ``held`` ((gpu,
    GPU-instance id) -> jobs holding it, from the job records) the instance gauges."""
    out = m.families_from(state["series"], KEPT)
    computed = {name: m.Family(name, kind, text) for name, (kind, text) in COMPUTED.items()}
    inventory = state.get("inventory")
    if inventory is not None:
        computed[INVENTORY_TIME].add((), inventory["time"])
        for g in inventory["gpus"]:
            gpu = str(g["index"])
            computed[MIG_MODE].add({"gpu": gpu, "model": g["model"]}, 1 if g["mig"] else 0)
            computed[MIG_MODE_PENDING].add({"gpu": gpu, "model": g["model"]},
                                           1 if g["mig_pending"] else 0)
            counts: Dict[Tuple[str, str], int] = {}
            for inst in g["instances"]:
                jobs = held.get((g["index"], inst["gi"]), 0)
                computed[INSTANCE_JOBS].add({"gpu": gpu, "gi": str(inst["gi"]),
                                             "profile": inst["profile"]}, jobs)
                for state_ in ("busy", "free"):
                    counts.setdefault((inst["profile"], state_), 0)
                counts[(inst["profile"], "busy" if jobs else "free")] += 1
            for (profile, state_), n in counts.items():
                computed[INSTANCES].add({"gpu": gpu, "profile": profile, "state": state_}, n)
    return out + list(computed.values())
