"""The full path of the prolog and the epilog: the engine, when the fast path has a doubt.

:mod:`slurm_mig.hooks.run` calls :func:`prolog` or :func:`epilog` when
:mod:`slurm_mig.hooks.fast` could not vouch for the job (docs/hooks.md, "The fast path").

prolog
  ``SLURM_JOB_GPUS`` (indexes, ranges allowed) -> this node's gres.conf records, in the
  order Slurm numbers them (:func:`slurm_mig.core.gresconf.slurm_order`).  Under the node lock,
  each record's instance must exist where gres.conf says, with the ids its cap files name:
  a missing one is created (profile and placement from the record) and the ids the driver
  gives back must be those; an instance another job holds, or with processes of another
  job, is refused; its device files must exist.  Then ``<state_dir>/jobs/<id>.json``
  records job -> instances.  No call to slurmctld.  It also leaves the facts the fast path
  checks next time (``<state_dir>/hook-snapshot.json``, ``hook-facts/``).
epilog
  Ends the processes of this job on every MIG instance of the node, and the strays (processes
  of no job) on the job's own instances, never another job's (ownership:
  :mod:`slurm_mig.host.jobprocs`, from the cgroup path and the uid, never the environment);
  optionally re-creates the job's instances to wipe them (``SLURM_MIG_EPILOG_WIPE=1``);
  removes the job record.  No record: logged, exit 0 (epilogs may run twice).
"""

from __future__ import annotations

import os

from ..core.errors import GpuError, InputError, SlurmMigError
from .jobenv import FIX_GRES, InstanceMismatch, InstanceRefused, parse_job_gpus

TYPE_CHECKING = False  # no `typing` at run time: the hooks start on every job (docs/benchmarks.md)
if TYPE_CHECKING:
    from typing import Mapping, Sequence


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        from ..core.gresconf import GresConfError

        raise GresConfError(f"cannot read {path}: {err}") from err


def node_gres_records(config, node: str) -> list:
    """The node's gres.conf records, in the order Slurm numbers them."""
    return _node_gres(config, node)[0]


def _node_gres(config, node: str) -> tuple:
    """(records in Slurm's order, gres.conf text, node include text or None)."""
    from ..core.gresconf import GresConfError, parse_gres_conf, parse_node_gres_types, slurm_order

    text = _read(config.paths.gres_conf)
    if text is None:
        raise GresConfError(f"{config.paths.gres_conf} does not exist; {FIX_GRES}")
    records = parse_gres_conf(text, node, source=config.paths.gres_conf)
    include = _read(config.paths.node_gres_include)
    order = parse_node_gres_types(include, node, config.paths.node_gres_include) if include else None
    return (slurm_order(records, order) if records else records), text, include


def _judge(environ: Mapping[str, str], job: str, node: str, proc_root: str):
    """How this job's hook tells its processes from others' and strays (:mod:`slurm_mig.host.jobprocs`)."""
    from ..host.jobprocs import Judge, parse_sluid, parse_uid

    return Judge(job, parse_uid(environ.get("SLURM_JOB_UID")), node, proc_root,
                 parse_sluid(environ.get("SLURM_JOB_SLUID")))


def _foreign_pids(pids: Sequence[int], judge) -> list[str]:
    """Each process on an instance that is not the job's, described: pid, uid and why."""
    from ..host.jobprocs import MINE, describe

    out = []
    for pid in sorted(set(pids)):
        kind, uid, why, _ = judge.judge(pid)
        if kind != MINE:
            out.append(describe(pid, uid, why))
    return out


# ----------------------------------------------------------------------------- prolog


