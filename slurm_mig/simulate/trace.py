"""Job traces for ``slurm-mig simulate``: a CSV form and ``sacct -X -P`` output.  Pure: text in,
frozen :class:`SimJob` values out; the command reads the file.

CSV (header required, columns in any order)::

    job,submit,duration,gres[,partition,priority,timelimit]

``submit``: seconds from the trace start, or an ISO time (``2026-11-02T08:00:00``);
``duration``: seconds the job ran; ``gres``: Slurm's syntax (``gpu:1g.10gb:2``, several
items joined by commas inside quotes); ``partition``: one or more partitions joined by ``;``
or ``,`` (any of them will do); ``priority``: a whole number (higher runs first);
``timelimit``: seconds or Slurm's ``[D-]HH:MM:SS``, ``MM:SS``, ``MM`` (default: the duration
rounded up to a quarter hour, :func:`default_limit`).

sacct: ``sacct -X -P -o JobID,Submit,Start,End,Timelimit,Partition,Priority,NNodes,AllocTRES,ReqTRES,State``
(docs/simulate.md).  Only jobs that started are replayed (``Start`` a time); their GPU request
is the typed ``gres/gpu:<type>=N`` of ``AllocTRES`` (else ``ReqTRES``), which exists only with
the types in ``AccountingStorageTRES`` (docs/accounting.md).

A bad row raises :class:`TraceError`: ``FILE:LINE: what is wrong; how to fix it``.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..core.errors import InputError
from ..core.inputs import ascii_digits
from ..slurm.gresspec import mig_profile, parse_tres_per

#: Longest job a trace may hold (a year), and the largest instance count one job may ask.
MAX_SECONDS = 366 * 86400
MAX_INSTANCES = 4096


class TraceError(InputError):
    """A trace row that cannot be read (exit 2): file, line, what, and the fix."""


@dataclass(frozen=True)
class SimJob:
    """One job of a trace: when it came, how long it ran, what it asked for (on one node)."""

    job: str
    submit: float  #: seconds from the trace start
    duration: float  #: seconds it runs once started
    request: Tuple[Tuple[str, int], ...]  #: (Slurm GPU type, instances), sorted by type
    timelimit: float  #: seconds; what backfill plans with (>= duration)
    priority: int = 0
    partitions: Tuple[str, ...] = ()  #: any of them will do; empty: any node

    @property
    def instances(self) -> int:
        return sum(n for _, n in self.request)


@dataclass(frozen=True)
class Trace:
    """The jobs (sorted by submit time, then file order) and what was left out, with why."""

    jobs: Tuple[SimJob, ...]
    skipped: Tuple[Tuple[str, int], ...] = ()  #: (reason, rows) for rows not replayed
    start: Optional[str] = None  #: ISO time of the trace's second 0, when it had times


# ----------------------------------------------------------------------------- small readers


def parse_seconds(text: str) -> float:
    """``3600``, ``90.5``, ``1-02:03:04``, ``02:03:04``, ``03:04`` (MM:SS), ``5`` -> seconds.

    A bare number is seconds here (Slurm's ``--time=5`` means minutes: write ``5:00``)."""
    t = text.strip()
    if re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,6})?", t):
        return float(t)
    m = re.fullmatch(r"(?:([0-9]{1,4})-)?([0-9]{1,6})(?::([0-9]{1,2}))?(?::([0-9]{1,2}))?", t)
    if not m or (m.group(3) is None and m.group(1) is None):
        raise ValueError(f"{t[:40]!r} is not seconds or [D-]HH:MM:SS")
    days = int(m.group(1) or 0)
    parts = [int(p) for p in m.group(2, 3, 4) if p is not None]
    if m.group(1) is not None and len(parts) == 1:  # D-HH
        h, mi, s = parts[0], 0, 0
    elif len(parts) == 3:
        h, mi, s = parts
    else:  # MM:SS
        h, (mi, s) = 0, parts[:2]
    return float(days * 86400 + h * 3600 + mi * 60 + s)


