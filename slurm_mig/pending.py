"""``slurm-mig sync --pending``: the node side of rebalance.

Run from a timer on every node (etc/slurm-mig-rebalance.timer is the controller's; the
node's is in docs/rebalance.md).  Each run:

* reads this node's Extra field (:mod:`slurm_mig.channel`);
* no ``want``: publishes the node's current layout (``have``) if Extra does not already
  say it, and does nothing else: no drain, no Slurm change;
* a ``want`` and the node still running jobs: makes sure the node is drained (so no new
  job lands) and returns at once: the next run tries again;
* a ``want`` and the node idle: the normal sync (:func:`slurm_mig.sync.sync_node`) with
  the wanted layout per GPU (drain, apply, gres files, reconfigure, register, resume),
  then publishes the new ``have`` and clears the want.

A failure inside sync leaves the node drained with sync's own reason and the want in
place; the next run retries it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Optional, Tuple

from .apply import JobAwareBackend
from .channel import Channel, format_channel, parse_channel
from .config import Config, LayoutSettings
from .inventory import current_layout, gpu_model
from .layout import format_layout
from .sync import REASON_MAX, reason_text, sync_node

TAG = "slurm-mig rebalance"


def node_have(backend) -> Tuple[Tuple[int, str, str], ...]:
    """(gpu, model key, canonical layout) of every GPU in MIG mode."""
    out = []
    for info in backend.gpus():
        if info.mig_current:
            model = gpu_model(backend, info)
            out.append((info.index, model.key, format_layout(current_layout(model, backend.instances(info.index)))))
    return tuple(sorted(out))


def sync_pending(config: Config, backend, slurm, channel, node: str, *, wait: Optional[float] = None,
                 dry_run: bool = False, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, poll: float = 2.0) -> dict:
    ch = parse_channel(channel.read(node), node) or Channel()
    have = node_have(JobAwareBackend(backend, config.paths.state_dir))
    result = {"node": node, "dry_run": dry_run, "want": [{"gpu": g, "layout": l} for g, l in ch.want],
              "cycle": ch.cycle, "action": "", "published": False, "sync": None}
    if not ch.want:
        result["action"] = "nothing wanted"
        if ch.have != have:
            if not dry_run:
                channel.write(node, format_channel(ch.cleared(have)))
            result["published"] = True
        return result
    st = slurm.nodes([node]).get(node)
    idle = st is not None and st.base == "idle" and "COMPLETING" not in st.flags
    if not idle:
        state = "not reported" if st is None else "+".join([st.base.upper(), *sorted(st.flags)])
        result["action"] = f"waiting: node {state}; the next run tries again"
        if st is not None and "DRAIN" not in st.flags and not dry_run:
            text = reason_text(f"{TAG}: cycle {ch.cycle}: new layout waits for running jobs; "
                               f"slurm-mig sync --pending on the node applies it")
            slurm.drain(node, text[:REASON_MAX])
            result["action"] += " (drained it so no new job lands)"
        return result
    wanted = replace(config, layout=LayoutSettings(default=None, gpus=tuple(ch.want)))
    result["sync"] = sync_node(wanted, backend, slurm, node, wait=wait, dry_run=dry_run,
                               clock=clock, sleep=sleep, poll=poll)
    if dry_run:
        result["action"] = "would sync to the wanted layout"
        return result
    now = parse_channel(channel.read(node), node) or Channel()  # a restart may have reset it
    channel.write(node, format_channel(now.cleared(node_have(JobAwareBackend(backend, config.paths.state_dir)))))
    result["action"] = "synced to the wanted layout; want cleared"
    result["published"] = True
    return result
