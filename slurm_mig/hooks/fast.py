"""The hooks' fast path: check, without the engine and without the driver's API, that a job
needs nothing done.

Most prologs find their instance where gres.conf says it is, with the ids gres.conf
names, idle and held by no one; most epilogs find no process of the job left.  For that
common case the full hooks (:mod:`slurm_mig.hooks`) spend most of their time importing
and rebuilding what did not change (the config classes and TOML, the catalog, gres.conf
parsed into records, 4,322 lines of ``mig-minors``) and, on a real node, in NVML:
``nvmlInit`` alone costs more than this whole module's work (docs/hardware.md).  This
module imports none of that (stdlib ``json``, ``os``, ``zlib``, ``fcntl`` only; no
``typing``, ``dataclasses`` or ``tomllib``), **never calls NVML and never reads the
simulator's files**: it works the same for every backend, from facts the driver exposes
cheaply and facts the full hooks wrote down.

It contains **no MIG logic**: it only compares facts, and any doubt sends the hook to the
full path, which checks everything with the driver, can repair (create a missing
instance), ends what must be ended and gives the one-line error.  docs/hooks.md, "The fast
path", has the design, the invalidations and the residual risks; in short:

Facts the driver exposes (stat or a short read each; the simulator keeps the same tree
under its root, :func:`slurm_mig.sim.driver.sync_proc`), under the node's ``/proc``
(``paths.proc``):

* ``driver/nvidia/capabilities/gpu<minor>/mig/gi<G>/access`` and ``.../ci<C>/access``
  exist while that GPU instance and compute instance exist; their ``DeviceFileMinor``
  is the minor of the ``nvidia-cap`` files gres.conf names; their identity (inode,
  modification and change time) is that of the entry the driver made when it created
  the instance: an instance destroyed and made again is a new entry.
* ``driver/nvidia/gpus/<bus>/information``: the GPU's UUID and device minor.
* ``driver/nvidia/version`` and ``driver/nvidia-caps/mig-minors``: their identity
  changes when the driver is loaded again (or, on the simulator, rewritten).

Facts the full hooks write (best effort: when one cannot be written, the next hook takes
the full path):

``<config dir>/.<config name>.hooks-cache.json``
    The config file's exact text and the few settings the hooks need.
``<state_dir>/hook-snapshot.json``
    Written by a full prolog: the node's gres records in Slurm's order with what the
    full prolog's static checks derived for each (GPU index and minor, ids, profile id,
    placement, the minors of its cap files), keyed by gres.conf's and the node include's
    text, ``mig-minors``' and the driver's identity, the boot id, the GPUs' UUIDs and
    the package version and catalog.
``<state_dir>/hook-facts/gpu<index>-gi<G>.json``
    "This instance is idle and nobody was given it": written when a full hook saw it,
    through the driver, complete and without any process (a full prolog for the idle
    instances of the GPUs it read, a full epilog for the job's instances once it ended
    everything on them), or by a fast epilog (below).  Keyed by the boot id, the
    capability entries' identity and the identity of the apply journal's directory (any
    apply since changes it).  A prolog that hands the instance out renames it to
    ``...held-<job>.json``; that job's epilog turns it back into an idle fact.

The prolog's fast path (:func:`prolog`), under the node lock as the full prolog: the
config, gres.conf, the include, ``mig-minors``, the driver and the boot are those of the
snapshot; no job record is damaged and no other job's record holds the instance; the
GPU's ``information`` names the snapshot's UUID and minor; both capability entries exist
with gres.conf's minors and the identity of the instance's idle fact (or of the job's own
held fact); the apply journal is as it was; the device files exist.  Then it writes the
same job record the full prolog would (``created: false``) and marks the fact held.

The epilog's fast path (:func:`epilog`): no wipe is asked, no process is in the job's
cgroup (``/proc/<pid>/cgroup`` by Slurm's layout: :mod:`slurm_mig.host.jobprocs`; so no process
of the job is left anywhere), and each of the job's instances has the held fact its
prolog wrote, still true; it writes the idle facts and removes the job record.  It cannot
see strays (processes of no job) or other jobs' processes on MIG instances; so after
:data:`FAST_EPILOGS_IN_A_ROW` fast epilogs on an instance, its next epilog asks the driver
what runs on it (:mod:`slurm_mig.gpu.instancepids`, one small query) and takes the full path,
which ends the strays, when anything does.

``SLURM_MIG_HOOK_FAST=0`` disables the fast path; ``SLURM_MIG_HOOK_REPORT=1`` prints one
line on stderr naming the path taken and, for the full path, why.
"""

