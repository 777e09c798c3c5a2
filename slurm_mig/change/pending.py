"""``slurm-mig sync --pending``: the node side of rebalance.

Run from a timer on every node (etc/slurm-mig-node.timer, or etc/slurm-mig.cron).  Each run:

* reads this node's Extra field (:mod:`slurm_mig.change.channel`);
* no ``want``: publishes the node's current layout (``have``) if Extra does not already
  say it, and does nothing else: no drain, no Slurm change;
* no ``want`` but the GPUs ahead of Slurm (:func:`slurm_behind`: a slurmctld crash lost a
  want the node had applied, or a layout changed by hand): hands the node to rebalance as
  if it had applied a want, once idle (:func:`_catch_up`);
* a ``want`` and the node drained by someone else (a reason not starting ``slurm-mig``):
  leaves it alone; their drain means something we cannot judge;
* a ``want`` and the node still running jobs: makes sure the node is drained (so no new
  job lands) and returns at once: the next run tries again;
* a ``want`` and the node idle: drain (if not already), apply the wanted layout, write this
  node's gres.conf lines, publish the new ``have`` with ``applied:<cycle>`` and the want
  cleared, and set the drain reason to say that the next ``slurm-mig rebalance`` run
  reconfigures Slurm and resumes the node.

It does NOT write the node's ``Gres=`` in the node include, reconfigure or resume: those are
the controller's (:mod:`slurm_mig.rebalance.finish`), once per cycle for every node changed, because
on Slurm < 23.11 a reconfigure that changes gres is a slurmctld restart (docs/sync.md).  The
node stays drained meanwhile, and slurmctld keeps the old Gres= until then.

A failure leaves the node drained with the reason ``slurm-mig rebalance: cycle N: node-side
<step> failed: <error>; fix it, then slurm-mig sync --pending on the node retries`` and the
want in place; the next run retries (apply and the file write are idempotent).

Each run hands one :class:`~slurm_mig.change.steps.NodeChange` (config, backend, Slurm client,
channel, node, clock, step log) down its steps, and each branch returns a frozen
:class:`PendingResult`; its ``as_dict()`` is the ``--json`` output.  Every drain reason is
built and read by :mod:`slurm_mig.change.reasons`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..core.catalog import load_catalog
from ..core.errors import InputError, LockBusy
from ..core.gresconf import check_node_name
from ..core.layout import format_layout
from ..gpu.backend import GpuBackend
from ..host.config import Config, LayoutSettings
from ..node.apply import JobAwareBackend
from ..node.gresfiles import gres_conf
from ..node.inventory import current_layout, gpu_model
from ..slurm import SlurmClient
from ..slurm.scontrol import NodeStatus
from . import reasons
from .channel import Channel, ExtraChannel, format_channel, have_counts, parse_channel
from .reasons import NEXT, REBALANCE, one_line
from .steps import (NodeChange, StepLog, apply_layouts, apply_summary, idle, state_text, sync_lock,
                    with_context)
from .sync import layout_summary, resolve_wanted

log = logging.getLogger(__name__)

Have = Tuple[Tuple[int, str, str], ...]  #: (gpu, model key, canonical layout) per MIG GPU


@dataclass(frozen=True)
class GresConfWrite:
    """This node's gres.conf lines as ``sync --pending`` wrote them."""

    path: str
    changed: bool
    prev: Optional[str]
    gres: str  #: the node's ``Gres=`` value, for the controller

    def as_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "changed": self.changed, "prev": self.prev, "gres": self.gres}


@dataclass(frozen=True)
class PendingResult:
    """What one ``sync --pending`` run did; ``as_dict()`` is its ``--json`` output."""

    node: str
    dry_run: bool
    want: Tuple[Tuple[int, str], ...]
    cycle: Optional[int]
    action: str = ""
    published: bool = False
    applied: bool = False
    gres_conf: Optional[GresConfWrite] = None
    apply: Tuple[Dict[str, Any], ...] = ()
    steps: Tuple[Dict[str, Any], ...] = field(default=())

    def as_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "dry_run": self.dry_run,
                "want": [{"gpu": g, "layout": l} for g, l in self.want], "cycle": self.cycle,
                "action": self.action, "published": self.published, "applied": self.applied,
                "gres_conf": self.gres_conf.as_dict() if self.gres_conf else None,
                "apply": list(self.apply), "steps": list(self.steps)}


def node_have(backend: GpuBackend) -> Have:
    """(gpu, model key, canonical layout) of every GPU in MIG mode."""
    out = []
    for info in backend.gpus():
        if info.mig_current:
            model = gpu_model(backend, info)
            out.append((info.index, model.key, format_layout(current_layout(model, backend.instances(info.index)))))
    return tuple(sorted(out))


