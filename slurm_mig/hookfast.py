"""The hooks' fast path: check, without the engine, that a job needs nothing done.

Most prologs find their instance where gres.conf says it is, with the ids gres.conf
names, idle and held by no one; most epilogs find no process left.  For that common case
the full hooks (:mod:`slurm_mig.hooks`) spend most of their time importing and rebuilding
what did not change: the config classes and TOML, the catalog, gres.conf parsed into
records, 4,322 lines of ``mig-minors``.  This module imports none of that (stdlib
``json``, ``os``, ``zlib``, ``fcntl`` only; no ``typing``, ``dataclasses`` or ``tomllib``).

It contains **no MIG logic**: it only compares facts the engine wrote down with facts it
reads now, and any doubt sends the hook to the full path, which checks everything, can
repair (create a missing instance) and gives the one-line error.  The facts:

``<config dir>/.<config name>.hooks-cache.json``
    The config file's exact text and the few settings the hooks need (backend, paths,
    lock timeout, epilog settings), written by a full hook run from its own parse of that
    text.  Used only when the config file's text is still exactly that and both files
    have the same owner.
``<state_dir>/hook-snapshot.json``
    Written by a full prolog after it succeeded: the node's gres records in Slurm's
    order, each with the gpu index and minor, GPU-instance and compute-instance ids,
    profile id and placement the full prolog's own static checks derived for it (a
    record that fails them is ``null``), keyed by the size and CRC-32 of the exact text
    of gres.conf, the node include and ``mig-minors`` it read, the GPUs' UUIDs, names and
    models, and the package version and catalog file it ran with.

The prolog's fast path (:func:`prolog`) then verifies, under the node lock as the full
prolog does: the config and the three files are unchanged; each of the job's records is
in the snapshot; no job record is damaged (:func:`slurm_mig.jobs.holders` warns of none) and
no record of another job of this boot holds the instance; the simulator's state (read under its lock, never written) has that GPU (same UUID), in MIG
mode, with a GPU instance of that id, profile and start, whose lowest compute instance
has that id and no live process; the record's device files exist.  Then it writes the
same job record the full prolog would (``created: false``).  The epilog's fast path
(:func:`epilog`) runs when no wipe is asked, none of the job's processes is on any MIG
instance and no stray (a process of no job, :mod:`slurm_mig.jobprocs`) is on the job's own
instances: it removes the job record and reports the processes it left alone, exactly as
the full epilog does.

Only the simulator backend has a fast path; with NVML the hooks take the full path (one
NVML init alone costs more than the whole fast path).  ``SLURM_MIG_HOOK_FAST=0``
disables it; ``SLURM_MIG_HOOK_REPORT=1`` prints one line on stderr naming the path taken
and, for the full path, why.
"""

from __future__ import annotations

import json
import os
import zlib

from . import jobprocs, jobs, safefs
from .errors import SlurmMigError
from .inputs import flag_text, read_regular_file

FAST_ENV = "SLURM_MIG_HOOK_FAST"  #: "0": always the full path
REPORT_ENV = "SLURM_MIG_HOOK_REPORT"  #: "1": one stderr line naming the path taken
#: The same as :data:`slurm_mig.config.ENV_VAR` and ``DEFAULT_PATH`` (a test pins them).
CONFIG_ENV = "SLURM_MIG_CONFIG"
DEFAULT_CONFIG = "/etc/slurm-mig/config.toml"
#: The same as :data:`slurm_mig.devices.MIG_MINORS_RELPATH` (a test pins it).
MIG_MINORS_RELPATH = "driver/nvidia-caps/mig-minors"
SNAPSHOT = "hook-snapshot.json"
CACHE_SUFFIX = ".hooks-cache.json"
FORMAT = 1  #: version of both files; another value is a doubt
SIM_STATE_VERSION = 1  #: the simulator's state format this reader knows
SIM_LOCK_WAIT = 30.0  #: seconds, as :class:`slurm_mig.gpu.simdriver.SimDriver` waits


class Doubt(Exception):
    """Something the fast path cannot vouch for: the full hook must run."""


# ----------------------------------------------------------------------------- facts


def fingerprint(path: str) -> list | None:
    """``[size, crc32]`` of a file's text as the hooks read it (UTF-8), None when absent."""
    try:
        with open(path, encoding="utf-8") as f:
            data = f.read().encode("utf-8")
    except FileNotFoundError:
        return None
    return [len(data), zlib.crc32(data)]


