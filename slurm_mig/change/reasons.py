"""Drain reasons: the strings slurm-mig writes into a node's Slurm reason, and reads back.

The reason is half of the node/controller protocol (the node's ``Extra`` field,
:mod:`slurm_mig.change.channel`, is the other half): ``sync --pending`` on the node and
``rebalance`` on the controller decide what to do with a node from the reason the other
side left on it, and admins grep for them in ``sinfo -R`` and slurmctld's log.  Every
reason slurm-mig writes is built here, and every question slurm-mig asks of a reason is
answered here, from the same constants; tests pin each text and that it parses back.

What slurm-mig writes (``N``: the rebalance cycle, as in Extra's ``cycle:N``)::

    slurm-mig sync: applying <summary>                                    sync, drain step
    slurm-mig sync failed at <step>: <error>; fix and rerun slurm-mig sync    sync, failure
    slurm-mig rebalance: cycle N: new layout <summary>; slurm-mig sync --pending on the
        node applies it, then slurm-mig rebalance reconfigures Slurm and resumes the node
                                                                          rebalance, record
    slurm-mig rebalance: cycle N: new layout waits for running jobs; slurm-mig sync
        --pending on the node applies it                                  sync --pending, busy
    slurm-mig rebalance: cycle N: applying <summary> on the node (slurm-mig sync --pending)
    slurm-mig rebalance: cycle N: layout <summary> applied on the node; the next slurm-mig
        rebalance run reconfigures Slurm and resumes the node             the hand-over
    slurm-mig rebalance: cycle N: node-side <step> failed: <error>; fix it, then slurm-mig
        sync --pending on the node retries                                sync --pending, failure
    slurm-mig rebalance: cycle N: <step> failed: <error>; fix and rerun slurm-mig rebalance
                                                                          finish, failure
    slurm-mig sync --pending: layout not in Slurm: <what>; waits for running jobs, then
        hands the node to slurm-mig rebalance                             catch-up, busy
    slurm-mig prolog: job J asked for gpus (<request>) but Slurm gave it none; resume the
        node once scontrol show node lists its Gres (or slurm-mig sync on the node)
                                                                          the prolog's guard
    slurm-mig hold: reconfigure by <who>; resumed when the node has registered
                                                                          the hold, every
        schedulable GPU node across a reconfigure (<who>: ``rebalance (cycle N)``,
        ``slurm-mig sync on n1``; :func:`hold`)
    slurm-mig mode: MIG <on|off> on gpu <list>                            mode, drain step
    slurm-mig mode failed at <step>: <error>; fix and rerun slurm-mig mode    mode, failure

``<summary>`` is ``3g.20gb:2 on gpu 0,1; 1g.10gb:7 on gpu 2`` (:func:`summary`).  A reason
is one line, has no ``=`` (``scontrol show node -o`` would end the value there) and fits in
:data:`REASON_MAX` characters; a long ``<summary>``/``<error>`` is cut, the tail (what to do)
never is.

What slurm-mig reads: whether a drain is slurm-mig's at all (:func:`is_ours`), rebalance's
(:func:`is_rebalance`), a failure (:func:`is_failure`, :func:`is_node_failure`), the
catch-up's (:func:`is_drift`), and slurmctld's own drain for a gres mismatch
(:func:`slurmctld_gres_drain`).  Whether a node is drained at all is Slurm's DRAIN flag
(:func:`slurm_mig.slurm.model.drain_flagged`).

Pure: strings in, strings out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

#: What every reason (and the Extra channel's text) slurm-mig writes starts with.
TAG = "slurm-mig"
SYNC = f"{TAG} sync"  #: ``slurm-mig sync``'s reasons, and its log lines
REBALANCE = f"{TAG} rebalance"  #: rebalance's and ``sync --pending``'s reasons
#: The reason of a node whose GPUs are ahead of Slurm, waiting for its jobs (not rebalance's own).
DRIFT = f"{TAG} sync --pending: layout not in Slurm"
PROLOG = f"{TAG} prolog"  #: the prolog's guard (slurm_mig/hooks/guard.py)
#: The hold: a schedulable GPU node drained across a reconfigure (:func:`hold`).
HOLD = f"{TAG} hold"
HOLD_TAIL = "; resumed when the node has registered"
#: What happens to a node that handed over: said in its reason and in sync --pending's output.
NEXT = "the next slurm-mig rebalance run reconfigures Slurm and resumes the node"
SYNC_FIX = "fix and rerun slurm-mig sync"
MODE = f"{TAG} mode"  #: ``slurm-mig mode``'s reasons, and its log lines
MODE_FIX = "fix and rerun slurm-mig mode"
REBALANCE_FIX = "fix and rerun slurm-mig rebalance"
NODE_FIX = "fix it, then slurm-mig sync --pending on the node retries"
RECORD_TAIL = ("; slurm-mig sync --pending on the node applies it, then slurm-mig rebalance "
               "reconfigures Slurm and resumes the node")
WAITS = "new layout waits for running jobs; slurm-mig sync --pending on the node applies it"
APPLYING_TAIL = " on the node (slurm-mig sync --pending)"
PROLOG_FIX = ("; resume the node once scontrol show node lists its Gres (or slurm-mig sync on "
              "the node)")
DRIFT_TAIL = "; waits for running jobs, then hands the node to slurm-mig rebalance"

REASON_MAX = 300  #: Slurm reasons are one line; keep them readable in sinfo/scontrol

# The kinds :func:`parse_reason` tells apart.
SYNC_APPLYING = "sync-applying"
SYNC_FAILED = "sync-failed"
NEW_LAYOUT = "new-layout"  #: rebalance recorded a want and drained the node
NODE_WAITING = "node-waiting"  #: sync --pending drained a busy node for its want
NODE_APPLYING = "node-applying"
APPLIED = "applied"  #: the hand-over: the controller's finish step is next
NODE_FAILED = "node-failed"
FINISH_FAILED = "finish-failed"
DRIFTED = "drift"
NO_GPUS = "prolog-no-gpus"  #: the prolog refused a gpu job Slurm gave no gpu
HELD = "hold"  #: held across a reconfigure, resumed once registered
OTHER = "other"  #: starts with the tag, but none of the above
MODE_CHANGING = "mode-changing"
MODE_FAILED = "mode-failed"
FAILURES = frozenset({SYNC_FAILED, NODE_FAILED, FINISH_FAILED, MODE_FAILED})


# ----------------------------------------------------------------------------- text


def one_line(err: BaseException) -> str:
    """An error as one line of text (its class name if it says nothing)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def reason_text(text: str) -> str:
    """One line with no ``=``: ``scontrol show node -o`` ends a Reason= value at the next
    ``word=`` (measured: ``... reports IDLE+DRAIN gres=gpu:...`` came back cut before ``gres=``),
    so an ``=`` in a reason would hide the rest of it from whoever reads it back."""
    return " ".join(text.replace("=", ":").split())


