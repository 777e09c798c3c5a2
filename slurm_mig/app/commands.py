"""What the admin commands do, as functions that return plain results.

Each function takes its collaborators (config, backend) and returns a dict with
stable keys: the same dict is printed as JSON by ``--json`` (keys pinned by a
test) or turned into text by :mod:`slurm_mig.app.render`.  No printing here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, List, Optional

from ..core import catalog as catalog_mod
from ..core.devices import instance_devices, read_mig_minors
from ..core.errors import (ConfigError, InputError, MigNotEnabled, NotSupported, SlurmMigError,
                           UnknownModel)
from ..core.gputypes import GpuInfo
from ..core.inputs import MAX_GPU_INDEX, NumberError, from_text, shown
from ..core.layout import enumerate_layouts, format_layout, is_maximal, maximal_layouts
from ..gpu.backend import GpuBackend
from ..host.config import Config, host_paths, node_name
from ..node.inventory import catalog_model, current_layout, gpu_model, no_mig_gpu

log = logging.getLogger(__name__)


def profile_dict(p) -> dict:
    return {
        "id": p.id,
        "name": p.name,
        "aliases": list(p.aliases),
        "compute_slices": p.compute_slices,
        "memory_slices": p.memory_slices,
        "memory_mib": p.memory_mib,
        "max_count": p.max_count,
        "placements": list(p.placements),
        "placement_size": p.placement_size,
    }


def model_dict(m) -> dict:
    return {
        "key": m.key,
        "name": m.name,
        "aliases": list(m.aliases),
        "pci_device_ids": list(m.pci_device_ids),
        "compute_slices": m.compute_slices,
        "memory_slices": m.memory_slices,
        "placement_units": m.placement_units,
        "profiles": [profile_dict(p) for p in m.profiles],
        "unverified": list(m.unverified),
    }


def catalog_models(query: Optional[str] = None) -> dict:
    cat = catalog_mod.load_catalog()
    models = [cat.model(query)] if query else list(cat.models)
    return {"models": [model_dict(m) for m in models]}


def catalog_verify(backend: GpuBackend) -> dict:
    """Where the live driver and the catalog disagree, per GPU."""
    out = []
    for info in backend.gpus():
        entry = {"index": info.index, "name": info.name, "model": None, "mig": info.mig_current,
                 "compared": False, "differences": []}
        base = catalog_model(info)
        entry["model"] = base.key if base else None
        observed = _profiles_for_verify(backend, info)
        if not observed:
            entry["note"] = ("MIG mode is off and the driver offers no MIG profiles until it is on"
                             if base else "no MIG profiles: not a MIG GPU")
        else:
            if not info.mig_current:
                entry["note"] = "MIG mode is off; profiles read anyway (this driver offers them)"
            entry["compared"] = True
            diffs = catalog_mod.verify(base, info.name, observed)
            entry["differences"] = [
                {"profile_id": d.profile_id, "field": d.field, "catalog": d.catalog, "nvml": d.nvml}
                for d in diffs
            ]
        out.append(entry)
    return {"gpus": out}


def _profiles_for_verify(backend: GpuBackend, info: GpuInfo) -> list:
    """The driver's profiles; with MIG mode off, [] where the driver will not say.

    A real H200 on driver 580.159.04 answered every profile and placement with MIG
    off (tests/data/nvml/), so the check runs on GPUs we may not switch; older drivers
    and GPUs without MIG answer NOT_SUPPORTED."""
    try:
        return list(backend.profiles(info.index))
    except NotSupported:
        if info.mig_current:
            raise
        return []


def layouts(model_query: str, maximal: bool = False, include_me: bool = True) -> dict:
    model = catalog_mod.load_catalog().model(model_query)
    found = maximal_layouts(model, include_me) if maximal else enumerate_layouts(model, include_me)
    return {"model": model.key, "name": model.name, "maximal": maximal,
            "layouts": [format_layout(l) for l in found]}


def status(config: Config, backend: GpuBackend) -> dict:
    """GPUs, MIG mode, current layout, and each instance with its ids, pids and device files;
    ``warnings``: one line per damaged job record (its instances show as busy)."""
    from ..node.apply import JobAwareBackend

    dev, proc = host_paths(config)
    minors = read_mig_minors(proc)
    backend = JobAwareBackend(backend, config.paths.state_dir)
    gpus = []
    for info in backend.gpus():
        base = catalog_model(info)
        entry = {
            "index": info.index, "name": info.name, "model": base.key if base else None,
            "uuid": info.uuid, "minor": info.minor,
            "mig": {"current": info.mig_current, "pending": info.mig_pending},
            "layout": None, "maximal": None, "instances": [],
        }
        gpus.append(entry)
        if not info.mig_current:
            continue
        model = gpu_model(backend, info)
        found = backend.instances(info.index)
        layout = current_layout(model, found)
        entry["layout"] = format_layout(layout)
        entry["maximal"] = is_maximal(model, layout)
        for inst in sorted(found, key=lambda i: i.start):
            files: List[str] = []
            if inst.ci_id is not None:
                files = list(instance_devices(minors, info.minor, inst.gi_id, inst.ci_id, dev).files())
            entry["instances"].append({
                "profile": model.profile(inst.profile_id).name, "profile_id": inst.profile_id,
                "start": inst.start, "size": inst.size, "gi_id": inst.gi_id, "ci_id": inst.ci_id,
                "uuid": inst.uuid, "pids": list(inst.pids), "jobs": list(inst.jobs), "busy": inst.busy,
                "complete": inst.complete, "devices": files,
            })
    return {"backend": config.backend, "gpus": gpus, "warnings": list(backend.record_warnings)}


def select_gpus(backend: GpuBackend, gpu: str) -> list:
    """``--gpu N`` or ``all`` -> GpuInfo list; MIG-capable GPUs only for ``all``."""
    infos = backend.gpus()
    if gpu == "all":
        return [i for i in infos if i.mig_current]
    try:
        index = from_text(gpu, 0, MAX_GPU_INDEX, kind="a GPU index")
    except NumberError as err:
        raise InputError(f"--gpu {shown(gpu)}: {err}; give a GPU index (0, 1, ...) "
                         f"or 'all'") from err
    for info in infos:
        if info.index == index:
            if not info.mig_current:
                gpu_model(backend, info)  # raises MigNotEnabled with the fix
            return [info]
    raise InputError(
        f"--gpu {index}: no such GPU (this node has {', '.join(str(i.index) for i in infos) or 'none'})"
    )


__all__ = [
    "catalog_models", "catalog_verify", "layouts", "status", "select_gpus",
    "MigNotEnabled",
]


def _apply_layout(config: Config, backend: GpuBackend, text: str, gpu: str = "all", *,
                  dry_run: bool = False, partial: bool = False) -> dict:
    """Parse ``text`` for every selected GPU first (bad input changes nothing), then apply.

    Instances a job record holds count as busy from the start (also when placing a count
    form); ``warnings``: one line per damaged job record."""
    from ..core.layout import Instance, parse_layout
    from ..node.apply import JobAwareBackend, apply_node

    backend = JobAwareBackend(backend, config.paths.state_dir)
    wanted = {}
    infos = select_gpus(backend, gpu)
    if not infos:  # --gpu all and no GPU in MIG mode: nothing applied, so not a success
        raise no_mig_gpu(backend.gpus())
    for info in infos:
        model = gpu_model(backend, info)
        found = backend.instances(info.index)
        busy = [Instance.of(model.profile(m.profile_id), m.start) for m in found if m.busy]
        wanted[info.index] = parse_layout(text, model, current=current_layout(model, found), busy=busy)
    from ..host.devnodes import device_nodes

    results = apply_node(backend, wanted, state_dir=config.paths.state_dir, partial=partial,
                         dry_run=dry_run, lock_timeout=config.apply.lock_timeout,
                         devices=device_nodes(config))
    gpus = [r.as_dict() for r in results]
    return _with_dcgm_mapping(config, {
        "dry_run": dry_run, "gpus": gpus,
        "blocked": any(g["blocked"] or g["blocked_creates"] for g in gpus),
        "warnings": list(backend.record_warnings)})


def apply_layout(config: Config, backend: GpuBackend, text: str, gpu: str = "all", *,
                 dry_run: bool = False, partial: bool = False) -> dict:
    """``slurm-mig apply``: :func:`_apply_layout`, metered (:func:`_metered`)."""
    return _metered(config, backend, "apply", dry_run, lambda: _apply_layout(
        config, backend, text, gpu, dry_run=dry_run, partial=partial))


def _with_dcgm_mapping(config: Config, result: dict) -> dict:
    """After apply, sync, ``sync --pending`` or ``mode`` (not a dry run), with ``[hooks]
    dcgm_job_mapping_dir`` set: dcgm-exporter's mapping files rewritten from the job records
    (:mod:`slurm_mig.node.dcgmmap`), as ``result["dcgm_mapping"]`` (the key only then)."""
    directory = config.hooks.dcgm_job_mapping_dir
    if not directory or result.get("dry_run"):
        return result
    from ..node.dcgmmap import refresh

    try:
        done = refresh(directory, config.paths.state_dir, config.apply.lock_timeout)
    except (OSError, SlurmMigError) as err:
        done = {"error": f"dcgm-exporter mapping files in {directory} not rewritten ({err}); "
                         f"the next prolog, epilog or sync retries"}
    return dict(result, dcgm_mapping=done)


def _metered(config: Config, backend: GpuBackend, command: str, dry_run: bool,
             run: Callable[[], dict]) -> dict:
    """``run()`` for apply, sync, ``sync --pending`` or ``mode``; with ``[metrics] textfile``
    set and not a dry run, its result, duration and the GPUs read afterwards go to the
    node's metrics (:mod:`slurm_mig.node.metrics`), as ``result["metrics"]`` (the key only
    then).  A failed run is counted and its error raised (bad input, exit 2, is no run); a
    metrics failure is only a warning (``result["metrics"]["error"]``, printed on stderr by
    the CLI)."""
    m = config.metrics
    if not m.textfile or dry_run:
        return run()
    t0 = time.monotonic()
    try:
        result = run()
    except InputError:  # bad input (exit 2): nothing was tried, so no run to count
        raise
    except Exception:
        _record_run(config, backend, command, time.monotonic() - t0, None)
        raise
    error = _record_run(config, backend, command, time.monotonic() - t0, result)
    return dict(result, metrics={"textfile": m.textfile, "error": error})


def _record_run(config: Config, backend: GpuBackend, command: str, seconds: float,
                result: Optional[dict]) -> Optional[str]:
    """One run into the node's metrics, with the GPUs as the driver shows them now; the
    error line when the metrics could not be written (never raised)."""
    from ..core.nodemetrics import record_run, set_inventory
    from ..node.metrics import read_inventory, update

    now = time.time()
    try:
        gpus: Optional[list] = read_inventory(backend)
    except Exception as err:  # the counts still go in; the instances wait
        log.warning("metrics: GPUs not read (%s); the instance gauges keep their last values", err)
        gpus = None

    def change(state: dict) -> None:
        record_run(state, command, seconds, now, result)
        if gpus is not None:
            set_inventory(state, gpus, now)

    try:
        update(config.metrics.state_file, config.metrics.textfile, config.paths.state_dir, change)
    except Exception as err:  # metrics are never worth a failed command
        line = str(err) if isinstance(err, SlurmMigError) else (
            f"metrics not written ({type(err).__name__}: {err}); report it")
        log.warning("%s", line)
        return line
    return None


def node_metrics(config: Config, backend: GpuBackend, *, write: bool = False) -> dict:
    """``slurm-mig metrics``: this node's metrics in Prometheus' text format, the GPUs read
    from the driver now and the counters from ``[metrics] state_file``; ``write``: also
    (re)write ``[metrics] textfile`` (and keep the GPUs read in the state)."""
    from ..core.nodemetrics import set_inventory
    from ..node.metrics import read_inventory, update

    m = config.metrics
    if write and not m.textfile:
        raise ConfigError(f"{config.source}: metrics.textfile: not set, so there is no textfile "
                          f"to write; set [metrics] textfile = \"/var/lib/prometheus/node-exporter/"
                          f"slurm_mig.prom\" (docs/metrics.md)")
    gpus = read_inventory(backend)
    now = time.time()
    text = update(m.state_file, m.textfile if write else None, config.paths.state_dir,
                  lambda state: set_inventory(state, gpus, now), persist=write)
    return {"text": text, "textfile": m.textfile if write else None}


# ----------------------------------------------------------------------------- sync


def sync(config: Config, backend: GpuBackend, environ, *, node: Optional[str] = None, layout: Optional[str] = None,
         wait: Optional[float] = None, dry_run: bool = False) -> dict:
    """``slurm-mig sync``: this node to its layout through Slurm (:mod:`slurm_mig.change.sync`)."""
    from ..change.sync import sync_node
    from ..slurm.client import CommandSlurm

    slurm = CommandSlurm(config.slurm.scontrol, config.slurm.reconfigure_command)
    return _metered(config, backend, "sync", dry_run, lambda: _with_dcgm_mapping(config, sync_node(
        config, backend, slurm, node_name(environ, node or config.slurm.node_name),
        layout=layout, wait=wait, dry_run=dry_run).as_dict()))


def mig_mode(config: Config, backend: GpuBackend, environ, want: bool, *, gpu: str = "all",
             reset: bool = False, node: Optional[str] = None, wait: Optional[float] = None,
             dry_run: bool = False) -> dict:
    """``slurm-mig mode on|off``: MIG mode through Slurm (:mod:`slurm_mig.change.mode`)."""
    from ..change.mode import set_mode
    from ..slurm.client import CommandSlurm

    slurm = CommandSlurm(config.slurm.scontrol, config.slurm.reconfigure_command)
    return _metered(config, backend, "mode", dry_run, lambda: _with_dcgm_mapping(config, set_mode(
        config, backend, slurm, node_name(environ, node or config.slurm.node_name),
        want, gpu=gpu, reset=reset, wait=wait, dry_run=dry_run).as_dict()))


# ----------------------------------------------------------------------------- rebalance


def sync_pending(config: Config, backend: GpuBackend, environ, *, node: Optional[str] = None,
                 dry_run: bool = False) -> dict:
    """``slurm-mig sync --pending``: apply the layout rebalance left for this node."""
    from ..change.channel import ScontrolExtra
    from ..change.pending import sync_pending as run
    from ..slurm.client import CommandSlurm

    slurm = CommandSlurm(config.slurm.scontrol, config.slurm.reconfigure_command)
    return _metered(config, backend, "sync_pending", dry_run, lambda: _with_dcgm_mapping(config, run(
        config, backend, slurm, ScontrolExtra(config.slurm.scontrol),
        node_name(environ, node or config.slurm.node_name), dry_run=dry_run).as_dict()))


def rebalance(config: Config, environ, *, dry_run: bool = False) -> dict:
    """``slurm-mig rebalance``: one controller cycle (:mod:`slurm_mig.rebalance.cycle`)."""
    from ..rebalance.cycle import default_collaborators, rebalance as run

    reader, slurm, channel = default_collaborators(config)
    return run(config, reader, slurm, channel, dry_run=dry_run).as_dict()


# ----------------------------------------------------------------------------- accounting


def accounting_tres(models: Optional[str] = None, *, config: Optional[Config] = None,
                    backend: Optional[GpuBackend] = None, keep: str = "",
                    aliases: bool = True) -> dict:
    """``slurm-mig accounting-tres``: the AccountingStorageTRES line for the chosen models.

    Models: ``models`` (comma-separated catalog keys or names), else the config's [sim]
    gpus (``config``), else this node's GPUs (``backend``), else every catalog model (with
    a warning: the line is then longer than a cluster needs, which does no harm)."""
    from ..core.accounting import accounting_tres as build, parse_keep

    cat = catalog_mod.load_catalog()
    warnings: List[str] = []
    if models is not None:
        names = [m.strip() for m in models.split(",") if m.strip()]
        if not names:
            raise InputError("--models: no model given; name catalog keys such as "
                             "A100-80GB,H100-80GB (see `slurm-mig catalog`)")
        try:
            chosen, source = [cat.model(n) for n in names], "models"
        except UnknownModel as err:
            raise UnknownModel(f"--models: {err}") from err
    elif config is not None:
        chosen, source = [cat.model(n) for n in config.sim.gpus], "config"
    elif backend is not None:
        chosen, source = _node_models(backend, warnings), "node"
    else:
        chosen, source = list(cat.models), "catalog"
        warnings.append("no --models, --from-config or --from-node: listing every catalog "
                        "model's profiles; name your cluster's models for a shorter line")
    result = build(chosen, parse_keep(keep), aliases=aliases).as_dict()
    result.update({"source": source, "warnings": warnings})
    return result


def _node_models(backend: GpuBackend, warnings: List[str]) -> list:
    """This node's GPU models: the catalog's entry, with the driver's profile names where
    MIG is on (a driver may name a profile differently, e.g. ``3g.39gb``)."""
    out = []
    for info in backend.gpus():
        base = catalog_model(info)
        if info.mig_current:
            out.append(gpu_model(backend, info))
        elif base is not None:
            out.append(base)
        else:
            warnings.append(f"gpu {info.index} ({info.name}): not in the catalog and MIG is off; "
                            f"its types are not listed")
    if not out:
        raise InputError("--from-node: this node has no GPU slurm-mig knows; name the "
                         "cluster's models with --models (see `slurm-mig catalog`)")
    return out


# ----------------------------------------------------------------------------- simulate


def _read_text(path: str, what: str, fix: str) -> str:
    """A user's input file, whole (traces of a month are tens of MB)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise InputError(f"{path}: cannot read the {what}: {reason}; {fix}") from err


