"""pyslurm objects -> :class:`PendingJob` / :class:`NodeInfo` (the optional ``[pyslurm]`` extra).

pyslurm builds against one Slurm release only (pyslurm 24.11.x for Slurm 24.11, 25.11.x for
25.11; docs/slurm-json.md).  Run against pyslurm 24.11.0 on a live Slurm 24.11 cluster
(tests/test_pyslurm_slurm.py, in ``.ci/matrix 24.11``): ``Jobs.load()`` / ``Nodes.load()``
give ``Job.id, state, state_reason, priority, partition ("a,b"), user_name, num_nodes,
ntasks, sockets_per_node, array_id, array_task_id, array_tasks_waiting ("0-9", the "%N"
cut off), array_tasks_parallel, gres_per_node ({"gres/gpu:3g.40gb": 1})``; ``Node.name, state
("IDLE+DRAIN"), partitions, configured_gres ({"gpu:1g.10gb": 7}), allocated_gres, extra,
comment, reason``; ``state_reason`` is Slurm's state_desc when it has one.
``Job`` has no ``tres_per_job/task/socket``: those (``--gpus``, ``--gpus-per-task``,
``--gpus-per-socket``) are read from pyslurm's older API, ``pyslurm.job().get()``, which
keeps Slurm's four ``tres_per_*`` strings; where a module has no such API they stay invisible.

``pyslurm`` is imported only when a reader is made without a ``module``.  A ``load()`` that
raises (pyslurm's ``RPCError``: slurmctld down or unreachable) or a cluster of no nodes is
:class:`~slurm_mig.core.errors.SlurmUnreadable` (exit 9), as for the JSON commands.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

from ..core.errors import SlurmError, SlurmUnreadable
from . import gresspec
from .model import (HELD_REASONS, UNLIMITED_MINUTES, GresRequest, NodeInfo, PendingJob, RunningJob,
                    SlurmOutputError)

J = TypeVar("J", PendingJob, RunningJob)

_RAW_PER = (("tres_per_node", "node"), ("tres_per_job", "job"), ("tres_per_task", "task"),
            ("tres_per_socket", "socket"))


def import_pyslurm() -> Any:
    """The pyslurm module, or a SlurmError that says how to do without it."""
    try:
        import pyslurm  # noqa: PLC0415  (optional, lazy by design)
    except ImportError as err:
        raise SlurmError(f"pyslurm is not importable ({err}); install the pyslurm release "
                         f"of this Slurm (docs/slurm-json.md, pyslurm), or read Slurm through its JSON commands "
                         f"(prefer='json')") from err
    return pyslurm


def _values(collection: Any) -> List[Any]:
    """pyslurm collections are dicts (or multi-cluster maps) of objects."""
    values = getattr(collection, "values", None)
    return list(values()) if callable(values) else list(collection)


def _fail(what: str, ident: Any, attr: str, value: Any) -> SlurmOutputError:
    return SlurmOutputError(f"pyslurm {what} {ident}: {attr} = {value!r:.80} is not a form this "
                            f"adapter reads (docs/slurm-json.md)")


def _int(what: str, ident: Any, attr: str, value: Any, default: Optional[int] = None) -> Optional[int]:
    if value is None:
        return default
    if isinstance(value, bool):
        raise _fail(what, ident, attr, value)
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise _fail(what, ident, attr, value) from err


def _gres_dict_requests(job_id: Any, gres: Any) -> Tuple[GresRequest, ...]:
    """pyslurm's ``gres_per_node`` ({"gpu:1g.10gb": 2, "gpu": 1}) -> per-node requests."""
    if not gres:
        return ()
    if not isinstance(gres, Mapping):
        raise _fail("job", job_id, "gres_per_node", gres)
    out = []
    for key, count in gres.items():
        name, _, gtype = str(key).replace("gres/", "").replace("gres:", "").partition(":")
        if name != "gpu":
            continue
        if isinstance(count, Mapping):
            count = count.get("count")
        n = _int("job", job_id, f"gres_per_node[{key!r}]", count, 0)
        if n:
            out.append(GresRequest(gtype or None, n, "node"))
    return tuple(out)


