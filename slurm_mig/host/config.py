"""The slurm-mig configuration file: strict, versioned TOML (schema version 1).

Strict because a typo in a key (``partiall``) must not silently fall back to a
default on a production node: unknown keys, wrong types, relative paths and
contradictions are :class:`~slurm_mig.core.errors.ConfigError` naming the file and the key
path.  Versioned so a later schema can be told apart instead of misread.

Everything is optional except ``version = 1``; a missing default file means all
defaults.  ``paths.root`` is prefixed to every path (``[paths]`` and ``sim.root``) so
one setting moves a whole installation into a test tree.  Defaults that follow
another setting (``gres_conf`` under ``slurm_conf_dir``, ``sim.root`` under
``state_dir``) follow it when only that one is set.

:func:`parse_config` is pure; :func:`load_config` only reads the file.  The example
``etc/config.toml`` documents every key.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple, Union

from ..core.catalog import load_catalog
from ..core.errors import ConfigError, UnknownModel
from ..core.inputs import (MAX_GPU_INDEX, MAX_TIMEOUT, MAX_WAIT, NumberError, from_text, from_value,
                           read_regular_file, shown)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

DEFAULT_PATH = "/etc/slurm-mig/config.toml"
ENV_VAR = "SLURM_MIG_CONFIG"
VERSION = 1
BACKENDS = ("nvml", "sim")
DEFAULTS_SOURCE = "<defaults>"
#: Longest path (bytes, ``paths.root`` applied) and path component, as Linux's PATH_MAX/NAME_MAX.
PATH_MAX = 4095
NAME_MAX = 255

#: (lo, hi) of every number key, by ``section.key``; docs/configuration.md lists the same.
#: Seconds are ints or floats; the rest are whole numbers.  A test checks that every
#: number field of the dataclasses below has an entry here.
SECONDS = {
    "apply.lock_timeout": MAX_TIMEOUT,
    "slurm.sync_wait": MAX_WAIT,
    "slurm.register_timeout": MAX_TIMEOUT,
    "hooks.kill_grace": MAX_TIMEOUT,
    "rebalance.apply_wait": MAX_TIMEOUT,
    "rebalance.demand_half_life": MAX_WAIT,
    "rebalance.drain_horizon": 7 * 24 * 3600,
}
COUNTS = {
    "rebalance.max_nodes_per_cycle": 100_000,
    "rebalance.hysteresis_cycles": 10_000,
    "rebalance.floor.<type>": 100_000,
}


@dataclass(frozen=True)
class HostPaths:
    """Where slurm-mig finds the host's files; all absolute, ``paths.root`` already applied."""

    dev: str = "/dev"
    proc: str = "/proc"
    state_dir: str = "/var/lib/slurm-mig"  #: journal, job->instance records, locks
    run_dir: str = "/run/slurm-mig"
    slurm_conf_dir: str = "/etc/slurm"
    gres_conf: str = "/etc/slurm/gres.conf"
    node_gres_include: str = "/etc/slurm/slurm-mig-nodes.conf"


@dataclass(frozen=True)
class SimSettings:
    root: str = "/var/lib/slurm-mig/sim"
    gpus: Tuple[str, ...] = ("A100-40GB", "A100-40GB")  #: catalog keys, one per simulated GPU


@dataclass(frozen=True)
class LayoutSettings:
    """Wanted layout text per GPU index; checked against the GPU's model only at apply time."""

    default: Optional[str] = None  #: None: no layout wanted unless one is given per GPU
    gpus: Tuple[Tuple[int, str], ...] = ()  #: (gpu index, layout text), sorted by index
    mig_mode: Optional[bool] = None  #: MIG mode every GPU must be in for sync; None: not checked
    mig_modes: Tuple[Tuple[int, bool], ...] = ()  #: (gpu index, MIG mode), over ``mig_mode``

    def for_gpu(self, index: int) -> Optional[str]:
        return dict(self.gpus).get(index, self.default)

    def mig_mode_for(self, index: int) -> Optional[bool]:
        """The MIG mode GPU ``index`` must be in (``sync`` refuses otherwise); None: any."""
        return dict(self.mig_modes).get(index, self.mig_mode)