def text_fingerprint(text: str | None) -> list | None:
    if text is None:
        return None
    data = text.encode("utf-8")
    return [len(data), zlib.crc32(data)]


def code_fingerprint() -> dict:
    """The package version and its catalog file: an upgrade invalidates every snapshot."""
    from . import __version__

    st = os.stat(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "catalog.json"))
    return {"version": __version__, "catalog": [st.st_size, st.st_mtime_ns]}


def config_path(environ) -> str:
    return environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def cache_path(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}{CACHE_SUFFIX}")


def snapshot_path(state_dir: str) -> str:
    return os.path.join(state_dir, SNAPSHOT)


def settings(config) -> dict:
    """What the hooks need from a :class:`~slurm_mig.config.Config`, as plain values."""
    sim = config.backend == "sim"
    return {"backend": config.backend, "state_dir": config.paths.state_dir,
            "sim_root": config.sim.root if sim else None,
            "proc": os.path.join(config.sim.root, "proc") if sim else config.paths.proc,
            "gres_conf": config.paths.gres_conf,
            "node_gres_include": config.paths.node_gres_include,
            "lock_timeout": config.apply.lock_timeout,
            "epilog_wipe": config.hooks.epilog_wipe, "kill_grace": config.hooks.kill_grace}


def write_config_cache(path: str) -> None:
    """Full path: remember the settings of the config file at ``path`` (best effort)."""
    from .config import parse_config

    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        cache = cache_path(path)
        try:
            with open(cache, encoding="utf-8") as f:
                if json.load(f).get("config") == text:
                    return
        except (OSError, ValueError, AttributeError):
            pass
        values = settings(parse_config(text, path))
        safefs.check_dir(os.path.dirname(cache), "config directory")
        _write_json(cache, {"version": FORMAT, "config": text, "settings": values}, 0o600)
    except (OSError, ValueError, SlurmMigError):
        return  # no cache: the hooks stay on the full path


def load_settings(environ) -> dict:
    """The cached settings, when the config file's text is still the one they came from."""
    path = config_path(environ)
    try:
        safefs.check_dir(os.path.dirname(os.path.abspath(path)), "config directory")
    except (OSError, SlurmMigError) as err:
        raise Doubt(f"the config directory is not trusted ({err})") from None
    try:
        data, st = read_regular_file(path)  # a FIFO or device is an error, not a hang
        owner, text = st.st_uid, data.decode("utf-8")
        with open(cache_path(path), encoding="utf-8") as f:
            cache_owner = os.fstat(f.fileno()).st_uid
            cache = json.load(f)
    except FileNotFoundError as err:
        raise Doubt(f"no config cache ({err.filename} is missing)") from err
    if cache_owner != owner:
        raise Doubt("the config cache has another owner than the config")
    if not isinstance(cache, dict) or cache.get("version") != FORMAT or cache.get("config") != text:
        raise Doubt("the config changed since its cache was written")
    return cache["settings"]


def write_snapshot(state_dir: str, snapshot: dict) -> None:
    """Full prolog: record what it derived (best effort; unchanged content is not rewritten)."""
    try:
        _write_json(snapshot_path(state_dir), snapshot, 0o600)
    except OSError:
        pass