def prolog(config, backend, environ: Mapping[str, str], *, proc_root: str = "/proc") -> dict:
    """Make sure this job's instances exist as gres.conf says; record them.  See module doc."""
    from ..host.config import node_name
    from ..host.locking import node_lock
    from ..node.jobs import boot_id, check_job_id, holders, write_job

    job = check_job_id(environ.get("SLURM_JOB_ID"))
    indexes = parse_job_gpus(environ.get("SLURM_JOB_GPUS"))
    if not indexes:
        return {"job_id": job, "node": None, "instances": []}
    node = node_name(environ)
    records, gres_text, include_text = _node_gres(config, node)
    for i in indexes:
        if i >= len(records):
            raise InstanceMismatch(
                f"SLURM_JOB_GPUS index {i} but {config.paths.gres_conf} has {len(records)} gpu "
                f"record(s) for node {node}; Slurm and gres.conf disagree: {FIX_GRES}")
    from ..core.devices import MIG_MINORS_RELPATH, read_mig_minors
    from ..core.gresconf import reverse_minors
    from ..host.config import host_paths
    from . import fast as hookfast

    dev_root, mig_proc = host_paths(config)
    minors_path = os.path.join(mig_proc, MIG_MINORS_RELPATH)
    driver_path = os.path.join(mig_proc, hookfast.DRIVER_VERSION_RELPATH)
    # Before the parse: a change in between leaves the snapshot stale, never wrong.
    minors_id, driver_id = hookfast.identity(minors_path), hookfast.identity(driver_path)
    minors = read_mig_minors(mig_proc)
    reverse = reverse_minors(minors)
    state_dir = config.paths.state_dir
    from ..node.capfiles import keep_cap_files
    backend = keep_cap_files(backend, config)  # each listed or created instance's /dev/nvidia-caps files
    with node_lock(os.path.join(state_dir, "node.lock"), config.apply.lock_timeout):
        boot = boot_id(proc_root)
        held = holders(state_dir, boot)
        journal = hookfast.journal_identity(state_dir)  # before the driver is asked anything
        gpus = {g.minor: g for g in backend.gpus()}
        seen = _Observed(backend, mig_proc, gpus)
        cache: dict = {}
        # Every index is checked before anything changes: a refusal leaves the GPUs as they were.
        judge = _judge(environ, job, node, proc_root)
        try:
            plans = [_check(seen, job, i, records[i], gpus, minors, reverse, held, cache, judge)
                     for i in indexes]
        except InstanceRefused:
            _forget_busy(state_dir, seen, held)
            raise
        got = [_realise(backend, plan) for plan in plans]
        record = {"version": 1, "job_id": job, "uid": environ.get("SLURM_JOB_UID"),
                  "node": node, "boot_id": boot, "instances": got}
        write_job(state_dir, record)
        hookfast.task_env_file(config.hooks.task_env, config.paths.run_dir, record)
        hookfast.dcgm_mapping(config.hooks.dcgm_job_mapping_dir, state_dir, boot, "prolog", job)
        sources = {"gres_conf": (config.paths.gres_conf, gres_text),
                   "node_gres_include": (config.paths.node_gres_include, include_text),
                   "mig_minors": (minors_path, minors_id), "driver": (driver_path, driver_id)}
        _write_snapshot(config, seen, node, records, gpus, minors, reverse, cache, sources, boot,
                        mig_proc)
        _write_facts(state_dir, job, plans, seen, held, boot, journal)
    return record


class _Observed:
    """The backend, noting for each GPU what its capability entries were just *before* the
    driver listed its instances (:func:`slurm_mig.hooks.fast.capture_caps`), and that list:
    what the facts of :func:`_write_facts` are made from."""

    def __init__(self, backend, proc: str, gpus: dict):
        self._backend = backend
        self._proc = proc
        self.minor = {g.index: g.minor for g in gpus.values()}
        self.seen: dict = {}  #: gpu index -> (capability entries, instances)
        self.journal: list | None = None  #: the apply journal's identity, when the epilog took it

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def instances(self, gpu: int):
        from .fast import capture_caps

        caps = capture_caps(self._proc, self.minor[gpu]) if gpu in self.minor else {}
        out = self._backend.instances(gpu)
        self.seen[gpu] = (caps, out)
        return out


def _instance_fact(seen: _Observed, gpu: int, inst, caps: dict, boot: str, journal, by: str):
    """The fact of a complete instance the driver listed (None when its capability entries
    were not both there before the listing)."""
    from .fast import make_fact

    entry = caps.get(inst.gi_id)
    if not inst.complete or inst.uuid is None or entry is None or inst.ci_id not in entry[1]:
        return None
    return make_fact(gpu=gpu, minor=seen.minor[gpu], gi=inst.gi_id, ci=inst.ci_id,
                     profile_id=inst.profile_id, start=inst.start, uuid=inst.uuid,
                     caps=[entry[0], entry[1][inst.ci_id]], boot=boot, journal=journal,
                     fast_epilogs=0, by=by)


