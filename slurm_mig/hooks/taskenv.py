"""The job's MIG instances for its tasks: the env file the prolog writes, the TaskProlog reads.

The job record (``<state_dir>/jobs/<id>.json``) is root's, 0600 in a 0700 directory; the
TaskProlog runs as the job's user.  So the prolog (root) also writes
``<run_dir>/task-env/<id>.json`` (directory 0711 root: not listable; file 0400 owned by
the job's uid, ``SLURM_JOB_UID`` from slurmd): only the instances' record index, profile,
gpu, gi and ci ids and MIG UUID.  The epilog removes it.  docs/security.md has why.

``python3 -I -m slurm_mig.hooks task-prolog`` (``taskprolog.d/50-slurm-mig``) prints
``export NAME=value`` lines for the step's gres records: those of ``SLURM_STEP_GPUS`` in a
step, of ``SLURM_JOB_GPUS`` in the batch (or interactive) step, mapped to MIG UUIDs through
the file.  Every value printed matches a strict pattern; anything unexpected prints
nothing and exits 0 (a failing TaskProlog would kill the task; the task then keeps
Slurm's own values).  Stdlib only; no config, no controller RPC.

A task bound to some of its step's gpus (``--gpus-per-task``, ``--gpu-bind``) under
``ConstrainDevices=yes`` gets from Slurm (22.05 to 26.05) the step's *first* records in
``SLURM_STEP_GPUS``, whichever records its device cgroup allows (Slurm numbers them local
to the task there: ``gres.c`` ``_get_usable_gres``).  So where a step names fewer records
than the job holds on the node, the TaskProlog also tries to open each instance's ci
capability file (its path is in the env file; one per instance, unlike the gi's) and, when Slurm named one the task cannot
open, gives the task the ones it can open instead (:func:`task_indexes`).
"""

from __future__ import annotations

import json
import os
import re

TYPE_CHECKING = False  # no `typing` at run time: the task prolog starts for every task
if TYPE_CHECKING:
    from typing import Mapping

