"""rebalance's finish step: tell Slurm about the layouts the nodes applied, once per cycle.

A node whose ``sync --pending`` applied its want has new MIG instances and new gres.conf
lines, is drained, and says ``applied:<cycle>`` in its Extra; slurmctld still has its old
``Gres=``.  The rest is done here, on the controller, for every such node at once::

    include      each node's Gres= (from its published ``have``) in paths.node_gres_include,
                 ONE atomic write for all of them (.prev kept, other lines untouched)
    reconfigure  [slurm] reconfigure_command, ONCE: on Slurm < 23.11 that must restart
                 slurmctld (docs/sync.md), so one restart per cycle, not one per node
    register     every node registered with its new gres counts (one scontrol call a look)
    mark         the ``applied`` marker dropped from Extra (``have`` rewritten if lost)
    resume

Which nodes (:func:`verdict`): drained with a reason starting ``slurm-mig rebalance`` and no
want left.  With the marker, or a ``have`` that disagrees with Slurm's gres: finish.  A
``have`` that agrees and no marker: the change was cancelled (want cleared) or already
finished before a crash: resume.  No ``have``: wait for the node to publish one.

A failure leaves the nodes it concerns drained with the reason ``slurm-mig rebalance: cycle
N: <step> failed: <error>; fix and rerun slurm-mig rebalance``; the next cycle retries
(every step can run again: an unchanged include is not rewritten, a second reconfigure and
a second resume change nothing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..change import reasons
from ..change.channel import Channel, ExtraChannel, format_channel, have_counts, parse_channel
from ..change.reasons import REBALANCE, one_line
from ..change.steps import wait_registered, write_node_include
from ..core.catalog import Catalog
from ..core.errors import InputError, SlurmError
from ..host.config import Config
from ..slurm import SlurmClient
from ..slurm.model import NodeInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ready:
    """A node to finish: its channel as read, and the ``Gres=`` its ``have`` makes."""

    name: str
    channel: Channel
    gres: str


@dataclass(frozen=True)
class FinishResult:
    """What the finish step did: ``finished`` (nodes resumed), ``reconfigured`` (whether the
    command ran), ``failed`` ([{node, step, error}]) and ``actions`` (greppable lines)."""

    finished: Tuple[str, ...] = ()
    reconfigured: bool = False
    failed: Tuple[Dict[str, str], ...] = ()
    actions: Tuple[str, ...] = field(default=())

    def as_dict(self) -> Dict[str, Any]:
        return {"finished": list(self.finished), "reconfigured": self.reconfigured,
                "failed": list(self.failed), "actions": list(self.actions)}


def verdict(info: NodeInfo, ch: Optional[Channel], catalog: Catalog) -> Tuple[str, str]:
    """For a node drained by rebalance with no want: ("finish" | "resume" | "wait", why)."""
    if ch is None or not ch.have:
        return "wait", (f"node {info.name}: drained by rebalance, no layout published; waits for "
                        f"`slurm-mig sync --pending` on the node to publish it")
    try:
        counts = have_counts(ch, catalog)
    except InputError as err:
        return "wait", f"node {info.name}: drained by rebalance, published layout unreadable: {err}"
    slurm_counts = {t: n for t, n in info.gres.items() if n}
    if ch.applied is not None:
        return "finish", f"applied the layout of cycle {ch.applied}"
    if counts != slurm_counts:
        return "finish", "its published layout differs from Slurm's gres"
    return "resume", "drained by rebalance but no layout is waiting for it (a crash or a cleared want)"


def finish(config: Config, slurm: SlurmClient, channel: ExtraChannel, ready: Sequence[Ready],
           cycle: int, *, dry_run: bool = False, clock: Callable[[], float],
           sleep: Callable[[float], None], poll: float) -> FinishResult:
    """Finish ``ready`` (see the module doc).  Never raises for a Slurm or file failure: that
    is what :attr:`FinishResult.failed` and the drain reasons are for; a crash (BaseException)
    propagates."""
    if not ready:
        return FinishResult()
    names = [r.name for r in ready]
    head = f"{REBALANCE}: cycle {cycle}:"
    if dry_run:
        return FinishResult(finished=tuple(names), actions=tuple(
            f"{head} node {r.name}: finish: Gres={r.gres or '(none)'}, reconfigure, resume "
            f"(dry run)" for r in ready))
    finished: List[str] = []
    failed: List[Dict[str, str]] = []
    actions: List[str] = []

    def fail(nodes: List[str], step: str, err: BaseException) -> None:
        reason = reasons.finish_failed(cycle, step, err)
        for n in nodes:
            failed.append({"node": n, "step": step, "error": one_line(err)})
            actions.append(f"{head} node {n}: {step} failed: {one_line(err)}; left drained")
            log.error("%s node %s: %s failed: %s", head, n, step, one_line(err))
            try:
                slurm.drain(n, reason)
            except Exception as drain_err:  # slurmctld down: the old reason still says rebalance
                log.error("%s node %s: setting the drain reason failed too: %s", head, n,
                          one_line(drain_err))

    def result(reconfigured: bool) -> FinishResult:
        return FinishResult(tuple(finished), reconfigured, tuple(failed), tuple(actions))

    paths = config.paths
    try:
        write_node_include(paths.node_gres_include, {r.name: r.gres for r in ready},
                           lock_timeout=config.apply.lock_timeout)
    except Exception as err:
        fail(names, "writing the node include", err)
        return result(False)
    try:
        slurm.reconfigure()
    except Exception as err:
        fail(names, "reconfigure", err)
        return result(False)
    actions.append(f"{head} reconfigured Slurm once for {', '.join(names)} "
                   f"({' '.join(config.slurm.reconfigure_command)})")
    seen = wait_registered(slurm, {r.name: r.gres for r in ready}, config.slurm.register_timeout,
                           clock=clock, sleep=sleep, poll=poll)
    for r in ready:
        ok, text = seen[r.name]
        if not ok:
            fail([r.name], "register", SlurmError(text))
            continue
        try:
            _mark(channel, r)
        except Exception as err:
            fail([r.name], "clearing the applied marker in Extra", err)
            continue
        try:
            slurm.resume(r.name)
        except Exception as err:  # the next cycle resumes it: drained by us, nothing left to do
            failed.append({"node": r.name, "step": "resume", "error": one_line(err)})
            actions.append(f"{head} node {r.name}: resume failed: {one_line(err)}; the "
                           f"next cycle resumes it")
            continue
        finished.append(r.name)
        line = f"{head} node {r.name}: finished: Gres={r.gres or '(none)'} registered; resumed"
        actions.append(line)
        log.info("%s", line)
    return result(True)


def _mark(channel: ExtraChannel, r: Ready) -> None:
    """Drop the applied marker, keeping the rest of the field as it is now; if a slurmctld
    restart lost the field, write back the ``have`` this cycle read."""
    now = parse_channel(channel.read(r.name), r.name)  # ChannelError: not ours any more
    if now is None or not now.have:
        channel.write(r.name, format_channel(r.channel.finished()))
    elif now.applied is not None:
        channel.write(r.name, format_channel(now.finished()))