def _write_facts(state_dir: str, job: str, plans: list, seen: _Observed, held, boot, journal) -> None:
    """After a successful full prolog: the job's instances as it found them become facts the
    job holds (not one this prolog made or completed: its epilog checks that through the
    driver); every other instance of the GPUs it read that is complete, held by no record
    and runs no process gets an idle fact.  An instance with a process loses its idle fact.
    Best effort (:mod:`.fast`): without facts the next hooks take the full path."""
    from .fast import drop_facts, write_fact

    if not boot:
        return
    mine = {(p["info"].index, p["gi"]): p for p in plans if p.get("info") is not None}
    try:
        for gpu, (caps, insts) in seen.seen.items():
            for inst in insts:
                plan = mine.get((gpu, inst.gi_id))
                if plan is not None:
                    drop_facts(state_dir, gpu, inst.gi_id, job)  # the idle one is used up
                    if plan["action"] is not None:
                        continue
                    fact = _instance_fact(seen, gpu, inst, caps, boot, journal,
                                          f"full prolog of job {job}")
                    if fact is not None:
                        write_fact(state_dir, fact, job)
                elif inst.pids:
                    drop_facts(state_dir, gpu, inst.gi_id)
                elif not held.jobs_of(gpu, inst.gi_id):
                    fact = _instance_fact(seen, gpu, inst, caps, boot, journal,
                                          f"full prolog of job {job}")
                    if fact is not None:
                        write_fact(state_dir, fact)
    except (OSError, SlurmMigError):
        return


def _forget_busy(state_dir: str, seen: _Observed, held) -> None:
    """A refused full prolog: an instance the driver showed with a process is not idle,
    whatever a fact said (it may be a process the fast path could not see)."""
    from .fast import drop_facts

    try:
        for gpu, (_, insts) in seen.seen.items():
            for inst in insts:
                if inst.pids and not held.jobs_of(gpu, inst.gi_id):
                    drop_facts(state_dir, gpu, inst.gi_id)
    except OSError:
        return


