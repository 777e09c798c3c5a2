"""``slurm-mig sync``: make one node match its layout, with Slurm kept in the loop.

The order (docs/sync.md)::

    check    parse every wanted layout, read the GPUs, the Slurm files and the node's
             state; everything already matches -> "already in sync", nothing else
    drain    ``slurm-mig sync: applying <layouts>`` (a drain by someone else is kept)
    wait     until the node is idle (running jobs go on), up to --wait seconds
    apply    apply.apply_node, partial=False (the node is idle: a refusal means strays)
    write    gres.conf and the node include, this node's lines only
    reconfigure  the configured command ([slurm] reconfigure_command), with every other
             node a GPU job could land on held (drained ``slurm-mig hold: ...``, one scontrol
             call, :class:`~slurm_mig.change.steps.Hold`) across it
    register until slurmctld reports the node registered with the new gres counts; each
             held node resumed as it registers (unless someone drained it meanwhile)
    resume   unless someone else had drained the node before

Failure policy: bad input fails before Slurm is touched.  A wait that runs out changed
nothing: the node is resumed if it was not drained before, and the error says to rerun
with a longer --wait.  Any failure from ``apply`` on leaves the node drained with the
reason ``slurm-mig sync failed at <step>: <error>; fix and rerun slurm-mig sync`` and
raises the error with its own exit code: a node whose GPUs, files and Slurm may
disagree is never resumed.  A rerun finds what is already done (apply is a no-op on a
matching GPU, identical files are not rewritten) and resumes the node at the end.

Pure orchestration: the config, the GPU backend, the :class:`~slurm_mig.slurm.SlurmClient`,
the clock and the sleep are parameters, so tests drive it with an in-memory Slurm and the
simulator.  They travel down the steps as one :class:`~slurm_mig.change.steps.NodeChange`; the
drain reasons are :mod:`slurm_mig.change.reasons`'.  Returns a frozen :class:`SyncResult` whose
``as_dict()`` has stable keys (``--json``); :mod:`slurm_mig.app.render` prints it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..core.errors import ConfigError, GpuError, InputError, LayoutError, SlurmError
from ..core.gputypes import GpuInfo
from ..core.gresconf import (GresConfError, GresRecord, check_node_name, merge_gres_conf,
                             merge_node_include, node_gres_value)
from ..core.layout import Layout, format_counts, format_layout, parse_layout
from ..gpu.backend import GpuBackend
from ..host.atomic import read_text
from ..host.config import Config
from ..node.apply import ApplyResult, JobAwareBackend, apply_node
from ..node.gresfiles import gres_conf, node_conf, node_gres_records
from ..node.inventory import current_layout, gpu_model, no_mig_gpu
from ..slurm import SlurmClient
from ..slurm.scontrol import NodeStatus, parse_gres
from . import reasons
from .reasons import SYNC, SYNC_FIX, one_line
from .steps import (Hold, HoldResult, NodeChange, StepLog, apply_layouts, apply_summary,
                    idle, state_text, sync_lock, with_context)

log = logging.getLogger(__name__)

#: gpu index -> (text asked for, wanted layout, current canonical text)
Wanted = Dict[int, Tuple[str, Layout, str]]

STEPS = ("check", "drain", "wait", "apply", "write", "reconfigure", "register", "resume")
#: One step of :meth:`SyncRun.run_steps`: its name (in the steps list and a failure's drain
#: reason) and what it does; returning False ends the run there.
Step = Tuple[str, Callable[[], Optional[bool]]]


# ----------------------------------------------------------------------------- wanted layouts


def resolve_wanted(config: Config, backend: GpuBackend, layout: Optional[str] = None) -> Wanted:
    """gpu index -> (text asked for, wanted layout, current canonical text).  Reads GPUs only.

    ``layout`` applies to every GPU in MIG mode; without it each GPU gets
    ``config.layout_for(index)`` and a GPU without one is left as it is.  Count forms keep
    what the GPU has where the counts allow (``parse_layout``).  Raises InputError (exit 2)
    for bad text or no layout at all, ConfigError for a layout of a GPU that is not there.
    """
    infos = backend.gpus()
    mig = [i for i in infos if i.mig_current]
    if layout is None:
        indexes = {i.index for i in infos}
        extra = [g for g, _ in config.layout.gpus if g not in indexes]
        if extra:
            raise ConfigError(
                f"{config.source}: layout.gpus.{extra[0]}: this node has no gpu {extra[0]} "
                f"(it has {', '.join(str(i) for i in sorted(indexes)) or 'none'}); remove the key")
        explicit = {g for g, _ in config.layout.gpus}
        chosen = [i for i in infos if i.index in explicit or (i.mig_current and config.layout.default)]
    else:
        chosen = mig
    if not mig:
        raise no_mig_gpu(infos)
    out: Wanted = {}
    for info in chosen:
        source = "--layout" if layout is not None else (
            f"layout.gpus.{info.index}" if info.index in dict(config.layout.gpus) else "layout.default")
        text = layout if layout is not None else config.layout_for(info.index)
        assert text is not None  # chosen: a GPU with a layout of its own or the default
        model = gpu_model(backend, info)  # MigNotEnabled with the fix for a GPU not in MIG mode
        now = current_layout(model, backend.instances(info.index))
        try:
            wanted = parse_layout(text, model, current=now)
        except InputError as err:
            raise LayoutError(f"gpu {info.index} ({info.name}), {source}: {err}") from err
        out[info.index] = (text, wanted, format_layout(now))
    if not out:
        raise InputError(
            f"no layout to sync to: give one with --layout (e.g. --layout 3g.40gb:2) or set "
            f"[layout] default = \"...\" (or [layout.gpus] 0 = \"...\") in {config.source}")
    return out


def mig_mode_error(config: Config, infos: Sequence[GpuInfo]) -> Optional[GpuError]:
    """The error for the first GPU not in the MIG mode ``[layout] mig_mode`` /
    ``[layout.mig_modes]`` require (current and pending), or None.  Pure.

    sync never changes MIG mode itself: a change may need a GPU reset (Ampere) and is an
    admin's decision; the error names ``slurm-mig mode`` (docs/mig-mode.md)."""
    for info in infos:
        want = config.layout.mig_mode_for(info.index)
        if want is None or (info.mig_current == want and info.mig_pending == want):
            continue
        key = (f"layout.mig_modes.{info.index}" if info.index in dict(config.layout.mig_modes)
               else "layout.mig_mode")
        word = "on" if want else "off"
        now = "on" if info.mig_current else "off"
        if info.mig_current != info.mig_pending:
            now += f", pending {'on' if info.mig_pending else 'off'} (waits for a GPU reset)"
        fix = (f"`slurm-mig mode {word} --gpu {info.index} --reset`" if info.mig_pending == want
               else f"`slurm-mig mode {word} --gpu {info.index}`")
        return GpuError(f"gpu {info.index} ({info.name}) has MIG mode {now}, but {key} in "
                        f"{config.source} wants it {word}; nothing was changed; run {fix} "
                        f"(docs/mig-mode.md), or change {key}")
    return None