def write_output(path: str, data: bytes, what: str) -> None:
    """A file the user asked for (a trace, a plot): temp file in its directory, then rename."""
    import os
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise InputError(f"{path}: cannot write the {what}: {err.strerror or err}; pick a "
                         f"directory you can write") from err


def simulate(config: Config, trace_path: str, cluster_path: str, *, policies, costs, settings,
             best_static_tries: int, dynamic_from: str = "cluster") -> dict:
    """``slurm-mig simulate``: read the trace and the cluster file, run every policy
    (:func:`slurm_mig.simulate.run.simulate`); the result has ``series`` for the plot."""
    from ..rebalance.cycle import policy_of
    from ..simulate.cluster import read_cluster
    from ..simulate.run import Options
    from ..simulate.run import simulate as run_all
    from ..simulate.trace import read_trace

    cat = catalog_mod.load_catalog()
    trace = read_trace(_read_text(trace_path, "trace", "give a CSV or sacct -X -P file"),
                       trace_path)
    if not trace.jobs:
        skipped = "; ".join(f"{n} {why}" for why, n in trace.skipped) or "no rows"
        raise InputError(f"{trace_path}: no job to replay ({skipped}); per-type GPU requests "
                         f"need AccountingStorageTRES (docs/accounting.md)")
    cluster = read_cluster(_read_text(cluster_path, "cluster file", "see docs/simulate.md"),
                            cluster_path, cat)
    opts = Options(tuple(policies), costs, settings, best_static_tries, dynamic_from,
                   config.rebalance.demand_half_life)
    result = run_all(trace, cluster, policy_of(config), cat, opts)
    result["trace"]["file"] = trace_path
    result["cluster"]["file"] = cluster_path
    result["config"]["file"] = config.source
    return result