from __future__ import annotations

import json
import os
import zlib

from ..core.errors import SlurmMigError
from ..core.inputs import flag_text, read_regular_file
from ..host import jobprocs, safefs
from ..node import jobs

FAST_ENV = "SLURM_MIG_HOOK_FAST"  #: "0": always the full path
REPORT_ENV = "SLURM_MIG_HOOK_REPORT"  #: "1": one stderr line naming the path taken
#: The same as :data:`slurm_mig.host.config.ENV_VAR` and ``DEFAULT_PATH`` (a test pins them).
CONFIG_ENV = "SLURM_MIG_CONFIG"
DEFAULT_CONFIG = "/etc/slurm-mig/config.toml"
#: The same as :data:`slurm_mig.core.devices.MIG_MINORS_RELPATH` (a test pins it).
MIG_MINORS_RELPATH = "driver/nvidia-caps/mig-minors"
#: Under the node's /proc: what the NVIDIA kernel module shows (docs/hardware.md).
DRIVER_VERSION_RELPATH = "driver/nvidia/version"
CAPS_RELPATH = "driver/nvidia/capabilities"
GPUS_RELPATH = "driver/nvidia/gpus"
#: The same as :data:`slurm_mig.node.journal.JOURNAL_DIR` (a test pins it).
JOURNAL_DIR = "journal"
SNAPSHOT = "hook-snapshot.json"
FACTS_DIR = "hook-facts"
CACHE_SUFFIX = ".hooks-cache.json"
FORMAT = 4  #: version of the cache, the snapshot and the facts; another value is a doubt
#: Fast epilogs in a row on one instance; the next one asks the driver what runs there
#: (and takes the full path, which ends strays, when anything does).  docs/hooks.md says why.
FAST_EPILOGS_IN_A_ROW = 7
_CAP_READ = 256  #: bytes read of a capability file (3 short lines)
_INFO_READ = 4096  #: bytes read of a GPU's information file


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


