"""Which Slurm job a process belongs to, decided from what its user cannot forge; ending processes.

A job's user controls everything in its processes' environment (``env -i SLURM_JOB_ID=200``
is one command), so that is never read.  What the user cannot change is:

* the process's **cgroup path** (``/proc/<pid>/cgroup``), which only root (slurmstepd)
  chooses, **anchored** to the layout Slurm's cgroup plugins build, from the path's start:

  - cgroup v1 (``src/plugins/cgroup/v1/xcgroup.c``, ``xcgroup_create_slurm_cg`` and
    ``xcgroup_create_hierarchy``; the prefix is ``/slurm``, or ``/slurm_<node name>`` when
    Slurm is built for several slurmd on one host, set in ``src/common/cgroup.c`` (22.05) /
    ``src/interfaces/cgroup.c`` (24.11)): ``/slurm[_<node>]/uid_<uid>/job_<id>[/...]``.
    Every line of the file whose path starts with a ``/slurm`` or ``/slurm_*`` component
    (the controllers Slurm manages: freezer, devices, ...) must have that form and name the
    same uid and job; lines of other controllers (``cpu:/``, ``name=systemd:/...``) are not
    Slurm's and say nothing.
  - cgroup v2 (``src/plugins/cgroup/v2/cgroup_v2.c``, ``_set_int_cg_ns`` and
    ``cgroup_p_step_create``): the single ``0::`` line is
    ``<init>/system.slice/slurmstepd.scope/<job>[/...]``, or
    ``.../<node>_slurmstepd.scope/...`` with several slurmd; ``<init>`` is the directory
    of pid 1's cgroup when pid 1 is not at the root (a container), as Slurm computes it.
    ``<job>`` is ``job_<id>`` up to 25.11 (and from 26.05.2 with cgroup.conf
    ``CgroupJobIdPaths=yes``), and the job's **SLUID** from 26.05.0: ``s`` and 13
    characters of Crockford's base 32, exactly as ``print_sluid`` (``src/common/sluid.c``)
    prints it, such as ``sEKNKTV3WPV500``.  A SLUID is matched against the hook's
    ``SLURM_JOB_SLUID`` (slurmd sets it for the prolog and epilog from 25.11 on, when the
    job has one), never against ``SLURM_JOB_ID``: without it a process under a SLUID is
    taken for another job's (left alone, refused), never this job's and never a stray.

* its **real uid** (first field of ``Uid:`` in ``/proc/<pid>/status``): on v1 it must be
  the ``uid_<N>`` of the path; the hooks also check it against the job's uid that slurmd
  gives them (``SLURM_JOB_UID``).

A path that only *contains* ``/job_200`` somewhere (``/user.slice/.../user@1000.service/job_200``,
a cgroup the user may create under systemd's delegation) names no job; nor does a SLUID
anywhere but right below the ``slurmstepd.scope`` of this node's slurmd.

Stdlib only, no ``re`` and no ``typing`` at run time: the hooks import this on every job.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # no `typing` at run time: the hooks start on every job
if TYPE_CHECKING:
    from typing import Iterable

_DIGITS = frozenset("0123456789")
#: Crockford's base 32 as Slurm prints a SLUID (``cb32map`` in ``src/common/sluid.c``); the
#: first character after the ``s`` carries the top 4 of the 64 bits, so it is one of the first 16.
_CB32 = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
_CB32_TOP = frozenset("0123456789ABCDEF")
#: The SLUID of a job that has none (``sluid`` 0): slurmd sets no SLURM_JOB_SLUID then, and
#: every such job on a node would share the one cgroup, so it never names *this* job.
NO_SLUID = "s0000000000000"

#: What :meth:`Judge.judge` says of a process.
MINE = "mine"    #: in this job's cgroup, running as this job's uid
OTHER = "other"  #: in another job's cgroup (and, on v1, as that path's uid)
STRAY = "stray"  #: belongs to no job (no Slurm job cgroup, a uid that does not match)
GONE = "gone"    #: not in /proc (ended, or in another pid namespace)


def _number(text: str) -> bool:
    return 0 < len(text) <= 20 and all(c in _DIGITS for c in text)


def _job_component(text: str) -> str | None:
    """``job_<digits>`` -> the digits (no leading zero), else None."""
    if text.startswith("job_"):
        digits = text[4:]
        if _number(digits) and digits[0] != "0":
            return digits
    return None


def is_sluid(text: str) -> bool:
    """Whether ``text`` is a SLUID exactly as Slurm prints one (``print_sluid``): ``s``, then
    13 characters of Crockford's base 32 in upper case, the first of them 0-F."""
    return (len(text) == 14 and text[0] == "s" and text[1] in _CB32_TOP
            and all(c in _CB32 for c in text[2:]))