def generate_trace(path: str, *, gpus: int, hours: float, seed: int, load: float,
                   phase_hours: float, mean_minutes: float) -> dict:
    """``slurm-mig simulate --generate FILE``: a trace with shifting demand, written as CSV."""
    from ..simulate.generate import generate
    from ..simulate.trace import to_csv

    jobs = generate(gpus=gpus, duration_s=hours * 3600, seed=seed, load=load,
                    phase_s=phase_hours * 3600, mean_s=mean_minutes * 60)
    write_output(path, to_csv(jobs).encode(), "trace")
    return {"file": path, "jobs": len(jobs), "gpus": gpus, "hours": hours, "seed": seed,
            "load": load, "phase_hours": phase_hours, "mean_minutes": mean_minutes}


# ----------------------------------------------------------------------------- mig-parted

#: Largest mig-parted config read; NVIDIA's config-default.yaml, every model, is about 15 KiB.
MAX_MIG_PARTED_BYTES = 4 << 20


def read_mig_parted_file(path: str) -> str:
    """The text of a mig-parted config file (``-``: standard input), at most
    :data:`MAX_MIG_PARTED_BYTES`; a directory, device or FIFO is refused without blocking."""
    import os
    import stat
    import sys

    too_big = InputError(f"{path}: larger than {MAX_MIG_PARTED_BYTES} bytes; not a mig-parted "
                         f"config")
    if path == "-":
        data = sys.stdin.buffer.read(MAX_MIG_PARTED_BYTES + 1)
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise InputError(f"{path}: cannot read the mig-parted config: "
                             f"{err.strerror or err}; check the path") from err
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InputError(f"{path}: not a regular file; give the mig-parted config.yaml")
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(MAX_MIG_PARTED_BYTES + 1)
        except OSError as err:
            raise InputError(f"{path}: cannot read the mig-parted config: "
                             f"{err.strerror or err}") from err
        finally:
            os.close(fd)
    if len(data) > MAX_MIG_PARTED_BYTES:
        raise too_big
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                         f"give the mig-parted config.yaml") from err


