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
#: Slurm's step ids for the batch, interactive and extern steps (slurm.h SLURM_*_STEP):
#: tasks there see the job's gres (SLURM_JOB_GPUS), not a step's.
SPECIAL_STEPS = frozenset({"4294967290", "4294967291", "4294967292", "4294967293",
                           "4294967294", "4294967295"})
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


def entries(record: dict) -> list:
    """What the file holds for each MIG instance of a job record.  Pure."""
    out = []
    for inst in record.get("instances", ()):
        if inst.get("gi_id") is None or not inst.get("uuid"):
            continue
        out.append({"index": inst["index"], "profile": inst.get("type"), "gpu": inst["gpu"],
                    "gi": inst["gi_id"], "ci": inst["ci_id"], "uuid": inst["uuid"]})
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
    from ..host.safefs import write_file

    write_file(path, data, 0o400, uid=uid, keep_same=False)
    return path


def remove_env_file(run_dir: str, job: str) -> bool:
    """Epilog: remove the job's env file; True when there was one."""
    try:
        os.unlink(env_path(run_dir, job))
        return True
    except FileNotFoundError:
        return False


def step_indexes(environ: Mapping[str, str]) -> list | None:
    """The gres record indexes of this task's step: ``SLURM_STEP_GPUS`` when set, else
    ``SLURM_JOB_GPUS`` in the batch/interactive/extern step (or without a step id);
    ``[]`` for a regular step without gpus; None when a value is malformed.  Pure."""
    text = environ.get("SLURM_STEP_GPUS")
    if text is None:
        step = environ.get("SLURM_STEP_ID")
        if step is not None and step not in SPECIAL_STEPS:
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


def exports(environ: Mapping[str, str], data) -> list:
    """The ``export`` lines for a task: its step's instances from the env file's ``data``,
    in Slurm's record order.  Pure.  [] when anything is missing, unknown or malformed."""
    indexes = step_indexes(environ)
    if not indexes or type(data) is not dict or type(data.get("instances")) is not list:
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
    return exports(environ, read_env_file(run_dir, job))