#: Where the TaskProlog looks (``paths.run_dir``), set in /etc/default/slurm-mig.
RUN_DIR_ENV = "SLURM_MIG_RUN_DIR"
DEFAULT_RUN_DIR = "/run/slurm-mig"
SUBDIR = "task-env"
TASK_ENV_MODES = ("mig-uuids", "slurm")
#: Slurm's step ids for the batch, interactive and extern steps (slurm.h SLURM_*_STEP,
#: 0xfffffffa and up): tasks there see the job's gres (SLURM_JOB_GPUS), not a step's.
FIRST_SPECIAL_STEP = 0xFFFFFFFA
_STEP = re.compile(r"-?[0-9]{1,10}\Z")
_CAP_NAME = re.compile(r"nvidia-cap[0-9]{1,7}\Z")
_UUID = re.compile(r"MIG-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_PROFILE = re.compile(r"[0-9]{1,2}g\.[0-9]{1,4}gb(\+[a-z]{1,8}){0,3}\Z")
_INDEXES = re.compile(r"[0-9]{1,4}(-[0-9]{1,4})?(,[0-9]{1,4}(-[0-9]{1,4})?){0,4095}\Z")
_JOB = re.compile(r"[1-9][0-9]{0,19}\Z")
MAX_FILE = 1 << 20


def env_dir(run_dir: str) -> str:
    return os.path.join(run_dir, SUBDIR)


def env_path(run_dir: str, job: str) -> str:
    if not _JOB.match(job or ""):
        raise ValueError(f"not a job id: {job!r}")
    return os.path.join(env_dir(run_dir), f"{job}.json")


def cap_file(path) -> bool:
    """True for a path the TaskProlog may open to test its device cgroup: absolute,
    normalised, named ``nvidia-cap<n>`` (a gres record's ci capability file).  Pure."""
    return (type(path) is str and os.path.isabs(path) and os.path.normpath(path) == path
            and "\n" not in path and _CAP_NAME.match(os.path.basename(path)) is not None)


def entries(record: dict) -> list:
    """What the file holds for each MIG instance of a job record.  Pure."""
    out = []
    for inst in record.get("instances", ()):
        if inst.get("gi_id") is None or not inst.get("uuid"):
            continue
        item = {"index": inst["index"], "profile": inst.get("type"), "gpu": inst["gpu"],
                "gi": inst["gi_id"], "ci": inst["ci_id"], "uuid": inst["uuid"]}
        files = list(inst.get("files") or [])
        if len(files) == 3 and cap_file(files[2]):  # /dev/nvidiaN, gi cap, ci cap
            item["ci_cap"] = files[2]
        out.append(item)
    return out


def write_env_file(run_dir: str, record: dict, uid_text: str | None) -> str | None:
    """Prolog (root): write the job's env file, owned by the job's uid, 0400 (atomic).
    None when the job has no MIG instance or no uid (nothing the tasks could read)."""
    items = entries(record)
    if not items or uid_text is None or not uid_text.isdigit() or not uid_text.isascii():
        return None
    uid = int(uid_text)
    d = env_dir(run_dir)
    if not os.path.isdir(run_dir):  # made here: traversable by the users whatever the umask
        os.makedirs(run_dir, 0o755, exist_ok=True)
        os.chmod(run_dir, 0o755)
    try:
        os.mkdir(d, 0o711)
    except FileExistsError:
        pass
    st = os.lstat(d)
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"{d} is not a directory of uid {os.geteuid()} writable only by it")
    os.chmod(d, 0o711)
    path = env_path(run_dir, record["job_id"])
    data = (json.dumps({"version": 1, "job_id": record["job_id"], "instances": items},
                       indent=1, sort_keys=True) + "\n").encode()
    tmp = os.path.join(d, f".{record['job_id']}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchown(fd, uid, -1)
            os.fchmod(fd, 0o400)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def remove_env_file(run_dir: str, job: str) -> bool:
    """Epilog: remove the job's env file; True when there was one."""
    try:
        os.unlink(env_path(run_dir, job))
        return True
    except FileNotFoundError:
        return False


def special_step(text: str) -> bool:
    """True for the batch, interactive and extern steps' ``SLURM_STEP_ID``.  Slurm before
    26.05 leaves SLURM_STEP_ID out of those tasks' environment (``setup_env`` sets it only
    for ids >= 0 as an int); 26.05 sets it, printed signed: ``-5`` in the batch step
    (``setup_env``'s ``%d`` of 0xfffffffb; Slurm commit f0c71ecf36).  Both spellings count.
    Pure."""
    if not _STEP.match(text):
        return False
    step = int(text)
    if step < 0:
        step += 1 << 32
    return FIRST_SPECIAL_STEP <= step <= 0xFFFFFFFF


def step_indexes(environ: Mapping[str, str]) -> list | None:
    """The gres record indexes of this task's step: ``SLURM_STEP_GPUS`` when set, else
    ``SLURM_JOB_GPUS`` in the batch/interactive/extern step (or without a step id);
    ``[]`` for a regular step without gpus; None when a value is malformed.  Pure."""
    text = environ.get("SLURM_STEP_GPUS")
    if text is None:
        step = environ.get("SLURM_STEP_ID")
        if step is not None and not special_step(step):
            return []  # a step Slurm gave no gpu (Slurm unsets SLURM_STEP_GPUS then)
        text = environ.get("SLURM_JOB_GPUS")
    text = (text or "").strip()
    if not text:
        return []
    if not _INDEXES.match(text):
        return None
    out: set = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        lo_n, hi_n = int(lo), int(hi or lo)
        if hi_n < lo_n or hi_n > 4095:
            return None
        out.update(range(lo_n, hi_n + 1))
    return sorted(out)


def task_indexes(slurm: list, reachable) -> list:
    """The records a task gets: Slurm's (``slurm``), unless the task cannot open one of
    them; then the ones it can open (``reachable``, record indexes), when there are as many
    (a bound task under ConstrainDevices: Slurm names the step's first records for every
    task; its device cgroup allows its own).  ``[]`` (keep Slurm's values) when they
    disagree otherwise; ``slurm`` when ``reachable`` is None (not tried, or not known).
    Pure."""
    if reachable is None or set(slurm) <= reachable:
        return slurm
    if len(reachable) == len(slurm):
        return sorted(reachable)
    return []


def wants_probe(indexes, data) -> bool:
    """True when the task's records are worth checking against its device cgroup: Slurm
    named fewer of them than the env file holds (a step of part of the job).  Pure."""
    return (bool(indexes) and type(data) is dict and type(data.get("instances")) is list
            and len(indexes) < len(data["instances"]))


def reachable(data) -> set | None:
    """The record indexes of the env file whose ci capability file this process may open
    (its device cgroup allows it), or None when that cannot be told (a path missing, not a
    character device, another error).  Opened read-only, non-blocking, and closed at once;
    ENXIO/ENODEV (allowed, no driver behind it: the simulator's files) count as allowed,
    EPERM (the device cgroup) as not."""
    import errno
    import stat

    out = set()
    for item in data["instances"]:
        path = item.get("ci_cap") if type(item) is dict else None
        if type(path) is not str or not cap_file(path) or type(item.get("index")) is not int:
            return None
        try:
            if not stat.S_ISCHR(os.stat(path).st_mode):
                return None
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                             | os.O_NOFOLLOW))
        except OSError as err:
            if err.errno == errno.EPERM:
                continue
            if err.errno not in (errno.ENXIO, errno.ENODEV):
                return None
        out.add(item["index"])
    return out