@dataclass(frozen=True)
class ApplySettings:
    partial: bool = False  #: apply the possible part when busy instances block the rest
    lock_timeout: float = 60  #: seconds to wait for another slurm-mig's lock


@dataclass(frozen=True)
class SlurmSettings:
    """How this node talks to Slurm (sync; later rebalance)."""

    node_name: Optional[str] = None  #: None: $SLURMD_NODENAME, else the short hostname
    scontrol: str = "scontrol"
    reconfigure_command: Tuple[str, ...] = ("scontrol", "reconfigure")
    sync_wait: float = 3600  #: seconds sync waits for running jobs to end after draining
    register_timeout: float = 120  #: seconds sync waits for the node to register its new gres
    #: drain every schedulable GPU node across a reconfigure, resume each once it registered
    #: (docs/rebalance.md, "The hold"); False: accept the window
    hold_during_reconfigure: bool = True
    #: how rebalance reads the queue and the nodes: "auto" (pyslurm when it imports against
    #: this Slurm, else the commands' JSON), "json", or "pyslurm" (an error without it)
    reader: str = "auto"


@dataclass(frozen=True)
class HookSettings:
    """What the prolog and epilog do beyond the must."""

    epilog_wipe: bool = False  #: re-create a job's instances after it, so no state leaks to the next
    kill_grace: float = 5  #: seconds between SIGTERM and SIGKILL for a job's leftover processes
    #: what the TaskProlog gives tasks: "mig-uuids" (CUDA_/NVIDIA_VISIBLE_DEVICES = MIG UUIDs)
    #: or "slurm" (Slurm's own values; the prolog writes no task env file)
    task_env: str = "mig-uuids"
    #: dcgm-exporter's --hpc-job-mapping-dir, kept equal to the job records; "" = off
    dcgm_job_mapping_dir: str = ""