def parse_time(text: str) -> float:
    """An ISO time (no zone: UTC, as sacct prints local time without one) -> epoch seconds."""
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_gres(text: str) -> Tuple[Tuple[str, int], ...]:
    """A job's GPU request in Slurm's syntax -> ((type, count), ...).  Typed MIG requests only:
    an untyped ``gpu:N`` names no profile and raises ValueError."""
    reqs = parse_tres_per(text, "node")
    typed: Dict[str, int] = {}
    untyped = 0
    for r in reqs:
        if r.type is None:
            untyped += r.count
        else:
            prof = mig_profile(r.type)
            if prof is None:
                raise ValueError(f"gres type {r.type!r} is not a MIG profile (like 1g.10gb)")
            typed[prof] = typed.get(prof, 0) + r.count
    if not typed:
        if untyped:
            raise ValueError("an untyped gpu:N request names no MIG profile")
        raise ValueError(f"{text.strip()[:60]!r} asks for no GPU")
    if sum(typed.values()) > MAX_INSTANCES:
        raise ValueError(f"more than {MAX_INSTANCES} instances")
    return tuple(sorted(typed.items()))


def _partitions(text: str) -> Tuple[str, ...]:
    return tuple(sorted({p.strip() for p in re.split(r"[;,]", text or "") if p.strip()}))


def _priority(text: str) -> int:
    t = text.strip()
    if not ascii_digits(t) or len(t) > 12:
        raise ValueError(f"priority {t[:40]!r} is not a whole number")
    return int(t)


# ----------------------------------------------------------------------------- CSV

CSV_REQUIRED = ("job", "submit", "duration", "gres")
CSV_OPTIONAL = ("partition", "priority", "timelimit")


