"""Turning command results into text or JSON.  Rendering only: no decisions here."""

from __future__ import annotations

import json
from typing import Any, Mapping


def as_json(result: dict) -> str:
    return json.dumps(result, indent=2, sort_keys=True)


def _table(rows, headers) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers)] + [line(r) for r in rows])


def status_text(result: dict) -> str:
    out = []
    for g in result["gpus"]:
        mig = g["mig"]
        mode = "on" if mig["current"] else "off"
        if mig["current"] != mig["pending"]:
            mode += f" (pending {'on' if mig['pending'] else 'off'}: reset the GPU)"
        out.append(f"GPU {g['index']}: {g['name']} ({g['model'] or 'not in catalog'}) "
                   f"minor {g['minor']} MIG {mode}")
        if g["layout"] is None:
            continue
        out.append(f"  layout: {g['layout']}" + ("" if g["maximal"] else "  (room left)"))
        rows = []
        for i in g["instances"]:
            state = "busy" if i["busy"] else ("half-made" if not i["complete"] else "idle")
            rows.append([f"{i['profile']}@{i['start']}", i["gi_id"],
                         "-" if i["ci_id"] is None else i["ci_id"], state,
                         ",".join(i["jobs"]) or "-", ",".join(map(str, i["pids"])) or "-",
                         i["uuid"] or "-"])
        if rows:
            table = _table(rows, ["INSTANCE", "GI", "CI", "STATE", "JOB", "PIDS", "UUID"])
            out.extend("  " + l for l in table.splitlines())
    out.extend(f"warning: {w}" for w in result.get("warnings", ()))
    return "\n".join(out) if out else "no GPUs found"


def layouts_text(result: dict) -> str:
    return "\n".join(result["layouts"])


def catalog_text(result: dict) -> str:
    out = []
    for m in result["models"]:
        out.append(f"{m['key']}: {m['name']}  ({m['placement_units']} placement units, "
                   f"{m['compute_slices']} compute / {m['memory_slices']} memory slices)")
        rows = [[p["id"], p["name"], p["compute_slices"], p["memory_slices"],
                 p["memory_mib"] if p["memory_mib"] is not None else "?", p["max_count"],
                 ",".join(map(str, p["placements"])) + f" (size {p['placement_size']})"]
                for p in m["profiles"]]
        table = _table(rows, ["ID", "PROFILE", "CS", "MS", "MIB", "MAX", "PLACEMENTS"])
        out.extend("  " + l for l in table.splitlines())
    return "\n".join(out)


def verify_text(result: dict) -> str:
    out = []
    for g in result["gpus"]:
        head = f"GPU {g['index']}: {g['name']} ({g['model'] or 'not in catalog'})"
        if not g["compared"]:
            out.append(f"{head}: {g['note']}")
            continue
        if g.get("note"):  # MIG off, profiles read anyway
            head += f": {g['note']}"
        if not g["differences"]:
            out.append(f"{head}: matches the catalog")
        else:
            out.append(f"{head}: {len(g['differences'])} difference(s); NVML wins")
            for d in g["differences"]:
                if d["field"] == "model":
                    out.append("  not in the catalog: every profile below comes from NVML only")
                    continue
                where = f"profile id {d['profile_id']}" if d["profile_id"] is not None else "model"
                out.append(f"  {where}: {d['field']}: catalog {d['catalog']!r}, NVML {d['nvml']!r}")
    return "\n".join(out) if out else "no GPUs found"


def apply_text(result: dict) -> str:
    out = []
    verb = "would" if result["dry_run"] else "did"
    for g in result["gpus"]:
        head = f"GPU {g['gpu']}: {g['before']} -> {g['wanted']}"
        if g["resumed"]:
            out.append(f"GPU {g['gpu']}: finished an interrupted earlier apply first")
        if not g["steps"] and not g["blocked"]:
            out.append(f"{head}: already matches, untouched")
            continue
        out.append(head)
        for s in g["steps"]:
            gi = f" (GI {s['gi_id']})" if s.get("gi_id") is not None else ""
            out.append(f"  {verb} {s['action']} {s['profile']}@{s['start']}{gi}")
        for b in g["blocked"]:
            users = [f"pids {','.join(map(str, b['pids']))}"] if b["pids"] else []
            users += [f"job {','.join(b['jobs'])}"] if b.get("jobs") else []
            out.append(f"  kept busy {b['profile']}@{b['start']} (GI {b['gi_id']}, {', '.join(users)})")
        for c in g["blocked_creates"]:
            out.append(f"  not created {c}: its space is held by a busy instance")
        for w in g.get("warnings", ()):
            out.append(f"  warning: {w}")
    out.extend(f"warning: {w}" for w in result.get("warnings", ()))
    return "\n".join(out + _dcgm_warning(result))  # never empty: no MIG GPU is exit 4 before


