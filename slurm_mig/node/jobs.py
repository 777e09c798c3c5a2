"""Job records: which job holds which MIG instance (processes: :mod:`slurm_mig.host.jobprocs`).

A record is ``<state_dir>/jobs/<jobid>.json`` (0600, directory 0700), written by the prolog
under the node lock and removed by the epilog.  Only the job id, checked to be digits, ever
becomes part of a path; nothing the user controls (job name, comment) does.

Records carry the boot id: a record from before a reboot is stale (its job is gone) and is
not taken as holding an instance.

A record is the marker that keeps a job's instance busy, so a damaged one must never free
an instance (docs/hooks.md, "Damaged job records"):

* it is read strictly (:func:`check_record`: every field's type), through
  :func:`slurm_mig.host.safefs.read_file` (no symlink, a regular file of a trusted owner);
* one that parses but has bad fields still holds every (gpu, gi id) pair it names with the
  right types; the bad part is reported;
* one whose instances cannot be known (unreadable, not JSON, not an object, no list of
  instances, an instance whose gpu or gi id is neither a number nor null) may hold any
  instance: every instance that no readable record holds counts as possibly its
  (:class:`Holders`, shown as ``<job>?``), so nothing destroys it and no prolog hands it out;
* each damaged record gives one warning line naming the file and the fix; only the epilog
  of that job moves it aside (:func:`set_aside`, ``<id>.json.corrupt``: never read as a
  record), because its job is over.
"""

from __future__ import annotations

import contextlib
import json
import os

from ..core.errors import ConfigError, InputError, SlurmMigError

TYPE_CHECKING = False  # no `typing` at run time: the hooks import this module on every job
if TYPE_CHECKING:
    from typing import Iterator

RECORD_VERSION = 1
CORRUPT_SUFFIX = ".corrupt"
_DIGITS = frozenset("0123456789")


def _is_job_id(text: str) -> bool:
    """``[1-9][0-9]{0,19}``, without compiling a regex at every hook start."""
    return 0 < len(text) <= 20 and text[0] != "0" and all(c in _DIGITS for c in text)


class BadJobId(InputError):
    pass


class RecordUnreadable(InputError):
    """A job record that cannot be read as one (see :func:`read_job`)."""


class RecordStuck(ConfigError):
    """A damaged job record that could not be moved aside (exit 3: the host needs a hand)."""


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
    from ..host.atomic import write_json_atomic
    from ..host.safefs import ensure_dir

    ensure_dir(jobs_dir(state_dir), 0o700, "job records directory", tighten=True)
    path = job_path(state_dir, record["job_id"])
    write_json_atomic(path, record, mode=0o600)
    return path


# ----------------------------------------------------------------------------- reading records

#: What each field of a record must be: ``str``/``int``/``bool`` or None (null allowed).
_TOP = {"version": "int", "job_id": "str", "uid": "str?", "node": "str?", "boot_id": "str?",
        "instances": "list"}
_INSTANCE = {"index": "int", "type": "str?", "files": "strs", "gpu": "int?", "profile_id": "int?",
             "start": "int?", "gi_id": "int?", "ci_id": "int?", "uuid": "str?", "created": "bool"}
#: Fields a MIG instance (one with a gi id) must have as numbers.
_MIG_INTS = ("gpu", "profile_id", "start", "ci_id")


def _is_int(v) -> bool:
    return type(v) is int and v >= 0  # bool is an int subclass: not a number here


def _has_type(v, kind: str) -> bool:
    if kind.endswith("?"):
        if v is None:
            return True
        kind = kind[:-1]
    if kind == "int":
        return _is_int(v)
    if kind == "str":
        return type(v) is str
    if kind == "bool":
        return type(v) is bool
    if kind == "list":
        return type(v) is list
    return type(v) is list and all(type(x) is str for x in v)  # "strs"


def _check_fields(data: dict, spec: dict, where: str, problems: list) -> None:
    for key, kind in spec.items():
        if key not in data:
            problems.append(f"{where}{key} is missing")
        elif not _has_type(data[key], kind):
            problems.append(f"{where}{key} is {_show(data[key])}, not {_KINDS[kind]}")
    for key in sorted(set(data) - set(spec), key=str):
        problems.append(f"{where}unknown key {_show(key)}")


_KINDS = {"int": "a number", "int?": "a number or null", "str": "a string", "str?": "a string or null",
          "bool": "true or false", "list": "a list", "strs": "a list of strings"}


