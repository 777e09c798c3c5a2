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
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..core.errors import LockBusy, SlurmError, SlurmMigError
from ..core.gresconf import GresConfError, merge_node_include
from ..core.layout import Layout
from ..host.atomic import WriteResult, update_file
from ..host.config import Config
from ..host.locking import node_lock
from ..node.apply import ApplyResult, JobAwareBackend, apply_node
from ..slurm import SlurmClient
from ..slurm.scontrol import NodeStatus, parse_gres
from .channel import ExtraChannel
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


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as err:
        raise GresConfError(f"cannot read {path}: {err}; check the file") from err


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


def wait_registered(slurm: SlurmClient, expected: Mapping[str, str], timeout: float, *,
                    clock: Callable[[], float], sleep: Callable[[float], None],
                    poll: float,
                    on_registered: Optional[Callable[[str, str], None]] = None,
                    ) -> Dict[str, Tuple[bool, str]]:
    """Look at the nodes (one ``scontrol show node`` a look) until each is registered with
    the gres counts of its expected ``Gres=`` value, or ``timeout`` seconds have passed.

    Per node: ``on_registered(node, what slurmctld reports)`` runs as soon as that node
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
        now_registered: List[str] = []
        try:
            status = slurm.nodes(sorted(left))
            for n in sorted(left):
                st = status.get(n)
                seen[n] = f"slurmctld reports {state_text(st)}"
                if st is not None and st.registered and dict(st.gres) == want[n]:
                    left.discard(n)
                    now_registered.append(n)
        except SlurmError as err:  # slurmctld may be restarting: look again
            for n in left:
                seen[n] = f"last error: {one_line(err)}"
        for n in now_registered:
            if on_registered is not None:
                on_registered(n, seen[n])
        if not left or clock() >= deadline:
            break
        sleep(max(0.0, min(poll, deadline - clock())))
    return {n: ((False, register_error(n, expected[n], timeout, seen[n])) if n in left
                else (True, seen[n])) for n in sorted(want)}


def check_registered(slurm: SlurmClient, node: str, gres: str, timeout: float, *,
                     clock: Callable[[], float], sleep: Callable[[float], None],
                     poll: float) -> str:
    """:func:`wait_registered` for one node: what slurmctld reports, or SlurmError with the fix."""
    ok, text = wait_registered(slurm, {node: gres}, timeout, clock=clock, sleep=sleep, poll=poll)[node]
    if not ok:
        raise SlurmError(text)
    return text