def _dcgm_warning(result: dict) -> list:
    """The failed rewrite of dcgm-exporter's mapping files (apply, sync, ``sync --pending``,
    mode), as a warning line: the change itself stood, so the exit code does not say it."""
    error = (result.get("dcgm_mapping") or {}).get("error")
    return [f"warning: {error}"] if error else []


def _written(result: dict, what: str) -> str:
    state = "written" if result["changed"] else "unchanged"
    prev = f" (previous copy: {result['prev']})" if result.get("prev") else ""
    return f"{result['path']}: {what} for node {result['node']} {state}{prev}"


def gres_conf_text(result: dict) -> str:
    if result["written"]:
        return _written(result, f"{len(result['records'])} gpu record(s)")
    return result["text"].rstrip("\n")


def gres_conf_preview_text(result: dict) -> str:
    """``gres-conf --write --dry-run``: whether the file would change."""
    return _would_write(result, f"{len(result['records'])} gpu record(s)")


def node_conf_preview_text(result: dict) -> str:
    """``node-conf --write --dry-run``: whether the file would change."""
    return _would_write(result, f"Gres={result['gres'] or '(none)'}")


def _would_write(result: dict, what: str) -> str:
    state = "would be written" if result["changed"] else "unchanged"
    return f"{result['path']}: {what} for node {result['node']} {state} (dry run)"


def node_conf_text(result: dict) -> str:
    if result["written"]:
        return _written(result, f"Gres={result['gres'] or '(none)'}")
    return result["line"]


def sync_text(result: dict) -> str:
    """One line per step; apply's changes indented under it."""
    node = result["node"]
    if result["already_in_sync"]:
        head = f"node {node}: already in sync (Gres={result['gres']['before'] or 'none'})"
    else:
        verb = "would sync" if result["dry_run"] else "synced"
        head = f"node {node}: {verb} Gres={result['gres']['before'] or 'none'} -> " \
               f"{result['gres']['after'] or 'none'}"
    out = [head]
    for w in result["wanted"]:
        out.append(f"  gpu {w['gpu']}: {w['before']} -> {w['wanted']}")
    for s in result["steps"]:
        secs = f" ({s['seconds']:.1f}s)" if s["seconds"] else ""
        out.append(f"{s['status']:>8} {s['step']}: {s['detail']}{secs}")
        if s["step"] == "apply":
            for g in result["apply"]:
                for a in g["steps"]:
                    gi = f" (GI {a['gi_id']})" if a.get("gi_id") is not None else ""
                    out.append(f"           gpu {g['gpu']}: {a['action']} {a['profile']}@{a['start']}{gi}")
    return "\n".join(out + _dcgm_warning(result))


def mode_text(result: dict) -> str:
    """`slurm-mig mode`: one line per GPU (before -> after, what is still needed), then the steps."""
    node, want = result["node"], result["mode"]
    if result["nothing_to_do"]:
        head = f"node {node}: MIG {want}: nothing to do"
    else:
        head = f"node {node}: MIG {want}" + (" (dry run)" if result["dry_run"] else "")
    out = [head]

    def mode(m: dict) -> str:
        text = "on" if m["current"] else "off"
        if m["current"] != m["pending"]:
            text += f" (pending {'on' if m['pending'] else 'off'})"
        return text

    for g in result["gpus"]:
        line = f"  gpu {g['gpu']} ({g['name']}): {mode(g['before'])}"
        if not result["dry_run"]:
            line += f" -> {mode(g['after'])}"
        if g["refused"]:
            line += f"; refused: {g['refused'].split(': ', 1)[-1]}"
        elif g["needed"] != "nothing":
            line += f"; needs {g['needed']}"
        out.append(line)
    for s in result["steps"]:
        secs = f" ({s['seconds']:.1f}s)" if s["seconds"] else ""
        out.append(f"{s['status']:>8} {s['step']}: {s['detail']}{secs}")
    return "\n".join(out + _dcgm_warning(result))


