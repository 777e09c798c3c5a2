"""``slurm-mig sync --pending``: the node side of rebalance.

Run from a timer on every node (etc/slurm-mig-node.timer, or etc/slurm-mig.cron).  Each run:

* reads this node's Extra field (:mod:`slurm_mig.channel`);
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
the controller's (:mod:`slurm_mig.finish`), once per cycle for every node changed, because
on Slurm < 23.11 a reconfigure that changes gres is a slurmctld restart (docs/sync.md).  The
node stays drained meanwhile, and slurmctld keeps the old Gres= until then.

A failure leaves the node drained with the reason ``slurm-mig rebalance: cycle N: node-side
<step> failed: <error>; fix it, then slurm-mig sync --pending on the node retries`` and the
want in place; the next run retries (apply and the file write are idempotent).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from typing import Callable, Optional, Tuple

from .apply import JobAwareBackend
from .channel import Channel, format_channel, parse_channel
from .commands import gres_conf
from .config import Config, LayoutSettings
from .catalog import load_catalog
from .errors import InputError, LockBusy, SlurmError
from .finish import have_counts
from .gresconf import check_node_name
from .inventory import current_layout, gpu_model
from .layout import format_layout
from .syncsteps import (StepLog, apply_layouts, apply_summary, fit_reason, idle, one_line,
                        state_text, sync_lock, with_context)
from .sync import layout_summary, resolve_wanted

log = logging.getLogger(__name__)

TAG = "slurm-mig rebalance"
OURS = "slurm-mig"  #: a drain reason starting with this is rebalance's or sync's, not an admin's
NEXT = "the next slurm-mig rebalance run reconfigures Slurm and resumes the node"
#: The reason of a node whose GPUs are ahead of Slurm, waiting for its jobs (not rebalance's own).
DRIFT = "slurm-mig sync --pending: layout not in Slurm"


def node_have(backend) -> Tuple[Tuple[int, str, str], ...]:
    """(gpu, model key, canonical layout) of every GPU in MIG mode."""
    out = []
    for info in backend.gpus():
        if info.mig_current:
            model = gpu_model(backend, info)
            out.append((info.index, model.key, format_layout(current_layout(model, backend.instances(info.index)))))
    return tuple(sorted(out))


def applied_reason(cycle: Optional[int], summary: str) -> str:
    return fit_reason(f"{TAG}: cycle {cycle}: layout ", summary, f" applied on the node; {NEXT}")


def node_failure_reason(cycle: Optional[int], step: str, err: BaseException) -> str:
    return fit_reason(f"{TAG}: cycle {cycle}: node-side {step} failed: ", one_line(err),
                      "; fix it, then slurm-mig sync --pending on the node retries")


def is_node_failure_reason(reason: str) -> bool:
    """Whether a drain reason is :func:`node_failure_reason`'s: the node gave up until fixed."""
    return reason.startswith(f"{TAG}: cycle ") and ": node-side " in reason and " failed: " in reason


def slurm_behind(jb, have, st) -> Optional[Tuple[str, str]]:
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
    text = lambda c: ",".join(f"{t}:{n}" for t, n in sorted(c.items())) or "none"  # noqa: E731
    return text(counts), text(registered)


def slurm_gres_drain(st) -> bool:
    """Whether slurmctld drained the node itself because the gres it registered are not its
    ``Gres=`` (measured on 22.05 after a slurmctld crash: flags DRAIN+INVALID_REG, reason
    ``gres/gpu count reported lower than configured (0 < 7)``).  That drain means exactly
    what :func:`slurm_behind` found, so catching up may replace it."""
    return "INVALID_REG" in st.flags and st.reason.startswith("gres/")