def exports(environ: Mapping[str, str], data, reachable_indexes=None) -> list:
    """The ``export`` lines for a task: its step's instances from the env file's ``data``,
    in Slurm's record order (see :func:`task_indexes` for ``reachable_indexes``).  Pure.
    [] when anything is missing, unknown or malformed."""
    indexes = step_indexes(environ)
    if not indexes or type(data) is not dict or type(data.get("instances")) is not list:
        return []
    indexes = task_indexes(indexes, reachable_indexes)
    if not indexes:
        return []
    by_index = {}
    for item in data["instances"]:
        if type(item) is not dict:
            return []
        by_index[item.get("index")] = item
    uuids, described = [], []
    for i in indexes:
        item = by_index.get(i)
        if item is None:
            return []  # a record the prolog did not give this job: keep Slurm's values
        uuid, profile = item.get("uuid"), item.get("profile")
        ids = [item.get(k) for k in ("gpu", "gi", "ci")]
        if (type(uuid) is not str or not _UUID.match(uuid) or type(profile) is not str
                or not _PROFILE.match(profile)
                or not all(type(v) is int and 0 <= v <= 4095 for v in ids)):
            return []
        uuids.append(uuid)
        described.append(f"{profile}:{ids[0]}:{ids[1]}:{ids[2]}")
    visible = ",".join(uuids)
    return [f"export CUDA_VISIBLE_DEVICES={visible}",
            f"export NVIDIA_VISIBLE_DEVICES={visible}",
            f"export SLURM_MIG_INSTANCES={','.join(described)}"]


def read_env_file(run_dir: str, job: str):
    """The parsed env file of ``job``, or None (absent, unreadable, too big, not JSON)."""
    try:
        fd = os.open(env_path(run_dir, job), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_FILE + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def task_prolog(environ: Mapping[str, str]) -> list:
    """The lines the TaskProlog prints for this task (see the module's docstring)."""
    job = environ.get("SLURM_JOB_ID") or ""
    if not _JOB.match(job):
        return []
    run_dir = environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR
    if not os.path.isabs(run_dir):
        return []
    data = read_env_file(run_dir, job)
    probe = reachable(data) if wants_probe(step_indexes(environ), data) else None
    return exports(environ, data, probe)