def sync_pending_text(result: dict) -> str:
    want = "; ".join(f"gpu {w['gpu']} {w['layout']}" for w in result["want"]) or "none"
    out = [f"slurm-mig sync --pending: node {result['node']}: want {want}: {result['action']}"
           + (" (layout published)" if result["published"] else "")]
    for s in result["steps"]:
        secs = f" ({s['seconds']:.1f}s)" if s["seconds"] else ""
        out.append(f"{s['status']:>8} {s['step']}: {s['detail']}{secs}")
    return "\n".join(out + _dcgm_warning(result))


def rebalance_last_text(result: dict) -> str:
    """`rebalance --last`: the latest cycle that did something, in full with its reasons,
    and a line for the latest cycle if it was a quiet one after it."""
    last, action = result["last"], result["last_action"]
    if last is None:
        return f"no rebalance cycle has run yet (nothing in {result['state_file']})"
    out = []
    if action is None:
        out.append(f"no cycle has changed anything yet; the latest, cycle {last['cycle']}, "
                   f"ran at {last['at']}")
        return "\n".join(out + [rebalance_text(last, explain=True)])
    out.append(f"cycle {action['cycle']} at {action['at']}, the latest that did something:")
    out.append(rebalance_text(action, explain=True))
    if last["cycle"] != action["cycle"]:
        out.append(f"(the latest cycle, {last['cycle']}, ran at {last['at']} and changed nothing)")
    return "\n".join(out)


def rebalance_text(result: dict, explain: bool = False) -> str:
    """The action lines (greppable: ``slurm-mig rebalance: cycle N: node n1: ...``), a summary
    line when anything happened (changed, finished, reconfigured, failed), then notes; with
    ``explain``, one line per node on why."""
    head = f"slurm-mig rebalance: cycle {result['cycle']}:"
    dry = " (dry run)" if result["dry_run"] else ""
    out = list(result["actions"])
    names = lambda items: ", ".join(items) or "none"  # noqa: E731
    if not out:
        out.append(f"{head} no change{dry}")
    else:
        wait = result["wait"]
        waited = (f"; waited {wait['seconds']:g}s for sync --pending (applied: "
                  f"{names(wait['applied'])}; not yet: {names(wait['pending'])}"
                  + (f"; failed on the node: {names(wait['failed'])}" if wait.get("failed") else "")
                  + ")" if wait["seconds"] or wait["pending"] or wait.get("failed") else "")
        failed = sorted({f["node"] for f in result["failed"]})
        out.append(f"{head} changed {names([c['node'] for c in result['changed']])}; finished "
                   f"{names(result['finished'])}; reconfigured "
                   f"{_reconfigured(result)}; resumed "
                   f"{names(result['resumed'])}; failed {names(failed)}{waited}{dry}")
    out += [f"note: {n}" for n in result["notes"]]
    if explain:
        out += [f"explain: {line}" for line in result["explain"]]
    return "\n".join(out)


def _reconfigured(result: Mapping[str, Any]) -> str:
    """``no``, ``once``, or ``twice`` (a late apply, docs/rebalance.md); old state files
    (``--last``) have no ``reconfigures``."""
    if not result["reconfigured"]:
        return "no"
    return "twice" if result.get("reconfigures", 1) > 1 else "once"


def accounting_tres_text(result: dict) -> str:
    """The line alone on stdout (to paste or redirect into an include); warnings as
    ``#`` comments above it, so the output stays a valid slurm.conf fragment."""
    out = [f"# slurm-mig: {w}" for w in result["warnings"]]
    out.append(f"# slurm-mig: MIG types of {', '.join(result['models'])}; restart slurmctld "
               f"after changing this line (docs/accounting.md)")
    out.append(result["line"])
    return "\n".join(out)


def _dur(seconds: float) -> str:
    s = float(seconds)
    if s >= 86400:
        return f"{s / 86400:.1f}d"
    if s >= 3600:
        return f"{s / 3600:.1f}h"
    if s >= 60:
        return f"{s / 60:.1f}m"
    return f"{s:.0f}s"