def _requests(job: Any, job_id: int, tres: Optional[Mapping[str, Any]]) -> Tuple[GresRequest, ...]:
    """A job's GPU requests: the raw ``tres_per_*`` strings where there are some, else
    pyslurm's ``gres_per_node``."""
    raw = [(tres.get(attr) if tres is not None else getattr(job, attr, None), per)
           for attr, per in _RAW_PER]
    if any(isinstance(v, str) and v for v, _ in raw):  # a pyslurm that exposes tres strings
        reqs: List[GresRequest] = []
        for value, per in raw:
            try:
                reqs.extend(gresspec.parse_tres_per(value if isinstance(value, str) else "", per))
            except ValueError as err:
                raise _fail("job", job_id, f"tres_per_{per}", value) from err
        return tuple(reqs)
    return _gres_dict_requests(job_id, getattr(job, "gres_per_node", None))


def _limit(job_id: int, value: Any) -> Optional[int]:
    """pyslurm's ``time_limit`` (minutes) -> minutes, None for no limit: pyslurm 24.11 gives
    None (or "UNLIMITED"/"infinite" text in other releases) for INFINITE and NO_VAL."""
    if value is None or (isinstance(value, str) and value.strip().lower() in
                         ("unlimited", "infinite", "partition_limit", "")):
        return None
    limit = _int("job", job_id, "time_limit", value)
    return None if limit is None or limit < 0 or limit >= UNLIMITED_MINUTES else limit


def _id_in_state(job: Any, state: str) -> Optional[int]:
    """The job's id when pyslurm says it is in ``state``, else None; a job without an id is
    a SlurmOutputError whatever its state."""
    job_id = _int("job", "?", "id", getattr(job, "id", None))
    if job_id is None:
        raise _fail("job", "?", "id", None)
    return job_id if str(getattr(job, "state", "") or "").upper() == state else None


def running_from_pyslurm(job: Any, tres: Optional[Mapping[str, Any]] = None) -> Optional[RunningJob]:
    """One pyslurm Job -> RunningJob (``start_time``, ``time_limit`` in minutes, ``nodes`` a
    hostlist), or None when it is not running."""
    job_id = _id_in_state(job, "RUNNING")
    if job_id is None:
        return None
    hosts = getattr(job, "nodes", None) or ""
    if isinstance(hosts, (list, tuple)):
        nodes = tuple(str(h) for h in hosts)
    else:
        try:
            nodes = tuple(gresspec.expand_hostlist(str(hosts))) if hosts else ()
        except ValueError as err:
            raise _fail("job", job_id, "nodes", hosts) from err
    return RunningJob(
        job_id=job_id, nodes=nodes,
        start_time=_int("job", job_id, "start_time", getattr(job, "start_time", None)) or None,
        time_limit=_limit(job_id, getattr(job, "time_limit", None)),
        requests=_requests(job, job_id, tres),
        nodes_requested=_int("job", job_id, "num_nodes", getattr(job, "num_nodes", None),
                             max(len(nodes), 1)) or 1,
        tasks=_int("job", job_id, "ntasks", getattr(job, "ntasks", None), 1) or 1,
        sockets_per_node=_int("job", job_id, "sockets_per_node", getattr(job, "sockets_per_node", None)),
    )


