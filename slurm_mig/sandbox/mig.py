"""The sandbox with slurm-mig in it: a real local Slurm cluster whose nodes have simulated MIG GPUs.

``slurm-mig sandbox up|status|reconfigure|down`` (and the demo) are thin clients of this
module, the sandbox's lifecycle.  ``up`` builds, under one root directory (the file layout is
:mod:`.files`):

* per node ``nodes/<node>/config.toml`` (backend sim, its own state and simulator, the shared
  gres.conf and node include in ``etc/``, ``slurm.node_name``, and a ``reconfigure_command``
  that runs ``slurm-mig sandbox reconfigure`` for ``slurm-mig sync``);
* ``controller/config.toml`` (:mod:`.controller`): ``slurm-mig rebalance`` enabled, floors,
  a short ``apply_wait``, the same reconfigure command;
* the simulated GPUs, cut into the layout by the apply engine, and gres.conf plus the nodes'
  ``Gres=`` written by the same functions as ``slurm-mig gres-conf/node-conf --write``;
* the shipped prolog/epilog hooks as ``Prolog=<root>/prolog.d/*`` / ``Epilog=`` globs with
  ``PrologFlags=Alloc``, their settings in ``<root>/slurm-mig.env``; the shipped TaskProlog
  as ``TaskProlog=<root>/taskprolog.d/50-slurm-mig`` (tasks see their MIG UUIDs);
* ``bin/sim-job``: a job script that attaches to its instance (``slurm_mig.hooks sim-run``)
  and writes what it reached to ``seen/<jobid>.json``;

then starts munged, slurmctld and the slurmds detached (:meth:`SandboxCluster.detach`), so
they outlive ``up``; the other commands find them again with :meth:`SandboxCluster.attach`.
Last, one timer loop per node (:mod:`.timer`: ``slurm-mig sync --pending`` every 1.5 s, the
node's systemd timer on a real cluster), detached as well and stopped by ``down``.
Every function returns a plain dict (``--json`` prints it); :mod:`.text` renders them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from ..core.errors import InputError
from .cluster import SandboxCluster
from .controller import controller_config_text, layout_floors
from .errors import SandboxError
from .files import LOCK_FILE, SandboxFiles, node_config_text, write_scripts
from .host import missing_requirements, open_append, write_atomic
from .rootdir import FIX_OTHERS, MARKER, check_root, make_root
from .timer import PERIOD, start_timers, stop_timers, timer_pids

# Root's own directory: no other user can create it first (/var/lib is root's, 0755), and
# munged finds o+x on every parent (not /tmp/pytest-*).  docs/sandbox.md, "The root directory".
DEFAULT_ROOT = "/var/lib/slurm-mig-sandbox"
DEFAULT_NODES = 2
DEFAULT_GPUS = ("A100-80GB",)
DEFAULT_LAYOUT = "1g.10gb:4,3g.40gb:1"
CPUS_PER_NODE = 8  # more than the machine may have (config_overrides): every instance busy at once
MAX_NODES = 32

SETUP_HINT = "run `bash .ci/setup` as root (it installs munge slurmctld slurmd slurm-client)"


@dataclass(frozen=True)
class SandboxSpec:
    """What ``up`` builds: ``nodes`` nodes named n1..nN, each with ``gpus``, each GPU cut
    into ``layout`` (either layout form of ``slurm-mig apply``)."""

    root: str = DEFAULT_ROOT
    nodes: int = DEFAULT_NODES
    gpus: Tuple[str, ...] = DEFAULT_GPUS
    layout: str = DEFAULT_LAYOUT

    @property
    def node_names(self) -> List[str]:
        return [f"n{i + 1}" for i in range(self.nodes)]

    def as_dict(self) -> dict:
        return {"nodes": self.node_names, "gpus": list(self.gpus), "layout": self.layout}


class SandboxUnavailable(SandboxError):
    """This machine cannot run the sandbox (not root, Slurm or munge missing)."""


# ----------------------------------------------------------------------------- checks


def check_spec(spec: SandboxSpec) -> Dict[str, str]:
    """Bad input, found before anything is touched: model key -> its name.  Raises InputError."""
    from ..core.catalog import load_catalog
    from ..core.layout import parse_layout

    if not 1 <= spec.nodes <= MAX_NODES:
        raise InputError(f"--nodes {spec.nodes}: give 1 to {MAX_NODES}")
    if not spec.gpus:
        raise InputError("--gpus: give at least one GPU model, e.g. A100-80GB")
    catalog = load_catalog()
    models = {}
    for name in spec.gpus:
        model = catalog.model(name)  # UnknownModel names the known ones
        models[model.key] = model
        try:
            parse_layout(spec.layout, model)
        except InputError as err:
            raise type(err)(f"--layout {spec.layout!r} on {model.key}: {err}") from err
    root = os.path.abspath(spec.root)
    socket = os.path.join(root, "munge", "run", "munge.socket")
    if len(socket.encode()) > 100:
        raise InputError(f"--root {root} is too long for munge's socket path; use a shorter one")
    return {k: m.name for k, m in models.items()}


def require_host() -> None:
    missing = missing_requirements()
    if missing:
        raise SandboxUnavailable(f"the sandbox needs {'; '.join(missing)}: {SETUP_HINT}")


def _check_parents(root: str) -> None:
    """munged refuses a socket below a directory without o+x (e.g. /tmp/pytest-of-root)."""
    parent = os.path.dirname(root)
    while True:
        try:
            st = os.stat(parent)
        except FileNotFoundError:  # made 0755 by up
            parent = os.path.dirname(parent)
            continue
        if not st.st_mode & 0o001:
            raise SandboxError(f"--root {root}: {parent} has mode {st.st_mode & 0o777:o}, munged "
                               f"needs o+x on every parent; use the default --root {DEFAULT_ROOT}")
        if parent == "/":
            return
        parent = os.path.dirname(parent)


@contextlib.contextmanager
def _root_lock(files: SandboxFiles) -> Iterator[None]:
    from ..host.locking import node_lock

    with node_lock(files.lock, timeout=120):
        yield


# ----------------------------------------------------------------------------- up


def up(spec: SandboxSpec) -> dict:
    """Build and start the sandbox; the same spec again while it runs is a no-op.

    A different spec while it runs is refused (``down`` first); a stopped sandbox under the
    root is rebuilt from scratch.
    """
    check_spec(spec)
    require_host()
    root = os.path.abspath(spec.root)
    files = SandboxFiles(root)
    want = spec.as_dict()
    try:
        check_root(root)  # an existing root: ours, or refused untouched
        exists = True
    except FileNotFoundError:
        exists = False
    _check_parents(root)
    if not exists:
        make_root(root)  # fresh, 0755, with our marker before anything else
    with _root_lock(files):
        have = files.read_spec()
        running = _attach(root)
        pids = running.daemon_pids() if running else {}
        if have is not None and running is not None and pids and all(pids.values()):
            if have != want:
                raise InputError(
                    f"a sandbox with {_describe(have)} is already up under {root}; stop it "
                    f"first (`slurm-mig sandbox down --root {root}`) or pick another --root")
            start_timers(files, running.nodes, running.env())  # one that died: again
            return _up_result(running, spec, already_up=True, seconds=0.0)
        stop_timers(files)
        if running is not None and any(pids.values()):
            running.stop()  # half alive: rebuild it
        _clear(root)  # ours (marked): whatever a stopped or half-built sandbox left
        t0 = time.monotonic()
        write_atomic(files.spec, json.dumps(want, indent=1) + "\n")
        cluster = _build(spec, files)
        try:
            cluster.start()
        finally:
            if cluster.running:
                cluster.detach()
        try:
            start_timers(files, cluster.nodes, cluster.env())
        except BaseException:
            stop_timers(files)
            cluster.stop()
            raise
        return _up_result(cluster, spec, already_up=False, seconds=time.monotonic() - t0)


def _describe(spec: dict) -> str:
    return (f"{len(spec.get('nodes', []))} node(s), GPUs {','.join(spec.get('gpus', []))}, "
            f"layout {spec.get('layout')}")


def _clear(root: str) -> None:
    """Remove everything under our root but the lock and the marker.  A symbolic link is
    removed, never followed, at any depth: shutil.rmtree works through directory file
    descriptors (``rmtree.avoids_symlink_attacks``), so a link a job planted in ``seen/``
    takes nothing outside the root with it (tested)."""
    for name in os.listdir(root):
        if name in (LOCK_FILE, MARKER):
            continue
        path = os.path.join(root, name)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _attach(root: str) -> Optional[SandboxCluster]:
    try:
        return SandboxCluster.attach(root)
    except SandboxError:
        return None


def _build(spec: SandboxSpec, files: SandboxFiles) -> SandboxCluster:
    """Write every file and cut the simulated GPUs; nothing runs yet."""
    from ..app.commands import apply_layout
    from ..gpu.backend import make_backend
    from ..host.config import load_config
    from ..node.gresfiles import gres_conf, node_conf
    from ..sim.driver import SimDriver
    from ..slurm.scontrol import parse_pairs

    python = sys.executable
    nodes = spec.node_names
    cluster = SandboxCluster(files.root, nodes, cpus_per_node=CPUS_PER_NODE,
                             die_with_parent=False)
    write_scripts(files, cluster.paths, python)
    cluster.write_config({n: "" for n in nodes}, "", {
        "Prolog": os.path.join(files.hook_dir("prolog"), "*"),
        "Epilog": os.path.join(files.hook_dir("epilog"), "*"),
        "TaskProlog": os.path.join(files.hook_dir("taskprolog"), "50-slurm-mig"),
        "SlurmdParameters": "config_overrides"})
    cluster.save_state()  # from here on `down` finds whatever gets started
    for node in nodes:
        write_atomic(files.node_config(node),
                     node_config_text(files, cluster.paths, node, spec.gpus, spec.layout, python))
        config = load_config(files.node_config(node))
        SimDriver.create(config.sim.root, list(config.sim.gpus))
        backend = make_backend("sim", sim_root=config.sim.root)
        try:
            apply_layout(config, backend, spec.layout, "all")
            gres_conf(config, backend, node, write=True)
            node_conf(config, backend, node, write=True)
        finally:
            backend.close()
    with open(cluster.paths.nodes_conf) as f:
        gres = {p["NodeName"]: p.get("Gres", "") for p in map(parse_pairs, f.read().splitlines())
                if p.get("NodeName") in nodes}
    with open(cluster.paths.gres_conf) as f:
        cluster.write_layout(gres, f.read())  # renders the include as node-conf wrote it
    write_atomic(files.controller_config, controller_config_text(
        files, cluster.paths, layout_floors(spec.gpus, spec.layout), python))
    return cluster


def _up_result(cluster: SandboxCluster, spec: SandboxSpec, *, already_up: bool,
               seconds: float) -> dict:
    files = SandboxFiles(cluster.root)
    iso = cluster.isolation
    return {
        "root": cluster.root,
        "already_up": already_up,
        "seconds": round(seconds, 2),
        "nodes": list(cluster.nodes),
        "gpus": list(spec.gpus),
        "layout": spec.layout,
        "gres": {n: cluster.expected_gres(n) for n in cluster.nodes},
        "isolation": {"mode": iso.mode, "devices": iso.devices, "reason": iso.reason},
        "env": {"SLURM_CONF": cluster.paths.slurm_conf,
                "SLURM_MIG_CONFIG": files.node_config(cluster.nodes[0])},
        "sim_job": files.sim_job,
        "node_configs": {n: files.node_config(n) for n in cluster.nodes},
        "controller_config": files.controller_config,
        "timers": {"every": PERIOD, "pids": timer_pids(files, cluster.nodes),
                   "logs": {n: files.timer_log(n) for n in cluster.nodes}},
    }


# ----------------------------------------------------------------------------- the others


def _attached(root: str) -> Tuple[SandboxCluster, SandboxFiles]:
    files = SandboxFiles(root)
    try:
        check_root(files.root, FIX_OTHERS)
    except FileNotFoundError:
        raise SandboxError(f"no sandbox under {files.root}: start one with "
                           f"`slurm-mig sandbox up --root {files.root}`") from None
    try:
        return SandboxCluster.attach(files.root), files
    except SandboxError as err:
        raise SandboxError(f"no sandbox under {files.root}: start one with "
                           f"`slurm-mig sandbox up --root {files.root}`") from err


def reconfigure(root: str) -> dict:
    """``scontrol reconfigure`` as :meth:`SandboxCluster.reconfigure` does it (on 22.05 a
    slurmctld restart when gres.conf or a Gres= changed), for ``slurm.reconfigure_command``.

    Each call adds a line to ``log/reconfigure.log`` naming the command that asked for it
    (the parent process: ``slurm-mig sync`` on a node, ``slurm-mig rebalance``), so an admin
    can see how many reconfigures a change cost, and who ran them."""
    cluster, files = _attached(root)
    with _root_lock(files):
        result = cluster.reconfigure()
        cluster.save_state()
        with open_append(files.reconfigure_log) as f:
            f.write(f"{time.strftime('%H:%M:%S')} {result.seconds:.1f}s restarted "
                    f"{','.join(result.restarted) or '-'}; asked by: {_caller()}\n".encode())
    return {"root": cluster.root, "seconds": round(result.seconds, 2),
            "restarted": list(result.restarted)}


def _caller() -> str:
    """The parent process's command line (who ran ``sandbox reconfigure``), shortened."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    text = " ".join(a for a in argv if a)
    return text if len(text) <= 200 else text[:197] + "..."