def _node_targets(backend: GpuBackend) -> list:
    """This node's GPUs as mig-parted targets: the driver's profiles and current layout
    where MIG is on (kept where the counts allow, busy instances first), the catalog's
    entry where it is off."""
    from ..core.layout import Instance
    from ..core.migparted import Target

    out = []
    for info in backend.gpus():
        if info.mig_current:
            model = gpu_model(backend, info)
            found = backend.instances(info.index)
            busy = tuple(Instance.of(model.profile(m.profile_id), m.start) for m in found if m.busy)
            out.append(Target(info.index, info.name, model, (info.pci_device_id,),
                              current_layout(model, found), busy, mig_now=True))
        else:
            out.append(Target(info.index, info.name, catalog_model(info), (info.pci_device_id,),
                              mig_now=False))
    return out


def mig_parted_import(path: str, name: str, *, model: Optional[str] = None,
                      config: Optional[Config] = None, backend: Optional[GpuBackend] = None) -> dict:
    """``slurm-mig mig-parted import``: config ``name`` of the file at ``path`` as a layout
    per GPU, for this node's GPUs (``backend``; job records make instances busy) or for one
    GPU of ``model`` (index 0).  ``config_toml``: the [layout] lines that ask for it."""
    from ..core.migparted import Target, parse_text, resolve

    spec = parse_text(read_mig_parted_file(path), path)
    if model is not None:
        m = catalog_mod.load_catalog().model(model)
        targets = [Target(0, m.name, m, m.pci_device_ids)]
        source = "model"
    else:
        assert config is not None and backend is not None
        from ..node.apply import JobAwareBackend

        targets = _node_targets(JobAwareBackend(backend, config.paths.state_dir))
        source = "node"
    plans = resolve(spec, name, targets)
    gpus = [p.as_dict() for p in plans]
    return {"file": path, "config": name, "source": source, "gpus": gpus,
            "config_toml": _layout_toml(gpus)}