def read_csv(text: str, source: str) -> Trace:
    """The CSV form (module doc) -> a :class:`Trace`."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise TraceError(f"{source}: empty trace; the first line must be the header "
                         f"{','.join(CSV_REQUIRED)}[,{','.join(CSV_OPTIONAL)}]")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in CSV_REQUIRED if c not in header]
    unknown = [h for h in header if h not in CSV_REQUIRED + CSV_OPTIONAL]
    if missing or unknown:
        what = (f"missing column(s) {', '.join(missing)}" if missing
                else f"unknown column(s) {', '.join(unknown)}")
        raise TraceError(f"{source}:1: {what}; the header must be "
                         f"{','.join(CSV_REQUIRED)} and optionally {','.join(CSV_OPTIONAL)}")
    col = {h: i for i, h in enumerate(header)}
    raw: List[Tuple[int, Dict[str, str]]] = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) != len(header):
            raise TraceError(f"{source}:{n}: {len(row)} fields, the header has {len(header)}; "
                             f"quote a gres with commas (\"gpu:1g.10gb:1,gpu:2g.20gb:1\")")
        raw.append((n, {h: row[i].strip() for h, i in col.items()}))
    iso = [r["submit"] for _, r in raw if not _is_number(r["submit"])]
    t0 = None
    if iso:
        try:
            t0 = min(parse_time(t) for t in iso)
        except ValueError:
            t0 = None  # the row's own error below names it
    jobs: List[SimJob] = []
    for n, r in raw:
        jobs.append(_csv_job(source, n, r, t0))
    start = (datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
             if t0 is not None else None)
    if t0 is not None and any(_is_number(r["submit"]) for _, r in raw):
        raise TraceError(f"{source}: submit mixes seconds and ISO times; use one form in every row")
    return Trace(_sorted(jobs), (), start)


def _is_number(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,6})?", text.strip()))


def _csv_job(source: str, n: int, r: Mapping[str, str], t0: Optional[float]) -> SimJob:
    where = f"{source}:{n}"
    job = r["job"] or f"line{n}"
    try:
        submit = (float(r["submit"]) if _is_number(r["submit"])
                  else parse_time(r["submit"]) - (t0 or 0.0))
    except ValueError as err:
        raise TraceError(f"{where}: submit {r['submit'][:40]!r} is neither seconds from the "
                         f"trace start nor an ISO time like 2026-11-02T08:00:00") from err
    try:
        duration = parse_seconds(r["duration"])
    except ValueError as err:
        raise TraceError(f"{where}: duration: {err}; write the seconds the job ran") from err
    try:
        request = parse_gres(r["gres"])
    except ValueError as err:
        raise TraceError(f"{where}: gres {r['gres'][:60]!r}: {err}; write Slurm's syntax with a "
                         f"MIG type, like gpu:1g.10gb:2") from err
    priority = 0
    if r.get("priority"):
        try:
            priority = _priority(r["priority"])
        except ValueError as err:
            raise TraceError(f"{where}: {err}; write a whole number (higher runs first) "
                             f"or leave it empty") from err
    timelimit = default_limit(duration)
    if r.get("timelimit"):
        try:
            timelimit = parse_seconds(r["timelimit"])
        except ValueError as err:
            raise TraceError(f"{where}: timelimit: {err}; or leave it empty (the duration, rounded up "
                             f"to a quarter hour)") from err
    return _job(where, job, submit, duration, request, timelimit, priority,
                _partitions(r.get("partition", "")))


#: A job without a time limit in the trace gets its duration rounded up to this many seconds,
#: as users ask for round limits (15 min, 30 min, 1 h): what backfill and drain_mixed = "auto"
#: plan with.
LIMIT_ROUND_S = 900


def default_limit(duration: float) -> float:
    """The time limit of a trace row that gives none: ``duration`` rounded up to a quarter hour."""
    return float(max(1, math.ceil(duration / LIMIT_ROUND_S)) * LIMIT_ROUND_S)


def _job(where: str, job: str, submit: float, duration: float, request: Tuple[Tuple[str, int], ...],
         timelimit: float, priority: int, partitions: Tuple[str, ...]) -> SimJob:
    for what, v in (("submit", submit), ("duration", duration), ("timelimit", timelimit)):
        if not 0 <= v <= MAX_SECONDS:
            raise TraceError(f"{where}: {what} {v:g} s is out of range (0 to {MAX_SECONDS} s)")
    if timelimit < duration:
        timelimit = duration  # Slurm ends a job at its limit: the trace saw it run this long
    return SimJob(job, submit, duration, request, timelimit, priority, partitions)


def _sorted(jobs: Sequence[SimJob]) -> Tuple[SimJob, ...]:
    return tuple(j for _, j in sorted(enumerate(jobs), key=lambda ij: (ij[1].submit, ij[0])))


# ----------------------------------------------------------------------------- sacct

SACCT_FIELDS = ("JobID", "Submit", "Start", "End", "Timelimit", "Partition", "Priority",
                "NNodes", "AllocTRES", "ReqTRES", "State")
SACCT_REQUIRED = ("JobID", "Submit", "Start", "End")
_NO_TIME = ("", "unknown", "none", "n/a")


def read_sacct(text: str, source: str) -> Trace:
    """``sacct -X -P -o <SACCT_FIELDS>`` (with its header line) -> a :class:`Trace`.

    Left out, and counted in ``skipped``: jobs that never started, multi-node jobs, jobs with
    no typed MIG request (``gres/gpu=N`` only: add the types to ``AccountingStorageTRES``)."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    fix = f"run sacct -X -P -o {','.join(SACCT_FIELDS)} (with its header: no -n)"
    if first is None:
        raise TraceError(f"{source}: empty sacct output; {fix}")
    header = [h.strip() for h in lines[first].split("|")]
    missing = [f for f in SACCT_REQUIRED if f not in header]
    if missing or not ({"AllocTRES", "ReqTRES"} & set(header)):
        raise TraceError(f"{source}:{first + 1}: no {', '.join(missing) or 'AllocTRES or ReqTRES'} "
                         f"column in the header; {fix}")
    col = {h: i for i, h in enumerate(header)}
    rows: List[Tuple[int, Dict[str, str]]] = []
    for n, line in enumerate(lines[first + 1:], start=first + 2):
        if not line.strip():
            continue
        cells = line.split("|")
        if len(cells) != len(header):
            raise TraceError(f"{source}:{n}: {len(cells)} fields, the header has {len(header)}; "
                             f"{fix}")
        rows.append((n, {h: cells[i].strip() for h, i in col.items()}))
    skipped: Dict[str, int] = {}
    kept: List[Tuple[int, Dict[str, str], float, float, float]] = []
    for n, r in rows:
        if r["Start"].lower() in _NO_TIME or r["End"].lower() in _NO_TIME:
            skipped["never started or still running"] = skipped.get(
                "never started or still running", 0) + 1
            continue
        if r.get("NNodes", "1") not in ("", "1"):
            skipped["multi-node"] = skipped.get("multi-node", 0) + 1
            continue
        try:
            submit, start, end = (parse_time(r[k]) for k in ("Submit", "Start", "End"))
        except ValueError as err:
            raise TraceError(f"{source}:{n}: Submit/Start/End is not an ISO time "
                             f"({r['Submit'][:25]!r}, {r['Start'][:25]!r}, {r['End'][:25]!r}); "
                             f"{fix}") from err
        kept.append((n, r, submit, start, end))
    if not kept:
        return Trace((), tuple(sorted(skipped.items())))
    t0 = min(k[2] for k in kept)
    jobs: List[SimJob] = []
    for n, r, submit, start, end in kept:
        where = f"{source}:{n}"
        tres = r.get("AllocTRES") or r.get("ReqTRES") or ""
        try:
            request = parse_gres(tres)
        except ValueError:
            skipped["no typed MIG request (gres/gpu:<type>=N)"] = skipped.get(
                "no typed MIG request (gres/gpu:<type>=N)", 0) + 1
            continue
        timelimit = default_limit(max(end - start, 0.0))
        limit_text = r.get("Timelimit", "")
        if limit_text and limit_text.upper() not in ("UNLIMITED", "PARTITION_LIMIT", "INVALID"):
            try:
                timelimit = parse_seconds(limit_text)
            except ValueError as err:
                raise TraceError(f"{where}: Timelimit {limit_text[:30]!r}: {err}; {fix}") from err
        priority = 0
        if r.get("Priority"):
            try:
                priority = _priority(r["Priority"])
            except ValueError as err:
                raise TraceError(f"{where}: {err}; {fix}") from err
        jobs.append(_job(where, r["JobID"], submit - t0, max(end - start, 0.0), request, timelimit,
                         priority, _partitions(r.get("Partition", ""))))
    start_iso = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Trace(_sorted(jobs), tuple(sorted(skipped.items())), start_iso)


def read_trace(text: str, source: str) -> Trace:
    """Either form, told apart by the header: ``|`` separated with ``JobID`` is sacct."""
    head = next((line for line in text.splitlines() if line.strip()), "")
    if "|" in head and "JobID" in head.split("|"):
        return read_sacct(text, source)
    return read_csv(text, source)


# ----------------------------------------------------------------------------- writing


def to_csv(jobs: Sequence[SimJob]) -> str:
    """Jobs -> the CSV form (every column), as the generator writes it."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_REQUIRED + CSV_OPTIONAL)
    for j in jobs:
        gres = ",".join(f"gpu:{t}:{n}" for t, n in j.request)
        w.writerow([j.job, f"{j.submit:g}", f"{j.duration:g}", gres, ";".join(j.partitions),
                    j.priority, f"{j.timelimit:g}"])
    return out.getvalue()