def slurm_behind(jb: GpuBackend, have: Have, st: NodeStatus) -> Optional[Tuple[str, str]]:
    """(what the GPUs hold, what Slurm has registered) as counts text when they differ;
    None when they agree.

    Only for a node whose every GPU is in MIG mode (its whole ``Gres=`` is then slurm-mig's):
    the GPUs may be ahead of Slurm after a slurmctld crash lost rebalance's want and drain
    once the node had applied (docs/rebalance.md, crash table), or after a layout change
    made outside rebalance and sync."""
    if not have or any(not g.mig_current for g in jb.gpus()):
        return None
    try:
        counts = have_counts(Channel(have=have), load_catalog())
    except InputError:
        return None
    registered = {t: n for t, n in st.gres.items() if n}
    if counts == registered:
        return None

    def text(c: Mapping[str, int]) -> str:
        return ",".join(f"{t}:{n}" for t, n in sorted(c.items())) or "none"

    return text(counts), text(registered)


def _publish(ctx: NodeChange, ch: Channel, have: Have) -> None:
    assert ctx.channel is not None
    ctx.channel.write(ctx.node, format_channel(ch.published(have)))


def _catch_up(ctx: NodeChange, ch: Channel, st: NodeStatus, have: Have,
              behind: Tuple[str, str], result: PendingResult) -> PendingResult:
    """The GPUs are ahead of Slurm with no change in flight: hand the node to rebalance as if
    it had applied a want (gres.conf, ``applied`` marker, the hand-over reason), once idle;
    drain it meanwhile with a reason rebalance does not take as its own, so that Slurm's gres
    are not changed under running jobs."""
    held, registered = behind
    what = f"the GPUs hold {held} but Slurm has {registered}"
    action = f"catching up: {what}"
    if ctx.dry_run:
        ctx.steps.add("catch-up", "planned", f"{what}: write gres.conf, publish applied, hand over")
        return replace(result, action=action)
    if not idle(st):
        if not st.drain_flagged:
            ctx.slurm.drain(ctx.node, reasons.drift(what))
        _publish(ctx, ch, have)
        return replace(result, published=True,
                       action=f"{action}; waits for running jobs (drained)")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(sync_lock(ctx.state_dir))
        except LockBusy:  # an admin's sync is changing the node: it settles Slurm itself
            return replace(result, action=f"{action}; a slurm-mig sync is running on the node, "
                                          f"the next run looks again")
        # Looked at before the lock: a sync that just ended may have settled it.
        now = ctx.look()
        have = node_have(ctx.backend)
        if now is None or slurm_behind(ctx.backend, have, now) is None or not idle(now):
            return replace(result, action=f"{action}; settled or busy meanwhile, the next run "
                                          f"looks again")
        written = _hand_over(ctx, ch, have, held, lambda step: ctx.clock())
    log.warning("%s: node %s: %s; handed to rebalance", REBALANCE, ctx.node, what)
    return replace(result, published=True, applied=True, gres_conf=written,
                   action=f"{action}; handed to rebalance: {NEXT}")


