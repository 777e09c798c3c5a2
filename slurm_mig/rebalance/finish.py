"""rebalance's finish step: tell Slurm about the layouts the nodes applied, once per cycle.

A node whose ``sync --pending`` applied its want has new MIG instances and new gres.conf
lines, is drained, and says ``applied:<cycle>`` in its Extra; slurmctld still has its old
``Gres=``.  The rest is done here, on the controller, for every such node at once::

    include      each node's Gres= (from its published ``have``) in paths.node_gres_include,
                 ONE atomic write for all of them (.prev kept, other lines untouched)
    hold         every other node a GPU job could land on drained with ``slurm-mig hold:
                 ...``, ONE scontrol call (:class:`~slurm_mig.change.steps.Hold`; off with
                 [slurm] hold_during_reconfigure = false)
    reconfigure  [slurm] reconfigure_command, ONCE: on Slurm < 23.11 that must restart
                 slurmctld (docs/sync.md), so one restart per cycle, not one per node
    register     every node registered with its new gres counts (one scontrol call a look),
                 the held nodes with the gres they had, in the same looks
    mark         the ``applied`` marker dropped from Extra (``have`` rewritten if lost)
    resume       and each held node resumed as it registers, if it still has the hold's reason

Mark and resume run per node, in the look that sees it registered: never held by another.
Just before the include and just after the reconfigure the nodes are read again: a node
that applied meanwhile (a late apply: it could only have made itself INVALID) joins, and
after the reconfigure that costs one more include write and reconfigure, before anyone is
checked or resumed (docs/rebalance.md, "A late apply").

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
from typing import AbstractSet, Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..change import reasons
from ..change.channel import Channel, ExtraChannel, format_channel, have_counts, parse_channel
from ..change.reasons import REBALANCE, one_line
from ..change.steps import Hold, HoldResult, write_node_include
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
    command ran and its last run succeeded), ``reconfigures`` (how many times it ran),
    ``failed`` ([{node, step, error}]) and ``actions`` (greppable lines)."""

    finished: Tuple[str, ...] = ()
    reconfigured: bool = False
    failed: Tuple[Dict[str, str], ...] = ()
    actions: Tuple[str, ...] = field(default=())
    reconfigures: int = 0  #: times the command was run: 0, 1, or 2 after a late apply
    hold: HoldResult = HoldResult()  #: the nodes held across the reconfigure

    def as_dict(self) -> Dict[str, Any]:
        return {"finished": list(self.finished), "reconfigured": self.reconfigured,
                "reconfigures": self.reconfigures, "failed": list(self.failed),
                "actions": list(self.actions), "hold": self.hold.as_dict()}


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


#: The re-read of the nodes (:func:`finish`'s ``late``): given the nodes already being
#: finished, the nodes ready now that are not among them (a late apply); may raise.
Late = Callable[[AbstractSet[str]], Sequence[Ready]]