def layout_summary(wanted: Wanted) -> str:
    """``3g.20gb:2 on gpu 0,1; 1g.10gb:7 on gpu 2``: short, for a drain reason."""
    return reasons.summary({gpu: format_counts(layout) for gpu, (_, layout, _) in wanted.items()})


def expected_gres(current: Sequence[GresRecord], wanted: Wanted, node: str) -> str:
    """The node's ``Gres=`` once ``wanted`` is applied: untouched GPUs keep their records."""
    records = [r for r in current if r.gpu not in wanted]
    for gpu, (_, layout, _) in wanted.items():
        records += [GresRecord(node, gpu, None, i.name, ()) for i in layout]
    return node_gres_value(records)


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class SyncResult:
    """What one ``slurm-mig sync`` did or would do; ``as_dict()`` is its ``--json`` output."""

    node: str
    dry_run: bool
    already_in_sync: bool
    layout: Optional[str]
    wanted: Tuple[Dict[str, Any], ...]
    gres_before: str
    gres_after: str
    drained_by_us: bool
    drained_before: Optional[str]
    resumed: bool
    apply: Tuple[Dict[str, Any], ...]
    files: Dict[str, Optional[Dict[str, Any]]]
    steps: Tuple[Dict[str, Any], ...]
    seconds: float
    hold: HoldResult = HoldResult()  #: the other nodes held across the reconfigure

    def as_dict(self) -> Dict[str, Any]:
        return {
            "node": self.node,
            "dry_run": self.dry_run,
            "already_in_sync": self.already_in_sync,
            "layout": self.layout,
            "wanted": list(self.wanted),
            "gres": {"before": self.gres_before, "after": self.gres_after},
            "drained_by_us": self.drained_by_us,
            "drained_before": self.drained_before,
            "resumed": self.resumed,
            "apply": list(self.apply),
            "files": dict(self.files),
            "steps": list(self.steps),
            "seconds": self.seconds,
            "hold": self.hold.as_dict(),
        }


