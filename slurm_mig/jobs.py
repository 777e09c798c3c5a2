"""Job records (which job holds which MIG instance) and the processes of a job.

A record is ``<state_dir>/jobs/<jobid>.json`` (0600, directory 0700), written by the prolog
under the node lock and removed by the epilog.  Only the job id, checked to be digits, ever
becomes part of a path; nothing the user controls (job name, comment) does.

Records carry the boot id: a record from before a reboot is stale (its job is gone) and is
not taken as holding an instance.
"""

from __future__ import annotations

import contextlib
import json
import os

from .errors import InputError

TYPE_CHECKING = False  # no `typing` at run time: the hooks import this module on every job
if TYPE_CHECKING:
    from typing import Iterator

RECORD_VERSION = 1
_DIGITS = frozenset("0123456789")


def _is_job_id(text: str) -> bool:
    """``[1-9][0-9]{0,19}``, without compiling a regex at every hook start."""
    return 0 < len(text) <= 20 and text[0] != "0" and all(c in _DIGITS for c in text)


class BadJobId(InputError):
    pass


def check_job_id(text: str | None) -> str:
    """The job id as digits (no sign, no leading zero, at most 20 digits), or BadJobId."""
    if text is None or not _is_job_id(text):
        raise BadJobId(f"SLURM_JOB_ID {text!r} is not a job id (digits)")
    return text


def jobs_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "jobs")


def job_path(state_dir: str, job_id: str) -> str:
    return os.path.join(jobs_dir(state_dir), f"{check_job_id(job_id)}.json")


def boot_id(proc_root: str = "/proc") -> str | None:
    try:
        with open(os.path.join(proc_root, "sys", "kernel", "random", "boot_id")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def write_job(state_dir: str, record: dict) -> str:
    from .slurmfiles import write_json_atomic

    from .safefs import ensure_dir

    ensure_dir(jobs_dir(state_dir), 0o700, "job records directory", tighten=True)
    path = job_path(state_dir, record["job_id"])
    write_json_atomic(path, record, mode=0o600)
    return path


def read_job(state_dir: str, job_id: str) -> dict | None:
    try:
        with open(job_path(state_dir, job_id)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise InputError(f"job record {job_path(state_dir, job_id)} is unreadable ({err}); "
                         f"remove it if job {job_id} has ended") from err


def remove_job(state_dir: str, job_id: str) -> bool:
    try:
        os.unlink(job_path(state_dir, job_id))
        return True
    except FileNotFoundError:
        return False


def list_jobs(state_dir: str) -> Iterator[dict]:
    """Every readable record (unreadable ones are skipped: the prolog names them)."""
    try:
        names = sorted(os.listdir(jobs_dir(state_dir)))
    except FileNotFoundError:
        return
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext != ".json" or not _is_job_id(stem):
            continue
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(jobs_dir(state_dir), name)) as f:
                yield json.load(f)


def holders(state_dir: str, current_boot: str | None) -> dict[tuple[int, int], str]:
    """(gpu index, gi id) -> job id, for records of this boot."""
    out: dict[tuple[int, int], str] = {}
    for rec in list_jobs(state_dir):
        if current_boot and rec.get("boot_id") and rec["boot_id"] != current_boot:
            continue
        for inst in rec.get("instances", ()):
            if inst.get("gpu") is not None and inst.get("gi_id") is not None:
                out[(inst["gpu"], inst["gi_id"])] = str(rec.get("job_id"))
    return out


# ----------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_of_pid(pid: int, proc_root: str = "/proc") -> str | None:
    """The Slurm job a process belongs to: its cgroup path (``/job_<id>/``), else its
    ``SLURM_JOB_ID`` environment variable; None when neither says (or it is gone)."""
    try:
        with open(os.path.join(proc_root, str(pid), "cgroup")) as f:
            job = _cgroup_job(f.read())
            if job:
                return job
    except OSError:
        return None
    try:
        data = _read_environ(os.path.join(proc_root, str(pid), "environ"))
    except OSError:
        return None
    for item in data.split(b"\0"):
        if item.startswith(b"SLURM_JOB_ID="):
            return item[len(b"SLURM_JOB_ID="):].decode(errors="replace")
    return None


#: /proc/<pid>/environ reads empty while the process is inside execve (measured: about 1%
#: of reads around an exec); read again for up to this many seconds before taking it as
#: a process without environment (kernel thread, zombie).
ENVIRON_RETRY = 0.2


def _read_environ(path: str) -> bytes:
    waited = 0.0
    while True:
        with open(path, "rb") as f:
            data = f.read()
        if data or waited >= ENVIRON_RETRY:
            return data
        import time

        time.sleep(0.005)
        waited += 0.005


def _cgroup_job(text: str) -> str | None:
    """The first ``/job_<digits>`` followed by ``/`` or a line end (``re.M`` ``$``) in a
    /proc/<pid>/cgroup text; a plain scan, no regex on the hooks' path."""
    at = text.find("/job_")
    while at >= 0:
        start = end = at + len("/job_")
        while end < len(text) and text[end] in _DIGITS:
            end += 1
        if end > start and (end == len(text) or text[end] in "/\n"):
            return text[start:end]
        at = text.find("/job_", at + 1)
    return None


def end_processes(pids: list[int], grace: float = 5.0) -> tuple[list[int], list[int]]:
    """SIGTERM, wait ``grace`` seconds, SIGKILL.  Returns (ended, still alive)."""
    import psutil  # only when there is something to end

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    gone2, alive = psutil.wait_procs(alive, timeout=grace)
    return sorted(p.pid for p in gone + gone2), sorted(p.pid for p in alive)