def fit_reason(head: str, detail: str = "", tail: str = "") -> str:
    """``head + detail + tail`` as a drain reason: ``detail`` is shortened so that the whole
    fits in :data:`REASON_MAX`, and ``tail`` (what to do) is never cut."""
    def norm(text: str) -> str:  # one line, no '=', the blanks at either end kept (one)
        core = reason_text(text)
        if not core:
            return ""
        return (" " if text[:1].isspace() else "") + core + (" " if text[-1:].isspace() else "")

    head, detail, tail = norm(head), norm(detail).strip(), norm(tail)
    room = REASON_MAX - len(head) - len(tail)
    if len(detail) > room:
        detail = detail[: max(room - 3, 0)].rstrip() + "..."
    return (head + detail + tail)[:REASON_MAX]


def summary(counts_by_gpu: Mapping[int, str]) -> str:
    """gpu -> count form (``3g.20gb:2``) -> ``3g.20gb:2 on gpu 0,1; 1g.10gb:7 on gpu 2``."""
    by_counts: dict[str, list[int]] = {}
    for gpu, counts in sorted(counts_by_gpu.items()):
        by_counts.setdefault(counts, []).append(gpu)
    return "; ".join(f"{c} on gpu {','.join(map(str, g))}" for c, g in by_counts.items())


# ----------------------------------------------------------------------------- building


def sync_applying(what: str) -> str:
    """``slurm-mig sync``'s drain: ``slurm-mig sync: applying <summary>``."""
    return fit_reason(f"{SYNC}: applying ", what)