def sync_node(
    config: Config,
    backend: GpuBackend,
    slurm: SlurmClient,
    node: str,
    *,
    layout: Optional[str] = None,
    wait: Optional[float] = None,
    dry_run: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = 2.0,
) -> SyncResult:
    """Make ``node`` (this machine) match its layout; see the module doc.  Returns the result.

    ``slurm`` is a :class:`~slurm_mig.slurm.SlurmClient`; ``wait`` defaults to
    ``[slurm] sync_wait``; ``poll`` is the seconds between two looks at the node.
    """
    check_node_name(node)
    wait = config.slurm.sync_wait if wait is None else wait
    if not wait >= 0:  # also nan
        raise InputError(f"--wait {wait!r}: give 0 or more seconds")
    state_dir = config.paths.state_dir
    jb = JobAwareBackend(backend, state_dir)
    wrong_mode = mig_mode_error(config, jb.gpus())  # before anything: Slurm untouched
    if wrong_mode is not None:
        raise wrong_mode
    wanted = resolve_wanted(config, jb, layout)  # bad input: exit 2, Slurm untouched
    ctx = NodeChange(config, jb, slurm, node, StepLog(f"{SYNC}: node {node}", clock, log), clock,
                     dry_run=dry_run)
    if dry_run:
        return SyncRun(ctx, wanted, layout, wait, sleep, poll).run()
    with sync_lock(state_dir):
        return SyncRun(ctx, wanted, layout, wait, sleep, poll).run()