def _catch_up(config, jb, slurm, channel, node, ch, st, have, behind, steps, result, dry_run,
              clock) -> None:
    """The GPUs are ahead of Slurm with no change in flight: hand the node to rebalance as if
    it had applied a want (gres.conf, ``applied`` marker, the hand-over reason), once idle;
    drain it meanwhile with a reason rebalance does not take as its own, so that Slurm's gres
    are not changed under running jobs."""
    held, registered = behind
    what = f"the GPUs hold {held} but Slurm has {registered}"
    result["action"] = f"catching up: {what}"
    if dry_run:
        steps.add("catch-up", "planned", f"{what}: write gres.conf, publish applied, hand over")
        return
    if not idle(st):
        if "DRAIN" not in st.flags:
            slurm.drain(node, fit_reason(f"{DRIFT}: ", what, "; waits for running jobs, then "
                                         "hands the node to slurm-mig rebalance"))
        channel.write(node, format_channel(ch.published(have)))
        result["published"] = True
        result["action"] += "; waits for running jobs (drained)"
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(sync_lock(config.paths.state_dir))
        except LockBusy:  # an admin's sync is changing the node: it settles Slurm itself
            result["action"] += "; a slurm-mig sync is running on the node, the next run looks again"
            return
        # Looked at before the lock: a sync that just ended may have settled it.
        now = slurm.nodes([node]).get(node)
        have = node_have(jb)
        if now is None or slurm_behind(jb, have, now) is None or not idle(now):
            result["action"] += "; settled or busy meanwhile, the next run looks again"
            return
        _hand_over(config, jb, slurm, channel, node, ch, have, held, steps, result,
                   lambda step: clock())
    result["action"] += f"; handed to rebalance: {NEXT}"
    log.warning("%s: node %s: %s; handed to rebalance", TAG, node, what)