def _show(v) -> str:
    text = json.dumps(v) if not isinstance(v, (dict, list)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def check_record(data, job_id: str) -> tuple:
    """Check a parsed record strictly.  Pure.  Returns ``(problems, pairs, whole)``:

    problems
        what is wrong, one short phrase each; ``[]`` for a good record.
    pairs
        every (gpu, gi id) it names with both as numbers: held by the job even when other
        fields are bad (never fewer busy instances than the record could mean).
    whole
        whether ``pairs`` is all it can hold; False when that cannot be known (not an
        object, no list of instances, an instance that is not an object or whose gpu or
        gi id is neither a number nor null).
    """
    if type(data) is not dict:
        return [f"not a JSON object but {type(data).__name__}"], [], False
    problems: list = []
    _check_fields(data, _TOP, "", problems)
    if _is_int(data.get("version")) and data["version"] != RECORD_VERSION:
        problems.append(f"version is {data['version']}, not {RECORD_VERSION}")
    if type(data.get("job_id")) is str and data["job_id"] != job_id:
        problems.append(f"job_id {_show(data['job_id'])} is not the file's job {job_id}")
    instances = data.get("instances")
    if type(instances) is not list:
        return problems, [], False
    pairs: list = []
    whole = True
    for n, inst in enumerate(instances):
        where = f"instances[{n}]."
        if type(inst) is not dict:
            problems.append(f"instances[{n}] is {_show(inst)}, not an object")
            whole = False
            continue
        _check_fields(inst, _INSTANCE, where, problems)
        if "gi_id" in inst and inst["gi_id"] is None:
            continue  # not a MIG instance (a whole GPU): holds nothing here
        gpu, gi = inst.get("gpu"), inst.get("gi_id")
        if not (_is_int(gpu) and _is_int(gi)):
            whole = False  # no gi id, or a gpu or gi id we cannot read: which one is unknown
            continue
        pairs.append((gpu, gi))
        for key in _MIG_INTS:
            if inst.get(key) is None and key in inst:
                problems.append(f"{where}{key} is null on a MIG instance (gi_id {gi})")
    return problems, pairs, whole


class Reading:
    """One record file as read: the record (when it parsed as an object), what is wrong
    with it, the (gpu, gi id) pairs it holds, and whether those are all it may hold."""

    __slots__ = ("job", "path", "record", "problems", "pairs", "whole")

    def __init__(self, job: str, path: str, record, problems: list, pairs: list, whole: bool):
        self.job, self.path, self.record = job, path, record
        self.problems, self.pairs, self.whole = problems, pairs, whole

    @property
    def ok(self) -> bool:
        return not self.problems

    def stale(self, current_boot: str | None) -> bool:
        """From an earlier boot (by a boot id of the right type): its job is gone."""
        boot = self.record.get("boot_id") if type(self.record) is dict else None
        return bool(current_boot) and type(boot) is str and bool(boot) and boot != current_boot

    def why(self) -> str:
        """What is wrong, short: the first three problems."""
        more = len(self.problems) - 3
        return "; ".join(self.problems[:3]) + (f"; and {more} more" if more > 0 else "")

    def warning(self) -> str:
        """One line: the file, what is wrong, what it now holds, the fix."""
        fix = (f"if job {self.job} has ended, run its epilog (`slurm-mig epilog` with "
               f"SLURM_JOB_ID={self.job}) or remove the file")
        why = self.why()
        if not self.whole:
            return (f"job record {self.path} is unreadable ({why}): job {self.job} may hold any MIG "
                    f"instance no readable record holds, so those count as busy (job {self.job}?); "
                    f"{fix}")
        held = ", ".join(f"gpu {g} gi {i}" for g, i in self.pairs) or "no instance"
        return (f"job record {self.path} is damaged ({why}): it still holds {held} for job "
                f"{self.job}; {fix}")


def read_record(state_dir: str, job_id: str) -> Reading | None:
    """Job ``job_id``'s record as a :class:`Reading`, whatever its state; None when absent."""
    from ..host.safefs import read_file

    path = job_path(state_dir, job_id)
    try:
        data = read_file(path, "job record")
    except (OSError, SlurmMigError) as err:
        return Reading(job_id, path, None, [_unreadable(path, err)], [], False)
    if data is None:
        return None
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        what = "empty" if not data.strip() else f"not JSON: {' '.join(str(err).split())}"
        return Reading(job_id, path, None, [what], [], False)
    problems, pairs, whole = check_record(parsed, job_id)
    return Reading(job_id, path, parsed if type(parsed) is dict else None, problems, pairs, whole)


def _unreadable(path: str, err: BaseException) -> str:
    """Why a record file could not be read, in a few words (its path is said elsewhere)."""
    import stat

    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return "a symbolic link"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    text = str(err)
    return text.replace(f"job record {path}", "").strip(" :;") or type(err).__name__


def read_job(state_dir: str, job_id: str) -> dict | None:
    """Job ``job_id``'s record when it is whole and well-formed; None when there is none;
    :class:`RecordUnreadable` (with the warning line) when it is damaged."""
    reading = read_record(state_dir, job_id)
    if reading is None:
        return None
    if not reading.ok:
        raise RecordUnreadable(reading.warning())
    return reading.record


def remove_job(state_dir: str, job_id: str) -> bool:
    try:
        os.unlink(job_path(state_dir, job_id))
        return True
    except FileNotFoundError:
        return False


def set_aside(state_dir: str, job_id: str) -> str | None:
    """Move job ``job_id``'s record to ``<id>.json.corrupt`` (never read as a record);
    return the new path, None when there was no file.  Only that job's epilog does this."""
    from ..host.atomic import fsync_dir

    path = job_path(state_dir, job_id)
    moved = path + CORRUPT_SUFFIX
    try:
        os.replace(path, moved)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RecordStuck(f"cannot move the damaged job record {path} aside to {moved} "
                          f"({err.strerror or err}); remove it by hand, then resume the node") from err
    fsync_dir(os.path.dirname(path))
    return moved


def scan(state_dir: str) -> list:
    """A :class:`Reading` of every ``<digits>.json`` in the jobs directory, by name.

    ``<id>.json.corrupt`` and temp files are not records.  A jobs directory that cannot be
    listed is an error (then no instance can be known to be free)."""
    d = jobs_dir(state_dir)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise RecordStuck(f"cannot list the job records directory {d} ({err.strerror or err}); "
                          f"check it (it must be a directory, mode 0700, owned by root)") from err
    out = []
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext != ".json" or not _is_job_id(stem):
            continue
        reading = read_record(state_dir, stem)
        if reading is not None:  # gone since the listing: the epilog removed it
            out.append(reading)
    return out


def list_jobs(state_dir: str) -> Iterator[dict]:
    """Every whole, well-formed record (damaged ones are reported by :func:`holders`)."""
    for reading in scan(state_dir):
        if reading.ok:
            yield reading.record


class Holders:
    """Who holds which MIG instance, from the records of this boot.

    ``held``: (gpu, gi id) -> job id, from every record that names the pair with the right
    types; ``unknown``: job id -> warning, for records whose instances cannot be known (each
    may hold any instance not in ``held``); ``warnings``: one line per damaged record."""

    __slots__ = ("held", "unknown", "warnings")

    def __init__(self) -> None:
        self.held: dict = {}
        self.unknown: dict = {}
        self.warnings: list = []

    def get(self, pair, default=None):
        """The job that surely holds ``pair`` (gpu, gi id), or ``default``."""
        return self.held.get(pair, default)

    def jobs_of(self, gpu: int, gi_id: int) -> tuple:
        """The jobs that hold the instance: ``("812",)``, or, when no readable record holds
        it, every job whose record is unreadable, as ``"813?"`` (may hold it); ``()``: free."""
        job = self.held.get((gpu, gi_id))
        if job is not None:
            return (job,)
        return tuple(f"{j}?" for j in self.unknown)

    def maybe(self, gpu: int, gi_id: int, job: str) -> tuple:
        """Other jobs than ``job`` that may hold the instance (their records are unreadable)."""
        if (gpu, gi_id) in self.held:
            return ()
        return tuple(j for j in self.unknown if j != job)


def holders(state_dir: str, current_boot: str | None) -> Holders:
    """Who holds which instance, for records of this boot (see :class:`Holders`)."""
    out = Holders()
    for reading in scan(state_dir):
        if reading.stale(current_boot):
            continue
        for pair in reading.pairs:
            out.held[pair] = reading.job
        if not reading.whole:
            out.unknown[reading.job] = reading.warning()
        if not reading.ok:
            out.warnings.append(reading.warning())
    return out