def job_from_pyslurm(job: Any, tres: Optional[Mapping[str, Any]] = None) -> Optional[PendingJob]:
    """One pyslurm Job -> PendingJob, or None when it is not pending.  ``tres``: the job's raw
    ``tres_per_node/job/task/socket`` strings where the caller has them (pyslurm 24.11's
    ``Job`` has only ``gres_per_node``; its older API, ``pyslurm.job().get()``, keeps all four)."""
    job_id = _id_in_state(job, "PENDING")
    if job_id is None:
        return None
    requests = _requests(job, job_id, tres)
    array_id = _int("job", job_id, "array_id", getattr(job, "array_id", None)) or None
    waiting = getattr(job, "array_tasks_waiting", None)
    throttle = _int("job", job_id, "array_tasks_parallel", getattr(job, "array_tasks_parallel", None)) or None
    array_task, pending = None, 1
    if array_id and waiting:
        try:
            pending = gresspec.array_task_count(str(waiting))
        except ValueError as err:
            raise _fail("job", job_id, "array_tasks_waiting", waiting) from err
        array_task = f"{waiting}%{throttle}" if throttle else str(waiting)  # Slurm's own spec
    elif array_id and getattr(job, "array_task_id", None) is not None:
        array_task = str(job.array_task_id)
    # pyslurm hands over Slurm's state_desc when there is one ("ReqNodeNotAvail, May be
    # reserved for other job", seen on 24.11), else the reason code, which squeue's
    # state_reason always is: keep the code, as the skip and held reasons match on it.
    reason = str(getattr(job, "state_reason", "") or "").split(",", 1)[0].strip()
    partition = getattr(job, "partition", "") or ""
    return PendingJob(
        job_id=job_id, array_job_id=array_id, array_task=array_task, array_tasks_pending=pending,
        priority=_int("job", job_id, "priority", getattr(job, "priority", None), 0) or 0,
        partition=tuple(p for p in str(partition).split(",") if p),
        reason=reason, user=str(getattr(job, "user_name", "") or ""), requests=requests,
        nodes_requested=_int("job", job_id, "num_nodes", getattr(job, "num_nodes", None), 1) or 1,
        state="PENDING",
        tasks=_int("job", job_id, "ntasks", getattr(job, "ntasks", None), 1) or 1,
        sockets_per_node=_int("job", job_id, "sockets_per_node", getattr(job, "sockets_per_node", None)),
        array_throttle=throttle if array_task else None,
        held=reason in HELD_REASONS,
        name=str(getattr(job, "name", "") or ""),
    )


def _gres_counts(name: str, attr: str, gres: Any) -> Tuple[Dict[str, int], Dict[str, Tuple[int, ...]]]:
    """pyslurm's gres dicts: {"gpu:1g.10gb": 4} or {"gpu:1g.10gb": {"count": "4", "indexes": "0-3"}}."""
    counts: Dict[str, int] = {}
    idx: Dict[str, Tuple[int, ...]] = {}
    if not gres:
        return counts, idx
    if isinstance(gres, str):  # a raw gres string
        try:
            used, found = gresspec.parse_gres_used(gres)
        except ValueError as err:
            raise _fail("node", name, attr, gres) from err
        return used, found
    if not isinstance(gres, Mapping):
        raise _fail("node", name, attr, gres)
    for key, value in gres.items():
        kind, _, gtype = str(key).partition(":")
        if kind != "gpu":
            continue
        indexes: Any = None
        if isinstance(value, Mapping):
            indexes = value.get("indexes")
            value = value.get("count")
        n = _int("node", name, f"{attr}[{key!r}]", value, 0)
        if n:
            counts[gtype] = counts.get(gtype, 0) + n
        if n and indexes and str(indexes) != "N/A":
            try:
                idx[gtype] = tuple(gresspec.expand_ranges(str(indexes)))
            except ValueError as err:
                raise _fail("node", name, f"{attr}[{key!r}].indexes", indexes) from err
    return counts, idx


def node_from_pyslurm(node: Any) -> NodeInfo:
    name = str(getattr(node, "name", "") or "")
    if not name:
        raise _fail("node", "?", "name", getattr(node, "name", None))
    state, flags = gresspec.normalize_state(str(getattr(node, "state", "") or "").split("+"))
    gres, _ = _gres_counts(name, "configured_gres", getattr(node, "configured_gres", None))
    used, idx = _gres_counts(name, "allocated_gres", getattr(node, "allocated_gres", None))
    parts = getattr(node, "partitions", None) or ()
    if isinstance(parts, str):
        parts = [p for p in parts.split(",") if p]
    return NodeInfo(name=name, state=state, flags=flags, partitions=tuple(parts), gres=gres,
                    gres_used=used, gres_used_idx=idx,
                    extra=str(getattr(node, "extra", "") or ""),
                    comment=str(getattr(node, "comment", "") or ""),
                    reason=str(getattr(node, "reason", "") or ""))