def sync_failed(step: str, err: BaseException) -> str:
    """``slurm-mig sync failed at apply: <error>; fix and rerun slurm-mig sync``."""
    return fit_reason(f"{SYNC} failed at {step}: ", one_line(err), f"; {SYNC_FIX}")


def mode_changing(what: str) -> str:
    """``slurm-mig mode``'s drain: ``slurm-mig mode: MIG on on gpu 0,1``."""
    return fit_reason(f"{MODE}: ", what)


def mode_failed(step: str, err: BaseException) -> str:
    """``slurm-mig mode failed at reset: <error>; fix and rerun slurm-mig mode``."""
    return fit_reason(f"{MODE} failed at {step}: ", one_line(err), f"; {MODE_FIX}")


def _cycle_head(cycle: Optional[int]) -> str:
    return f"{REBALANCE}: cycle {cycle}: "


def new_layout(cycle: int, what: str) -> str:
    """rebalance's record step: the node is drained for the want it left in Extra."""
    return fit_reason(f"{_cycle_head(cycle)}new layout ", what, RECORD_TAIL)


def node_waiting(cycle: Optional[int]) -> str:
    """``sync --pending`` drained a busy node for its want; the next run applies it."""
    return fit_reason(f"{_cycle_head(cycle)}{WAITS}")


def node_applying(cycle: Optional[int], what: str) -> str:
    """``sync --pending`` drained an idle node to apply its want now."""
    return fit_reason(f"{_cycle_head(cycle)}applying ", what, APPLYING_TAIL)


def applied(cycle: Optional[int], what: str) -> str:
    """The hand-over: the node applied the want; rebalance's finish step is next."""
    return fit_reason(f"{_cycle_head(cycle)}layout ", what, f" applied on the node; {NEXT}")


def node_failed(cycle: Optional[int], step: str, err: BaseException) -> str:
    """``sync --pending`` gave up at ``step`` until someone fixes ``err``."""
    return fit_reason(f"{_cycle_head(cycle)}node-side {step} failed: ", one_line(err),
                      f"; {NODE_FIX}")


def finish_failed(cycle: int, step: str, err: BaseException) -> str:
    """rebalance's finish step failed at ``step`` for this node."""
    return fit_reason(f"{_cycle_head(cycle)}{step} failed: ", one_line(err), f"; {REBALANCE_FIX}")


def drift(what: str) -> str:
    """The catch-up: the GPUs are ahead of Slurm (``what``) and jobs still run."""
    return fit_reason(f"{DRIFT}: ", what, DRIFT_TAIL)


def prolog_no_gpus(job: str, asked: str) -> str:
    """The prolog's guard drained the node: job ``job`` asked for gpus (``asked``, squeue's
    field and value) and Slurm gave it none (its gres not registered after a slurmctld
    restart).  ``slurm-mig sync`` resumes the node once it is consistent (it is ours)."""
    return fit_reason(f"{PROLOG}: job {job} asked for gpus (", f"{asked}",
                      f") but Slurm gave it none{PROLOG_FIX}")


def hold(who: str) -> str:
    """The hold: a node that could take a GPU job is drained while Slurm reconfigures (a
    slurmctld restart with state recovery, on every release: until the node registers
    again slurmctld has its gpu count but not which record is which, docs/rebalance.md).
    ``who``: ``rebalance (cycle 7)``, ``slurm-mig sync on n1``."""
    return fit_reason(f"{HOLD}: reconfigure by ", who, HOLD_TAIL)


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Reason:
    """A reason slurm-mig wrote, read back: its kind (the constants above), the rebalance
    cycle it names (None for sync's, or a want that had none), the step that failed, and
    the detail (``<summary>``, ``<error>`` or ``<what>``, as written: maybe cut)."""

    kind: str
    cycle: Optional[int] = None
    step: Optional[str] = None
    detail: str = ""


_CYCLE = re.compile(re.escape(REBALANCE) + r": cycle (\d+|None): (.*)\Z", re.S)
_SYNC_FAILED = re.compile(re.escape(SYNC) + r" failed at (.+?): (.*)\Z", re.S)
_MODE_FAILED = re.compile(re.escape(MODE) + r" failed at (.+?): (.*)\Z", re.S)
_STEP_FAILED = re.compile(r"(.+?) failed: (.*)\Z", re.S)


def _strip(text: str, tail: str) -> str:
    return text[: -len(tail)] if tail and text.endswith(tail) else text