def sync_pending(config: Config, backend, slurm, channel, node: str, *, dry_run: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> dict:
    """One node-side run; see the module doc.  ``slurm``: a SlurmClient (node state, drain);
    ``channel``: read/write this node's Extra.  It never waits: a busy node is drained and
    the next run (the node's timer) looks again."""
    check_node_name(node)
    jb = JobAwareBackend(backend, config.paths.state_dir)
    ch = parse_channel(channel.read(node), node) or Channel()
    have = node_have(jb)
    steps = StepLog(f"{TAG}: node {node}", clock, log)
    result = {"node": node, "dry_run": dry_run,
              "want": [{"gpu": g, "layout": l} for g, l in ch.want], "cycle": ch.cycle,
              "action": "", "published": False, "applied": False, "gres_conf": None,
              "apply": [], "steps": steps.items}
    st = slurm.nodes([node]).get(node)
    if st is None:
        raise SlurmError(f"node {node} is not known to slurmctld; check --node or [slurm] "
                         f"node_name in {config.source} (`scontrol show node`)")
    if not ch.want:
        behind = slurm_behind(jb, have, st)
        if behind and ("DRAIN" not in st.flags or st.reason.startswith(DRIFT)
                       or slurm_gres_drain(st)):
            _catch_up(config, jb, slurm, channel, node, ch, st, have, behind, steps, result,
                      dry_run, clock)
            return result
        result["action"] = "nothing wanted"
        if ch.have != have:
            if not dry_run:
                channel.write(node, format_channel(ch.published(have)))
            result["published"] = True
        return result
    if "DRAIN" in st.flags and not st.reason.startswith(OURS):
        result["action"] = (f"waiting: drained by someone else ({st.reason or 'no reason'}); left "
                            f"alone until they resume it, or cancel the change with "
                            f"`scontrol update nodename={node} extra=`")
        return result
    if not idle(st):
        result["action"] = f"waiting: node {state_text(st).split(' ')[0]}; the next run tries again"
        if "DRAIN" not in st.flags and not dry_run:
            slurm.drain(node, fit_reason(f"{TAG}: cycle {ch.cycle}: new layout waits for running "
                                         f"jobs; slurm-mig sync --pending on the node applies it"))
            result["action"] += " (drained it so no new job lands)"
        return result
    wanted_config = replace(config, layout=LayoutSettings(default=None, gpus=tuple(ch.want)))
    if dry_run:
        wanted = resolve_wanted(wanted_config, jb)
        for step, detail in (("drain", "if not drained yet"),
                             ("apply", layout_summary(wanted)),
                             ("write", f"{config.paths.gres_conf}: node {node}'s lines"),
                             ("publish", f"have, applied:{ch.cycle}, want cleared"),
                             ("reason", applied_reason(ch.cycle, layout_summary(wanted)))):
            steps.add(step, "planned", detail)
        result["action"] = "would apply the wanted layout and hand over to rebalance"
        return result
    with sync_lock(config.paths.state_dir):
        _apply_want(config, wanted_config, jb, slurm, channel, node, ch, st, steps, result, clock)
    return result


def _hand_over(config, jb, slurm, channel, node, ch, have, summary: str, steps, result,
               begin: Callable[[str], float]) -> None:
    """What a node does once its GPUs hold a layout Slurm has not been told of (a want it
    applied, or one it caught up on): its gres.conf lines, ``have`` with the ``applied``
    marker (want cleared), and the reason that hands it to rebalance's finish step.
    ``begin(step)`` is called before each step and returns its start time."""
    t0 = begin("write")
    g = gres_conf(config, jb, node, write=True)
    result["gres_conf"] = {"path": g["path"], "changed": g["changed"], "prev": g["prev"],
                           "gres": g["gres"]}
    steps.add("write", "done", f"{g['path']} ({'written' if g['changed'] else 'unchanged'}, "
                               f"Gres={g['gres'] or '(none)'} for the controller)", t0)
    t0 = begin("publish")
    handed = ch.applied_as(have)
    channel.write(node, format_channel(handed))
    result["published"] = result["applied"] = True
    steps.add("publish", "done", f"have, applied:{handed.applied}, want cleared", t0)
    t0 = begin("reason")
    reason = applied_reason(handed.applied, summary)
    slurm.drain(node, reason)
    steps.add("reason", "done", reason, t0)


def _apply_want(config, wanted_config, jb, slurm, channel, node, ch, st, steps, result, clock) -> None:
    step, t0 = "check", clock()
    try:
        wanted = resolve_wanted(wanted_config, jb)  # a want the GPU cannot take: fails here
        summary = layout_summary(wanted)
        step = "drain"
        if "DRAIN" not in st.flags:
            slurm.drain(node, fit_reason(f"{TAG}: cycle {ch.cycle}: applying ", summary,
                                         " on the node (slurm-mig sync --pending)"))
            now = slurm.nodes([node]).get(node)
            if now is None or not idle(now):  # a job landed between the look and the drain
                steps.add("drain", "done", "a job landed before the drain; the next run applies")
                result["action"] = "waiting: a job started before the drain; the next run tries again"
                return
            steps.add("drain", "done", "drained", t0)
        step, t0 = "apply", clock()
        results = apply_layouts(config, jb, {g: w for g, (_, w, _) in wanted.items()})
        result["apply"] = [r.as_dict() for r in results]
        steps.add("apply", "done", apply_summary(results), t0)

        def begin(name: str) -> float:
            nonlocal step, t0
            step, t0 = name, clock()
            return t0

        _hand_over(config, jb, slurm, channel, node, ch, node_have(jb), summary, steps, result, begin)
        result["action"] = f"applied; {NEXT}"
    except Exception as err:
        steps.add(step, "failed", one_line(err), t0)
        where = f"sync --pending stopped at {step}: node {node} left drained"
        try:
            slurm.drain(node, node_failure_reason(ch.cycle, step, err))
        except Exception as drain_err:  # the first error is the one raised
            where += f" (and setting its drain reason failed too: {one_line(drain_err)})"
        message = (f"{one_line(err)}; {where}, the want kept; fix it, then the node's "
                   f"slurm-mig sync --pending retries")
        log.error("%s: node %s: %s", TAG, node, message)
        new = with_context(err, message)
        if new is err:
            raise
        raise new from err