class PyslurmReader:
    """:class:`~.reader.SlurmReader` over pyslurm (``module`` for tests; imported lazily)."""

    name = "pyslurm"

    def __init__(self, module: Any = None):
        self._module = module

    @property
    def module(self) -> Any:
        if self._module is None:
            self._module = import_pyslurm()
        return self._module

    def _load(self, what: str) -> List[Any]:
        """``pyslurm.<what>.load()`` as a list; its failure is SlurmUnreadable."""
        try:
            return _values(getattr(self.module, what).load())
        except self._errors() as err:
            raise SlurmUnreadable(f"cannot read Slurm: pyslurm {what}.load() failed: "
                                  f"{type(err).__name__}: {err}; check slurmctld "
                                  f"(`scontrol ping`) and rerun") from err

    def _errors(self) -> Tuple[Type[BaseException], ...]:
        errors: Tuple[Type[BaseException], ...] = tuple(
            e for e in (getattr(self.module, "RPCError", None),)
            if isinstance(e, type) and issubclass(e, BaseException))
        return errors + (OSError, ValueError)  # RPCError; ValueError: the older API's

    def tres_strings(self) -> Dict[int, Dict[str, str]]:
        """job id -> its raw ``tres_per_*`` strings, from pyslurm's older API
        (``pyslurm.job().get()``, in pyslurm up to 24.11 at least), which keeps the per-job,
        per-task and per-socket requests that ``Jobs.load()``'s ``Job`` drops; {} where the
        module has no such API (then ``--gpus``/``--gpus-per-task``/``--gpus-per-socket`` stay
        invisible: docs/slurm-json.md)."""
        older = getattr(self.module, "job", None)
        if not callable(older):
            return {}
        try:
            table = older().get()
        except self._errors() as err:
            raise SlurmUnreadable(f"cannot read Slurm: pyslurm job().get() failed: "
                                  f"{type(err).__name__}: {err}; check slurmctld "
                                  f"(`scontrol ping`) and rerun") from err
        out: Dict[int, Dict[str, str]] = {}
        for key, record in (table or {}).items():
            if isinstance(record, Mapping):
                job_id = _int("job", key, "id", key)
                out[job_id or 0] = {attr: str(record.get(attr) or "") for attr, _ in _RAW_PER}
        return out

    def _jobs(self, convert: Callable[[Any, Optional[Mapping[str, Any]]], Optional[J]]) -> List[J]:
        """Every job ``convert`` keeps (it returns None for the others), each with its raw
        ``tres_per_*`` strings (:meth:`tres_strings`)."""
        loaded = self._load("Jobs")
        tres = self.tres_strings() if loaded else {}
        jobs = [convert(j, tres.get(getattr(j, "id", 0)) if tres else None) for j in loaded]
        return [j for j in jobs if j is not None]

    def pending_jobs(self) -> List[PendingJob]:
        return self._jobs(job_from_pyslurm)

    def running_jobs(self) -> List[RunningJob]:
        return self._jobs(running_from_pyslurm)

    def nodes(self, names: Optional[Sequence[str]] = None) -> Dict[str, NodeInfo]:
        loaded = self._load("Nodes")
        if not loaded:
            raise SlurmUnreadable("cannot read Slurm: pyslurm Nodes.load() listed no node at all; "
                                  "a controller with nodes lists every one of them, and with none "
                                  "there is nothing to plan; check slurmctld (`scontrol ping`) "
                                  "and rerun")
        nodes = {n.name: n for n in (node_from_pyslurm(x) for x in loaded)}
        if names is not None:
            nodes = {k: v for k, v in nodes.items() if k in set(names)}
        return nodes