def reconfigures(root: str) -> List[str]:
    """The lines of ``log/reconfigure.log`` (oldest first), [] before the first."""
    try:
        with open(SandboxFiles(root).reconfigure_log) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def down(root: str, purge: bool = False) -> dict:
    """Cancel jobs, stop every daemon, remove the cgroup directories; ``purge``: the files too.

    Idempotent: a stopped (or never started) sandbox gives a result with nothing stopped.
    """
    files = SandboxFiles(root)
    stopped: Dict[str, List[int]] = {}
    result: Dict[str, object] = {"root": files.root, "was_running": False, "stopped": stopped,
                                 "cancelled": [], "purged": False}
    try:
        check_root(files.root, FIX_OTHERS)  # only a root that up made: refused untouched
    except FileNotFoundError:
        return result
    with _root_lock(files):
        timers = stop_timers(files)  # first: no sync --pending while Slurm stops
        stopped.update(timers)
        result["was_running"] = bool(timers)
        cluster = _attach(files.root)
        if cluster is not None:
            before = cluster.daemon_pids()
            result["was_running"] = result["was_running"] or any(before.values())
            if before["slurmctld"]:
                proc = cluster.command(["squeue", "-h", "-o", "%i"], timeout=10, check=False)
                result["cancelled"] = sorted(int(j) for j in proc.stdout.split() if j.isdigit())
            cluster.stop()
            left = {k: v for k, v in cluster.daemon_pids().items() if v}
            if left:
                raise SandboxError(f"still running after stop: {_pids_text(left)}; "
                                   f"logs in {cluster.paths.log}")
            stopped.update({k: v for k, v in before.items() if v})
        if purge:
            _clear(files.root)
    if purge:
        with contextlib.suppress(OSError):
            os.unlink(files.lock)
        with contextlib.suppress(OSError):
            if os.listdir(files.root) == [MARKER]:  # else an `up` beside us: leave it ours
                os.unlink(os.path.join(files.root, MARKER))
                os.rmdir(files.root)
        result["purged"] = not os.path.lexists(files.root)
    return result