def read_snapshot(state_dir: str) -> dict | None:
    """The snapshot as stored (None when absent or not JSON)."""
    try:
        with open(snapshot_path(state_dir), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load_snapshot(cfg: dict, node: str) -> dict:
    snap = read_snapshot(cfg["state_dir"])
    if snap is None:
        raise Doubt("no readable snapshot (a full prolog writes it)")
    if not isinstance(snap, dict) or snap.get("version") != FORMAT:
        raise Doubt("snapshot of another format")
    if snap.get("node") != node:
        raise Doubt(f"snapshot is for node {snap.get('node')}")
    if snap.get("code") != code_fingerprint():
        raise Doubt("slurm-mig or its catalog changed since the snapshot")
    for key, path in (("gres_conf", cfg["gres_conf"]), ("node_gres_include", cfg["node_gres_include"]),
                      ("mig_minors", os.path.join(cfg["proc"], MIG_MINORS_RELPATH))):
        entry = snap.get(key)
        if not isinstance(entry, dict) or entry.get("path") != path:
            raise Doubt(f"snapshot has another {key} path")
        if fingerprint(path) != entry.get("fingerprint"):
            raise Doubt(f"{path} changed since the snapshot")
    return snap


# ----------------------------------------------------------------------------- simulator


def _sim_state(root: str) -> dict:
    """The simulated driver's state, read under its lock (shared: we never write it)."""
    import fcntl
    import time

    deadline = time.monotonic() + SIM_LOCK_WAIT
    fd = os.open(os.path.join(root, "state.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Doubt("the simulator's state stays locked") from None
                time.sleep(0.005)
        with open(os.path.join(root, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
    finally:
        os.close(fd)
    if not isinstance(state, dict) or state.get("version") != SIM_STATE_VERSION:
        raise Doubt("simulator state of another format")
    return state


def _live_pids(gi: dict) -> list:
    """Processes on a GPU instance, as the simulator lists them (tracked pids that ended dropped)."""
    return sorted({p["pid"] for ci in gi["cis"] for p in ci["procs"]
                   if not p.get("track") or jobprocs.pid_alive(p["pid"])})


# ----------------------------------------------------------------------------- prolog


def prolog(environ, indexes: list, proc_root: str = "/proc") -> dict:
    """The prolog when every fact checks out; raises :class:`Doubt` otherwise."""
    from .locking import node_lock

    job = _job(environ)
    node = environ.get("SLURMD_NODENAME")
    if not node:
        raise Doubt("SLURMD_NODENAME is not set")
    cfg = load_settings(environ)
    if cfg["backend"] != "sim":
        raise Doubt(f"backend {cfg['backend']} (only the simulator has a fast path)")
    snap = _load_snapshot(cfg, node)
    records = snap["records"]
    wanted = []
    for i in indexes:
        if i >= len(records) or records[i] is None:
            raise Doubt(f"gres record {i} is not in the snapshot as a checked MIG instance")
        wanted.append((i, records[i]))
    state_dir = cfg["state_dir"]
    with node_lock(os.path.join(state_dir, "node.lock"), cfg["lock_timeout"]):
        boot = jobs.boot_id(proc_root)
        held = jobs.holders(state_dir, boot)
        if held.warnings:  # a damaged record: the full prolog names it (and may refuse)
            raise Doubt(f"a job record is damaged ({held.warnings[0]})")
        state = _sim_state(cfg["sim_root"])
        got = [_check(job, i, rec, snap["gpus"], state, held) for i, rec in wanted]
        record = {"version": jobs.RECORD_VERSION, "job_id": job, "uid": environ.get("SLURM_JOB_UID"),
                  "node": node, "boot_id": boot, "instances": got}
        safefs.ensure_dir(jobs.jobs_dir(state_dir), 0o700, "job records directory", tighten=True)
        _write_json(jobs.job_path(state_dir, job), record, 0o600)
    return record


def _check(job: str, index: int, rec: dict, gpus: dict, state: dict, held: dict) -> dict:
    where = f"gres record {index}"
    gpu, gi_id, ci_id = rec["gpu"], rec["gi_id"], rec["ci_id"]
    holder = held.get((gpu, gi_id))
    if holder is not None and holder != job:
        raise Doubt(f"{where}: held by job {holder}")
    found = [g for g in state["gpus"] if g["minor"] == rec["minor"]]
    if len(found) != 1 or found[0]["index"] != gpu:
        raise Doubt(f"{where}: no single gpu {gpu} with minor {rec['minor']}")
    g = found[0]
    if [g["uuid"], g["name"], g["model"]] != gpus.get(str(gpu)):
        raise Doubt(f"{where}: gpu {gpu} is not the GPU of the snapshot")
    if not g["mig_current"] or g["model"] is None:
        raise Doubt(f"{where}: gpu {gpu} is not in MIG mode")
    gis = [x for x in g["gis"] if x["id"] == gi_id]
    if len(gis) != 1:
        raise Doubt(f"{where}: gpu {gpu} has no gi {gi_id}")
    gi = gis[0]
    if gi["profile_id"] != rec["profile_id"] or (rec["start"] is not None and gi["start"] != rec["start"]):
        raise Doubt(f"{where}: gi {gi_id} has another profile or placement")
    if not gi["cis"]:
        raise Doubt(f"{where}: gi {gi_id} has no compute instance")
    ci = min(gi["cis"], key=lambda c: c["id"])
    if ci["id"] != ci_id:
        raise Doubt(f"{where}: gi {gi_id}'s compute instance is ci {ci['id']}, not {ci_id}")
    if _live_pids(gi):
        raise Doubt(f"{where}: processes run on it")
    for path in rec["files"]:
        if not os.path.exists(path):
            raise Doubt(f"{where}: {path} is missing")
    return {"index": index, "type": rec["type"], "files": list(rec["files"]), "gpu": gpu,
            "profile_id": rec["profile_id"], "start": gi["start"], "gi_id": gi_id, "ci_id": ci_id,
            "uuid": ci["uuid"], "created": False}


# ----------------------------------------------------------------------------- epilog


def epilog(environ, wipe_env: str, proc_root: str = "/proc") -> dict:
    """The epilog when no wipe is asked and neither a process of the job nor a stray is on
    the job's instances (ownership as the full epilog decides it: :mod:`.jobprocs`)."""
    from .locking import node_lock

    job = _job(environ)
    node = environ.get("SLURMD_NODENAME")
    if not node:
        raise Doubt("SLURMD_NODENAME is not set")
    cfg = load_settings(environ)
    if cfg["backend"] != "sim":
        raise Doubt(f"backend {cfg['backend']} (only the simulator has a fast path)")
    wipe = cfg["epilog_wipe"]
    if environ.get(wipe_env):
        wipe = flag_text(environ[wipe_env])  # ValueError: the full path reports it
    if wipe:
        raise Doubt("the epilog wipes the job's instances")
    state_dir = cfg["state_dir"]
    own = _own_instances(state_dir, job)
    judge = jobprocs.Judge(job, jobprocs.parse_uid(environ.get("SLURM_JOB_UID")), node, proc_root)
    state = _sim_state(cfg["sim_root"])
    others, strays = set(), set()
    for g in state["gpus"]:
        if not g["mig_current"]:
            continue
        if g["model"] is None:
            raise Doubt(f"gpu {g['index']} in MIG mode without a model")
        for gi in g["gis"]:
            for pid in _live_pids(gi):
                kind = judge.judge(pid)[0]
                if kind == jobprocs.MINE:
                    raise Doubt(f"pid {pid} of the job runs on gpu {g['index']} gi {gi['id']}")
                if kind == jobprocs.STRAY and (g["index"], gi["id"]) in own:
                    raise Doubt(f"stray pid {pid} on the job's gpu {g['index']} gi {gi['id']}")
                if kind == jobprocs.OTHER:
                    others.add(pid)
                elif kind == jobprocs.STRAY:
                    strays.add(pid)
    with node_lock(os.path.join(state_dir, "node.lock"), cfg["lock_timeout"]):
        try:
            record = jobs.read_job(state_dir, job)
        except SlurmMigError:
            raise Doubt("the job record is unreadable") from None
        removed = jobs.remove_job(state_dir, job) if record is not None else False
    return {"job_id": job, "record": record is not None, "removed": removed, "ended": [],
            "other_pids": sorted(others), "recreated": [], "strays": [],
            "strays_left": sorted(strays)}


def _own_instances(state_dir: str, job: str) -> set:
    """(gpu, gi) the job's record holds (as :func:`slurm_mig.hooks._own_instances`)."""
    reading = jobs.read_record(state_dir, job)
    if reading is None:
        return set()
    if not reading.ok:
        raise Doubt("the job record is unreadable")
    return set(reading.pairs)


# ----------------------------------------------------------------------------- helpers


def _job(environ) -> str:
    try:
        return jobs.check_job_id(environ.get("SLURM_JOB_ID"))
    except SlurmMigError:
        raise Doubt("SLURM_JOB_ID is not a job id") from None


def _write_json(path: str, data: dict, mode: int) -> None:
    """:func:`slurm_mig.slurmfiles.write_json_atomic`'s contract (same bytes; temp file in the
    directory, fsync, rename, directory fsync; unchanged content not rewritten) without its
    imports (``tempfile``, ``dataclasses``), which would cost the fast path a third of its time."""
    data_bytes = (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            if f.read() == data_bytes:
                return
    except FileNotFoundError:
        pass
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data_bytes)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