def parse_sluid(text: str | None) -> str | None:
    """``SLURM_JOB_SLUID`` when it is a SLUID as slurmd prints it (and not :data:`NO_SLUID`),
    else None: then a process under a SLUID path is never taken for this job's."""
    return text if text is not None and is_sluid(text) and text != NO_SLUID else None


# ----------------------------------------------------------------------------- pure


def parse_cgroup(text: str, node: str | None = None, init: str = "") -> tuple:
    """(job, uid named by the path or None, why) from a ``/proc/<pid>/cgroup`` text.

    The job is its numeric id (digits), or on cgroup/v2 from Slurm 26.05 its SLUID
    (``s...``, :func:`is_sluid`): the two never look alike.

    ``node``: this node's name (``SLURMD_NODENAME``), for the prefixes of several slurmd on
    one host; ``init``: pid 1's cgroup directory (:func:`init_dir`), v2's anchor.  The job
    id is None when the text names no job by Slurm's layout; ``why`` says what it names
    (for messages: ``its cgroup is /user.slice/...``)."""
    v1 = []
    unified = None
    for line in text.splitlines():
        hier, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep and sep2):
            continue
        if hier == "0" and not controllers:
            unified = path
        else:
            v1.append((controllers, path))
    if v1:
        return _parse_v1(v1, node)
    if unified is None:
        return None, None, "its cgroup file names no cgroup"
    return _parse_v2(unified, node, init)


def _parse_v1(lines: list, node: str | None) -> tuple:
    prefixes = ("slurm", f"slurm_{node}") if node else ("slurm",)
    found = set()
    for controllers, path in lines:
        parts = path.split("/")
        if len(parts) < 2 or parts[0] or not (parts[1] == "slurm" or parts[1].startswith("slurm_")):
            continue  # a controller Slurm does not manage
        where = f"{controllers}:{path}"
        if parts[1] not in prefixes:
            return None, None, (f"its cgroup {where} is another slurmd's (this node is "
                                f"{node or 'unnamed: SLURMD_NODENAME is not set'})")
        job = _job_component(parts[3]) if len(parts) >= 4 else None
        if job is None or not parts[2].startswith("uid_") or not _number(parts[2][4:]):
            return None, None, (f"its cgroup {where} is not a job's (Slurm's are "
                                f"/{parts[1]}/uid_N/job_ID)")
        found.add((job, int(parts[2][4:]), where))
    if not found:
        shown = next((f"{c}:{p}" for want in ("devices", "freezer") for c, p in lines if c == want),
                     f"{lines[0][0]}:{lines[0][1]}")
        return None, None, f"its cgroup is {shown}"
    named = {(job, uid) for job, uid, _ in found}
    if len(named) > 1:
        return None, None, ("its cgroups name different jobs: "
                            + ", ".join(sorted(where for _, _, where in found)))
    job, uid = next(iter(named))
    return job, uid, f"its cgroup is {min(where for _, _, where in found)}"


def _parse_v2(path: str, node: str | None, init: str) -> tuple:
    scopes = ("slurmstepd.scope", f"{node}_slurmstepd.scope") if node else ("slurmstepd.scope",)
    head = f"{init}/system.slice/"
    if path.startswith(head):
        parts = path[len(head):].split("/")
        if len(parts) >= 2 and parts[0] in scopes:
            job = _job_component(parts[1])
            if job is None and is_sluid(parts[1]):
                job = parts[1]  # Slurm 26.05: the job's SLUID
            if job is not None:
                return job, None, f"its cgroup is {path}"
    return None, None, f"its cgroup is {path}"


def parse_real_uid(status_text: str) -> int | None:
    """The real uid (first field of ``Uid:``) of a ``/proc/<pid>/status`` text."""
    for line in status_text.splitlines():
        if line.startswith("Uid:"):
            fields = line[4:].split()
            if fields and _number(fields[0]):
                return int(fields[0])
            return None
    return None


def init_dir_of(cgroup_text: str) -> str:
    """Slurm's v2 anchor from pid 1's cgroup text: its directory when pid 1 is not at the
    root (a container without its own cgroup namespace), else '' (the root)."""
    for line in cgroup_text.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            if path in ("", "/"):
                return ""
            return os.path.dirname(path).rstrip("/")
    return ""


# ----------------------------------------------------------------------------- /proc


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def init_dir(proc_root: str = "/proc") -> str:
    try:
        return init_dir_of(_read(os.path.join(proc_root, "1", "cgroup")))
    except OSError:
        return ""