def parse_reason(text: str) -> Optional[Reason]:
    """What a reason says, or None when it is not slurm-mig's (an admin's, slurmctld's)."""
    if not is_ours(text):
        return None
    if text.startswith(f"{PROLOG}: job "):
        return Reason(NO_GPUS, detail=_strip(text[len(PROLOG) + 2:], PROLOG_FIX))
    if text.startswith(f"{HOLD}: "):
        return Reason(HELD, detail=_strip(text[len(HOLD) + 2:], HOLD_TAIL))
    if text.startswith(f"{DRIFT}: "):
        return Reason(DRIFTED, detail=_strip(text[len(DRIFT) + 2:], DRIFT_TAIL))
    if text.startswith(f"{SYNC}: applying "):
        return Reason(SYNC_APPLYING, detail=text[len(SYNC) + len(": applying "):])
    m = _SYNC_FAILED.match(text)
    if m:
        return Reason(SYNC_FAILED, step=m.group(1), detail=_strip(m.group(2), f"; {SYNC_FIX}"))
    if text.startswith(f"{MODE}: "):
        return Reason(MODE_CHANGING, detail=text[len(MODE) + 2:])
    m = _MODE_FAILED.match(text)
    if m:
        return Reason(MODE_FAILED, step=m.group(1), detail=_strip(m.group(2), f"; {MODE_FIX}"))
    m = _CYCLE.match(text)
    if not m:
        return Reason(OTHER)
    cycle = None if m.group(1) == "None" else int(m.group(1))
    rest = m.group(2)
    if rest.startswith("node-side "):
        f = _STEP_FAILED.match(rest[len("node-side "):])
        if f:
            return Reason(NODE_FAILED, cycle, f.group(1), _strip(f.group(2), f"; {NODE_FIX}"))
    if rest == WAITS:
        return Reason(NODE_WAITING, cycle)
    if rest.startswith("new layout "):
        return Reason(NEW_LAYOUT, cycle, detail=_strip(rest[len("new layout "):], RECORD_TAIL))
    if rest.startswith("applying ") and rest.endswith(APPLYING_TAIL):
        return Reason(NODE_APPLYING, cycle, detail=_strip(rest[len("applying "):], APPLYING_TAIL))
    handed = f" applied on the node; {NEXT}"
    if rest.startswith("layout ") and rest.endswith(handed):
        return Reason(APPLIED, cycle, detail=_strip(rest[len("layout "):], handed))
    f = _STEP_FAILED.match(rest)
    if f:
        return Reason(FINISH_FAILED, cycle, f.group(1), _strip(f.group(2), f"; {REBALANCE_FIX}"))
    return Reason(OTHER, cycle)


def is_ours(reason: str) -> bool:
    """A reason slurm-mig wrote (sync's, rebalance's, sync --pending's): not an admin's."""
    return reason.startswith(TAG)


def is_rebalance(reason: str) -> bool:
    """A reason rebalance or ``sync --pending`` wrote: the node is rebalance's to finish or
    resume (not sync's, not the catch-up's)."""
    return reason.startswith(REBALANCE)


def is_hold(reason: str) -> bool:
    """The hold's reason (:func:`hold`): resume the node once it has registered."""
    return reason.startswith(f"{HOLD}: ")


def is_drift(reason: str) -> bool:
    """The catch-up's reason (:func:`drift`): the node waits for its jobs, then hands over."""
    return reason.startswith(DRIFT)


def is_node_failure(reason: str) -> bool:
    """``sync --pending`` gave up on the node until someone fixes it (:func:`node_failed`)."""
    parsed = parse_reason(reason)
    return parsed is not None and parsed.kind == NODE_FAILED


def is_failure(reason: str) -> bool:
    """A step of a change failed on this node (sync's, the node side's or the finish step's)."""
    parsed = parse_reason(reason)
    return parsed is not None and parsed.kind in FAILURES


def slurmctld_gres_drain(flags: Iterable[str], reason: str) -> bool:
    """Whether slurmctld drained the node itself because the gres it registered are not its
    ``Gres=`` (measured on 22.05 after a slurmctld crash: flags DRAIN+INVALID_REG, reason
    ``gres/gpu count reported lower than configured (0 < 7)``)."""
    return "INVALID_REG" in set(flags) and reason.startswith("gres/")
