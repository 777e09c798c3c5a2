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
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from .channel import Channel, format_channel, parse_channel
from .errors import InputError, SlurmError
from .gresconf import GresRecord, node_gres_value
from .layout import parse_layout
from .syncsteps import fit_reason, one_line, wait_registered, write_node_include

log = logging.getLogger(__name__)

TAG = "slurm-mig rebalance"
FIX = "fix and rerun slurm-mig rebalance"


@dataclass(frozen=True)
class Ready:
    """A node to finish: its channel as read, and the ``Gres=`` its ``have`` makes."""

    name: str
    channel: Channel
    gres: str


def have_counts(ch: Channel, catalog) -> Dict[str, int]:
    """Instances per Slurm type in the node's published layout (InputError if unreadable)."""
    counts: Dict[str, int] = {}
    for _index, key, text in ch.have:
        for inst in parse_layout(text, catalog.model(key)):
            counts[inst.name] = counts.get(inst.name, 0) + 1
    return counts


def have_gres(node: str, ch: Channel, catalog) -> str:
    """The node's ``Gres=`` value for its published layout, written as the node's own
    ``node-conf`` writes it (types sorted by name), so both files agree record by record."""
    records = []
    for index, key, text in ch.have:
        records += [GresRecord(node, index, None, inst.name, ())
                    for inst in parse_layout(text, catalog.model(key))]
    return node_gres_value(records)


def verdict(info, ch: Optional[Channel], catalog) -> Tuple[str, str]:
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


def failure_reason(cycle: int, step: str, err: BaseException) -> str:
    return fit_reason(f"{TAG}: cycle {cycle}: {step} failed: ", one_line(err), f"; {FIX}")


def finish(config, slurm, channel, ready: List[Ready], cycle: int, *, dry_run: bool = False,
           clock: Callable[[], float], sleep: Callable[[float], None], poll: float) -> dict:
    """Finish ``ready`` (see the module doc).  Returns ``finished`` (nodes resumed),
    ``reconfigured`` (whether the command ran), ``failed`` ([{node, step, error}]) and
    ``actions`` (greppable lines).  Never raises for a Slurm or file failure: that is what
    ``failed`` and the drain reasons are for; a crash (BaseException) propagates."""
    out = {"finished": [], "reconfigured": False, "failed": [], "actions": []}
    if not ready:
        return out
    names = [r.name for r in ready]
    head = f"{TAG}: cycle {cycle}:"
    if dry_run:
        for r in ready:
            out["actions"].append(f"{head} node {r.name}: finish: Gres={r.gres or '(none)'}, "
                                  f"reconfigure, resume (dry run)")
        out["finished"] = names
        return out

    def fail(nodes: List[str], step: str, err: BaseException) -> None:
        reason = failure_reason(cycle, step, err)
        for n in nodes:
            out["failed"].append({"node": n, "step": step, "error": one_line(err)})
            out["actions"].append(f"{head} node {n}: {step} failed: {one_line(err)}; left drained")
            log.error("%s node %s: %s failed: %s", head, n, step, one_line(err))
            try:
                slurm.drain(n, reason)
            except Exception as drain_err:  # slurmctld down: the old reason still says rebalance
                log.error("%s node %s: setting the drain reason failed too: %s", head, n,
                          one_line(drain_err))

    paths = config.paths
    try:
        write_node_include(paths.node_gres_include, {r.name: r.gres for r in ready},
                           lock_timeout=config.apply.lock_timeout)
    except Exception as err:
        fail(names, "writing the node include", err)
        return out
    try:
        slurm.reconfigure()
    except Exception as err:
        fail(names, "reconfigure", err)
        return out
    out["reconfigured"] = True
    out["actions"].append(f"{head} reconfigured Slurm once for {', '.join(names)} "
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
            out["failed"].append({"node": r.name, "step": "resume", "error": one_line(err)})
            out["actions"].append(f"{head} node {r.name}: resume failed: {one_line(err)}; the "
                                  f"next cycle resumes it")
            continue
        out["finished"].append(r.name)
        line = f"{head} node {r.name}: finished: Gres={r.gres or '(none)'} registered; resumed"
        out["actions"].append(line)
        log.info("%s", line)
    return out


def _mark(channel, r: Ready) -> None:
    """Drop the applied marker, keeping the rest of the field as it is now; if a slurmctld
    restart lost the field, write back the ``have`` this cycle read."""
    now = parse_channel(channel.read(r.name), r.name)  # ChannelError: not ours any more
    if now is None or not now.have:
        channel.write(r.name, format_channel(r.channel.finished()))
    elif now.applied is not None:
        channel.write(r.name, format_channel(now.finished()))