def finish(config: Config, slurm: SlurmClient, channel: ExtraChannel, ready: Sequence[Ready],
           cycle: int, *, late: Optional[Late] = None, dry_run: bool = False,
           clock: Callable[[], float], sleep: Callable[[float], None],
           poll: float) -> FinishResult:
    """Finish ``ready`` (see the module doc).  Never raises for a Slurm or file failure: that
    is what :attr:`FinishResult.failed` and the drain reasons are for; a crash (BaseException)
    propagates.

    ``late`` re-reads the nodes twice (docs/rebalance.md, "A late apply"): just before the
    include is written, and just after the reconfigure.  A node that applied since the cycle
    read Slurm joins before the include; one that applied while the include was written or
    Slurm reconfigured makes ONE more include write and reconfigure, for everyone, before
    any node is checked or resumed.  Later than that, the next cycle finishes it."""
    ready = list(ready)
    head = f"{REBALANCE}: cycle {cycle}:"
    if dry_run:
        return FinishResult(finished=tuple(r.name for r in ready), actions=tuple(
            f"{head} node {r.name}: finish: Gres={r.gres or '(none)'}, reconfigure, resume "
            f"(dry run)" for r in ready))
    finished: List[str] = []
    failed: List[Dict[str, str]] = []
    actions: List[str] = []

    def fail(nodes: Sequence[str], step: str, err: BaseException) -> None:
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

    def look_late(when: str) -> List[Ready]:
        if late is None:
            return []
        known = frozenset(r.name for r in ready)
        try:
            found = [r for r in late(known) if r.name not in known]
        except Exception as err:  # Slurm busy (a restart): the next cycle finds them
            actions.append(f"{head} reading the nodes again {when} failed: {one_line(err)}; "
                           f"a node that applied meanwhile is finished by the next cycle")
            log.warning("%s", actions[-1])
            return []
        for r in found:
            line = (f"{head} node {r.name}: applied after this cycle read Slurm (seen {when}); "
                    f"joins this cycle's finish")
            actions.append(line)
            log.info("%s", line)
        return found

    reconfigures = 0
    reconfigured = False
    hold = Hold(slurm, reasons.hold(f"rebalance (cycle {cycle})"),
                config.slurm.hold_during_reconfigure, log, clock)

    def tell_slurm() -> Optional[Tuple[str, BaseException]]:
        """Every ``ready`` node's Gres= in the include, then the reconfigure."""
        nonlocal reconfigures, reconfigured
        reconfigured = False
        try:
            write_node_include(config.paths.node_gres_include, {r.name: r.gres for r in ready},
                               lock_timeout=config.apply.lock_timeout)
        except Exception as err:
            return "writing the node include", err
        if reconfigures == 0:
            try:
                hold.start(skip=[r.name for r in ready])
            except Exception as err:  # no reconfigure without the hold; what it drained is
                return "holding the GPU nodes", err  # resumed below, the rest retried next cycle
        reconfigures += 1
        try:
            slurm.reconfigure()
        except Exception as err:
            return "reconfigure", err
        reconfigured = True
        actions.append(f"{head} reconfigured Slurm {_times(reconfigures)} for "
                       f"{', '.join(r.name for r in ready)} "
                       f"({' '.join(config.slurm.reconfigure_command)})")
        return None

    def result() -> FinishResult:
        actions.extend(hold.lines(head))
        return FinishResult(tuple(finished), reconfigured, tuple(failed), tuple(actions),
                            reconfigures, hold.result())

    def wait(expected: Dict[str, str], on_registered: Any = None) -> Dict[str, Tuple[bool, str]]:
        return hold.wait(slurm, expected, config.slurm.register_timeout, clock=clock,
                         sleep=sleep, poll=poll, on_registered=on_registered)

    if not ready:  # no reconfigure, so nothing a late apply could break: the next cycle
        return FinishResult()
    ready += look_late("before the include")
    error = tell_slurm()
    if error is None or error[0] == "reconfigure":
        # A node that wrote its gres.conf while Slurm was told may now be INVALID (its old
        # Gres=, its new count): once more with it, for everyone, before anyone resumes.
        more = look_late("after the reconfigure")
        if more:
            if error is not None:
                actions.append(f"{head} reconfigure failed: {one_line(error[1])}; once more "
                               f"with {', '.join(r.name for r in more)}, which applied meanwhile")
                log.warning("%s", actions[-1])
            ready += more
            error = tell_slurm()
    if error is not None:
        fail([r.name for r in ready], *error)
        wait({})  # the held nodes: resumed once registered all the same
        return result()
    by_name = {r.name: r for r in ready}

    def registered(name: str, _st: object, _text: str) -> None:  # each as soon as it registered
        r = by_name[name]
        try:
            _mark(channel, r)
        except Exception as err:
            fail([r.name], "clearing the applied marker in Extra", err)
            return
        try:
            slurm.resume(r.name)
        except Exception as err:  # the next cycle resumes it: drained by us, nothing left to do
            failed.append({"node": r.name, "step": "resume", "error": one_line(err)})
            actions.append(f"{head} node {r.name}: resume failed: {one_line(err)}; the "
                           f"next cycle resumes it")
            return
        finished.append(r.name)
        line = f"{head} node {r.name}: finished: Gres={r.gres or '(none)'} registered; resumed"
        actions.append(line)
        log.info("%s", line)

    seen = wait({r.name: r.gres for r in ready}, registered)
    for name, (ok, text) in seen.items():
        if not ok:
            fail([name], "register", SlurmError(text))
    return result()


def _times(n: int) -> str:
    return "once" if n == 1 else "again (late apply)"


def _mark(channel: ExtraChannel, r: Ready) -> None:
    """Drop the applied marker, keeping the rest of the field as it is now; if a slurmctld
    restart lost the field, write back the ``have`` this cycle read."""
    now = parse_channel(channel.read(r.name), r.name)  # ChannelError: not ours any more
    if now is None or not now.have:
        channel.write(r.name, format_channel(r.channel.finished()))
    elif now.applied is not None:
        channel.write(r.name, format_channel(now.finished()))