class SyncRun:
    """One sync's progress (what it drained, resumed, wrote) over its :class:`NodeChange`.

    ``slurm-mig mode`` (:mod:`slurm_mig.change.mode`) runs the same drain, wait, write,
    reconfigure, register and resume steps: it subclasses this and names itself in the
    class attributes below, which every message and drain reason here uses."""

    command = "slurm-mig sync"  #: what a message tells the admin to rerun
    who = SYNC  #: the log lines' prefix
    fix = SYNC_FIX  #: the tail of a failure's message

    @staticmethod
    def failure_reason(step: str, err: BaseException) -> str:
        return reasons.sync_failed(step, err)

    def __init__(self, ctx: NodeChange, wanted: Wanted, layout: Optional[str], wait: float,
                 sleep: Callable[[float], None], poll: float):
        self.ctx = ctx
        self.config = ctx.config
        self.backend = ctx.backend
        self.slurm = ctx.slurm
        self.node = ctx.node
        self.clock = ctx.clock
        self.steps = ctx.steps
        self.dry_run = ctx.dry_run
        self.wanted = wanted
        self.layout = layout
        self.wait = wait
        self.sleep = sleep
        self.poll = max(poll, 0.0)
        self.apply_results: List[Dict[str, Any]] = []
        self.files: Dict[str, Optional[Dict[str, Any]]] = {"gres_conf": None, "node_include": None}
        self.drained_by_us = False
        self.drained_before: Optional[str] = None  #: reason of a drain by someone else
        self.resumed = False
        self.gres_before = ""
        self.gres_after = ""
        self.hold = Hold(self.slurm, reasons.hold(f"{self.command} on {self.node}"),
                         self.config.slurm.hold_during_reconfigure, log, self.clock)
        self.released = False

    # -- the result ------------------------------------------------------------------------

    def result(self, in_sync: bool) -> SyncResult:
        return SyncResult(
            node=self.node, dry_run=self.dry_run, already_in_sync=in_sync, layout=self.layout,
            wanted=tuple({"gpu": g, "text": text, "before": before, "wanted": format_layout(l)}
                         for g, (text, l, before) in sorted(self.wanted.items())),
            gres_before=self.gres_before, gres_after=self.gres_after,
            drained_by_us=self.drained_by_us, drained_before=self.drained_before,
            resumed=self.resumed, apply=tuple(self.apply_results), files=dict(self.files),
            steps=self.steps.snapshot(), seconds=round(self.clock() - self.steps.t0, 3),
            hold=self.hold.result())

    # -- reading -----------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        return self.ctx.status()

    def files_match(self, records: Sequence[GresRecord]) -> bool:
        paths = self.config.paths
        gres_text = read_text(paths.gres_conf, GresConfError)
        include = read_text(paths.node_gres_include, GresConfError)
        return (merge_gres_conf(gres_text, self.node, records, source=paths.gres_conf) == gres_text
                and merge_node_include(include, self.node, node_gres_value(records),
                                       source=paths.node_gres_include) == include)

    # -- the steps ---------------------------------------------------------------------------

    def run(self) -> SyncResult:
        node = self.node
        records = node_gres_records(self.config, self.backend, node)
        self.gres_before = node_gres_value(records)
        self.gres_after = expected_gres(records, self.wanted, node)
        preview = apply_node(self.backend, {g: w for g, (_, w, _) in self.wanted.items()},
                             state_dir=self.config.paths.state_dir, dry_run=True)
        gpus_match = all(not (r.steps or r.blocked or r.blocked_creates or r.warnings)
                         for r in preview)
        files_match = self.files_match(records)
        st = self.status()
        ours = st.drain_flagged and reasons.is_ours(st.reason)
        if st.drain_flagged and not ours:
            self.drained_before = st.reason or "(no reason)"
        if gpus_match and files_match and st.gres == parse_gres(self.gres_before):
            self.steps.add("check", "done", f"already in sync: {self.gres_before or 'no gres'}; "
                                            f"Slurm reports {state_text(st)}")
            if ours:  # a previous sync failed after draining; it is consistent now
                self.resume(f"left drained by an earlier sync ({st.reason})")
            return self.result(True)
        why = [w for w, ok in (("gpus", gpus_match), ("files", files_match),
                               (f"Slurm gres {st.gres_text or '-'}",
                                st.gres == parse_gres(self.gres_before))) if not ok]
        self.steps.add("check", "done", f"to change: {', '.join(why)}; Slurm reports {state_text(st)}")
        if self.dry_run:
            return self.plan(st, preview)
        self.drain_and_wait(st, ours)
        self.run_steps([("apply", self.apply), ("write", self.write),
                        ("reconfigure", self.reconfigure), ("register", self.register)])
        if self.drained_before is not None:
            self.steps.add("resume", "skipped",
                           f"drained before sync by someone else ({self.drained_before}): left drained")
        else:
            self.resume("in sync")
        return self.result(False)

    def run_steps(self, steps: Sequence[Step]) -> None:
        """Run the steps that change the drained, idle node, in order.  A step that returns
        False ends the run there (what follows has nothing to do).  A failure (also Ctrl-C)
        leaves the node drained with the failed step's reason (:meth:`leave_drained`),
        resumes the nodes held across a reconfigure unless interrupted, and raises the error
        with what was left added to its message.  ``slurm-mig mode`` runs its own steps
        through here too."""
        step = ""
        try:
            for step, do in steps:
                if do() is False:
                    return
        except (Exception, KeyboardInterrupt) as err:
            new = self.leave_drained(step, err)
            if not isinstance(err, KeyboardInterrupt):
                self.release_held()  # the other nodes held across a failed reconfigure
            if new is err:
                raise
            raise new from err

    def plan_drain_and_wait(self, st: NodeStatus) -> None:
        """A dry run's first two steps, as :meth:`drain` and :meth:`wait_idle` would do them."""
        if self.drained_before is not None:
            self.steps.add("drain", "planned", f"already drained by someone else "
                                               f"({self.drained_before}); their reason is kept")
        else:
            self.steps.add("drain", "planned", f"reason '{self.drain_reason()}'")
        self.steps.add("wait", "planned", f"until idle, up to {self.wait:g}s (now {state_text(st)})")

    def plan(self, st: NodeStatus, preview: Sequence[ApplyResult]) -> SyncResult:
        add = self.steps.add
        self.plan_drain_and_wait(st)
        self.apply_results = [r.as_dict() for r in preview]
        changes = sum(len(r.steps) for r in preview)
        add("apply", "planned", f"{changes} change(s): " + "; ".join(
            f"gpu {r.gpu} {r.before} -> {r.wanted}" for r in preview))
        paths = self.config.paths
        add("write", "planned", f"{paths.gres_conf} and {paths.node_gres_include}: node {self.node} "
                                f"Gres={self.gres_after or '(none)'} (cap files as the driver assigns them)")
        add("reconfigure", "planned", " ".join(self.config.slurm.reconfigure_command))
        add("register", "planned", f"until slurmctld reports {self.node} with "
                                   f"{self.gres_after or 'no gres'}, up to "
                                   f"{self.config.slurm.register_timeout:g}s")
        if self.drained_before is not None:
            add("resume", "planned", "no: drained before sync by someone else")
        else:
            add("resume", "planned", self.node)
        return self.result(False)

    def drain_reason(self) -> str:
        return reasons.sync_applying(layout_summary(self.wanted))

    def drain(self, st: NodeStatus, ours: bool) -> None:
        t0 = self.clock()
        if self.drained_before is not None:
            self.steps.add("drain", "skipped", f"already drained by someone else "
                                               f"({self.drained_before}); their reason is kept", t0)
            return
        reason = self.drain_reason()
        self.slurm.drain(self.node, reason)  # fails: nothing was changed, the error says why
        self.drained_by_us = True
        self.steps.add("drain", "done", f"reason '{reason}'"
                       + (" (was drained by an earlier sync)" if ours else ""), t0)

    def drain_and_wait(self, st: NodeStatus, ours: bool) -> None:
        """Drain the node, then wait until it is idle; a failed wait changed nothing on the
        GPUs and undoes our drain (:meth:`after_wait_failure`) before the error is raised."""
        self.drain(st, ours)
        try:
            self.wait_idle()
        except (Exception, KeyboardInterrupt) as err:
            self.after_wait_failure(st, err)
            raise

    def wait_idle(self) -> None:
        t0 = self.clock()
        deadline = t0 + self.wait
        last: Optional[NodeStatus] = None
        last_err: Optional[SlurmError] = None
        while True:
            try:
                last, last_err = self.status(), None
            except SlurmError as err:  # slurmctld busy or restarting: look again
                last_err = err
            if last is not None and last_err is None and idle(last):
                if not last.drain_flagged:  # resumed behind our back: jobs may land any time
                    raise SlurmError(
                        f"node {self.node} is no longer drained ({state_text(last)}): someone "
                        f"resumed it during the wait; nothing was changed on its GPUs; rerun "
                        f"{self.command}")
                self.steps.add("wait", "done", f"node idle ({state_text(last)})", t0)
                return
            if self.clock() >= deadline:
                break
            self.sleep(max(0.0, min(self.poll, deadline - self.clock())))
        if last_err is not None:
            raise SlurmError(f"node {self.node}: could not read its state while waiting for it to "
                             f"become idle: {last_err}") from last_err
        raise SlurmError(f"node {self.node}: {self.busy_text(last)} after waiting {self.wait:g}s "
                         f"(--wait); nothing was changed on its GPUs; rerun {self.command} with "
                         f"a longer --wait, or end the jobs first")

    def busy_text(self, st: Optional[NodeStatus]) -> str:
        jobs: Set[str] = set()
        pids: Set[int] = set()
        for g in self.wanted:
            for m in self.backend.instances(g):
                jobs.update(m.jobs)
                pids.update(m.pids)
        state = state_text(st).split(" ")[0]
        if jobs:
            ids = sorted(jobs, key=lambda j: (len(j), j))
            verb = "job still runs" if len(ids) == 1 else "jobs still run"
            return (f"{len(ids)} {verb} on its MIG instances "
                    f"({', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''}), node {state}")
        if pids:
            return f"processes still run on its MIG instances (pids {', '.join(map(str, sorted(pids)))}), node {state}"
        return f"still {state} (jobs that hold no MIG instance, or an epilog still running)"

    def after_wait_failure(self, st: NodeStatus, err: BaseException) -> None:
        """Nothing changed on the GPUs: undo our drain if the node was not drained before."""
        t0 = self.clock()
        self.steps.add("wait", "failed", one_line(err), t0)
        if not st.drain_flagged:
            try:
                self.slurm.resume(self.node)
                self.resumed = True
                self.steps.add("resume", "done", "nothing was changed: drain undone", t0)
            except Exception as resume_err:  # say so; the wait error is the one raised
                self.steps.add("resume", "failed", one_line(resume_err), t0)
                log.error("%s: node %s: could not resume it after the failed wait: %s; "
                          "resume it with `scontrol update nodename=%s state=resume`",
                          self.who, self.node, one_line(resume_err), self.node)
        elif self.drained_before is None:
            # Drained by an earlier failed sync: its GPUs may still be half-changed.
            self.set_failure_reason("wait", err)

    def apply(self) -> None:
        t0 = self.clock()
        # Again, now that the node is idle: a count form keeps what the GPU has now.
        self.wanted = resolve_wanted(self.config, self.backend, self.layout)
        results = apply_layouts(self.config, self.backend,
                                {g: w for g, (_, w, _) in self.wanted.items()})
        self.apply_results = [r.as_dict() for r in results]
        self.steps.add("apply", "done", apply_summary(results), t0)

    def write(self) -> None:
        t0 = self.clock()
        g = gres_conf(self.config, self.backend, self.node, write=True)
        n = node_conf(self.config, self.backend, self.node, write=True)
        self.gres_after = n["gres"]
        self.files = {
            "gres_conf": {"path": g["path"], "changed": g["changed"], "prev": g["prev"],
                          "records": len(g["records"])},
            "node_include": {"path": n["path"], "changed": n["changed"], "prev": n["prev"],
                             "gres": n["gres"]},
        }
        self.steps.add("write", "done", f"{g['path']} ({'written' if g['changed'] else 'unchanged'}, "
                                        f"{len(g['records'])} record(s)); {n['path']} "
                                        f"({'written' if n['changed'] else 'unchanged'}, "
                                        f"Gres={n['gres'] or '(none)'})", t0)

    def reconfigure(self) -> None:
        t0 = self.clock()
        self.hold.start(skip=[self.node])  # SlurmError: no reconfigure; what it held is released
        self.slurm.reconfigure()
        held = ",".join(sorted(self.hold.gres))
        self.steps.add("reconfigure", "done", " ".join(self.config.slurm.reconfigure_command)
                       + (f" (held {held})" if held else ""), t0)

    def register(self) -> None:
        t0 = self.clock()
        self.released = True
        timeout = self.config.slurm.register_timeout
        ok, seen = self.hold.wait(self.slurm, {self.node: self.gres_after}, timeout,
                                  clock=self.clock, sleep=self.sleep, poll=self.poll)[self.node]
        for line in self.hold.lines(f"{self.who}: node {self.node}:"):
            log.info("%s", line)
        if not ok:
            raise SlurmError(seen)
        r = self.hold.result()
        self.steps.add("register", "done", seen + (f"; held nodes resumed: "
                                                   f"{','.join(r.resumed) or 'none'}"
                                                   if r.held or r.adopted else ""), t0)

    def release_held(self) -> None:
        """After a failure at the hold or the reconfigure: resume the held nodes once
        registered all the same (best effort; what is left the next run resumes)."""
        if self.released or not self.hold.gres:
            return
        self.released = True
        try:
            self.hold.wait(self.slurm, {}, self.config.slurm.register_timeout, clock=self.clock,
                           sleep=self.sleep, poll=self.poll)
        except Exception as err:
            log.error("%s: node %s: resuming the held nodes failed: %s; the next slurm-mig "
                      "rebalance cycle or sync resumes them", self.who, self.node, one_line(err))
        for line in self.hold.lines(f"{self.who}: node {self.node}:"):
            log.info("%s", line)

    def resume(self, why: str) -> None:
        t0 = self.clock()
        if self.dry_run:
            self.steps.add("resume", "planned", why)
            return
        try:
            self.slurm.resume(self.node)
        except SlurmError as err:
            raise SlurmError(f"{err}; node {self.node} is in sync but still drained: resume it with "
                             f"`scontrol update nodename={self.node} state=resume`") from err
        self.resumed = True
        self.steps.add("resume", "done", why, t0)

    def set_failure_reason(self, step: str, err: BaseException) -> Optional[str]:
        """Best effort; returns why it could not be set, or None."""
        try:
            self.slurm.drain(self.node, self.failure_reason(step, err))
            return None
        except Exception as drain_err:
            return one_line(drain_err)

    def leave_drained(self, step: str, err: BaseException) -> BaseException:
        t0 = self.clock()
        self.steps.add(step, "failed", one_line(err), t0)
        problem = self.set_failure_reason(step, err)
        where = f"{self.command.split()[-1]} stopped at {step}: node {self.node} left drained"
        if problem is not None:
            where += f" (and setting its drain reason failed too: {problem})"
        elif self.drained_before is not None:
            where += f" (it was drained before by someone else: {self.drained_before})"
        message = f"{one_line(err)}; {where}; {self.fix}"
        log.error("%s: node %s: %s", self.who, self.node, message)
        return with_context(err, message)