def identity(path: str) -> list | None:
    """What tells one file (or /proc entry) from another made at the same path later:
    ``[device, inode, size, mtime_ns, ctime_ns]``; None when there is none.

    A procfs entry the driver removes and creates again is a new inode whose times are
    those of its creation, so an instance destroyed and made again never has the identity
    its fact recorded (the simulator sets a new modification time on every entry it
    makes).  A regular file edited in place gets a new size or times."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _ident(st)


def _ident(st) -> list:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def code_fingerprint() -> dict:
    """The package version and its catalog file: an upgrade invalidates every snapshot."""
    from .. import __version__

    here = os.path.dirname(os.path.abspath(__file__))
    st = os.stat(os.path.join(os.path.dirname(here), "data", "catalog.json"))
    return {"version": __version__, "catalog": [st.st_size, st.st_mtime_ns]}


def config_path(environ) -> str:
    return environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def cache_path(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}{CACHE_SUFFIX}")


def snapshot_path(state_dir: str) -> str:
    return os.path.join(state_dir, SNAPSHOT)


def facts_dir(state_dir: str) -> str:
    return os.path.join(state_dir, FACTS_DIR)


def fact_path(state_dir: str, gpu: int, gi: int, job: str | None = None) -> str:
    """The idle fact of gpu ``gpu`` gi ``gi``, or (``job``) the fact held by that job.
    Only numbers and a checked job id are part of the name."""
    held = f".held-{jobs.check_job_id(job)}" if job is not None else ""
    return os.path.join(facts_dir(state_dir), f"gpu{int(gpu)}-gi{int(gi)}{held}.json")


def journal_identity(state_dir: str) -> list | None:
    """The apply journal directory's identity: every apply that changes a GPU writes an
    intent there first and removes it after, so any apply changes it."""
    return identity(os.path.join(state_dir, JOURNAL_DIR))


def cap_path(proc: str, minor: int, gi: int, ci: int | None = None) -> str:
    """``<proc>/driver/nvidia/capabilities/gpu<minor>/mig/gi<G>[/ci<C>]/access``: the GPU's
    *minor* names the directory, as in ``mig-minors`` (and NVIDIA's container toolkit)."""
    parts = [proc, CAPS_RELPATH, f"gpu{minor}", "mig", f"gi{gi}"]
    if ci is not None:
        parts.append(f"ci{ci}")
    return os.path.join(*parts, "access")


def read_cap(path: str) -> tuple:
    """(DeviceFileMinor or None, identity of the entry read) of a capability file;
    (None, None) when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    try:
        st = os.fstat(fd)  # the identity of the very entry read, not of a later one
        text = os.read(fd, _CAP_READ).decode("ascii", "replace")
    finally:
        os.close(fd)
    minor = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "DeviceFileMinor" and value.strip().isdigit():
            minor = int(value.strip())
    return minor, _ident(st)


def capture_caps(proc: str, minor: int) -> dict:
    """Every capability entry of GPU ``minor`` now: ``{gi: [gi identity, {ci: identity}]}``.
    Taken *before* the driver is asked about the instances, so a change in between
    leaves a fact stale, never wrong."""
    out: dict = {}
    base = os.path.join(proc, CAPS_RELPATH, f"gpu{minor}", "mig")
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        if not (name.startswith("gi") and name[2:].isdigit()):
            continue
        gi_dir = os.path.join(base, name)
        cis = {}
        try:
            subs = os.listdir(gi_dir)
        except OSError:
            continue
        for sub in subs:
            if sub.startswith("ci") and sub[2:].isdigit():
                ident = identity(os.path.join(gi_dir, sub, "access"))
                if ident is not None:
                    cis[int(sub[2:])] = ident
        ident = identity(os.path.join(gi_dir, "access"))
        if ident is not None:
            out[int(name[2:])] = [ident, cis]
    return out


def gpu_information(proc: str) -> dict:
    """``{uuid: (path, device minor text)}`` from ``<proc>/driver/nvidia/gpus/*/information``."""
    out: dict = {}
    base = os.path.join(proc, GPUS_RELPATH)
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for name in names:
        path = os.path.join(base, name, "information")
        fields = _information(path)
        if fields is not None and fields.get("GPU UUID"):
            out[fields["GPU UUID"]] = (path, fields.get("Device Minor"))
    return out


def _information(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            text = f.read(_INFO_READ).decode("utf-8", "replace")
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def settings(config) -> dict:
    """What the hooks need from a :class:`~slurm_mig.host.config.Config`, as plain values.

    ``proc`` is where the driver's files are, as :func:`slurm_mig.app.commands.host_paths`
    says (the simulator lays out its own ``/proc`` under its root; a test pins the two)."""
    proc = os.path.join(config.sim.root, "proc") if config.backend == "sim" else config.paths.proc
    return {"backend": config.backend, "state_dir": config.paths.state_dir, "proc": proc,
            "sim_root": config.sim.root if config.backend == "sim" else None,
            "gres_conf": config.paths.gres_conf,
            "node_gres_include": config.paths.node_gres_include,
            "lock_timeout": config.apply.lock_timeout,
            "epilog_wipe": config.hooks.epilog_wipe, "kill_grace": config.hooks.kill_grace,
            "run_dir": config.paths.run_dir, "task_env": config.hooks.task_env,
            "dcgm_job_mapping_dir": config.hooks.dcgm_job_mapping_dir,
            "metrics_textfile": config.metrics.textfile,
            "metrics_state_file": config.metrics.state_file}


def write_config_cache(path: str) -> None:
    """Full path: remember the settings of the config file at ``path`` (best effort)."""
    from ..host.config import parse_config

    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        cache = cache_path(path)
        try:
            with open(cache, encoding="utf-8") as f:
                old = json.load(f)
                if old.get("config") == text and old.get("version") == FORMAT:
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
    for key, path in (("gres_conf", cfg["gres_conf"]), ("node_gres_include", cfg["node_gres_include"])):
        entry = snap.get(key)
        if not isinstance(entry, dict) or entry.get("path") != path:
            raise Doubt(f"snapshot has another {key} path")
        if fingerprint(path) != entry.get("fingerprint"):
            raise Doubt(f"{path} changed since the snapshot")
    # Files the driver generates on every read (mig-minors: 109 KB, 5.4 ms on an H200) are
    # keyed by their identity: the driver makes them when it loads.
    for key, rel in (("mig_minors", MIG_MINORS_RELPATH), ("driver", DRIVER_VERSION_RELPATH)):
        entry, path = snap.get(key), os.path.join(cfg["proc"], rel)
        if not isinstance(entry, dict) or entry.get("path") != path:
            raise Doubt(f"snapshot has another {key} path")
        now = identity(path)
        if now is None:
            raise Doubt(f"{path} is missing")
        if now != entry.get("identity"):
            raise Doubt(f"{path} changed since the snapshot (the driver was loaded again?)")
    return snap


# ----------------------------------------------------------------------------- instance facts


def make_fact(*, gpu: int, minor: int, gi: int, ci: int, profile_id: int, start: int,
              uuid: str, caps: list, boot: str, journal, fast_epilogs: int, by: str) -> dict:
    """An instance fact (see the module doc); ``caps``: [gi entry identity, ci entry identity]."""
    return {"version": FORMAT, "gpu": gpu, "minor": minor, "gi_id": gi, "ci_id": ci,
            "profile_id": profile_id, "start": start, "uuid": uuid, "caps": caps,
            "boot_id": boot, "journal": journal, "fast_epilogs": fast_epilogs, "by": by}


def write_fact(state_dir: str, fact: dict, job: str | None = None) -> None:
    """Write an idle fact (or, with ``job``, the fact that job holds), atomically.  Not
    fsynced: a fact lost to a crash only means a full hook, and after a reboot every
    fact is stale anyway (boot id)."""
    safefs.ensure_dir(facts_dir(state_dir), 0o700, "hook facts directory", tighten=True)
    _write_json(fact_path(state_dir, fact["gpu"], fact["gi_id"], job), fact, 0o600, durable=False)


def drop_facts(state_dir: str, gpu: int, gi: int, job: str | None = None) -> None:
    """Remove the idle fact of an instance and (``job``) the one that job holds."""
    for path in [fact_path(state_dir, gpu, gi)] + ([fact_path(state_dir, gpu, gi, job)] if job else []):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def drop_held_facts(state_dir: str, job: str) -> None:
    """Remove every fact held by ``job`` (its epilog ran, whatever happened to its record)."""
    suffix = f".held-{jobs.check_job_id(job)}.json"
    try:
        names = os.listdir(facts_dir(state_dir))
    except OSError:
        return
    for name in names:
        if name.endswith(suffix):
            try:
                os.unlink(os.path.join(facts_dir(state_dir), name))
            except FileNotFoundError:
                pass


def read_fact(path: str) -> dict | None:
    """A fact file's content (None when absent); never through a symlink, only a trusted
    owner's (:func:`slurm_mig.host.safefs.read_file`).  Anything unreadable is a doubt."""
    try:
        data = safefs.read_file(path, "hook fact")
    except (OSError, SlurmMigError) as err:
        raise Doubt(f"{path} cannot be read ({err})") from None
    if data is None:
        return None
    try:
        fact = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Doubt(f"{path} is not a fact (not JSON)") from None
    if not isinstance(fact, dict) or fact.get("version") != FORMAT:
        raise Doubt(f"{path} is a fact of another format")
    return fact


def _fact_differs(fact: dict, want: dict, boot, journal, caps: list) -> str | None:
    """Why ``fact`` does not vouch for the instance ``want`` now, or None."""
    for key in ("gpu", "gi_id", "ci_id", "profile_id"):
        if fact.get(key) != want[key]:
            return f"its fact names {key} {fact.get(key)}, not {want[key]}"
    if want.get("start") is not None and fact.get("start") != want["start"]:
        return f"its fact names start {fact.get('start')}, not {want['start']}"
    if not isinstance(fact.get("uuid"), str) or not isinstance(fact.get("start"), int):
        return "its fact has no MIG UUID or placement"
    if fact.get("boot_id") != boot:
        return "its fact is from another boot"
    if fact.get("journal") != journal:
        return "an apply ran since its fact was written (the journal changed)"
    if fact.get("caps") != caps:
        return ("its capability entries are not those its fact recorded (the instance was "
                "made again since, or the driver was loaded again)")
    count = fact.get("fast_epilogs")
    if type(count) is not int or count < 0:
        return "its fact has no count of fast epilogs"
    return None


# ----------------------------------------------------------------------------- prolog


def prolog(environ, indexes: list, proc_root: str = "/proc") -> dict:
    """The prolog when every fact checks out; raises :class:`Doubt` otherwise."""
    from ..host.locking import node_lock

    job = _job(environ)
    node = environ.get("SLURMD_NODENAME")
    if not node:
        raise Doubt("SLURMD_NODENAME is not set")
    cfg = load_settings(environ)
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
        if boot is None or snap.get("boot_id") != boot:
            raise Doubt("the node booted again since the snapshot (or has no boot id)")
        held = jobs.holders(state_dir, boot)
        if held.warnings:  # a damaged record: the full prolog names it (and may refuse)
            raise Doubt(f"a job record is damaged ({held.warnings[0]})")
        journal = journal_identity(state_dir)
        checked = [_check(job, i, rec, snap, cfg, held, boot, journal) for i, rec in wanted]
        record = {"version": jobs.RECORD_VERSION, "job_id": job, "uid": environ.get("SLURM_JOB_UID"),
                  "node": node, "boot_id": boot, "instances": [entry for entry, _ in checked]}
        safefs.ensure_dir(jobs.jobs_dir(state_dir), 0o700, "job records directory", tighten=True)
        _write_json(jobs.job_path(state_dir, job), record, 0o600)
        task_env_file(cfg["task_env"], cfg["run_dir"], record)
        dcgm_mapping(cfg["dcgm_job_mapping_dir"], state_dir, boot, "prolog", job)
        for entry, idle in checked:  # the instance is the job's now: its idle fact is used up
            if idle is not None:
                os.replace(idle, fact_path(state_dir, entry["gpu"], entry["gi_id"], job))
    return record


def _check(job: str, index: int, rec: dict, snap: dict, cfg: dict, held, boot: str,
           journal) -> tuple:
    """(job record entry, idle fact to mark held or None) for one record, or Doubt."""
    where = f"gres record {index}"
    gpu, gi, ci, minor = rec["gpu"], rec["gi_id"], rec["ci_id"], rec["minor"]
    holder = held.get((gpu, gi))
    if holder is not None and holder != job:
        raise Doubt(f"{where}: held by job {holder}")
    g = snap["gpus"].get(str(gpu))
    if not isinstance(g, dict) or g.get("minor") != minor or not g.get("info"):
        raise Doubt(f"{where}: gpu {gpu} with minor {minor} is not in the snapshot with its "
                    f"driver information file")
    info = _information(g["info"])
    if info is None or info.get("GPU UUID") != g["uuid"] or info.get("Device Minor") != str(minor):
        raise Doubt(f"{where}: gpu {gpu} is not the GPU of the snapshot ({g['info']})")
    proc = cfg["proc"]
    gi_minor, gi_ident = read_cap(cap_path(proc, minor, gi))
    if gi_ident is None:
        raise Doubt(f"{where}: gpu {gpu} has no gi {gi} ({cap_path(proc, minor, gi)} is missing)")
    if gi_minor != rec["gi_cap"]:
        raise Doubt(f"{where}: gpu {gpu} gi {gi}'s capability is minor {gi_minor}, gres.conf's "
                    f"cap file is minor {rec['gi_cap']}")
    ci_minor, ci_ident = read_cap(cap_path(proc, minor, gi, ci))
    if ci_ident is None:
        others = sorted(int(n[2:]) for n in _listdir(os.path.dirname(cap_path(proc, minor, gi)))
                        if n.startswith("ci") and n[2:].isdigit())
        if not others:
            raise Doubt(f"{where}: gi {gi} has no compute instance")
        raise Doubt(f"{where}: gi {gi}'s compute instance is ci {others[0]}, not {ci}")
    if ci_minor != rec["ci_cap"]:
        raise Doubt(f"{where}: gpu {gpu} gi {gi} ci {ci}'s capability is minor {ci_minor}, "
                    f"gres.conf's cap file is minor {rec['ci_cap']}")
    state_dir = cfg["state_dir"]
    idle = None
    fact = read_fact(fact_path(state_dir, gpu, gi, job))  # this job's own, from a prolog before
    if fact is None:
        idle = fact_path(state_dir, gpu, gi)
        fact = read_fact(idle)
    if fact is None:
        raise Doubt(f"{where}: no fact that gpu {gpu} gi {gi} is idle (a full hook writes one "
                    f"when the driver shows it idle)")
    want = {"gpu": gpu, "gi_id": gi, "ci_id": ci, "profile_id": rec["profile_id"],
            "start": rec["start"]}
    why = _fact_differs(fact, want, boot, journal, [gi_ident, ci_ident])
    if why:
        raise Doubt(f"{where}: {why}")
    for path in rec["files"]:
        if not os.path.exists(path):
            raise Doubt(f"{where}: {path} is missing")
    entry = {"index": index, "type": rec["type"], "files": list(rec["files"]), "gpu": gpu,
             "profile_id": rec["profile_id"], "start": fact["start"], "gi_id": gi, "ci_id": ci,
             "uuid": fact["uuid"], "created": False}
    return entry, idle


def _listdir(path: str) -> list:
    try:
        return os.listdir(path)
    except OSError:
        return []


# ----------------------------------------------------------------------------- epilog


def epilog(environ, wipe_env: str, proc_root: str = "/proc") -> dict:
    """The epilog when no wipe is asked, no process is left in the job's cgroup and each of
    the job's instances has its held fact, still true.  Raises :class:`Doubt` otherwise."""
    from ..host.locking import node_lock

    job = _job(environ)
    node = environ.get("SLURMD_NODENAME")
    if not node:
        raise Doubt("SLURMD_NODENAME is not set")
    cfg = load_settings(environ)
    wipe = cfg["epilog_wipe"]
    if environ.get(wipe_env):
        wipe = flag_text(environ[wipe_env])  # ValueError: the full path reports it
    if wipe:
        raise Doubt("the epilog wipes the job's instances")
    state_dir = cfg["state_dir"]
    reading = jobs.read_record(state_dir, job)
    if reading is not None and not reading.ok:
        raise Doubt("the job record is unreadable")
    pid = job_process(job, node, proc_root, jobprocs.parse_sluid(environ.get("SLURM_JOB_SLUID")))
    if pid is not None:
        raise Doubt(f"pid {pid} of the job is still in its cgroup")
    with node_lock(os.path.join(state_dir, "node.lock"), cfg["lock_timeout"]):
        reading = jobs.read_record(state_dir, job)
        if reading is not None and not reading.ok:
            raise Doubt("the job record is unreadable")
        removed = False
        if reading is not None:
            boot = jobs.boot_id(proc_root)
            if not reading.stale(boot):  # an earlier boot's instances are gone: no facts
                turns = _epilog_facts(job, reading.record, cfg, boot)
                for held_path, fact in turns:
                    write_fact(state_dir, fact)
                    os.unlink(held_path)
            removed = jobs.remove_job(state_dir, job)
        drop_task_env_file(cfg["run_dir"], job)
        dcgm_mapping(cfg["dcgm_job_mapping_dir"], state_dir, jobs.boot_id(proc_root), "epilog", job)
    return {"job_id": job, "record": reading is not None, "removed": removed, "ended": [],
            "other_pids": [], "recreated": [], "strays": [], "strays_left": []}


def _epilog_facts(job: str, record: dict, cfg: dict, boot) -> list:
    """(held fact path, the idle fact that replaces it) for each of the job's MIG instances;
    Doubt when one has no held fact that is still true, or has had its fast epilogs."""
    state_dir, proc = cfg["state_dir"], cfg["proc"]
    journal = journal_identity(state_dir)
    out = []
    for inst in record["instances"]:
        if inst["gi_id"] is None:
            continue
        gpu, gi, ci = inst["gpu"], inst["gi_id"], inst["ci_id"]
        path = fact_path(state_dir, gpu, gi, job)
        fact = read_fact(path)
        if fact is None:
            raise Doubt(f"gpu {gpu} gi {gi} has no fact held by the job (its prolog writes one "
                        f"unless it made the instance)")
        minor = fact.get("minor")
        if type(minor) is not int:
            raise Doubt(f"{path} names no GPU minor")
        caps = [identity(cap_path(proc, minor, gi)), identity(cap_path(proc, minor, gi, ci))]
        want = {"gpu": gpu, "gi_id": gi, "ci_id": ci, "profile_id": inst["profile_id"],
                "start": inst["start"]}
        why = _fact_differs(fact, want, boot, journal, caps)
        if why is None and fact.get("uuid") != inst["uuid"]:
            why = "its fact names another MIG UUID than the job record"
        if why:
            raise Doubt(f"gpu {gpu} gi {gi}: {why}")
        count, by = fact["fast_epilogs"] + 1, f"fast epilog of job {job}"
        if fact["fast_epilogs"] >= FAST_EPILOGS_IN_A_ROW:
            _driver_check(cfg, gpu, gi, ci, fact["fast_epilogs"])
            count, by = 0, f"epilog of job {job}, checked with the driver"
        out.append((path, dict(fact, fast_epilogs=count, by=by)))
    return out


def _driver_check(cfg: dict, gpu: int, gi: int, ci: int, count: int) -> None:
    """After :data:`FAST_EPILOGS_IN_A_ROW` fast epilogs on an instance, ask the driver what
    runs there (:func:`slurm_mig.gpu.instancepids.instance_pids`: for NVML the smallest query
    there is); anything at all, or no such instance, is a doubt: the full epilog ends the
    strays and names the rest."""
    from ..gpu.instancepids import instance_pids

    pids = instance_pids(cfg["backend"], gpu, gi, ci, sim_root=cfg.get("sim_root"))
    if pids is None:
        raise Doubt(f"after {count} fast epilogs in a row the driver lists no gpu {gpu} gi {gi} "
                    f"ci {ci}")
    if pids:
        raise Doubt(f"after {count} fast epilogs in a row the driver shows pids "
                    f"{', '.join(map(str, pids))} on gpu {gpu} gi {gi}")


def job_process(job: str, node: str | None, proc_root: str = "/proc",
                sluid: str | None = None) -> int | None:
    """A process in ``job``'s cgroup by Slurm's layout (:func:`slurm_mig.host.jobprocs.parse_cgroup`,
    whatever its uid; ``sluid``: the job's SLUID, named by cgroup/v2 paths from Slurm 26.05),
    or None.  The full epilog ends a process as the job's only when it is in that cgroup, so
    with none there it would end none of the job's.  Reads each process's ``cgroup`` file
    once (about 6 µs each); parses only those naming the job."""
    needles = [f"/job_{job}".encode()] + ([f"/{sluid}".encode()] if sluid else [])
    init = None
    try:
        names = os.listdir(proc_root)
    except OSError as err:
        raise Doubt(f"cannot list {proc_root} ({err.strerror})") from None
    for name in names:
        if not name.isdigit() or not name.isascii():
            continue
        try:
            with open(os.path.join(proc_root, name, "cgroup"), "rb") as f:
                data = f.read()
        except OSError:
            continue  # ended since the listing, or not ours to read
        if not any(needle in data for needle in needles):
            continue
        if init is None:
            init = jobprocs.init_dir(proc_root)
        owner = jobprocs.parse_cgroup(data.decode("utf-8", "replace"), node, init)[0]
        if owner is not None and owner in (job, sluid):
            return int(name)
    return None


# ----------------------------------------------------------------------------- helpers


def task_env_file(mode: str, run_dir: str, record: dict) -> None:
    """Prolog: the job's env file for its TaskProlog (:mod:`.taskenv`), when ``[hooks]
    task_env`` is ``mig-uuids``.  Best effort: without it the tasks keep Slurm's values."""
    import sys

    from . import taskenv

    if mode != "mig-uuids":
        return
    try:
        taskenv.write_env_file(run_dir, record, record.get("uid"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        sys.stderr.write(f"slurm-mig prolog: job {record.get('job_id')}: warning: no task env file "
                         f"under {run_dir} ({err}); its tasks keep Slurm's CUDA_VISIBLE_DEVICES\n")


def drop_task_env_file(run_dir: str, job: str) -> None:
    """Epilog: remove the job's env file (whatever ``task_env`` says now)."""
    from . import taskenv

    try:
        taskenv.remove_env_file(run_dir, job)
    except (OSError, ValueError):
        pass


def dcgm_mapping(directory: str, state_dir: str, boot, which: str, job: str) -> None:
    """Prolog/epilog, under the node lock: dcgm-exporter's mapping files from the job records
    (:mod:`slurm_mig.node.dcgmmap`), when ``[hooks] dcgm_job_mapping_dir`` is set.  Best
    effort: metrics without a job label are not worth a drained node."""
    import sys

    if not directory:
        return
    from ..node import dcgmmap

    try:
        dcgmmap.rewrite(directory, state_dir, boot)
    except (OSError, ValueError) as err:
        sys.stderr.write(f"slurm-mig {which}: job {job}: warning: dcgm-exporter mapping files in "
                         f"{directory} not updated ({err}); `slurm-mig sync` rewrites them\n")


def _job(environ) -> str:
    try:
        return jobs.check_job_id(environ.get("SLURM_JOB_ID"))
    except SlurmMigError:
        raise Doubt("SLURM_JOB_ID is not a job id") from None


def _write_json(path: str, data: dict, mode: int, *, durable: bool = True) -> None:
    """:func:`slurm_mig.host.atomic.write_json_atomic`'s contract (same bytes; temp file in the
    directory, fsync, rename, directory fsync; unchanged content not rewritten) through
    :func:`slurm_mig.host.safefs.write_file`, without ``atomic``'s imports (``tempfile``,
    ``dataclasses``), which would cost the fast path a third of its time.  ``durable=False``:
    no fsync (still atomic)."""
    safefs.write_file(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), mode,
                      durable=durable)