@dataclass(frozen=True)
class RebalanceSettings:
    """The controller's queue-driven repartitioning (docs/rebalance.md)."""

    enabled: bool = False  #: rebalance changes nothing unless true (dry runs always work)
    partitions: Optional[Tuple[str, ...]] = None  #: None: every partition
    nodes: Optional[Tuple[str, ...]] = None  #: None: every node; entries may be patterns
    floor: Tuple[Tuple[str, int], ...] = ()  #: (Slurm GPU type, instances kept somewhere)
    max_nodes_per_cycle: int = 4
    hysteresis_cycles: int = 3
    #: also drain nodes with running jobs (their instances kept): false, true, or "auto" (only
    #: a node whose jobs end within drain_horizon, when the drain pays; docs/planner.md)
    drain_mixed: Union[bool, str] = False
    drain_horizon: float = 14400  #: seconds (4 h); "auto" never drains a node whose jobs end later (0: none)
    apply_wait: float = 90  #: seconds a cycle waits for its nodes' sync --pending (0: next cycle)
    lock: str = "/var/lib/slurm-mig/rebalance.lock"
    state_file: str = "/var/lib/slurm-mig/rebalance.json"
    #: seconds over which the recent demand per type (what spare room on a recut GPU gets,
    #: docs/planner.md) halves; 0: only the current cycle's demand
    demand_half_life: float = 3600
    demand_file: str = "/var/lib/slurm-mig/rebalance-demand.json"  #: that memory between cycles


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics in node_exporter textfiles (docs/metrics.md); "" = off."""

    textfile: str = ""  #: this node's textfile (hooks, apply, sync, mode); "" = off
    state_file: str = "/var/lib/slurm-mig/metrics.json"  #: the node's counters between runs
    rebalance_textfile: str = ""  #: the controller's textfile (rebalance); "" = off
    rebalance_state_file: str = "/var/lib/slurm-mig/rebalance-metrics.json"


@dataclass(frozen=True)
class Config:
    version: int = VERSION
    backend: str = "nvml"
    paths: HostPaths = HostPaths()
    sim: SimSettings = SimSettings()
    layout: LayoutSettings = LayoutSettings()
    apply: ApplySettings = ApplySettings()
    slurm: SlurmSettings = SlurmSettings()
    hooks: HookSettings = HookSettings()
    rebalance: RebalanceSettings = RebalanceSettings()
    metrics: MetricsSettings = MetricsSettings()
    source: str = field(default=DEFAULTS_SOURCE, compare=False)  #: file it came from

    def layout_for(self, gpu_index: int) -> Optional[str]:
        return self.layout.for_gpu(gpu_index)


def default_config() -> Config:
    return Config()


def sim_config_text(root: str, models, extra: str = "") -> str:
    """A config that puts simulated GPUs and every host path under ``root/host``.

    What the demo, the benchmarks and the tests write: one setting (``paths.root``)
    moves the simulator, the state and the Slurm files into a private tree.
    """
    gpus = ", ".join(f'"{m}"' for m in models)
    return (f'version = 1\nbackend = "sim"\n[paths]\nroot = "{root}/host"\n'
            f"[sim]\ngpus = [{gpus}]\n") + extra


def resolve_config_path(option: Optional[str], environ: Mapping[str, str]) -> Optional[str]:
    """The explicitly chosen file (``--config``, then ``$SLURM_MIG_CONFIG``), or None for the default."""
    return option or environ.get(ENV_VAR) or None


def host_paths(config: Config) -> Tuple[str, str]:
    """(dev, proc): where the driver's device files and ``/proc`` entries are.  The
    simulator lays out its own under its root (``<sim.root>/dev``, ``<sim.root>/proc``)."""
    if config.backend == "sim":
        return os.path.join(config.sim.root, "dev"), os.path.join(config.sim.root, "proc")
    return config.paths.dev, config.paths.proc


def node_name(environ: Mapping[str, str], option: Optional[str] = None) -> str:
    """This host's Slurm node name: ``--node`` (or ``[slurm] node_name``), else
    ``$SLURMD_NODENAME``, else the short host name."""
    if option:
        return option
    if environ.get("SLURMD_NODENAME"):
        return environ["SLURMD_NODENAME"]
    import socket

    return socket.gethostname().split(".")[0]


def load_config(path: Optional[str] = None) -> Config:
    """Read and check the config; ``None`` means the default path, which may be absent."""
    explicit = path is not None
    path = DEFAULT_PATH if path is None else path
    try:
        data, st = read_regular_file(path)  # no FIFO, device or directory; at most 1 MiB
    except FileNotFoundError as err:
        if not explicit:
            return default_config()
        raise ConfigError(
            f"{path}: config file does not exist; create it (see etc/config.toml) "
            f"or point --config/{ENV_VAR} at an existing file"
        ) from err
    _check_trusted(path, st)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text: {err}") from err
    return parse_config(text, path)


def _check_trusted(path: str, st) -> None:
    """Root acts on what the config says (paths, commands to run): the file, any link to it
    and every directory above it must be root's (or this user's) alone (docs/security.md)."""
    from .safefs import UnsafePath, check_dir, resolve_link, trusted_owners

    owners = trusted_owners()
    try:
        real = resolve_link(path, "config file")
        check_dir(os.path.dirname(real), "config directory")
    except OSError as err:
        raise ConfigError(f"{path}: cannot check the config's directory: "
                          f"{err.strerror or err}") from err
    except UnsafePath as err:
        raise ConfigError(f"{path}: {err}") from err
    if st.st_uid not in owners or st.st_mode & 0o022:
        raise ConfigError(f"{path}: config file is owned by uid {st.st_uid} with mode "
                          f"{stat.S_IMODE(st.st_mode):04o}; root runs what it says, so only root "
                          f"may write it: `chown root: {path}; chmod 0644 {path}`")


def parse_config(text: str, source: str) -> Config:
    """Check ``text`` against schema version 1 and build the :class:`Config`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from err
    except RecursionError as err:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(f"{source}: not valid TOML: arrays or tables nested too deeply; "
                          f"this is not a slurm-mig config (see etc/config.toml)") from err
    return _Reader(source).config(doc)


