"""``squeue --json`` and ``sinfo -N --json`` -> :class:`PendingJob` / :class:`NodeInfo`.

Two families of shapes (docs/slurm-json.md):

* **openapi v0.0.38** (Slurm 22.05, recorded in tests/data/slurm/22.05): plain numbers or
  null, ``job_state`` a string, node ``state`` a lower-case string beside ``state_flags``,
  ``meta.Slurm.release``.
* **data_parser v0.0.39+** (Slurm 23.02 onwards; hand-made fixtures from the documented
  schema): numbers as ``{"set", "infinite", "number"}``, ``job_state`` a list, tres strings
  with ``gres/``, ``meta.slurm.release``; ``sinfo`` prints a ``sinfo`` list of records
  (``node.state``, ``nodes.nodes``, ``partition.name``, ``gres.total``/``gres.used``,
  ``reason.description``) or, in the node form, a ``nodes`` list with ``state`` lists.

The shape is told from ``meta`` where it is there, and each field is read by its form, so a
field in a form not listed here fails with one line naming the command, the Slurm version,
the parser and the field path.

A document whose ``errors`` list is not empty is Slurm saying it could not answer (22.05 exits
0 with only ``errors`` and an empty ``jobs``/``nodes`` list while slurmctld is down, recorded
in tests/data/slurm/22.05/*-ctld-down.json): :class:`~slurm_mig.core.errors.SlurmUnreadable`
(exit 9) quoting Slurm's first error, never an empty queue.  ``warnings`` are logged only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import (Any, Callable, Collection, Dict, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, TypeVar, Union)

T = TypeVar("T")

from ..core.errors import SlurmUnreadable
from . import gresspec
from .model import (HELD_REASONS, UNLIMITED_MINUTES, GresRequest, NodeInfo, PendingJob, RunningJob,
                    SlurmOutputError)

log = logging.getLogger(__name__)

#: The end of every "cannot read Slurm" line: what to look at, and that a rerun is safe.
CHECK_SLURMCTLD = "check slurmctld (`scontrol ping`) and rerun"

Doc = Union[str, bytes, Mapping[str, Any]]

_PER_FIELDS = (("tres_per_node", "node"), ("tres_per_job", "job"), ("tres_per_task", "task"),
               ("tres_per_socket", "socket"))


@dataclass(frozen=True)
class Source:
    """Where a document came from, for error messages."""

    command: str
    release: str = "unknown"
    parser: str = "unknown"

    @property
    def family(self) -> str:
        """``openapi`` (v0.0.38 and older: Slurm <= 22.05), ``data_parser`` (23.02+) or
        ``unknown`` (no meta: the fields' own forms decide)."""
        if self.parser.startswith("data_parser/"):
            return "data_parser"
        if self.parser.startswith("openapi/v0.0."):
            return "openapi"
        return "unknown"

    @property
    def who(self) -> str:
        return f"Slurm {self.release}" if self.release != "unknown" else "Slurm"

    def unreadable(self, problem: str) -> SlurmUnreadable:
        return SlurmUnreadable(f"cannot read Slurm: {self.command}: {problem}; {CHECK_SLURMCTLD}")

    def fail(self, path: str, problem: str) -> SlurmOutputError:
        return SlurmOutputError(f"{self.command} from Slurm {self.release} ({self.parser}): "
                                f"{path}: {problem}; a shape this slurm-mig does not read "
                                f"(docs/slurm-json.md lists the ones it does)")


def load(doc: Doc, command: str) -> Tuple[Mapping[str, Any], Source]:
    """Parse the text (or take the dict) and read ``meta``."""
    if isinstance(doc, (str, bytes)):
        raw = doc
        try:
            doc = json.loads(raw)
        except ValueError as err:
            head = (raw[:60].decode(errors="replace") if isinstance(raw, bytes) else raw[:60])
            raise SlurmOutputError(f"{command}: output is not JSON ({err}); it starts "
                                   f"{head.strip()!r}") from err
    if not isinstance(doc, Mapping):
        raise SlurmOutputError(f"{command}: output is a JSON {type(doc).__name__}, not an object")
    src = _source(doc, command)
    check_errors(doc, src)
    return doc, src


def error_text(entry: Any) -> str:
    """One of Slurm's ``errors`` entries as one line.  22.05's sinfo prints
    ``{"error", "errno"}``; 22.05's squeue and 23.02+ print ``{"description", "error_number",
    "error", "source"}``: the description first, then the rest in brackets."""
    if not isinstance(entry, Mapping):
        return " ".join(str(entry).split()) or repr(entry)

    def one_line(key: str) -> str:
        return " ".join(str(entry.get(key) or "").split())

    main = one_line("description") or one_line("error")
    rest = [one_line(k) for k in ("source", "error") if one_line(k) not in ("", main)]
    number = entry.get("error_number", entry.get("errno"))
    if number is not None:
        rest.append(f"errno {number}")
    if not main:
        return ", ".join(rest) or repr(dict(entry))
    return main + (f" ({', '.join(rest)})" if rest else "")


def check_errors(doc: Mapping[str, Any], src: Source) -> None:
    """Slurm's own ``errors`` (any non-empty value) -> SlurmUnreadable quoting the first;
    ``warnings`` are logged and otherwise ignored."""
    errors = doc.get("errors")
    if errors:
        items = errors if isinstance(errors, list) else [errors]
        more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
        raise src.unreadable(f"{src.who} answered with an error: {error_text(items[0])}{more}")
    warnings = doc.get("warnings")
    for item in warnings if isinstance(warnings, list) else [warnings] if warnings else []:
        log.warning("%s: %s warns: %s", src.command, src.who, error_text(item))


def _object(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _source(doc: Mapping[str, Any], command: str) -> Source:
    meta = _object(doc.get("meta"))
    # 23.02 (data_parser/v0.0.39) prints ``meta.plugins`` and ``meta.Slurm`` with int
    # versions; 23.11+ print ``meta.plugin`` and ``meta.slurm`` with string versions.
    plugin = meta.get("plugin") or meta.get("plugins")
    plugin = plugin if isinstance(plugin, Mapping) else {}
    parser = plugin.get("data_parser") or plugin.get("type") or "unknown"
    slurm = meta.get("slurm") or meta.get("Slurm") or {}
    release = "unknown"
    if isinstance(slurm, Mapping):
        release = slurm.get("release") or release
        ver = slurm.get("version")
        if release == "unknown" and isinstance(ver, Mapping):
            release = ".".join(str(ver.get(k, "?")) for k in ("major", "minor", "micro"))
    return Source(command, str(release), str(parser))


# -- field readers: each takes the value and its path, and accepts every known form ---------

def num(src: Source, value: Any, path: str) -> Optional[int]:
    """A count: plain int, null, or ``{"set", "infinite", "number"}``; unset/infinite -> None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise src.fail(path, f"expected a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isascii() \
            and value.strip().lstrip("-").isdigit() and len(value.strip()) <= 20:
        return int(value)
    if isinstance(value, Mapping) and "number" in value:
        if not value.get("set", True) or value.get("infinite", False):
            return None
        return num(src, value["number"], f"{path}.number")
    raise src.fail(path, f"expected a number or a {{set, infinite, number}} object, got {value!r:.80}")


def text(src: Source, value: Any, path: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and "description" in value:  # sinfo reason (data_parser)
        return text(src, value["description"], f"{path}.description")
    raise src.fail(path, f"expected a string, got {value!r:.80}")


def words(src: Source, value: Any, path: str) -> Tuple[str, ...]:
    """A list of strings, or one string of comma-separated words."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(w.strip() for w in value.split(",") if w.strip())
    if isinstance(value, list) and all(isinstance(w, str) for w in value):
        return tuple(value)
    raise src.fail(path, f"expected a string or a list of strings, got {value!r:.80}")


def _parsed(src: Source, path: str, func: Callable[..., T], *args: Any) -> T:
    try:
        return func(*args)
    except ValueError as err:
        raise src.fail(path, f"{args[0]!r:.80}: {err}") from err


# -- squeue --------------------------------------------------------------------------------

def read_pending_jobs(doc: Doc, command: str = "squeue --json") -> List[PendingJob]:
    """The PENDING records of ``squeue --json`` (22.05 ignores ``--states``, so every reader
    filters), in the order Slurm printed them."""
    return [_pending_job(src, job, path, states)
            for src, job, path, states in _jobs_in_state(doc, command, "PENDING")]


def _jobs_in_state(doc: Doc, command: str, state: str
                   ) -> Iterator[Tuple[Source, Mapping[str, Any], str, Tuple[str, ...]]]:
    """(source, record, its path, its states) for each record of ``squeue --json`` in
    ``state``: the reader filters, whatever the command was asked for."""
    data, src = load(doc, command)
    jobs = data.get("jobs")
    if not isinstance(jobs, list):
        raise src.fail("jobs", "no list of jobs at the top level")
    for i, job in enumerate(jobs):
        path = f"jobs[{i}]"
        if not isinstance(job, Mapping):
            raise src.fail(path, "expected an object")
        states = words(src, job.get("job_state"), f"{path}.job_state")
        if state in (s.upper() for s in states):
            yield src, job, path, states


def _pending_job(src: Source, job: Mapping[str, Any], path: str,
                 states: Collection[str]) -> PendingJob:
    job_id = num(src, job.get("job_id"), f"{path}.job_id")
    if job_id is None:
        raise src.fail(f"{path}.job_id", "missing")
    array_job_id = num(src, job.get("array_job_id"), f"{path}.array_job_id") or None
    task_id = num(src, job.get("array_task_id"), f"{path}.array_task_id")
    spec = text(src, job.get("array_task_string"), f"{path}.array_task_string")
    max_tasks = num(src, job.get("array_max_tasks"), f"{path}.array_max_tasks") or None
    array_task, pending, throttle = None, 1, None
    if array_job_id and spec:
        array_task = spec
        pending = _parsed(src, f"{path}.array_task_string", gresspec.array_task_count, spec)
        throttle = _parsed(src, f"{path}.array_task_string", gresspec.array_throttle, spec) or max_tasks
    elif array_job_id and task_id is not None:
        array_task = str(task_id)
    requests: List[GresRequest] = []
    for field, per in _PER_FIELDS:
        value = text(src, job.get(field), f"{path}.{field}")
        requests.extend(_parsed(src, f"{path}.{field}", gresspec.parse_tres_per, value, per))
    user = text(src, job.get("user_name"), f"{path}.user_name")
    if not user and job.get("user_id") is not None:
        user = str(num(src, job.get("user_id"), f"{path}.user_id"))
    reason = text(src, job.get("state_reason"), f"{path}.state_reason")
    return PendingJob(
        job_id=job_id,
        array_job_id=array_job_id,
        array_task=array_task,
        array_tasks_pending=pending,
        priority=num(src, job.get("priority"), f"{path}.priority") or 0,
        partition=words(src, job.get("partition"), f"{path}.partition"),
        reason=reason,
        user=user,
        requests=tuple(requests),
        nodes_requested=num(src, job.get("node_count"), f"{path}.node_count") or 1,
        state="PENDING",
        tasks=num(src, job.get("tasks"), f"{path}.tasks") or 1,
        sockets_per_node=num(src, job.get("sockets_per_node"), f"{path}.sockets_per_node"),
        array_throttle=throttle,
        held=job.get("hold") is True or reason in HELD_REASONS,
        name=text(src, job.get("name"), f"{path}.name"),
    )


def read_running_jobs(doc: Doc, command: str = "squeue --json --states=RUNNING") -> List[RunningJob]:
    """The RUNNING records of ``squeue --json`` with when each is expected to end (start +
    time limit).  22.05 prints ``start_time``/``time_limit`` as plain numbers (an unlimited
    job: 4294967295, INFINITE); 23.02+ as ``{set, infinite, number}`` objects (``infinite``:
    no limit).  A job without a start time or a limit gets ``end_time`` None."""
    return [_running_job(src, job, path)
            for src, job, path, _ in _jobs_in_state(doc, command, "RUNNING")]


def _running_job(src: Source, job: Mapping[str, Any], path: str) -> RunningJob:
    job_id = num(src, job.get("job_id"), f"{path}.job_id")
    if job_id is None:
        raise src.fail(f"{path}.job_id", "missing")
    limit = num(src, job.get("time_limit"), f"{path}.time_limit")
    if limit is not None and (limit < 0 or limit >= UNLIMITED_MINUTES):
        limit = None  # INFINITE / NO_VAL in 22.05's plain numbers
    start = num(src, job.get("start_time"), f"{path}.start_time") or None
    raw = job.get("nodes")
    hosts = text(src, raw, f"{path}.nodes")
    nodes = tuple(_parsed(src, f"{path}.nodes", gresspec.expand_hostlist, hosts)) if hosts else ()
    requests: List[GresRequest] = []
    for field, per in _PER_FIELDS:
        value = text(src, job.get(field), f"{path}.{field}")
        requests.extend(_parsed(src, f"{path}.{field}", gresspec.parse_tres_per, value, per))
    return RunningJob(
        job_id=job_id, nodes=nodes, start_time=start, time_limit=limit,
        requests=tuple(requests),
        nodes_requested=num(src, job.get("node_count"), f"{path}.node_count") or max(len(nodes), 1),
        tasks=num(src, job.get("tasks"), f"{path}.tasks") or 1,
        sockets_per_node=num(src, job.get("sockets_per_node"), f"{path}.sockets_per_node"),
    )


# -- sinfo ---------------------------------------------------------------------------------

def read_nodes(doc: Doc, command: str = "sinfo -N --json",
               names: Optional[Sequence[str]] = None) -> Dict[str, NodeInfo]:
    """Nodes by name from ``sinfo -N --json`` (or ``sinfo --json``: same on 22.05).

    A node listed once per partition (data_parser ``sinfo`` records) is merged, its
    partitions joined.  No node at all is SlurmUnreadable: Slurm did not really answer
    (``names`` only filters what it listed)."""
    data, src = load(doc, command)
    if isinstance(data.get("sinfo"), list):
        items, read = data["sinfo"], _from_sinfo_records
    elif isinstance(data.get("nodes"), list):
        items, read = data["nodes"], _from_node_objects
    else:
        raise src.fail("sinfo|nodes", "no list of nodes at the top level (run `sinfo -N --json`)")
    if not items:  # a controller that answers lists every node it has
        raise src.unreadable(f"{src.who} listed no node at all; a controller with nodes lists "
                             f"every one of them, and with none there is nothing to plan")
    nodes = read(src, items)
    if names is not None:
        wanted = set(names)
        nodes = {n: v for n, v in nodes.items() if n in wanted}
    return nodes


def _node_state(src: Source, node: Mapping[str, Any], path: str) -> Tuple[str, Tuple[str, ...]]:
    state = node.get("state")
    if isinstance(state, str):  # 22.05: "mixed" + state_flags; pyslurm-like "MIXED+DRAIN"
        parts = state.split("+") + list(words(src, node.get("state_flags"), f"{path}.state_flags"))
    else:
        parts = list(words(src, state, f"{path}.state"))
    return gresspec.normalize_state(parts)


def _from_node_objects(src: Source, items: List[Any]) -> Dict[str, NodeInfo]:
    out: Dict[str, NodeInfo] = {}
    for i, node in enumerate(items):
        path = f"nodes[{i}]"
        if not isinstance(node, Mapping):
            raise src.fail(path, "expected an object")
        name = text(src, node.get("name"), f"{path}.name")
        if not name:
            raise src.fail(f"{path}.name", "missing")
        state, flags = _node_state(src, node, path)
        out[name] = _node(src, path, name, state, flags,
                          words(src, node.get("partitions"), f"{path}.partitions"),
                          text(src, node.get("gres"), f"{path}.gres"),
                          text(src, node.get("gres_used"), f"{path}.gres_used"), node)
    return out


def _from_sinfo_records(src: Source, items: List[Any]) -> Dict[str, NodeInfo]:
    out: Dict[str, NodeInfo] = {}
    for i, rec in enumerate(items):
        path = f"sinfo[{i}]"
        if not isinstance(rec, Mapping):
            raise src.fail(path, "expected an object")
        node_obj = _object(rec.get("node"))
        state, flags = gresspec.normalize_state(words(src, node_obj.get("state"), f"{path}.node.state"))
        nodes_obj = _object(rec.get("nodes"))
        raw = nodes_obj.get("nodes")
        names = (_parsed(src, f"{path}.nodes.nodes", gresspec.expand_hostlist, raw)
                 if isinstance(raw, str) else list(words(src, raw, f"{path}.nodes.nodes")))
        part = rec.get("partition")
        part_name = text(src, part.get("name") if isinstance(part, Mapping) else part,
                         f"{path}.partition.name").rstrip("*")
        gres_obj = _object(rec.get("gres"))
        gres = text(src, gres_obj.get("total"), f"{path}.gres.total")
        used = text(src, gres_obj.get("used"), f"{path}.gres.used")
        if len(names) > 1 and gresspec.parse_gres_used(used)[0]:
            raise src.fail(f"{path}.gres.used", f"one record for {len(names)} nodes cannot say "
                           f"which node uses what (run `sinfo -N --json`)")
        for name in names:
            node = _node(src, path, name, state, flags, (part_name,) if part_name else (),
                         gres, used, rec)
            if name in out:
                prev = out[name]
                parts = prev.partitions + tuple(p for p in node.partitions if p not in prev.partitions)
                node = NodeInfo(**{**prev.__dict__, "partitions": parts})
            out[name] = node
    return out


def _node(src: Source, path: str, name: str, state: str, flags: Iterable[str],
          partitions: Iterable[str], gres: str,
          used: str, obj: Mapping[str, Any]) -> NodeInfo:
    used_counts, used_idx = _parsed(src, f"{path}.gres_used", gresspec.parse_gres_used, used)
    return NodeInfo(
        name=name, state=state, flags=tuple(flags), partitions=tuple(partitions),
        gres=_parsed(src, f"{path}.gres", gresspec.parse_gres_counts, gres),
        gres_used=used_counts, gres_used_idx=used_idx,
        extra=text(src, obj.get("extra"), f"{path}.extra"),
        comment=text(src, obj.get("comment"), f"{path}.comment"),
        reason=text(src, obj.get("reason"), f"{path}.reason"),
    )
