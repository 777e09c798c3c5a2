"""The steps of a layout change that ``sync``, ``sync --pending`` and rebalance's finish share.

One change of a node's MIG layout under Slurm is: drain, wait for idle, apply, write the
node's gres.conf lines, write its ``Gres=`` in the node include, reconfigure Slurm, check
that the node registered with the new gres, resume.  Three callers run parts of it:

* ``slurm-mig sync`` (admin, on the node): every step, one node at a time (docs/sync.md);
* ``slurm-mig sync --pending`` (timer, on the node): drain, apply, gres.conf, then it
  hands over to the controller (:mod:`slurm_mig.change.pending`);
* ``slurm-mig rebalance`` (timer, on the controller): the node include, ONE reconfigure
  for every node finished in the cycle, registration, resume (:mod:`slurm_mig.rebalance.finish`).
  On Slurm < 23.11 a reconfigure that changes gres is a slurmctld restart, which is why
  it belongs to the controller and happens once per cycle rather than once per node.

So each step lives here once, and the callers only order the steps and decide what a
failure leaves behind.  A node-side change (sync, sync --pending) hands one
:class:`NodeChange` down its steps: the config, the job-aware GPU backend, the Slurm
client, the Extra channel, the node, the clock and the step log, never changed on the way.
The drain reasons the steps set are built in :mod:`slurm_mig.change.reasons`.

The hold (:class:`Hold`, both callers): a reconfigure is a slurmctld restart with state
recovery on every release, and until a node's slurmd registers again slurmctld has its gpu
count but not its gpu records, so a job allocated then gets no gpu (or the wrong one,
docs/slurm-prolog-env.md).  So just before the reconfigure every node a GPU job could land on
is drained in ONE ``scontrol update`` with ``slurm-mig hold: ...``, and each one is resumed in
the look that sees it registered again, if it still has that reason (docs/rebalance.md,
"The hold").
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..core.errors import LockBusy, SlurmError, SlurmMigError
from ..core.gresconf import merge_node_include
from ..core.layout import Layout
from ..host.atomic import WriteResult, update_file
from ..host.config import Config
from ..host.locking import node_lock
from ..node.apply import ApplyResult, JobAwareBackend, apply_node
from ..slurm import SlurmClient
from ..slurm.scontrol import NodeStatus, parse_gres
from .channel import ExtraChannel
from . import reasons
from .reasons import one_line

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- text


def with_context(err: BaseException, message: str) -> BaseException:
    """The same kind of error with a longer message (the original stays as the cause)."""
    if isinstance(err, SlurmMigError):
        try:
            new = type(err)(message)
        except Exception:  # another constructor: keep the error as it is
            return err
        new.__cause__ = err
        return new
    return err


def idle(st: NodeStatus) -> bool:
    """Idle and no epilog still running (COMPLETING)."""
    return st.base == "idle" and "COMPLETING" not in st.flags


def state_text(st: Optional[NodeStatus]) -> str:
    if st is None:
        return "not reported"
    return "+".join([st.base.upper(), *sorted(st.flags)]) + f" gres={st.gres_text or '-'}"


# ----------------------------------------------------------------------------- steps


class StepLog:
    """The steps of one run, with timings; each one logged as it ends."""

    def __init__(self, who: str, clock: Callable[[], float], logger: logging.Logger = log):
        self.who = who  #: ``slurm-mig sync: node n1``, for the log lines
        self.clock = clock
        self.log = logger  #: the caller's, so its log lines keep their module's name
        self.items: List[Dict[str, Any]] = []
        self.t0 = clock()

    def add(self, name: str, status: str, detail: str,
            started: Optional[float] = None) -> Dict[str, Any]:
        seconds = round(self.clock() - started, 3) if started is not None else 0.0
        item: Dict[str, Any] = {"step": name, "status": status, "detail": detail,
                                "seconds": seconds}
        self.items.append(item)
        level = logging.WARNING if status == "failed" else logging.INFO
        self.log.log(level, "%s: %s %s: %s", self.who, name, status, detail)
        return item

    def snapshot(self) -> Tuple[Dict[str, Any], ...]:
        """The steps so far, for a result (later steps do not change it)."""
        return tuple(dict(item) for item in self.items)


@dataclass(frozen=True)
class NodeChange:
    """One change of one node's layout, as ``sync`` and ``sync --pending`` run it on the
    node: what every step works with, handed down whole.

    Frozen: no step swaps a collaborator under another.  ``steps`` is the run's log, the
    one thing in it that grows.  ``channel`` is the node's Extra field (``sync --pending``
    only); ``backend`` is job-aware, so instances a job record holds count as busy."""

    config: Config
    backend: JobAwareBackend
    slurm: SlurmClient
    node: str
    steps: StepLog
    clock: Callable[[], float] = time.monotonic
    channel: Optional[ExtraChannel] = None
    dry_run: bool = False

    @property
    def state_dir(self) -> str:
        return self.config.paths.state_dir

    def look(self) -> Optional[NodeStatus]:
        """The node as slurmctld reports it now, or None if slurmctld does not know it."""
        return self.slurm.nodes([self.node]).get(self.node)

    def status(self) -> NodeStatus:
        """:meth:`look`, with SlurmError (and the fix) for a node slurmctld does not know."""
        st = self.look()
        if st is None:
            raise SlurmError(f"node {self.node} is not known to slurmctld; check --node or "
                             f"[slurm] node_name in {self.config.source} (`scontrol show node`)")
        return st


@contextlib.contextmanager
def sync_lock(state_dir: str) -> Iterator[None]:
    """One ``sync`` or ``sync --pending`` at a time on a node (exit 7 at once otherwise)."""
    lock = os.path.join(state_dir, "sync.lock")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(node_lock(lock, 0))
        except LockBusy as err:
            raise LockBusy(f"another slurm-mig sync is running on this node (lock {lock}); "
                           f"wait for it, or find it with `fuser {lock}`") from err
        yield


def apply_layouts(config: Config, backend: JobAwareBackend,
                  wanted: Mapping[int, Layout]) -> List[ApplyResult]:
    """The apply engine on an idle, drained node: ``partial`` off, so a busy instance (a
    stray process, a stale job record) refuses the change instead of half-doing it."""
    from ..host.devnodes import device_nodes

    return apply_node(backend, dict(wanted), state_dir=config.paths.state_dir, partial=False,
                      lock_timeout=config.apply.lock_timeout, devices=device_nodes(config))


def apply_summary(results: Sequence[ApplyResult]) -> str:
    return "; ".join(f"gpu {r.gpu} {r.before} -> {r.after} ({len(r.steps)} change(s))" if r.changed
                     else f"gpu {r.gpu} {r.after} unchanged" for r in results)


def write_node_include(path: str, gres_by_node: Mapping[str, str],
                       lock_timeout: Optional[float] = 60.0) -> WriteResult:
    """Set the ``Gres=`` of every node in ``gres_by_node`` in the node include, in ONE atomic
    write (``.prev`` kept, other lines untouched): a crash leaves all of them or none."""

    def merge(text: str) -> str:
        for node, gres in sorted(gres_by_node.items()):
            text = merge_node_include(text, node, gres, source=path)
        return text

    return update_file(path, merge, lock_timeout=lock_timeout)


def register_error(node: str, gres: str, timeout: float, seen: str) -> str:
    return (f"node {node} did not register with gres {gres or '(none)'} within {timeout:g}s "
            f"({seen}); before Slurm 23.11 a new gres count or type needs a slurmctld restart "
            f"(docs/sync.md); else see slurmd's log on {node} or raise [slurm] register_timeout")


#: :func:`wait_registered`'s per-node call: (node, its status in the look that saw it
#: registered, what slurmctld reports as text).
OnRegistered = Callable[[str, NodeStatus, str], None]


def wait_registered(slurm: SlurmClient, expected: Mapping[str, str], timeout: float, *,
                    clock: Callable[[], float], sleep: Callable[[float], None],
                    poll: float,
                    on_registered: Optional[OnRegistered] = None,
                    ) -> Dict[str, Tuple[bool, str]]:
    """Look at the nodes (one ``scontrol show node`` a look) until each is registered with
    the gres counts of its expected ``Gres=`` value, or ``timeout`` seconds have passed.

    Per node: ``on_registered(node, status, what slurmctld reports)`` runs as soon as that node
    registered, in the look that saw it, so a caller resumes a healthy node at once, never
    after the timeout of another that stays invalid (a late apply, docs/rebalance.md).

    Counts per type are enough with the files slurm-mig writes (types sorted alike in both
    files, docs/sync.md).  Returns node -> (registered, what slurmctld reports) or
    (False, why not, with the fix), one line.  An scontrol failure (slurmctld restarting)
    is looked at again, not fatal.
    """
    deadline = clock() + timeout
    want = {n: parse_gres(g) for n, g in expected.items()}
    left = set(want)
    seen: Dict[str, str] = {n: "slurmctld did not answer" for n in want}
    while left:
        now_registered: List[NodeStatus] = []
        try:
            status = slurm.nodes(sorted(left))
            for n in sorted(left):
                st = status.get(n)
                seen[n] = f"slurmctld reports {state_text(st)}"
                if st is not None and st.registered and dict(st.gres) == want[n]:
                    left.discard(n)
                    now_registered.append(st)
        except SlurmError as err:  # slurmctld may be restarting: look again
            for n in left:
                seen[n] = f"last error: {one_line(err)}"
        for st in now_registered:
            if on_registered is not None:
                on_registered(st.name, st, seen[st.name])
        if not left or clock() >= deadline:
            break
        sleep(max(0.0, min(poll, deadline - clock())))
    return {n: ((False, register_error(n, expected[n], timeout, seen[n])) if n in left
                else (True, seen[n])) for n in sorted(want)}


# ----------------------------------------------------------------------------- the hold


def holdable(st: NodeStatus) -> bool:
    """A node a GPU job could be allocated on during the reconfigure: gpus in its Slurm gres,
    not drained or draining, not down, not invalid.  A node not responding now is held too:
    its slurmd may answer in the window (the sandbox's do, right after they start: IDLE*)."""
    return (any(n > 0 for n in st.gres.values()) and not st.drain_flagged
            and st.base not in ("down", "future") and "DOWN" not in st.flags
            and not any(f.startswith("INVAL") for f in st.flags))


def held_by_us(st: NodeStatus) -> bool:
    """Drained with the hold's reason: ours to resume once registered (a hold whose process
    died before resuming it, too; since 23.11 a resumed node keeps its old Reason, so the
    DRAIN flag is what says it is still held)."""
    return st.drain_flagged and reasons.is_hold(st.reason)


@dataclass(frozen=True)
class HoldResult:
    """What one hold did: ``held`` (drained by it, or found held by an earlier run that died:
    ``adopted``), ``resumed``, ``kept`` (node -> the reason someone else drained it with
    meanwhile: left alone), ``left`` (not registered in time: still held, the next rebalance
    cycle or sync resumes it), ``failed`` (node -> error), the scontrol calls it made and the
    seconds they took (the waits are the caller's)."""

    held: Tuple[str, ...] = ()
    adopted: Tuple[str, ...] = ()
    resumed: Tuple[str, ...] = ()
    kept: Tuple[Tuple[str, str], ...] = ()
    left: Tuple[str, ...] = ()
    failed: Tuple[Tuple[str, str], ...] = ()
    calls: int = 0
    seconds: float = 0.0  #: spent in the hold's own calls (read, drain, resumes)

    def as_dict(self) -> Dict[str, Any]:
        return {"held": list(self.held), "adopted": list(self.adopted),
                "resumed": list(self.resumed), "kept": dict(self.kept), "left": list(self.left),
                "failed": dict(self.failed), "calls": self.calls,
                "seconds": round(self.seconds, 3)}


class Hold:
    """The hold around one reconfigure (module doc), for ``rebalance``'s finish and ``sync``.

    :meth:`start` reads every node (one ``scontrol show node``) and drains the holdable ones
    (:func:`holdable`, less ``skip``: the caller's own drained nodes) in ONE ``scontrol
    update nodename=n1,n2,...``; nodes already held (a run that died) are taken over.
    :meth:`wait` waits for the caller's nodes and the held ones together, resuming each held
    node in the look that sees it registered with the gres it had, if it is still drained
    with the hold's reason: an admin's drain meanwhile wins.  ``enabled`` False (``[slurm]
    hold_during_reconfigure = false``): holds nothing, and :meth:`wait` is plain
    :func:`wait_registered`."""

    def __init__(self, slurm: SlurmClient, reason: str, enabled: bool = True,
                 logger: logging.Logger = log, clock: Callable[[], float] = time.monotonic):
        self.slurm = slurm
        self.clock = clock
        self._seconds = 0.0
        self.reason = reason
        self.enabled = enabled
        self.log = logger
        self.gres: Dict[str, str] = {}  #: held node -> its Gres= when held
        self._held: List[str] = []
        self._adopted: List[str] = []
        self._resumed: List[str] = []
        self._kept: Dict[str, str] = {}
        self._left: List[str] = []
        self._failed: Dict[str, str] = {}
        self._calls = 0

    def start(self, skip: Sequence[str] = ()) -> None:
        """Hold the holdable nodes.  SlurmError when reading or draining fails: the nodes the
        drain named are then treated as held (a drain of a node list can half succeed), so
        :meth:`wait` resumes those that did get the reason."""
        if not self.enabled:
            return
        t0 = self.clock()
        try:
            self._start(skip)
        finally:
            self._seconds += self.clock() - t0

    def _start(self, skip: Sequence[str]) -> None:
        self._calls += 1
        status = self.slurm.nodes()
        skipped = set(skip)
        fresh = sorted(n for n, st in status.items() if n not in skipped and holdable(st))
        stale = sorted(n for n, st in status.items() if n not in skipped and held_by_us(st))
        self._held, self._adopted = fresh, stale
        self.gres = {n: status[n].gres_text for n in fresh + stale}
        if fresh:
            self._calls += 1
            self.slurm.drain_nodes(fresh, self.reason)
            self.log.info("hold: drained %s (%s)", ",".join(fresh), self.reason)
        if stale:
            self.log.info("hold: %s still held by an earlier run; resumed with the others",
                          ",".join(stale))

    def release(self, node: str, st: NodeStatus) -> None:
        """``node`` registered (``st``): resume it if it is still ours."""
        if not held_by_us(st):  # resumed or drained by someone else meanwhile: theirs
            self._kept[node] = st.reason if st.drain_flagged else "(resumed by someone else)"
            self.log.info("hold: %s not resumed: %s", node, self._kept[node])
            return
        self._calls += 1
        t0 = self.clock()
        try:
            self.slurm.resume(node)
        except Exception as err:  # still held: the next rebalance cycle or sync resumes it
            self._failed[node] = one_line(err)
            self._seconds += self.clock() - t0
            self.log.warning("hold: resuming %s failed: %s; the next slurm-mig rebalance cycle "
                             "or sync resumes it", node, one_line(err))
            return
        self._seconds += self.clock() - t0
        self._resumed.append(node)

    def wait(self, slurm: SlurmClient, expected: Mapping[str, str], timeout: float, *,
             clock: Callable[[], float], sleep: Callable[[float], None], poll: float,
             on_registered: Optional[OnRegistered] = None) -> Dict[str, Tuple[bool, str]]:
        """:func:`wait_registered` for ``expected`` and the held nodes at once; returns what
        it returns, for ``expected`` only.  A held node not registered in ``timeout`` stays
        held (:attr:`HoldResult.left`)."""
        def each(node: str, st: NodeStatus, text: str) -> None:
            if node in expected:
                if on_registered is not None:
                    on_registered(node, st, text)
            else:
                self.release(node, st)

        everything = {**{n: g for n, g in self.gres.items() if n not in expected}, **expected}
        if not everything:
            return {}
        seen = wait_registered(slurm, everything, timeout, clock=clock, sleep=sleep, poll=poll,
                               on_registered=each)
        self._left = [n for n in self.gres if n not in expected and not seen[n][0]]
        for n in self._left:
            self.log.warning("hold: %s did not register within %gs: left drained (%s); the next "
                             "slurm-mig rebalance cycle or sync resumes it once it has registered",
                             n, timeout, self.reason)
        return {n: seen[n] for n in expected}

    def result(self) -> HoldResult:
        return HoldResult(tuple(self._held), tuple(self._adopted), tuple(self._resumed),
                          tuple(sorted(self._kept.items())), tuple(self._left),
                          tuple(sorted(self._failed.items())), self._calls, self._seconds)

    def lines(self, head: str) -> List[str]:
        """Greppable lines of what the hold did, each starting with ``head``."""
        r = self.result()
        out = []
        if r.held or r.adopted:
            out.append(f"{head} held {','.join(r.held) or '(none new)'}"
                       + (f" and {','.join(r.adopted)} (left held by an earlier run)"
                          if r.adopted else "") + " across the reconfigure")
        if r.resumed:
            out.append(f"{head} resumed {','.join(r.resumed)} once registered")
        for n, why in r.kept:
            out.append(f"{head} node {n}: not resumed, drained by someone else meanwhile: {why}")
        for n in r.left:
            out.append(f"{head} node {n}: not registered in time: left held; the next run "
                       f"resumes it once registered")
        for n, err in r.failed:
            out.append(f"{head} node {n}: resume failed: {err}; left held; the next run "
                       f"resumes it")
        return out


def resume_stale_holds(slurm: SlurmClient, names: Sequence[str],
                       logger: logging.Logger = log) -> Tuple[List[str], List[str]]:
    """Crash repair: of ``names`` (nodes seen drained with the hold's reason while no
    reconfigure runs), resume those registered and still held (one ``scontrol show node``,
    one resume each).  Returns (resumed, left: not registered yet, or the resume failed)."""
    if not names:
        return [], []
    status = slurm.nodes(sorted(names))
    resumed: List[str] = []
    left: List[str] = []
    for n in sorted(names):
        st = status.get(n)
        if st is None or not held_by_us(st):
            continue
        if not st.registered:
            left.append(n)
            continue
        try:
            slurm.resume(n)
        except SlurmError as err:
            logger.warning("hold: resuming %s failed: %s; the next run tries again", n,
                           one_line(err))
            left.append(n)
            continue
        resumed.append(n)
    return resumed, left