class _Reader:
    """Reads one parsed document; every error names ``source`` and the key path."""

    def __init__(self, source: str):
        self.source = source
        self.root = ""  #: paths.root, once read
        self.under_root = lambda p: p

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def table(self, doc: Mapping, key: str, name: str, known: Tuple[str, ...]) -> dict:
        value = doc.get(name, {})
        path = f"{key}.{name}" if key else name
        if not isinstance(value, dict):
            raise self.error(path, f"expected a table, got {shown(value)}")
        self.check_keys(value, path, known)
        return value

    def check_keys(self, value: Mapping, path: str, known: Tuple[str, ...]) -> None:
        for k in value:
            if k not in known:
                full = f"{path}.{k}" if path else k
                raise ConfigError(
                    f"{self.source}: unknown key '{full}' (known: {', '.join(sorted(known))})"
                )

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {shown(value)}")
        return value

    def path(self, value: Any, path: str) -> str:
        value = self.string(value, path)
        if not posixpath.isabs(value):
            raise self.error(
                path, f"{shown(value)} is not an absolute path; start it with / (paths.root moves every path)"
            )
        if "\0" in value:
            raise self.error(path, f"{shown(value)} holds a NUL character; no path can")
        for part in value.split("/"):
            if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
                raise self.error(path, f"{shown(part)} is longer than {NAME_MAX} bytes, the "
                                       f"longest file name Linux allows; use a shorter name")
        return posixpath.normpath(value)

    def full_path(self, value: str, path: str, *, root: bool = True) -> str:
        """``value`` with ``paths.root`` applied (unless already), at most :data:`PATH_MAX` bytes."""
        value = self.under_root(value) if root else value
        if len(value.encode("utf-8", "surrogatepass")) > PATH_MAX:
            what = f"{path} (with paths.root)" if self.root else path
            raise self.error(what, f"{shown(value)} is longer than {PATH_MAX} bytes, the longest "
                                   f"path Linux allows; use a shorter path")
        return value

    def config(self, doc: Mapping) -> Config:
        self.check_keys(doc, "", ("version", "backend", "paths", "sim", "layout", "apply", "slurm",
                                  "hooks", "rebalance", "metrics"))
        self.version(doc)
        backend = self.string(doc.get("backend", "nvml"), "backend")
        if backend not in BACKENDS:
            raise self.error("backend", f"{shown(backend)} is not one of {', '.join(BACKENDS)}")
        paths, sim_root = self.paths(doc)
        sim = self.sim(doc, sim_root, backend)
        rebalance = self.rebalance(doc, paths.state_dir)
        return Config(
            version=VERSION,
            backend=backend,
            paths=paths,
            sim=sim,
            layout=self.layout(doc),
            apply=self.apply(doc),
            slurm=self.slurm(doc),
            hooks=self.hooks(doc),
            rebalance=rebalance,
            metrics=self.metrics(doc, paths.state_dir),
            source=self.source,
        )

    def version(self, doc: Mapping) -> None:
        if "version" not in doc:
            raise self.error("version", f"missing; add version = {VERSION}")
        v = doc["version"]
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error("version", f"expected an integer, got {shown(v)}")
        if v != VERSION:
            raise ConfigError(
                f"{self.source}: version {v} is not supported (this slurm-mig reads version {VERSION})"
            )

    def paths(self, doc: Mapping) -> Tuple[HostPaths, str]:
        """The host paths and the simulator root, with derived defaults and ``root`` applied."""
        names = tuple(HostPaths.__dataclass_fields__)
        t = self.table(doc, "", "paths", ("root",) + names)
        root = self.string(t.get("root", ""), "paths.root")
        root = self.full_path(self.path(root, "paths.root"), "paths.root", root=False) if root else ""
        values = {n: self.path(t[n], f"paths.{n}") for n in names if n in t}
        conf_dir = values.setdefault("slurm_conf_dir", HostPaths.slurm_conf_dir)
        values.setdefault("gres_conf", posixpath.join(conf_dir, "gres.conf"))
        values.setdefault("node_gres_include", posixpath.join(conf_dir, "slurm-mig-nodes.conf"))
        for n in names:
            values.setdefault(n, getattr(HostPaths, n))
        sim_t = doc.get("sim", {})
        sim_root = posixpath.join(values["state_dir"], "sim")
        if isinstance(sim_t, dict) and "root" in sim_t:
            sim_root = self.path(sim_t["root"], "sim.root")

        def under_root(p: str) -> str:
            return posixpath.join(root, p.lstrip("/")) if root else p

        self.root, self.under_root = root, under_root
        return (HostPaths(**{n: self.full_path(v, f"paths.{n}") for n, v in values.items()}),
                self.full_path(sim_root, "sim.root"))

    def sim(self, doc: Mapping, root: str, backend: str) -> SimSettings:
        t = self.table(doc, "", "sim", ("root", "gpus"))
        gpus = t.get("gpus", list(SimSettings().gpus))
        if not isinstance(gpus, list):
            raise self.error("sim.gpus", f"expected a list of GPU models, got {shown(gpus)}")
        catalog = load_catalog()
        keys = []
        for i, g in enumerate(gpus):
            where = f"sim.gpus[{i}]"
            try:
                keys.append(catalog.model(self.string(g, where)).key)
            except UnknownModel as err:
                raise self.error(where, str(err)) from err
        if backend == "sim" and not keys:
            raise self.error("sim.gpus", "empty but backend is 'sim'; list at least one GPU model")
        return SimSettings(root=root, gpus=tuple(keys))

    def layout_text(self, value: Any, path: str) -> str:
        value = self.string(value, path)
        if not value.strip():
            raise self.error(path, "empty; give a layout such as '1g.10gb:7', or 'empty' for none")
        return value.strip()

    def gpu_table(self, t: Mapping, key: str, what: str) -> list:
        """``[layout.<key>]``: GPU index (as written) -> value, as (index, value) pairs."""
        per_gpu = t.get(key, {})
        if not isinstance(per_gpu, dict):
            raise self.error(f"layout.{key}", f"expected a table of GPU index = {what}, got {shown(per_gpu)}")
        out = []
        for k, v in per_gpu.items():
            try:
                index = from_text(k, 0, MAX_GPU_INDEX, kind="a GPU index")
            except NumberError as err:
                raise self.error(f"layout.{key}", f"key {shown(k)} is {err}") from err
            if k != str(index):
                raise self.error(f"layout.{key}", f"key {shown(k)} is not a GPU index as written; "
                                                  f"write {index}")
            out.append((index, k, v))
        return out

    def mig_mode(self, value: Any, path: str) -> bool:
        if value not in ("on", "off"):
            raise self.error(path, f"expected \"on\" or \"off\", got {shown(value)}")
        return value == "on"

    def layout(self, doc: Mapping) -> LayoutSettings:
        t = self.table(doc, "", "layout", ("default", "gpus", "mig_mode", "mig_modes"))
        default = None
        if "default" in t:
            default = self.layout_text(t["default"], "layout.default")
        gpus = [(index, self.layout_text(v, f"layout.gpus.{k}"))
                for index, k, v in self.gpu_table(t, "gpus", "layout")]
        mig_mode = self.mig_mode(t["mig_mode"], "layout.mig_mode") if "mig_mode" in t else None
        mig_modes = [(index, self.mig_mode(v, f"layout.mig_modes.{k}"))
                     for index, k, v in self.gpu_table(t, "mig_modes", "\"on\" or \"off\"")]
        settings = LayoutSettings(default=default, gpus=tuple(sorted(gpus)), mig_mode=mig_mode,
                                  mig_modes=tuple(sorted(mig_modes)))
        for index, _ in settings.gpus:  # a layout needs MIG mode on
            if settings.mig_mode_for(index) is False:
                where = (f"layout.mig_modes.{index}" if index in dict(settings.mig_modes)
                         else "layout.mig_mode")
                raise self.error(f"layout.gpus.{index}", f"a layout needs MIG mode on, but {where} "
                                                         f"is \"off\"; drop one of them")
        if default is not None and mig_mode is False and not any(m for _, m in settings.mig_modes):
            raise self.error("layout.default", "a layout needs MIG mode on, but layout.mig_mode is "
                                               "\"off\" for every GPU; drop one of them")
        return settings

    def seconds(self, value: Any, path: str) -> float:
        """A number of seconds, int or float, from 0 to the key's bound in :data:`SECONDS`."""
        try:
            return from_value(value, 0, SECONDS[path], whole=False, kind="a number of seconds")
        except NumberError as err:
            raise self.error(path, f"{shown(value)} is {err}") from err

    def slurm(self, doc: Mapping) -> SlurmSettings:
        known = ("node_name", "scontrol", "reconfigure_command", "sync_wait", "register_timeout",
                 "reader", "hold_during_reconfigure")
        t = self.table(doc, "", "slurm", known)
        d = SlurmSettings()
        node = t.get("node_name")
        if node is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.string(node, "slurm.node_name")):
            raise self.error("slurm.node_name", f"{shown(node)} is not a Slurm node name")
        command = t.get("reconfigure_command", list(d.reconfigure_command))
        if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
            raise self.error("slurm.reconfigure_command",
                             f"expected a non-empty list of strings (argv, no shell), got {shown(command)}")
        hold = t.get("hold_during_reconfigure", d.hold_during_reconfigure)
        if not isinstance(hold, bool):
            raise self.error("slurm.hold_during_reconfigure",
                             f"expected true or false, got {shown(hold)}")
        return SlurmSettings(
            node_name=node,
            scontrol=self.string(t.get("scontrol", d.scontrol), "slurm.scontrol"),
            reconfigure_command=tuple(command),
            sync_wait=self.seconds(t.get("sync_wait", d.sync_wait), "slurm.sync_wait"),
            register_timeout=self.seconds(t.get("register_timeout", d.register_timeout),
                                          "slurm.register_timeout"),
            reader=self.reader(t.get("reader", d.reader)),
            hold_during_reconfigure=hold,
        )

    def reader(self, value) -> str:
        value = self.string(value, "slurm.reader")
        if value not in ("auto", "json", "pyslurm"):
            raise self.error("slurm.reader", f"{shown(value)} is not one of auto, json, pyslurm")
        return value

    def hooks(self, doc: Mapping) -> HookSettings:
        t = self.table(doc, "", "hooks", ("epilog_wipe", "kill_grace", "task_env",
                                          "dcgm_job_mapping_dir"))
        wipe = t.get("epilog_wipe", False)
        if not isinstance(wipe, bool):
            raise self.error("hooks.epilog_wipe", f"expected true or false, got {shown(wipe)}")
        grace = self.seconds(t.get("kill_grace", HookSettings().kill_grace), "hooks.kill_grace")
        task_env = t.get("task_env", HookSettings().task_env)
        if task_env not in ("mig-uuids", "slurm"):
            raise self.error("hooks.task_env", f"{shown(task_env)} is not one of mig-uuids, slurm")
        dcgm = self.string(t.get("dcgm_job_mapping_dir", ""), "hooks.dcgm_job_mapping_dir")
        if dcgm:
            dcgm = self.full_path(self.path(dcgm, "hooks.dcgm_job_mapping_dir"),
                                  "hooks.dcgm_job_mapping_dir")
        return HookSettings(epilog_wipe=wipe, kill_grace=grace, task_env=task_env,
                            dcgm_job_mapping_dir=dcgm)

    def apply(self, doc: Mapping) -> ApplySettings:
        t = self.table(doc, "", "apply", ("partial", "lock_timeout"))
        partial = t.get("partial", False)
        if not isinstance(partial, bool):
            raise self.error("apply.partial", f"expected true or false, got {shown(partial)}")
        timeout = self.seconds(t.get("lock_timeout", ApplySettings().lock_timeout), "apply.lock_timeout")
        return ApplySettings(partial=partial, lock_timeout=timeout)

    def names(self, value: Any, path: str) -> Tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.error(path, f"expected a list of names (strings), got {shown(value)}")
        return tuple(v.strip() for v in value)

    def count(self, value: Any, path: str, bound: str) -> int:
        """A whole number from 0 to :data:`COUNTS` ``[bound]``."""
        try:
            return from_value(value, 0, COUNTS[bound])
        except NumberError as err:
            raise self.error(path, f"{shown(value)} is {err}") from err

    def rebalance(self, doc: Mapping, state_dir: str) -> RebalanceSettings:
        known = tuple(RebalanceSettings.__dataclass_fields__)
        t = self.table(doc, "", "rebalance", known)
        d = RebalanceSettings()
        flags = {}
        for key in ("enabled", "drain_mixed"):
            flags[key] = t.get(key, getattr(d, key))
            if key == "drain_mixed" and flags[key] == "auto":
                continue
            if not isinstance(flags[key], bool):
                also = ' or "auto"' if key == "drain_mixed" else ""
                raise self.error(f"rebalance.{key}", f"expected true or false{also}, got {shown(flags[key])}")
        floor = t.get("floor", {})
        if not isinstance(floor, dict):
            raise self.error("rebalance.floor", f"expected a table of GPU type = count, got {shown(floor)}")
        floors = []
        for k, v in floor.items():
            if not re.fullmatch(r"[0-9]+g\.[0-9]+gb(\+[a-z]+)?", k):
                raise self.error(f"rebalance.floor.{k}", "not a MIG type as Slurm names it "
                                                         "(e.g. '3g.40gb'); quote it: \"3g.40gb\" = 1")
            floors.append((k, self.count(v, f"rebalance.floor.{k}", "rebalance.floor.<type>")))
        paths = {}
        for key, name in (("lock", "rebalance.lock"), ("state_file", "rebalance.json"),
                          ("demand_file", "rebalance-demand.json")):
            paths[key] = (self.full_path(self.path(t[key], f"rebalance.{key}"), f"rebalance.{key}")
                          if key in t else self.full_path(posixpath.join(state_dir, name),
                                                          f"rebalance.{key}", root=False))
        horizon = self.seconds(t.get("drain_horizon", d.drain_horizon), "rebalance.drain_horizon")
        return RebalanceSettings(
            enabled=flags["enabled"],
            partitions=self.names(t["partitions"], "rebalance.partitions") if "partitions" in t else None,
            nodes=self.names(t["nodes"], "rebalance.nodes") if "nodes" in t else None,
            floor=tuple(sorted(floors)),
            max_nodes_per_cycle=self.count(t.get("max_nodes_per_cycle", d.max_nodes_per_cycle),
                                           "rebalance.max_nodes_per_cycle",
                                           "rebalance.max_nodes_per_cycle"),
            hysteresis_cycles=self.count(t.get("hysteresis_cycles", d.hysteresis_cycles),
                                         "rebalance.hysteresis_cycles", "rebalance.hysteresis_cycles"),
            drain_mixed=flags["drain_mixed"],
            apply_wait=self.seconds(t.get("apply_wait", d.apply_wait), "rebalance.apply_wait"),
            drain_horizon=horizon,
            lock=paths["lock"],
            state_file=paths["state_file"],
            demand_half_life=self.seconds(t.get("demand_half_life", d.demand_half_life),
                                          "rebalance.demand_half_life"),
            demand_file=paths["demand_file"],
        )

    def metrics(self, doc: Mapping, state_dir: str) -> MetricsSettings:
        known = tuple(MetricsSettings.__dataclass_fields__)
        t = self.table(doc, "", "metrics", known)
        values = {}
        for key in ("textfile", "rebalance_textfile"):
            text = self.string(t.get(key, ""), f"metrics.{key}")
            if text:
                text = self.full_path(self.path(text, f"metrics.{key}"), f"metrics.{key}")
                if not text.endswith(".prom") or posixpath.basename(text).startswith("."):
                    raise self.error(f"metrics.{key}", f"{shown(text)}: node_exporter's textfile "
                                                       f"collector reads only *.prom files (not "
                                                       f"hidden ones); name it like slurm_mig.prom")
            values[key] = text
        for key, name in (("state_file", "metrics.json"),
                          ("rebalance_state_file", "rebalance-metrics.json")):
            values[key] = (self.full_path(self.path(t[key], f"metrics.{key}"), f"metrics.{key}")
                           if key in t else self.full_path(posixpath.join(state_dir, name),
                                                           f"metrics.{key}", root=False))
        return MetricsSettings(**values)