def simulate_text(result: dict) -> str:
    rows = []
    for p in result["policies"]:
        rows.append([p["policy"], p["jobs"], p["unserved"], _dur(p["mean_wait_s"]),
                     _dur(p["p90_wait_s"]), _dur(p["mean_jct_s"]), _dur(p["p90_jct_s"]),
                     _dur(p["makespan_s"]), f"{100 * p['slice_utilization']:.1f}%",
                     p["reconfigurations"], f"{p['drained_node_hours']:.1f}"])
    out = [_table(rows, ["POLICY", "JOBS", "UNSERVED", "WAIT", "P90 WAIT", "JCT", "P90 JCT",
                         "MAKESPAN", "SLICES", "RECONF", "DRAINED NODE-H"])]
    base = {p["policy"]: p for p in result["policies"]}
    dyn, best = base.get("dynamic"), base.get("best-static")
    if dyn and best and best["mean_jct_s"] and not dyn["unserved"] and not best["unserved"]:
        delta = 100.0 * (dyn["mean_jct_s"] - best["mean_jct_s"]) / best["mean_jct_s"]
        out.append(f"dynamic vs best-static: mean completion time {delta:+.1f}%")
    for p in result["policies"]:
        if p["policy"] != "static":
            for model, lays in sorted(p["layouts"].items()):
                out.append(f"{p['policy']}: {model} layouts at the end: {'; '.join(lays)}")
    c = result["costs"]
    out.append(f"costs: {c['instance_s']:g}s per instance, {c['reconfigure_s']:g}s reconfigure, "
               f"apply_wait {c['apply_wait_s']:g}s; cycle {result['settings']['cycle_s']:g}s")
    skipped = result["trace"].get("skipped") or {}
    if skipped:
        out.append("trace rows left out: " + "; ".join(f"{n} {why}" for why, n in skipped.items()))
    out += [f"note: {n}" for n in result["notes"]]
    if result.get("plot"):
        out.append(f"plot: {result['plot']}")
    return "\n".join(out)


def generate_text(result: dict) -> str:
    return (f"wrote {result['jobs']} jobs to {result['file']} ({result['hours']:g} h, "
            f"{result['gpus']} GPUs at load {result['load']:g}, phases of "
            f"{result['phase_hours']:g} h, seed {result['seed']})")


def check_plot() -> None:
    """Stop at once (exit 2, with the fix) when ``--plot`` cannot work: no matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        from ..core.errors import InputError

        raise InputError("--plot needs matplotlib: pip install 'slurm-mig[plot]' "
                         "(or drop --plot)") from err


def simulate_plot(result: dict, series: dict) -> bytes:
    """PNG bytes: per policy, pending jobs and instances per profile over time."""
    check_plot()
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p["policy"] for p in result["policies"]]
    fig, axes = plt.subplots(len(names), 2, figsize=(13, 3.2 * len(names)), squeeze=False,
                             sharex=True)
    for row, name in enumerate(names):
        pts = series[name]
        hours = [s["t"] / 3600.0 for s in pts]
        ax = axes[row][0]
        ax.plot(hours, [s["pending"] for s in pts], label="pending jobs", color="tab:red")
        ax.plot(hours, [s["running"] for s in pts], label="running jobs", color="tab:green")
        ax.set_title(f"{name}: queue")
        ax.set_ylabel("jobs")
        ax.legend(loc="upper right", fontsize=8)
        ax = axes[row][1]
        types = sorted({t for s in pts for t, k in s["instances"].items() if k})
        for t in types:
            ax.plot(hours, [s["instances"].get(t, 0) for s in pts], label=t)
        ax.set_title(f"{name}: instances per profile")
        ax.legend(loc="upper right", fontsize=7, ncol=2)
    for ax in axes[-1]:
        ax.set_xlabel("hours from the trace start")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def mig_parted_import_text(result: Mapping[str, Any]) -> str:
    head = "one GPU of " + (result["gpus"][0]["model"] or "?") if result["source"] == "model" \
        else "this node's GPUs"
    out = [f"mig-parted config {result['config']} of {result['file']}, for {head}:"]
    rows = []
    for g in result["gpus"]:
        if g["entry"] is None:
            state, layout = "-", g["note"]
        elif not g["mig_enabled"]:
            state, layout = "off", "-"
        else:
            state, layout = "on", g["layout"]
        rows.append([g["index"], g["model"] or g["name"], state, layout])
    out.extend("  " + l for l in _table(rows, ["GPU", "MODEL", "MIG", "LAYOUT"]).splitlines())
    out += [f"  gpu {g['index']}: {g['note']}" for g in result["gpus"] if g["entry"] and g["note"]]
    if result["config_toml"]:
        out += ["", "config.toml (`slurm-mig sync` applies it, through Slurm):", ""]
        out += ["  " + l for l in result["config_toml"].splitlines()]
    now = [g for g in result["gpus"] if g["entry"] and g["mig_enabled"]]
    if now and result["source"] == "node":
        out += ["", "or at once, on an idle node:", ""]
        out += [f"  slurm-mig apply {g['counts']} --gpu {g['index']}" for g in now]
    return "\n".join(out)