def _write_snapshot(config, backend, node, records, gpus, minors, reverse, cache, sources, boot,
                    proc) -> None:
    """What this full prolog derived from gres.conf, for the fast path (:mod:`.fast`).

    Each record goes through the same static checks as :func:`_realise` (:func:`_resolve`);
    one that fails is ``None`` there, so a job on it always gets the full prolog.  Remade
    when its sources changed or it is damaged (the first job it sends to the full path
    repairs it).  Best effort: a snapshot that cannot be made keeps the hooks on the full
    path.  The same for every backend: GPUs from ``backend.gpus()``, their driver
    information file from ``<proc>/driver/nvidia/gpus/``."""
    from .fast import (FORMAT, code_fingerprint, gpu_information, read_snapshot, text_fingerprint,
                       write_snapshot)

    try:
        found = gpu_information(proc)
        head = {"version": FORMAT, "node": node, "code": code_fingerprint(), "boot_id": boot,
                "gpus": {str(g.index): {"minor": g.minor, "uuid": g.uuid,
                                        "info": _info_path(found, g)} for g in gpus.values()}}
        for key, (path, content) in sources.items():
            if key in ("mig_minors", "driver"):
                head[key] = {"path": path, "identity": content}
            else:
                head[key] = {"path": path, "fingerprint": text_fingerprint(content)}
        if _snapshot_current(read_snapshot(config.paths.state_dir), head, len(records)):
            return
        out: list = []
        for i, rec in enumerate(records):
            try:
                if not rec.mig:
                    raise InputError("not a MIG record")
                info, gi, ci, profile, _, _ = _resolve(backend, i, rec, gpus, minors, reverse, cache)
                caps = (minors.gi_minor(info.minor, gi), minors.ci_minor(info.minor, gi, ci))
            except SlurmMigError:
                out.append(None)
                continue
            out.append({"type": rec.type, "files": list(rec.files), "gpu": info.index,
                        "minor": info.minor, "profile_id": profile.id, "start": rec.start,
                        "gi_id": gi, "ci_id": ci, "gi_cap": caps[0], "ci_cap": caps[1]})
        write_snapshot(config.paths.state_dir, dict(head, records=out))
    except (SlurmMigError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # no snapshot: the next prologs take the full path too, and try again


def _info_path(found: dict, gpu) -> str | None:
    """The driver's information file of a GPU (by UUID, with its minor), or None."""
    path, minor = found.get(gpu.uuid, (None, None))
    return path if minor == str(gpu.minor) else None


_SNAPSHOT_KEYS = {"type", "files", "gpu", "minor", "profile_id", "start", "gi_id", "ci_id",
                  "gi_cap", "ci_cap"}


def _snapshot_current(old, head: dict, count: int) -> bool:
    """The stored snapshot has these sources and well-formed records: nothing to redo."""
    if not isinstance(old, dict) or any(old.get(k) != v for k, v in head.items()):
        return False
    recs = old.get("records")
    return isinstance(recs, list) and len(recs) == count and all(
        r is None or (isinstance(r, dict) and set(r) == _SNAPSHOT_KEYS) for r in recs)


def _resolve(backend, index, rec, gpus, minors, reverse, cache) -> tuple:
    """What a MIG record names, checked against mig-minors, the GPUs and their profiles:
    (GpuInfo, gi id, ci id, profile, model, description for messages)."""
    from ..core.gresconf import instance_ids
    from ..node.inventory import gpu_model

    what = f"gres record {index} ({rec.type or 'gpu'}"
    gpu_minor, gi, ci = instance_ids(rec, minors, reverse)
    info = gpus.get(gpu_minor)
    if info is None:
        raise InstanceMismatch(f"{what}) names /dev/nvidia{gpu_minor} but no GPU has minor "
                               f"{gpu_minor}; {FIX_GRES}")
    where = f"{what}@{rec.start} on gpu {info.index}, gi {gi} ci {ci})"
    if rec.gpu is not None and rec.gpu != info.index:
        raise InstanceMismatch(f"{where}: gres.conf says gpu {rec.gpu} but /dev/nvidia{gpu_minor} "
                               f"is gpu {info.index}; {FIX_GRES}")
    if rec.gi_id is not None and (rec.gi_id, rec.ci_id) != (gi, ci):
        raise InstanceMismatch(f"{where}: its comment says gi {rec.gi_id} ci {rec.ci_id} but its "
                               f"cap files name gi {gi} ci {ci}; {FIX_GRES}")
    if info.index not in cache:
        cache[info.index] = gpu_model(backend, info)
    model = cache[info.index]
    try:
        profile = model.profile(rec.type) if rec.type else model.profile(rec.profile_id)
    except InputError as err:
        raise InstanceMismatch(f"{where}: {err}; {FIX_GRES}") from err
    if rec.profile_id is not None and rec.profile_id != profile.id:
        raise InstanceMismatch(f"{where}: Type={rec.type} is profile id {profile.id} on "
                               f"{info.name}, the comment says {rec.profile_id}; {FIX_GRES}")
    return info, gi, ci, profile, model, where


def _check(backend, job, index, rec, gpus, minors, reverse, held, cache, judge) -> dict:
    """Everything the prolog checks for one index, changing nothing: the record's static
    facts (:func:`_resolve`), who holds the instance, its profile, placement and ids, its
    processes, its device files.  Returns the plan :func:`_realise` carries out: ``action``
    None (use it as it is), ``"create"`` (missing) or ``"complete"`` (no compute instance)."""
    from ..core.devices import DeviceFilesError

    what = f"gres record {index} ({rec.type or 'gpu'}"
    entry = {"index": index, "type": rec.type, "files": list(rec.files), "gpu": rec.gpu,
             "profile_id": None, "start": None, "gi_id": None, "ci_id": None, "uuid": None,
             "created": False}
    plan = {"entry": entry, "rec": rec, "action": None}
    if not rec.mig:
        missing = [f for f in rec.files if not os.path.exists(f)]
        if missing:
            raise DeviceFilesError(f"{what}): device file {', '.join(missing)} is missing; "
                                   f"check the driver (nvidia-smi) and gres.conf")
        return plan
    info, gi, ci, profile, model, where = _resolve(backend, index, rec, gpus, minors, reverse, cache)
    holder = held.get((info.index, gi))
    if holder is not None and holder != job:
        raise InstanceRefused(f"{where} is held by job {holder} (record in the jobs directory); "
                              f"if that job has ended, run its epilog (`slurm-mig epilog` with "
                              f"SLURM_JOB_ID={holder}) or remove the record, then resume the node")
    maybe = held.maybe(info.index, gi, job)
    if maybe:
        raise InstanceRefused(f"{where} may be held by job {maybe[0]}: {held.unknown[maybe[0]]}; "
                              f"then resume the node")
    inst = next((m for m in backend.instances(info.index) if m.gi_id == gi), None)
    plan.update(info=info, gi=gi, ci=ci, profile=profile, model=model, where=where, inst=inst)
    if inst is None:
        if rec.start is None:
            raise InstanceMismatch(f"{where}: no such instance and the line has no placement "
                                   f"(not generated by slurm-mig) to create it at; {FIX_GRES}")
        plan["action"] = "create"
        return plan
    _check_shape(inst, rec, profile, model, where)
    if not inst.complete:
        plan["action"] = "complete"
        return plan
    if inst.ci_id != ci:
        raise InstanceMismatch(f"{where}: the GPU instance's compute instance is ci {inst.ci_id}, "
                               f"gres.conf names ci {ci}; {FIX_GRES}")
    foreign = _foreign_pids(inst.pids, judge)
    if foreign:
        raise InstanceRefused(f"{where} has processes not of this job: {'; '.join(foreign)}; end "
                              f"them (or run the owning job's epilog), then resume the node")
    _check_files(rec, where)
    return plan


def _check_shape(inst, rec, profile, model, where) -> None:
    if inst.profile_id != profile.id or (rec.start is not None and inst.start != rec.start):
        have = model.profile(inst.profile_id).name
        raise InstanceMismatch(f"{where}: the GPU has {have}@{inst.start} with gi {inst.gi_id}; "
                               f"{FIX_GRES}")


def _check_files(rec, where) -> None:
    from ..core.devices import DeviceFilesError

    missing = [f for f in rec.files if not os.path.exists(f)]
    if missing:
        raise DeviceFilesError(f"{where}: device file(s) {', '.join(missing)} missing; check the "
                               f"driver (`ls /dev/nvidia-caps`, nvidia-smi mig -lgi) and {FIX_GRES}")


def _realise(backend, plan: dict) -> dict:
    """Carry out one checked plan: create the missing instance or its compute instance, and
    verify the ids the driver gave back.  Instances created for earlier indexes stay when a
    later one fails: they are what gres.conf names, idle and held by no one (docs/hooks.md)."""
    entry, rec = plan["entry"], plan["rec"]
    if not rec.mig:
        return entry
    action, inst, where = plan["action"], plan["inst"], plan["where"]
    info, gi, ci, profile = plan["info"], plan["gi"], plan["ci"], plan["profile"]
    if action == "create":
        try:
            inst = backend.create_instance(info.index, profile.id, rec.start)
        except GpuError as err:
            raise _with_context(err, f"{where}: the instance is missing and creating it failed: "
                                f"{err}; check `slurm-mig status`; if the layout changed, "
                                f"{FIX_GRES}") from err
        entry["created"] = True
        if (inst.gi_id, inst.ci_id) != (gi, ci):
            raise InstanceMismatch(
                f"{where}: the instance was missing; the driver created it as gi {inst.gi_id} "
                f"ci {inst.ci_id}, not the ids gres.conf's cap files name, so Slurm would fence "
                f"the job to another instance's files; {FIX_GRES}")
        _check_shape(inst, rec, profile, plan["model"], where)
    if not inst.complete:
        inst = backend.create_compute_instance(info.index, gi)
        entry["created"] = True
    if inst.ci_id != ci:
        raise InstanceMismatch(f"{where}: the GPU instance's compute instance is ci {inst.ci_id}, "
                               f"gres.conf names ci {ci}; {FIX_GRES}")
    if action is not None:
        _check_files(rec, where)
    entry.update(gpu=info.index, profile_id=profile.id, start=inst.start, gi_id=gi, ci_id=ci,
                 uuid=inst.uuid)
    return entry


def _with_context(err: SlurmMigError, message: str) -> SlurmMigError:
    """The same kind of error (same exit code) with a longer message."""
    try:
        out = type(err)(message)
    except Exception:
        out = GpuError(message)
    return out if str(out) == " ".join(message.split()) else GpuError(message)


# ----------------------------------------------------------------------------- epilog


def epilog(config, backend, environ: Mapping[str, str], *, proc_root: str = "/proc",
           wipe: bool = False, grace: float = 5.0) -> dict:
    """End this job's processes on the node's MIG instances and the strays on its own
    instances, then drop its record."""
    from ..host.config import node_name
    from ..host.jobprocs import MINE, OTHER, STRAY, end_processes
    from ..host.locking import node_lock
    from ..node.jobs import check_job_id, remove_job

    job = check_job_id(environ.get("SLURM_JOB_ID"))
    state_dir = config.paths.state_dir
    judge = _judge(environ, job, node_name(environ), proc_root)
    own = _own_instances(state_dir, job)
    mine: set[int] = set()
    others: set[int] = set()
    strays: dict[int, tuple] = {}
    elsewhere: set[int] = set()
    infos = backend.gpus()
    seen = _epilog_observer(config, state_dir, backend, infos, own)
    for info in infos:
        if not info.mig_current:
            continue
        for inst in seen.instances(info.index):
            for pid in inst.pids:
                kind, uid, why, _ = judge.judge(pid)
                if kind == MINE:
                    mine.add(pid)
                elif kind == OTHER:
                    others.add(pid)
                elif kind == STRAY and (info.index, inst.gi_id) in own:
                    strays[pid] = (uid, why)
                elif kind == STRAY:
                    elsewhere.add(pid)
    targets = sorted(mine | set(strays))
    ended, alive = end_processes(targets, grace) if targets else ([], [])
    if alive:
        raise GpuError(f"processes {', '.join(map(str, alive))} of the job or stray on its "
                       f"instances still run on MIG instance(s) after SIGKILL; check them (ps -o "
                       f"stat,wchan -p ...), the job record stays so that no job gets the "
                       f"instance; resume when gone")
    recreated: list = []
    warnings: list = []
    moved = None
    with node_lock(os.path.join(state_dir, "node.lock"), config.apply.lock_timeout):
        from ..node.jobs import CORRUPT_SUFFIX as CORRUPT, boot_id, holders, read_record, set_aside

        reading = read_record(state_dir, job)
        removed = False
        if reading is not None and not reading.ok:
            moved = set_aside(state_dir, job)  # the job is over: its damaged record goes
            moved = moved or f"{reading.path}{CORRUPT} (it was gone already)"
            warnings.append(f"job record {reading.path} is damaged ({reading.why()}); the job is "
                            f"over, so it was moved to {moved} and its instances are free"
                            + ("; nothing was wiped (a damaged record's ids are not trusted)"
                               if wipe else ""))
        elif reading is not None:
            boot = boot_id(proc_root)
            if wipe and reading.stale(boot):
                warnings.append(f"job record {reading.path} is from an earlier boot: its "
                                f"instances are gone, nothing to wipe")
            elif wipe:
                recreated = _wipe(backend, job, reading.record, holders(state_dir, boot), warnings)
            else:
                _epilog_facts(state_dir, job, reading, seen, set(targets), holders(state_dir, boot),
                              boot)
            removed = remove_job(state_dir, job)  # last: a rerun after a kill finishes the wipe
        _drop_held(state_dir, job)
        from .fast import dcgm_mapping, drop_task_env_file

        drop_task_env_file(config.paths.run_dir, job)
        dcgm_mapping(config.hooks.dcgm_job_mapping_dir, state_dir, boot_id(proc_root), "epilog", job)
    return {"job_id": job, "record": reading is not None, "removed": removed, "ended": ended,
            "other_pids": sorted(others), "recreated": recreated, "moved_to": moved,
            "warnings": warnings,
            "strays": [[pid, uid, why] for pid, (uid, why) in sorted(strays.items())],
            "strays_left": sorted(elsewhere - set(strays))}


def _epilog_observer(config, state_dir: str, backend, infos, own: set) -> _Observed:
    """The backend seen as :class:`_Observed` for the GPUs of the job's own instances (their
    capability entries before the listing), and the apply journal's identity now."""
    from ..host.config import host_paths
    from .fast import journal_identity

    seen = _Observed(backend, host_paths(config)[1],
                     {g.minor: g for g in infos if g.index in {gpu for gpu, _ in own}})
    seen.journal = journal_identity(state_dir)
    return seen


def _epilog_facts(state_dir: str, job: str, reading, seen: _Observed, ended: set, held,
                  boot) -> None:
    """After a full epilog without a wipe: each of the job's instances that the driver listed
    complete, as the record has it, with no process left but those this epilog ended (or
    found gone), gets an idle fact (the fast path's count starts again); the others lose
    theirs.  Best effort, as :func:`_write_facts`."""
    from .fast import drop_facts, write_fact

    if not boot or not reading.ok or reading.stale(boot):
        return
    try:
        for inst in reading.record["instances"]:
            gpu, gi = inst["gpu"], inst["gi_id"]
            if gi is None:
                continue
            caps, listed = seen.seen.get(gpu, ({}, []))
            now = next((m for m in listed if m.gi_id == gi), None)
            others = [j for j in held.jobs_of(gpu, gi) if j != job]
            fact = None
            if (now is not None and (now.ci_id, now.profile_id, now.start) == (
                    inst["ci_id"], inst["profile_id"], inst["start"])
                    and set(now.pids) <= ended and not others):
                fact = _instance_fact(seen, gpu, now, caps, boot, seen.journal,
                                      f"full epilog of job {job}")
            if fact is None:
                drop_facts(state_dir, gpu, gi)
            else:
                write_fact(state_dir, fact)
    except (OSError, SlurmMigError):
        return


def _drop_held(state_dir: str, job: str) -> None:
    from .fast import drop_held_facts

    try:
        drop_held_facts(state_dir, job)
    except (OSError, SlurmMigError):
        pass


def _own_instances(state_dir: str, job: str) -> set:
    """(gpu, gi) of the instances the job's record names (as numbers, even in a damaged
    record); none without a record."""
    from ..node.jobs import read_record

    reading = read_record(state_dir, job)
    return set(reading.pairs) if reading is not None else set()


def _wipe(backend, job: str, record: dict, held, notes: list) -> list[dict]:
    """Re-create each MIG instance of the job at its placement; the ids must come back.

    Idempotent, so that an epilog killed at any point finishes the wipe when run again (the
    record is removed only after it): an instance that is there with the record's profile
    and placement, whole or half-made, is destroyed and created again; one that is missing
    is created.  Wiping twice is harmless; the record still holds the instances in between,
    so no job and no apply takes them.  An instance that is no longer the job's (another
    profile or placement at that gi id, or held by another job's record) is left alone,
    with a note."""
    out = []
    for inst in record["instances"]:
        if inst["gi_id"] is None:
            continue
        gpu, gi, ci = inst["gpu"], inst["gi_id"], inst["ci_id"]
        profile_id, start = inst["profile_id"], inst["start"]
        other = held.get((gpu, gi))
        if other is not None and other != job:
            notes.append(f"gpu {gpu} gi {gi} is held by job {other} now; not wiped")
            continue
        try:
            now = next((m for m in backend.instances(gpu) if m.gi_id == gi), None)
            if now is not None and (now.profile_id, now.start) != (profile_id, start):
                notes.append(f"gpu {gpu} gi {gi} is now another instance (profile id "
                             f"{now.profile_id} at {now.start}, the job had {profile_id} at "
                             f"{start}); not wiped")
                continue
            if now is not None:
                backend.destroy_instance(gpu, gi)
            new = backend.create_instance(gpu, profile_id, start)
        except GpuError as err:
            raise _with_context(err, f"wiping gpu {gpu} gi {gi}: {err}; the job record stays so "
                                f"that no job gets the instance: fix the GPU (`slurm-mig status`), "
                                f"then run the epilog again (it finishes the wipe)") from err
        if (new.gi_id, new.ci_id) != (gi, ci):
            raise InstanceMismatch(
                f"wiping gpu {gpu} gi {gi}: the driver re-created it as gi {new.gi_id} ci "
                f"{new.ci_id}; gres.conf now names the wrong cap files: {FIX_GRES}")
        out.append({"gpu": gpu, "gi_id": gi, "ci_id": new.ci_id})
    return out