def _pids_text(pids: Dict[str, List[int]]) -> str:
    return ", ".join(f"{k} (pid {','.join(map(str, v))})" for k, v in sorted(pids.items()))


def status(root: str) -> dict:
    """Daemons, nodes as Slurm sees them, each node's simulated GPUs and the job records."""
    from ..slurm.scontrol import parse_pairs, parse_scontrol_nodes

    cluster, files = _attached(root)
    pids = cluster.daemon_pids()
    slurm_nodes, extra, queue = {}, {}, []
    if pids["slurmctld"]:
        proc = cluster.command(["scontrol", "show", "node", "-o"], timeout=10, check=False)
        if proc.returncode == 0:
            slurm_nodes = parse_scontrol_nodes(proc.stdout)
            extra = {p["NodeName"]: p for p in map(parse_pairs, proc.stdout.splitlines())
                     if "NodeName" in p}
        proc = cluster.command(["squeue", "-h", "-o", "%i|%T|%N|%b"], timeout=10, check=False)
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            job, state, node, gres = (line.split("|") + ["", "", ""])[:4]
            if job.strip().isdigit():
                queue.append({"job_id": int(job), "state": state, "node": node or None,
                              "gres": gres if gres not in ("", "N/A") else None})
    timers = timer_pids(files, cluster.nodes)
    iso = cluster.isolation
    return {
        "root": cluster.root,
        "running": all(pids.values()) and all(timers.values()),
        "spec": files.read_spec(),
        "daemons": {**pids, **timers},
        "isolation": {"mode": iso.mode, "devices": iso.devices, "reason": iso.reason},
        "env": {"SLURM_CONF": cluster.paths.slurm_conf},
        "controller_config": files.controller_config,
        "nodes": [_node_status(files, n, slurm_nodes.get(n), extra.get(n, {}))
                  for n in cluster.nodes],
        "queue": queue,
    }