def owner_of(pid: int, proc_root: str = "/proc", node: str | None = None,
             init: str | None = None) -> tuple:
    """(job id or None, real uid, why) of process ``pid``; ``(None, None, "gone")`` when it
    is not in ``proc_root``.  A job id only when the cgroup path has Slurm's layout from its
    start and, on v1, names the process's real uid."""
    base = os.path.join(proc_root, str(pid))
    try:
        cgroup = _read(os.path.join(base, "cgroup"))
        uid = parse_real_uid(_read(os.path.join(base, "status")))
    except OSError:
        return None, None, GONE
    if uid is None:
        return None, None, GONE
    job, path_uid, why = parse_cgroup(cgroup, node, init_dir(proc_root) if init is None else init)
    if job is not None and path_uid is not None and path_uid != uid:
        return None, uid, f"{why}, which is uid {path_uid}'s, but it runs as uid {uid}"
    return job, uid, why


def parse_uid(text: str | None) -> int | None:
    """``SLURM_JOB_UID`` as a number, None when it is not one."""
    return int(text) if text is not None and _number(text) else None


class Judge:
    """How one job's hook sees the processes on MIG instances (:func:`owner_of`, then the
    job's uid from slurmd, ``SLURM_JOB_UID``).  ``sluid``: the job's SLUID from slurmd
    (``SLURM_JOB_SLUID`` through :func:`parse_sluid`), matched against cgroup paths that
    name a SLUID (cgroup/v2 from Slurm 26.05); paths with ``job_<id>`` are matched against
    ``job``."""

    __slots__ = ("job", "uid", "node", "proc_root", "sluid", "_init")

    def __init__(self, job: str, uid: int | None, node: str | None, proc_root: str = "/proc",
                 sluid: str | None = None):
        self.job, self.uid, self.node, self.proc_root = job, uid, node, proc_root
        self.sluid = sluid
        self._init: str | None = None

    def judge(self, pid: int) -> tuple:
        """(:data:`MINE` | :data:`OTHER` | :data:`STRAY` | :data:`GONE`, uid, why, job)."""
        if self._init is None:
            self._init = init_dir(self.proc_root)
        job, uid, why = owner_of(pid, self.proc_root, self.node, self._init)
        if why == GONE:
            return GONE, None, "is not in /proc (ended, or in another pid namespace)", None
        if job is None:
            return STRAY, uid, f"belongs to no Slurm job: {why}", None
        if job.startswith("s") and self.sluid is None:
            # Taken for another job's: it may be this job's, so it is never ended as a stray,
            # and it may be another's, so it is never this job's.
            return OTHER, uid, (f"belongs to job {job}, which this hook cannot tell from its "
                                f"own: slurmd gave it no SLURM_JOB_SLUID: {why}"), job
        if job != (self.sluid if job.startswith("s") else self.job):
            return OTHER, uid, f"belongs to job {job}: {why}", job
        if self.uid is None:
            return STRAY, uid, (f"is in job {job}'s cgroup but the hook has no SLURM_JOB_UID to "
                                f"check its uid against"), None
        if uid != self.uid:
            return STRAY, uid, (f"is in job {job}'s cgroup but runs as uid {uid}, not the job's "
                                f"uid {self.uid}"), None
        return MINE, uid, why, job


def describe(pid: int, uid: int | None, why: str) -> str:
    """``pid 4242 (uid 1000) belongs to no Slurm job: its cgroup is /user.slice/...``."""
    return f"pid {pid} ({'uid ' + str(uid) if uid is not None else 'uid unknown'}) {why}"


# ----------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended: one we may not signal exists, a
    zombie (ended, not yet reaped: its GPU memory and files are released) has ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False  # gone since the kill(0), or no /proc: taken as alive, as before
    fields = stat[stat.rfind(b")") + 1:].split()
    return bool(fields) and fields[0] == b"Z"


def end_processes(pids: Iterable[int], grace: float = 5.0) -> tuple:
    """SIGTERM, wait ``grace`` seconds, SIGKILL, wait again.  Returns (ended, still alive),
    sorted.  A zombie has ended: under a container init that does not reap orphans, a
    killed stray stays one (measured in the sandbox), and psutil's own wait counts it alive."""
    import contextlib

    import psutil  # only when there is something to end

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    alive = _wait(procs, grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    alive = _wait(alive, grace)
    left = {p.pid for p in alive}
    return sorted(p.pid for p in procs if p.pid not in left), sorted(left)


def _wait(procs: list, timeout: float) -> list:
    """The processes still running (not gone, not zombies) after at most ``timeout`` seconds."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        gone, alive = psutil.wait_procs(procs, timeout=0)  # reaps those that are our children
        alive = [p for p in alive if not _ended(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
        procs = alive


def _ended(proc) -> bool:
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