def _layout_toml(gpus: list) -> str:
    """The ``[layout]`` lines of config.toml that want these layouts: counts (sync keeps
    what a GPU has where the counts allow) and the MIG mode of each GPU the config covers."""
    covered = [g for g in gpus if g["entry"]]
    on = [g for g in covered if g["mig_enabled"]]
    lines = []
    if on:
        lines.append("[layout.gpus]")
        lines += [f'{g["index"]} = "{g["counts"]}"' for g in on]
    if covered:
        lines.append("[layout.mig_modes]")
        lines += [f'{g["index"]} = "{"on" if g["mig_enabled"] else "off"}"' for g in covered]
    return "\n".join(lines) + "\n" if lines else ""


def mig_parted_export(backend: GpuBackend, name: str) -> dict:
    """``slurm-mig mig-parted export``: this node's current layout as a mig-parted config
    (``yaml``; ``spec``: the same as mig-parted's JSON).  A GPU instance with no compute
    instance counts (it holds its space); ``warnings`` say so, and name GPUs whose MIG
    mode waits for a reset (the current mode is exported, as mig-parted does)."""
    from ..core.migparted import GpuState, check_name, export_entries, render_yaml, spec_dict

    check_name(name)
    states, warnings, names = [], [], {}
    for info in backend.gpus():
        names[info.index] = info.name
        if info.mig_reset_pending:
            warnings.append(f"gpu {info.index}: MIG mode is {'on' if info.mig_current else 'off'} "
                            f"until a reset makes it {'on' if info.mig_pending else 'off'}; "
                            f"exported as it is now")
        counts: tuple = ()
        if info.mig_current:
            model = gpu_model(backend, info)
            found = backend.instances(info.index)
            counts = tuple(sorted(current_layout(model, found).counts().items()))
            for inst in found:
                if not inst.complete:
                    warnings.append(f"gpu {info.index}: {model.profile(inst.profile_id).name}"
                                    f"@{inst.start} has no compute instance; exported as an "
                                    f"instance (slurm-mig apply completes it)")
        states.append(GpuState(info.index, info.name, info.pci_device_id, info.mig_current, counts))
    if not states:
        raise InputError("the driver lists no GPU on this node; nothing to export")
    entries = export_entries(states)
    comments = {}
    for i, e in enumerate(entries):
        held = [s for s in states if e.covers(s.index, (s.pci_device_id,))]
        comments[i] = ", ".join(f"gpu {s.index}" for s in held) + ": " + \
            ", ".join(sorted({s.name for s in held}))
    return {"name": name, "spec": spec_dict(name, entries),
            "yaml": render_yaml(name, entries, comments, [f"warning: {w}" for w in warnings]),
            "warnings": warnings}