def _node_status(files: SandboxFiles, node: str, slurm, pairs: dict) -> dict:
    from ..app.commands import status as gpu_status
    from ..gpu.backend import make_backend
    from ..host.config import load_config
    from ..node.jobs import list_jobs

    config = load_config(files.node_config(node))
    backend = make_backend("sim", sim_root=config.sim.root)
    try:
        gpus = gpu_status(config, backend)["gpus"]
    finally:
        backend.close()
    keep = ("profile", "start", "gi_id", "ci_id", "uuid", "jobs", "pids", "busy")
    return {
        "name": node,
        "config": files.node_config(node),
        "state": slurm.state if slurm else "down",
        "flags": sorted(slurm.flags) if slurm else [],
        "gres": dict(slurm.gres) if slurm else {},
        "gres_used": pairs.get("GresUsed", ""),
        "reason": slurm.reason if slurm else "",
        "extra": "" if pairs.get("Extra") in (None, "(null)") else pairs["Extra"],
        "gpus": [{"index": g["index"], "model": g["model"], "layout": g["layout"],
                  "instances": [{k: i[k] for k in keep} for i in g["instances"]]} for g in gpus],
        "jobs": [{"job_id": int(r["job_id"]),
                  "instances": [{k: i.get(k) for k in ("index", "type", "gpu", "gi_id", "ci_id",
                                                         "uuid")} for i in r.get("instances", ())]}
                 for r in list_jobs(config.paths.state_dir)],
    }
