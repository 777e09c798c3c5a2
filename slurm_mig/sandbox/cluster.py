"""A private, real Slurm cluster on this machine, entirely under one directory.

One munged (own key, own socket), one slurmctld and one slurmd per node, each slurmd in its
own UTS namespace whose hostname is the node name, all on loopback addresses and free ports.
Used by the integration tests and the README demo::

    c = SandboxCluster("/var/tmp/sbx", ["n1", "n2"])
    c.write_config({"n1": "gpu:1g.10gb:1", "n2": ""},   # node -> Gres=, then gres.conf text
                   "NodeName=n1 Name=gpu Type=1g.10gb MultipleFiles=/var/tmp/sbx/dev/...\\n")
    with c:                                          # start() ... stop()
        job = c.submit(["--gres=gpu:1g.10gb:1"], "#!/bin/sh\\nhostname\\n")
        print(c.wait_job(job).state)                 # COMPLETED

Needs root, munge and Slurm's slurmctld, slurmd and client commands.  See docs/sandbox-notes.md.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ..core.gresconf import GresConfError, parse_gres_conf
from ..host.safefs import ensure_dir
from ..slurm.scontrol import NodeStatus, parse_gres, parse_pairs, parse_scontrol_nodes
from .cgroups import Isolation, detect_isolation
from .config import NodeSpec, SandboxPaths, render_cgroup_conf, render_nodes_conf, render_slurm_conf
from .daemons import (DAEMON_UMASK, Daemon, check_socket_path, in_uts_namespace, kill_daemons,
                      stop_daemons, wait_for, write_munge_key)
from .errors import SandboxError
from .host import free_ports, missing_requirements, tail, which, write_atomic
from .parse import JobInfo, error_lines, parse_sbatch_parsable, parse_scontrol_job, parse_version

# Errors in the logs that are expected here and say nothing about the problem at hand.
HARMLESS_LOG_ERRORS = ["mpi/pmix", "PMIx", "MPI: Cannot create context",
                       "Trying backup state save file", "xcpuinfo_hwloc_topo_load"]

# What slurmctld logs when a reconfigure changes the count of File-backed gres (22.05):
# the new count is ignored until slurmctld restarts.
_GRES_COUNT_REFUSED = "invalid with File configuration"

# Variables that change what client commands do; not inherited by env().
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCONTROL_",
                        "SACCT_", "SCANCEL_")

_NODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")

_LIVE: Set["SandboxCluster"] = set()


def _stop_live_clusters() -> None:
    for cluster in list(_LIVE):
        try:
            cluster.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


atexit.register(_stop_live_clusters)


@dataclass(frozen=True)
class ReconfigureResult:
    seconds: float
    restarted: Tuple[str, ...]  # daemons restarted to apply the change ("slurmctld", "slurmd-n1")


def late_applied(nodes: Mapping[str, NodeStatus], configured: Mapping[str, Mapping[str, int]],
                 in_gres_conf: Mapping[str, Mapping[str, int]]) -> Set[str]:
    """Nodes a reconfigure cannot make register as configured (pure): their gres.conf already
    says other counts than their ``Gres=`` (a late apply, docs/rebalance.md) and slurmctld
    refused them for it (INVALID_REG, or drained with a ``gres/`` reason)."""
    out = set()
    for n, st in nodes.items():
        refused = (any(f.startswith("INVAL") for f in st.flags)
                   or (st.drain_flagged and st.reason.startswith("gres/")))
        if refused and n in in_gres_conf and dict(in_gres_conf[n]) != dict(configured.get(n, {})):
            out.add(n)
    return out


def _cgroup_failure(err: SandboxError) -> Optional[str]:
    """The log line that blames cgroups for ``err`` (a fatal one first), or None."""
    found = []
    for name, text in sorted(err.log_tails.items()):
        for line in error_lines(text, HARMLESS_LOG_ERRORS):
            if "cgroup" in line.lower():
                found.append((0 if "fatal:" in line else 1, f"{name}: {_strip_prefix(line)}"))
    return min(found)[1] if found else None


def _strip_prefix(line: str) -> str:
    """Drop the "[timestamp] " of a log line and the "slurmd: " of a daemon's stderr."""
    line = re.sub(r"^\[[^\]]*\]\s*", "", line.strip())
    return re.sub(r"^(slurmctld|slurmd|munged):\s*", "", line)