def sync_pending(config: Config, backend: GpuBackend, slurm: SlurmClient, channel: ExtraChannel,
                 node: str, *, dry_run: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> PendingResult:
    """One node-side run; see the module doc.  ``slurm``: node state, drain; ``channel``:
    read/write this node's Extra.  It never waits: a busy node is drained and the next run
    (the node's timer) looks again."""
    check_node_name(node)
    jb = JobAwareBackend(backend, config.paths.state_dir)
    ch = parse_channel(channel.read(node), node) or Channel()
    have = node_have(jb)
    ctx = NodeChange(config, jb, slurm, node, StepLog(f"{REBALANCE}: node {node}", clock, log),
                     clock, channel, dry_run)
    result = _run(ctx, ch, have)
    return replace(result, steps=ctx.steps.snapshot())


def _run(ctx: NodeChange, ch: Channel, have: Have) -> PendingResult:
    result = PendingResult(ctx.node, ctx.dry_run, ch.want, ch.cycle)
    st = ctx.status()
    if not ch.want:
        behind = slurm_behind(ctx.backend, have, st)
        if behind and (not st.drain_flagged or reasons.is_drift(st.reason)
                       or reasons.slurmctld_gres_drain(st.flags, st.reason)):
            return _catch_up(ctx, ch, st, have, behind, result)
        if ch.have == have:
            return replace(result, action="nothing wanted")
        if not ctx.dry_run:
            _publish(ctx, ch, have)
        return replace(result, action="nothing wanted", published=True)
    if st.drain_flagged and not reasons.is_ours(st.reason):
        return replace(result, action=(
            f"waiting: drained by someone else ({st.reason or 'no reason'}); left alone until "
            f"they resume it, or cancel the change with `scontrol update nodename={ctx.node} "
            f"extra=`"))
    if not idle(st):
        action = f"waiting: node {state_text(st).split(' ')[0]}; the next run tries again"
        if not st.drain_flagged and not ctx.dry_run:
            ctx.slurm.drain(ctx.node, reasons.node_waiting(ch.cycle))
            action += " (drained it so no new job lands)"
        return replace(result, action=action)
    wanted_config = replace(ctx.config, layout=LayoutSettings(default=None, gpus=tuple(ch.want)))
    if ctx.dry_run:
        wanted = resolve_wanted(wanted_config, ctx.backend)
        for step, detail in (("drain", "if not drained yet"),
                             ("apply", layout_summary(wanted)),
                             ("write", f"{ctx.config.paths.gres_conf}: node {ctx.node}'s lines"),
                             ("publish", f"have, applied:{ch.cycle}, want cleared"),
                             ("reason", reasons.applied(ch.cycle, layout_summary(wanted)))):
            ctx.steps.add(step, "planned", detail)
        return replace(result, action="would apply the wanted layout and hand over to rebalance")
    with sync_lock(ctx.state_dir):
        return _apply_want(ctx, wanted_config, ch, st, result)


def _hand_over(ctx: NodeChange, ch: Channel, have: Have, summary: str,
               begin: Callable[[str], float]) -> GresConfWrite:
    """What a node does once its GPUs hold a layout Slurm has not been told of (a want it
    applied, or one it caught up on): its gres.conf lines, ``have`` with the ``applied``
    marker (want cleared), and the reason that hands it to rebalance's finish step.
    ``begin(step)`` is called before each step and returns its start time."""
    assert ctx.channel is not None
    t0 = begin("write")
    g = gres_conf(ctx.config, ctx.backend, ctx.node, write=True)
    written = GresConfWrite(g["path"], g["changed"], g["prev"], g["gres"])
    ctx.steps.add("write", "done", f"{g['path']} ({'written' if g['changed'] else 'unchanged'}, "
                                   f"Gres={g['gres'] or '(none)'} for the controller)", t0)
    t0 = begin("publish")
    handed = ch.applied_as(have)
    ctx.channel.write(ctx.node, format_channel(handed))
    ctx.steps.add("publish", "done", f"have, applied:{handed.applied}, want cleared", t0)
    t0 = begin("reason")
    reason = reasons.applied(handed.applied, summary)
    ctx.slurm.drain(ctx.node, reason)
    ctx.steps.add("reason", "done", reason, t0)
    return written


def _apply_want(ctx: NodeChange, wanted_config: Config, ch: Channel, st: NodeStatus,
                result: PendingResult) -> PendingResult:
    node, clock, steps = ctx.node, ctx.clock, ctx.steps
    step, t0 = "check", clock()
    try:
        wanted = resolve_wanted(wanted_config, ctx.backend)  # a want the GPU cannot take: fails here
        summary = layout_summary(wanted)
        step = "drain"
        if not st.drain_flagged:
            ctx.slurm.drain(node, reasons.node_applying(ch.cycle, summary))
            now = ctx.look()
            if now is None or not idle(now):  # a job landed between the look and the drain
                steps.add("drain", "done", "a job landed before the drain; the next run applies")
                return replace(result, action="waiting: a job started before the drain; the "
                                              "next run tries again")
            steps.add("drain", "done", "drained", t0)
        step, t0 = "apply", clock()
        results = apply_layouts(ctx.config, ctx.backend, {g: w for g, (_, w, _) in wanted.items()})
        applied = tuple(r.as_dict() for r in results)
        steps.add("apply", "done", apply_summary(results), t0)

        def begin(name: str) -> float:
            nonlocal step, t0
            step, t0 = name, clock()
            return t0

        written = _hand_over(ctx, ch, node_have(ctx.backend), summary, begin)
        return replace(result, action=f"applied; {NEXT}", published=True, applied=True,
                       gres_conf=written, apply=applied)
    except Exception as err:
        steps.add(step, "failed", one_line(err), t0)
        where = f"sync --pending stopped at {step}: node {node} left drained"
        try:
            ctx.slurm.drain(node, reasons.node_failed(ch.cycle, step, err))
        except Exception as drain_err:  # the first error is the one raised
            where += f" (and setting its drain reason failed too: {one_line(drain_err)})"
        message = (f"{one_line(err)}; {where}, the want kept; fix it, then the node's "
                   f"slurm-mig sync --pending retries")
        log.error("%s: node %s: %s", REBALANCE, node, message)
        new = with_context(err, message)
        if new is err:
            raise
        raise new from err