class SandboxCluster:
    """A real Slurm cluster under ``root``: nodes ``nodes``, partition ``debug``, GRES ``gpu``.

    Lifecycle: :meth:`write_config` (and later :meth:`write_layout`), :meth:`start`,
    :meth:`stop` (idempotent; also a context manager and run at interpreter exit).
    ``isolation`` says whether jobs are fenced to their gres device files, and why not.
    """

    def __init__(self, root: str, nodes: Sequence[str] = ("n1", "n2"), cpus_per_node: int = 2,
                 real_memory: int = 1000, *, cgroup: str = "auto", ready_timeout: float = 30.0,
                 die_with_parent: bool = True, hostname: Optional[str] = None,
                 isolation: Optional[Isolation] = None,
                 mounts_path: str = "/proc/self/mounts") -> None:
        if not nodes:
            raise ValueError("a sandbox cluster needs at least one node")
        if len(nodes) > 250:
            raise ValueError("at most 250 nodes (one loopback address each)")
        bad = [n for n in nodes if not _NODE_NAME.fullmatch(n)]
        if bad or len(set(nodes)) != len(nodes):
            raise ValueError(f"node names must be distinct host names (letters, digits, '-'): "
                             f"{', '.join(bad) or ', '.join(nodes)}")
        self.root = os.path.abspath(root)
        self.paths = SandboxPaths(self.root)
        self.nodes: List[str] = list(nodes)
        self.cpus_per_node = cpus_per_node
        self.real_memory = real_memory
        self.ready_timeout = ready_timeout
        self.die_with_parent = die_with_parent
        self.hostname = hostname or socket.gethostname().split(".")[0]
        # cgroup: "auto" detects, "v1"/"v2" insist, "none" turns cgroups off; ``isolation``
        # replaces detection altogether (tests use it to force a failing cgroup setup).
        self.isolation: Isolation = isolation or detect_isolation(mounts_path, want=cgroup)
        self.timings: Dict[str, float] = {}
        self._node_gres: Dict[str, str] = {n: "" for n in self.nodes}
        self._extra: Dict[str, Optional[str]] = {}
        self._ports: Optional[List[int]] = None  # [slurmctld, node 1, node 2, ...]
        self._first_job_id = random.randint(1000, 9_000_000)  # distinct cgroup paths per run
        self._ctld: Optional[Daemon] = None
        self._slurmds: Dict[str, Daemon] = {}
        self._munged: Optional[Daemon] = None
        self._version: Optional[Tuple[int, ...]] = None
        self._loaded_layout: Optional[Tuple[str, Tuple[Tuple[str, str], ...]]] = None

    # -- files ---------------------------------------------------------------------------

    def node_specs(self) -> List[NodeSpec]:
        ports = self._ensure_ports()
        return [NodeSpec(n, f"127.0.0.{i + 2}", ports[i + 1], self.cpus_per_node,
                         self.real_memory, self._node_gres.get(n, ""))
                for i, n in enumerate(self.nodes)]

    def _ensure_ports(self) -> List[int]:
        if self._ports is None:
            self._ports = free_ports(len(self.nodes) + 1)
        return self._ports

    def write_config(self, node_gres: Mapping[str, str], gres_conf_text: str,
                     extra_conf: Optional[Mapping[str, Optional[str]]] = None) -> str:
        """Write slurm.conf, the node include, gres.conf, cgroup.conf; return the include's path.

        ``node_gres``: node -> slurm.conf ``Gres=`` text.  ``extra_conf``: more slurm.conf keys
        (``Prolog``, ``Epilog``, ...), replacing defaults of the same name; ``None`` removes one.
        """
        if extra_conf is not None:
            self._extra = dict(extra_conf)
        # The root must be trusted (root's, not writable by others: safefs refuses it
        # otherwise, untouched); 0755 so munged finds o+x above its socket.
        ensure_dir(self.root, 0o755, "sandbox root", tighten=True)
        for d in (self.paths.etc, self.paths.state, self.paths.spool, self.paths.log,
                  self.paths.run, self.paths.jobs,
                  *(os.path.join(self.paths.spool, f"slurmd-{n}") for n in self.nodes)):
            ensure_dir(d, 0o755, "sandbox directory", tighten=True)
        self._write_slurm_conf()
        write_atomic(self.paths.plugstack_conf, "# no SPANK plugins in the sandbox\n")
        return self.write_layout(node_gres, gres_conf_text)

    @property
    def extra_conf(self) -> Dict[str, Optional[str]]:
        """The slurm.conf keys given to :meth:`write_config` (a copy): to add to them, e.g.
        the accounting keys, and write the config again."""
        return dict(self._extra)

    def write_layout(self, node_gres: Mapping[str, str], gres_conf_text: str) -> str:
        """Rewrite only gres.conf and the node include (a layout change); return the include."""
        unknown = sorted(set(node_gres) - set(self.nodes))
        if unknown:
            raise SandboxError(f"node_gres names unknown node(s) {', '.join(unknown)}; "
                               f"the sandbox has {', '.join(self.nodes)}")
        self._node_gres.update(node_gres)
        write_atomic(self.paths.gres_conf, gres_conf_text)
        write_atomic(self.paths.nodes_conf, render_nodes_conf(self.node_specs()))
        return self.paths.nodes_conf

    def _write_slurm_conf(self) -> None:
        ports = self._ensure_ports()
        text = render_slurm_conf(self.paths, self.node_specs(), ctld_host=self.hostname,
                                 ctld_port=ports[0], cgroup_mode=self.isolation.mode,
                                 first_job_id=self._first_job_id, extra=self._extra)
        write_atomic(self.paths.slurm_conf, text)
        cgroup_text = render_cgroup_conf(self.isolation.mode, self.isolation.mountpoint,
                                         self.version)
        if cgroup_text is None:
            if os.path.exists(self.paths.cgroup_conf):
                os.unlink(self.paths.cgroup_conf)
        else:
            write_atomic(self.paths.cgroup_conf, cgroup_text)

    # -- environment ---------------------------------------------------------------------

    def env(self, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        """A full environment for Slurm client commands: ``base`` (default os.environ) without
        inherited SLURM_*/SBATCH_*/... variables, plus ``SLURM_CONF``.  The munge socket is
        named in slurm.conf (``AuthInfo=socket=``), so nothing else is needed."""
        base = os.environ if base is None else base
        env = {k: v for k, v in base.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
        env["SLURM_CONF"] = self.paths.slurm_conf
        return env

    def export_lines(self) -> str:
        """Shell lines that point Slurm commands at this cluster."""
        return f"export SLURM_CONF={shlex.quote(self.paths.slurm_conf)}\n"

    def command(self, args: Sequence[str], input: Optional[str] = None, timeout: float = 30.0,
                check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command (``["scontrol", "ping"]``) against this cluster."""
        exe = which(args[0]) or args[0]
        cwd = self.paths.jobs if os.path.isdir(self.paths.jobs) else None
        try:
            proc = subprocess.run([exe, *args[1:]], input=input, capture_output=True, text=True,
                                  env=self.env(), timeout=timeout, cwd=cwd,
                                  umask=DAEMON_UMASK)  # sbatch hands it to the job
        except subprocess.TimeoutExpired as err:
            raise SandboxError(f"{' '.join(args)} did not answer within {timeout:g}s; "
                               f"see {self.paths.ctld_log}") from err
        except OSError as err:
            raise SandboxError(f"cannot run {exe}: {err.strerror}") from err
        if check and proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise SandboxError(f"{' '.join(args)} failed (exit {proc.returncode}): "
                               f"{detail[-1] if detail else 'no output'}")
        return proc

    @property
    def version(self) -> Tuple[int, ...]:
        """Slurm's version from ``slurmctld -V``, e.g. (22, 5, 8)."""
        if self._version is None:
            exe = which("slurmctld") or "slurmctld"
            try:
                out = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=10)
                self._version = parse_version(out.stdout + out.stderr)
            except (OSError, subprocess.TimeoutExpired):
                return ()  # not installed (yet): unknown, asked again next time
        return self._version

    # -- daemons -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._ctld is not None

    def start(self) -> "SandboxCluster":
        """Start munged, slurmctld and the slurmds; wait until every node is idle.

        If the cgroup configuration keeps the nodes from coming up, the cluster is started
        again without cgroups and ``isolation`` says why device fencing is unavailable.
        """
        if self.running:
            return self
        missing = missing_requirements()
        if missing:
            raise SandboxError("cannot run a sandbox Slurm cluster: missing " + "; ".join(missing))
        if not os.path.exists(self.paths.slurm_conf):
            raise SandboxError(f"no {self.paths.slurm_conf}: call write_config() before start()")
        t0 = time.monotonic()
        _LIVE.add(self)
        try:
            self._start_munged()
            try:
                self._start_slurm(clean=True)
            except SandboxError as err:
                blame = _cgroup_failure(err)
                if self.isolation.mode == "none" or blame is None:
                    raise
                self._stop_slurm()
                self.isolation = Isolation(
                    "none", False, f"cgroup/{self.isolation.mode} kept the nodes from starting "
                    f"({blame}); running without cgroups", self.isolation.mountpoint)
                self._write_slurm_conf()
                self._start_slurm(clean=True)
        except BaseException:
            self.stop()
            raise
        self._loaded_layout = self._layout_signature()
        self.timings["start"] = time.monotonic() - t0
        return self

    def _start_munged(self) -> None:
        p = self.paths
        for sub, mode in (("", 0o755), ("etc", 0o700), ("run", 0o755), ("lib", 0o700),
                          ("log", 0o700)):
            ensure_dir(os.path.join(p.munge_dir, sub), mode, "munge directory", tighten=True)
        check_socket_path(p.munge_socket)
        if not os.path.exists(p.munge_key):
            write_munge_key(p.munge_key)
        munged = self._munged = self._new_munged()
        munged.start(self.env(), self.die_with_parent)
        if not wait_for(lambda: os.path.exists(p.munge_socket) or not munged.alive(), 10):
            raise self._error("munged did not create its socket within 10s")
        if not self._munged.alive():
            raise self._error("munged exited at start")

    def _new_munged(self) -> Daemon:
        p, mdir = self.paths, self.paths.munge_dir
        pid_file = os.path.join(mdir, "run", "munged.pid")
        return Daemon("munged", [
            which("munged") or "munged", "--foreground", f"--socket={p.munge_socket}",
            f"--key-file={p.munge_key}", f"--pid-file={pid_file}",
            f"--log-file={os.path.join(mdir, 'log', 'munged.log')}",
            f"--seed-file={os.path.join(mdir, 'lib', 'munged.seed')}", "--num-threads=2",
        ], os.path.join(p.log, "munged.out"), pid_file)

    def _new_ctld(self) -> Daemon:
        return Daemon("slurmctld", [which("slurmctld") or "slurmctld", "-D"],
                      os.path.join(self.paths.log, "slurmctld.out"), self.paths.ctld_pid)

    def _new_slurmd(self, node: str) -> Daemon:
        argv = in_uts_namespace(which("unshare") or "unshare", node,
                                [which("slurmd") or "slurmd", "-D"])
        return Daemon(f"slurmd-{node}", argv, os.path.join(self.paths.log, f"slurmd-{node}.out"),
                      self.paths.slurmd_pid(node), proc_name="slurmd")

    def _start_slurm(self, clean: bool) -> None:
        env = self.env()
        self._ctld = self._new_ctld()
        if clean:
            self._ctld.argv.append("-i")
        self._ctld.start(env, self.die_with_parent)
        for node in self.nodes:
            self._slurmds[node] = self._new_slurmd(node)
            self._slurmds[node].start(env, self.die_with_parent)
        self.wait_nodes(self._all_idle_as_configured, self.ready_timeout,
                        "every node idle with its configured gres")

    def _stop_slurm(self) -> None:
        stop_daemons(list(self._slurmds.values()))
        if self._ctld is not None:
            stop_daemons([self._ctld])
        self._slurmds = {}
        self._ctld = None

    def stop(self) -> None:
        """Cancel jobs, stop every daemon this cluster started; safe to call twice."""
        try:
            if self._ctld is not None and self._ctld.alive():
                self._cancel_all_jobs()
        finally:
            self._stop_slurm()
            if self._munged is not None:
                stop_daemons([self._munged])
                self._munged = None
            self._remove_cgroups()
            _LIVE.discard(self)

    def _cancel_all_jobs(self, timeout: float = 5.0) -> None:
        """So that no job step outlives its slurmd.  Best effort: errors are ignored."""
        def queued() -> List[str]:
            return self.command(["squeue", "-h", "-o", "%i"], timeout=timeout,
                                check=False).stdout.split()
        try:
            ids = queued()
            if ids:
                self.command(["scancel", *ids], timeout=timeout, check=False)
                wait_for(lambda: not queued(), timeout, 0.2)
        except SandboxError:
            pass

    def __enter__(self) -> "SandboxCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _remove_cgroups(self) -> None:
        """Remove the (empty) cgroup v1 directories slurmd left: <mount>/<ctrl>/slurm_<node>."""
        if self.isolation.mode != "v1":
            return
        base = self.isolation.mountpoint
        try:
            controllers = os.listdir(base)
        except OSError:
            return
        for ctrl in controllers:
            for node in self.nodes:
                top = os.path.join(base, ctrl, f"slurm_{node}")
                if not os.path.isdir(top):
                    continue
                for dirpath, _dirs, _files in os.walk(top, topdown=False):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass  # busy: another cluster with this node name, or a job still there

    # -- state ---------------------------------------------------------------------------

    _SHOW_NODES = ("scontrol", "show", "node", "-o")

    def status(self) -> Dict[str, NodeStatus]:
        """Node name -> :class:`NodeStatus` (state, flags, typed gres counts, reason)."""
        return parse_scontrol_nodes(self.command(self._SHOW_NODES, timeout=10).stdout)

    def expected_gres(self, node: str) -> Dict[str, int]:
        return parse_gres(self._node_gres.get(node, ""))

    def _all_idle_as_configured(self, nodes: Dict[str, NodeStatus]) -> bool:
        return all(n in nodes and nodes[n].state == "idle" and nodes[n].responding
                   and nodes[n].gres == self.expected_gres(n) for n in self.nodes)

    def _all_registered_as_configured(self, nodes: Dict[str, NodeStatus]) -> bool:
        """Every node registered with its ``Gres=``, but a late apply (:func:`late_applied`):
        that node is its caller's to finish, and waiting for it only fails the reconfigure
        of every other node (issue 10)."""
        late = late_applied(nodes, {n: self.expected_gres(n) for n in self.nodes},
                            self._gres_conf_counts())
        return all(n in late or (n in nodes and nodes[n].registered
                                 and nodes[n].gres == self.expected_gres(n))
                   for n in self.nodes)

    def _gres_conf_counts(self) -> Dict[str, Dict[str, int]]:
        """Node -> gpu type -> records in the sandbox's gres.conf (what its slurmd reports)."""
        try:
            with open(self.paths.gres_conf) as f:
                text = f.read()
        except OSError:
            return {}
        out: Dict[str, Dict[str, int]] = {}
        for n in self.nodes:
            counts: Dict[str, int] = {}
            try:
                records = parse_gres_conf(text, n, self.paths.gres_conf)
            except GresConfError:
                continue
            for r in records:
                counts[r.type or ""] = counts.get(r.type or "", 0) + 1
            out[n] = counts
        return out

    def wait_nodes(self, ready: Callable[[Dict[str, NodeStatus]], bool], timeout: float,
                   what: str = "nodes ready",
                   on_slow: Optional[Callable[[Dict[str, NodeStatus]], None]] = None,
                   slow_after: float = 0.0) -> Dict[str, NodeStatus]:
        """Poll the node status until ``ready(status)``; fail fast when a daemon has exited.

        ``on_slow`` is called once with the status when ``slow_after`` seconds have passed.
        """
        t0 = time.monotonic()
        last: Dict[str, NodeStatus] = {}
        slow_done = on_slow is None
        while True:
            dead = self._dead_daemons()
            if dead:
                raise self._error(f"{', '.join(dead)} exited while waiting for {what}")
            proc = self.command(self._SHOW_NODES, timeout=10, check=False)
            if proc.returncode == 0:
                last = parse_scontrol_nodes(proc.stdout)
                if ready(last):
                    return last
            elapsed = time.monotonic() - t0
            if not slow_done and elapsed >= slow_after and on_slow is not None:
                slow_done = True
                on_slow(last)
            if elapsed >= timeout:
                states = ", ".join(f"{n}: {'+'.join([s.base.upper(), *sorted(s.flags)])} "
                                   f"gres={s.gres_text or '-'}"
                                   + (f" ({s.reason})" if s.reason else "")
                                   for n, s in sorted(last.items())) or "scontrol did not answer"
                raise self._error(f"not {what} after {timeout:g}s ({states})")
            time.sleep(0.1 if elapsed < 3 else 0.25)

    def _dead_daemons(self) -> List[str]:
        daemons = [d for d in [self._munged, self._ctld, *self._slurmds.values()] if d]
        return [f"{d.name} (exit {d.exit_status()})" for d in daemons
                if d.exit_status() is not None]

    def log_tails(self, lines: int = 15) -> Dict[str, str]:
        """The last lines of every daemon log and output file, by file name."""
        out = {}
        for name in sorted(os.listdir(self.paths.log)) if os.path.isdir(self.paths.log) else []:
            out[name] = tail(os.path.join(self.paths.log, name), lines)
        return out

    def _error(self, message: str) -> SandboxError:
        tails = self.log_tails(30)
        errors: List[str] = []
        seen: Set[str] = set()  # a daemon's stderr (*.out) repeats its log file
        for name, text in tails.items():
            found = error_lines(text, HARMLESS_LOG_ERRORS)
            if found and _strip_prefix(found[-1]) not in seen:
                seen.add(_strip_prefix(found[-1]))
                errors.append(f"{name}: {_strip_prefix(found[-1])}")
        hint = f"; last errors: {' | '.join(errors)}" if errors else ""
        return SandboxError(f"sandbox: {message}{hint}; logs in {self.paths.log}", tails)

    # -- changes -------------------------------------------------------------------------

    def reconfigure(self, timeout: float = 60.0,
                    restart_controller: Optional[bool] = None) -> ReconfigureResult:
        """``scontrol reconfigure``, then wait until every node is registered with its gres.

        What Slurm 22.05 does with a new gres.conf on reconfigure (measured, see
        docs/sandbox-notes.md): the slurmds re-read it, but slurmctld refuses a new count of
        File-backed gres ("... invalid with File configuration") and, when the count stays
        the same, keeps the old type of each record, so a job can get another type's device
        files.  So before 23.11 (where reconfigure restarts the daemons itself) slurmctld is
        restarted, state kept, whenever the layout changed since the daemons last read it;
        ``restart_controller`` True/False overrides that choice (False: see the plain
        behaviour: nothing is restarted, and a refused change ends in a timeout).  A refused
        count in the log also restarts it; if nodes are still not registered with their
        configured gres after a while, slurmctld and then the stale slurmds are restarted.
        On 23.11+ none of that: the release's own reconfigure, then the wait (a layout it
        does not apply ends in a timeout).  The wait leaves out a node whose gres.conf
        already disagrees with its ``Gres=`` and that slurmctld refused for it (a late
        apply, :func:`late_applied`): it is the caller's to finish, and no restart helps it.
        The result names every restart.
        """
        t0 = time.monotonic()
        restarted: List[str] = []
        layout = self._layout_signature()
        if restart_controller is None:
            # 23.11+: the release's own reconfigure restarts the daemons (measured on 24.11
            # and 26.05: new counts and types applied); nothing else is done for it, so a
            # reconfigure that does not apply a layout fails here instead of being helped.
            restart_controller = (layout != self._loaded_layout if self.version < (23, 11)
                                  else False)
        offset = os.path.getsize(self.paths.ctld_log) if os.path.exists(self.paths.ctld_log) else 0
        self.command(["scontrol", "reconfigure"], timeout=30)
        self._wait_controller(15)
        refused = _GRES_COUNT_REFUSED in self._read_from(self.paths.ctld_log, offset)
        if restart_controller or (refused and restart_controller is not False):
            self.restart_slurmctld()
            restarted.append("slurmctld")

        def on_slow(nodes: Dict[str, NodeStatus]) -> None:
            if "slurmctld" not in restarted:
                self.restart_slurmctld()
                restarted.append("slurmctld")
                return
            late = late_applied(nodes, {n: self.expected_gres(n) for n in self.nodes},
                                self._gres_conf_counts())
            for n in self.nodes:
                s = nodes.get(n)
                if n not in late and (s is None or not s.registered
                                      or s.gres != self.expected_gres(n)):
                    self.restart_slurmd(n)
                    restarted.append(f"slurmd-{n}")

        self.wait_nodes(self._all_registered_as_configured, timeout,
                        "every node registered with its configured gres",
                        on_slow=None if restart_controller is False else on_slow,
                        slow_after=min(10.0, timeout / 3))
        self._loaded_layout = layout
        seconds = time.monotonic() - t0
        self.timings["reconfigure"] = seconds
        return ReconfigureResult(seconds, tuple(restarted))

    def _layout_signature(self) -> Tuple[str, Tuple[Tuple[str, str], ...]]:
        try:
            with open(self.paths.gres_conf) as f:
                text = f.read()
        except OSError:
            text = ""
        return text, tuple(sorted(self._node_gres.items()))

    def _wait_controller(self, timeout: float) -> bool:
        return wait_for(lambda: self.command(["scontrol", "ping"], timeout=10, check=False)
                        .returncode == 0, timeout, 0.1)

    @staticmethod
    def _read_from(path: str, offset: int) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def restart_slurmctld(self) -> None:
        """Stop slurmctld and start it again, keeping its saved state (jobs, drained nodes)."""
        if self._ctld is not None:
            stop_daemons([self._ctld])
        self._start_ctld_again()

    def crash_slurmctld(self) -> None:
        """SIGKILL slurmctld and start it again the way :meth:`restart_slurmctld` does (same
        StateSaveLocation, no ``-c``): a crash of the controller.  Unlike a stop (SIGTERM),
        slurmctld gets no chance to save its state: it comes back with what its last periodic
        save wrote (measured in tests/test_slurmctld_crash.py)."""
        if self._ctld is not None:
            kill_daemons([self._ctld])
        self._start_ctld_again()

    def _start_ctld_again(self) -> None:
        ctld = self._ctld = self._new_ctld()
        ctld.start(self.env(), self.die_with_parent)
        if not wait_for(lambda: self.command(["scontrol", "ping"], timeout=10, check=False)
                        .returncode == 0 or not ctld.alive(), 30, 0.1):
            raise self._error("slurmctld did not answer within 30s of a restart")
        if not self._ctld.alive():
            raise self._error("slurmctld exited right after a restart")
        if self.version < (23, 11):
            # The nodes stay UNKNOWN until they next register (~4 s); a reconfigure makes
            # them register now.  (Since 23.11 it would restart the daemons once more.)
            self.command(["scontrol", "reconfigure"], timeout=30, check=False)
        else:
            # 24.11 keeps a node UNKNOWN(+DRAIN) until its slurmd answers slurmctld's first
            # ping, and refuses `state=resume` until then ("Invalid node state specified",
            # measured); callers expect the nodes back as they were saved, so wait for them.
            t0 = time.monotonic()
            self.wait_nodes(lambda st: all(n in st and st[n].base != "unknown" for n in self.nodes),
                            60, "every node registered again after a slurmctld restart")
            self.timings["nodes back after a slurmctld restart"] = round(time.monotonic() - t0, 2)

    def restart_slurmd(self, node: str) -> None:
        if node in self._slurmds:
            stop_daemons([self._slurmds[node]])
        self._slurmds[node] = self._new_slurmd(node)
        self._slurmds[node].start(self.env(), self.die_with_parent)

    def drain(self, node: str, reason: str, wait: bool = True, timeout: float = 30.0) -> None:
        """Drain ``node``; with ``wait``, until no job runs there any more (state ``drain``)."""
        self.command(["scontrol", "update", f"nodename={node}", "state=drain",
                      f"reason={reason}"])
        if wait:
            self.wait_nodes(lambda s: node in s and s[node].state == "drain", timeout,
                            f"node {node} drained")

    def resume(self, node: str, wait: bool = True, timeout: float = 30.0) -> None:
        self.command(["scontrol", "update", f"nodename={node}", "state=resume"])
        if wait:
            self.wait_nodes(lambda s: node in s and s[node].state not in ("drain", "drng"),
                            timeout, f"node {node} resumed")

    # -- jobs ----------------------------------------------------------------------------

    def submit(self, args: Sequence[str], script: str) -> int:
        """``sbatch --parsable ARGS`` with ``script`` on stdin; returns the job id.

        Without ``-o``/``--output`` in ``args`` the output goes to ``<root>/jobs/slurm-<id>.out``
        (see :meth:`job_output`).
        """
        proc = self.command(["sbatch", "--parsable", *args], input=script, timeout=30)
        return parse_sbatch_parsable(proc.stdout)

    def job(self, job_id: int) -> JobInfo:
        out = self.command(["scontrol", "show", "job", "-o", str(job_id)], timeout=10)
        return parse_scontrol_job(out.stdout)

    def wait_job(self, job_id: int, timeout: float = 30.0) -> JobInfo:
        """Poll until the job has finished; return its final :class:`JobInfo` (``.state``)."""
        t0 = time.monotonic()
        while True:
            info = self.job(job_id)
            if info.finished:
                return info
            if time.monotonic() - t0 >= timeout:
                raise self._error(f"job {job_id} not finished after {timeout:g}s (state "
                                  f"{info.state}, reason {info.reason or '-'}, nodes "
                                  f"{info.nodes or '-'})")
            time.sleep(0.1)

    def job_output(self, job_id: int) -> str:
        """The default output file of a job submitted without ``--output``."""
        try:
            with open(os.path.join(self.paths.jobs, f"slurm-{job_id}.out")) as f:
                return f.read()
        except OSError:
            return ""

    # -- detached clusters ---------------------------------------------------------------
    # A cluster started with die_with_parent=False and then detach()ed outlives this process;
    # another process takes it over with SandboxCluster.attach(root) (the daemons are found
    # through their pid files, checked against the process name).

    @property
    def state_file(self) -> str:
        return os.path.join(self.paths.run, "sandbox.json")

    def save_state(self) -> str:
        """Write what attach() needs that the config files do not say; return the path."""
        layout = self._loaded_layout
        state = {"version": 1, "nodes": self.nodes, "cpus_per_node": self.cpus_per_node,
                 "real_memory": self.real_memory, "hostname": self.hostname,
                 "ports": self._ensure_ports(), "first_job_id": self._first_job_id,
                 "extra": self._extra,
                 "isolation": {"mode": self.isolation.mode, "devices": self.isolation.devices,
                               "reason": self.isolation.reason,
                               "mountpoint": self.isolation.mountpoint},
                 "loaded_layout": None if layout is None else [layout[0], list(layout[1])]}
        write_atomic(self.state_file, json.dumps(state, indent=1, sort_keys=True) + "\n")
        return self.state_file

    def detach(self) -> None:
        """Leave the daemons running after this process exits; attach() finds them again."""
        if self.die_with_parent:
            raise SandboxError("detach() needs a cluster started with die_with_parent=False")
        self.save_state()
        _LIVE.discard(self)

    @classmethod
    def attach(cls, root: str) -> "SandboxCluster":
        """The detached cluster under ``root``, its daemons found through their pid files.

        ``Gres=`` of each node is read from the node include as it is now (a layout change
        may have rewritten it since).  Raises :class:`SandboxError` when ``root`` holds no
        saved state.
        """
        paths = SandboxPaths(os.path.abspath(root))
        path = os.path.join(paths.run, "sandbox.json")
        try:
            with open(path) as f:
                state = json.load(f)
        except FileNotFoundError:
            raise SandboxError(f"no sandbox cluster state under {paths.root} ({path} missing)") \
                from None
        except (OSError, ValueError) as err:
            raise SandboxError(f"{path}: unreadable sandbox state ({err}); stop the daemons "
                               f"named in {paths.run}/*.pid by hand") from err
        iso = state["isolation"]
        cluster = cls(paths.root, state["nodes"], state["cpus_per_node"], state["real_memory"],
                      die_with_parent=False, hostname=state["hostname"],
                      isolation=Isolation(iso["mode"], iso["devices"], iso["reason"],
                                          iso["mountpoint"]))
        cluster._ports = list(state["ports"])
        cluster._first_job_id = state["first_job_id"]
        cluster._extra = dict(state["extra"])
        loaded = state.get("loaded_layout")
        if loaded is not None:
            cluster._loaded_layout = (loaded[0], tuple(tuple(p) for p in loaded[1]))
        try:
            with open(paths.nodes_conf) as f:
                nodes_text = f.read()
        except OSError:
            nodes_text = ""
        for line in nodes_text.splitlines():
            pairs = parse_pairs(line)
            if pairs.get("NodeName") in cluster._node_gres:
                cluster._node_gres[pairs["NodeName"]] = pairs.get("Gres", "")
        cluster._munged = cluster._new_munged()
        cluster._ctld = cluster._new_ctld()
        cluster._slurmds = {n: cluster._new_slurmd(n) for n in cluster.nodes}
        return cluster

    def daemon_pids(self) -> Dict[str, List[int]]:
        """Daemon name (munged, slurmctld, slurmd-<node>) -> its live pids ([] when gone)."""
        daemons = {"munged": self._munged or self._new_munged(),
                   "slurmctld": self._ctld or self._new_ctld()}
        for n in self.nodes:
            daemons[f"slurmd-{n}"] = self._slurmds.get(n) or self._new_slurmd(n)
        return {name: d.pids() for name, d in daemons.items()}
