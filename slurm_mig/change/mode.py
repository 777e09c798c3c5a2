"""``slurm-mig mode on|off``: turn MIG mode on or off, with Slurm kept in the loop.

The order (docs/mig-mode.md)::

    check    read the chosen GPUs (mode, instances, processes) and decide for each
             (:func:`decide`); nothing to do -> say so, Slurm untouched
    drain    ``slurm-mig mode: MIG on on gpu 0,1`` (a drain by someone else is kept)
    wait     until the node is idle, up to --wait seconds (sync's wait)
    mode     per GPU: refuse it if processes run on it (nothing changed, drain undone);
             MIG off: destroy its idle instances first (the apply engine); set the mode
    reset    only with --reset, only an idle GPU, only where the change is still pending
             (Ampere); the NVML backend cannot (NVML has no reset call) and says what to run
    write    gres.conf and the node include, when a GPU's current mode changed
    reconfigure, register    as sync, when the files changed or Slurm's gres differ
    resume   unless someone else had drained the node before

A change the driver keeps pending (Ampere, without --reset) changes nothing the node's
jobs see: the node is resumed and the result says what is needed (a reset).  A failure
from the mode step on leaves the node drained with ``slurm-mig mode failed at <step>:
<error>; fix and rerun slurm-mig mode``, as sync does.

:func:`decide` is pure (values in, a :class:`Decision` out); the steps are sync's
(:class:`~slurm_mig.change.sync.SyncRun`), named for ``mode``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..core.errors import InputError, ModeRefused, NotSupported
from ..core.gputypes import GpuInfo, MigInstance, mode_change_needs_reset
from ..core.gresconf import check_node_name, node_gres_value
from ..core.inputs import MAX_GPU_INDEX, NumberError, from_text, shown
from ..core.layout import Layout
from ..gpu.backend import GpuBackend
from ..host.config import Config
from ..node.apply import JobAwareBackend
from ..node.gresfiles import node_gres_records
from ..node.inventory import catalog_model
from ..slurm import SlurmClient
from ..slurm.scontrol import NodeStatus, parse_gres
from . import reasons
from .reasons import MODE, MODE_FIX, one_line
from .steps import NodeChange, StepLog, apply_layouts, idle, state_text, sync_lock
from .sync import SyncRun

log = logging.getLogger(__name__)

STEPS = ("check", "drain", "wait", "mode", "reset", "write", "reconfigure", "register", "resume")


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


# ----------------------------------------------------------------------------- pure decisions


@dataclass(frozen=True)
class Decision:
    """What ``mode`` does to one GPU, decided from what the GPU reports."""

    gpu: int
    name: str
    want: bool
    current: bool
    pending: bool
    destroy: Tuple[int, ...] = ()  #: GI ids to destroy first (MIG off)
    set_mode: bool = False  #: call nvmlDeviceSetMigMode
    reset: bool = False  #: reset the GPU (asked, and the change is or may stay pending)
    refusal: Optional[str] = None  #: why nothing may change on this GPU now (one line)

    @property
    def acts(self) -> bool:
        return bool(self.destroy or self.set_mode or self.reset)


def decide(info: GpuInfo, want: bool, instances: Sequence[MigInstance], pids: Sequence[int],
           reset: bool) -> Decision:
    """The decision for one GPU.  ``instances``: its MIG instances (busy ones hold a job or
    processes); ``pids``: every process on the GPU; ``reset``: ``--reset`` was given.

    * current and pending already ``want``: nothing (not even a reset);
    * else any process on the GPU, or a busy instance in the way: refused, nothing changes;
    * MIG off while instances exist: destroy them first (the driver refuses the mode
      change while GPU instances exist);
    * the pending mode is not ``want``: set it;
    * ``reset`` asked and the change is pending, or will stay pending (Ampere): reset.
    """
    base = Decision(info.index, info.name, want, info.mig_current, info.mig_pending)
    destroy = tuple(m.gi_id for m in instances) if (not want and info.mig_current) else ()
    set_mode = info.mig_pending != want
    stays_pending = info.mig_current != want and (not set_mode or mode_change_needs_reset(info.name))
    act = replace(base, destroy=destroy, set_mode=set_mode, reset=reset and stays_pending)
    if not act.acts:
        return base
    busy = [m for m in instances if m.busy]
    all_pids = sorted(set(pids) | {p for m in instances for p in m.pids})
    if not (all_pids or busy):
        return act
    what = []
    if all_pids:
        what.append(f"processes {', '.join(map(str, all_pids))} run on it")
    jobs = sorted({j for m in busy for j in m.jobs})
    if jobs:
        what.append(f"jobs {', '.join(jobs)} hold its instances")
    return replace(base, refusal=(
        f"gpu {info.index} ({info.name}): {' and '.join(what)}; MIG mode not changed; "
        f"end them (or let them finish), then rerun slurm-mig mode {on_off(want)}"))


def needed(gpu: int, name: str, want: bool, current: bool, pending: bool) -> str:
    """What is needed to make the wanted mode current, one line ('nothing' when it is)."""
    if current == want and pending == want:
        return "nothing"
    if pending == want:
        return (f"a GPU reset: `slurm-mig mode {on_off(want)} --gpu {gpu} --reset` (no process "
                f"may use it), or `nvidia-smi -r -i {gpu}`, or a reboot")
    return f"`slurm-mig mode {on_off(want)} --gpu {gpu}`"


def select(infos: Sequence[GpuInfo], gpu: str, capable: Callable[[GpuInfo], bool]) -> List[GpuInfo]:
    """``--gpu N`` or ``all`` -> the GPUs to change: ``all`` is every MIG-capable GPU."""
    if gpu == "all":
        return [i for i in infos if capable(i)]
    try:
        index = from_text(gpu, 0, MAX_GPU_INDEX, kind="a GPU index")
    except NumberError as err:
        raise InputError(f"--gpu {shown(gpu)}: {err}; give a GPU index (0, 1, ...) or 'all'") from err
    for info in infos:
        if info.index == index:
            if not capable(info):
                raise NotSupported(f"gpu {index} ({info.name}) does not support MIG; leave it out "
                                   f"(--gpu N for another GPU)")
            return [info]
    raise InputError(f"--gpu {index}: no such GPU (this node has "
                     f"{', '.join(str(i.index) for i in infos) or 'none'})")


def mig_capable(backend: GpuBackend, info: GpuInfo) -> bool:
    """MIG capable: MIG mode on or pending, the catalog knows it, or the driver lists profiles."""
    if info.mig_current or info.mig_pending or catalog_model(info) is not None:
        return True
    try:
        return bool(backend.profiles(info.index))
    except NotSupported:
        return False


# ----------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class ModeResult:
    """What one ``slurm-mig mode`` did or would do; ``as_dict()`` is its ``--json`` output."""

    node: str
    mode: str
    reset: bool
    dry_run: bool
    nothing_to_do: bool
    gpus: Tuple[Dict[str, Any], ...]
    gres_before: str
    gres_after: str
    drained_by_us: bool
    drained_before: Optional[str]
    resumed: bool
    files: Dict[str, Optional[Dict[str, Any]]]
    steps: Tuple[Dict[str, Any], ...]
    seconds: float

    def as_dict(self) -> Dict[str, Any]:
        return {
            "node": self.node, "mode": self.mode, "reset": self.reset, "dry_run": self.dry_run,
            "nothing_to_do": self.nothing_to_do, "gpus": list(self.gpus),
            "gres": {"before": self.gres_before, "after": self.gres_after},
            "drained_by_us": self.drained_by_us, "drained_before": self.drained_before,
            "resumed": self.resumed, "files": dict(self.files), "steps": list(self.steps),
            "seconds": self.seconds,
        }


# ----------------------------------------------------------------------------- the run


def set_mode(config: Config, backend: GpuBackend, slurm: SlurmClient, node: str, want: bool, *,
             gpu: str = "all", reset: bool = False, wait: Optional[float] = None,
             dry_run: bool = False, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep, poll: float = 2.0) -> ModeResult:
    """Turn MIG mode ``want`` on the chosen GPUs of ``node`` (this machine); see the module doc."""
    check_node_name(node)
    wait = config.slurm.sync_wait if wait is None else wait
    if not wait >= 0:  # also nan
        raise InputError(f"--wait {wait!r}: give 0 or more seconds")
    jb = JobAwareBackend(backend, config.paths.state_dir)
    chosen = select(jb.gpus(), gpu, lambda i: mig_capable(jb, i))
    if not chosen:
        raise NotSupported("no GPU on this node supports MIG (see `slurm-mig status`); nothing "
                           "was changed")
    ctx = NodeChange(config, jb, slurm, node, StepLog(f"{MODE}: node {node}", clock, log), clock,
                     dry_run=dry_run)
    run = ModeRun(ctx, want, [i.index for i in chosen], reset, wait, sleep, poll)
    if dry_run:
        return run.execute()
    with sync_lock(config.paths.state_dir):
        return run.execute()


class ModeRun(SyncRun):
    """One ``slurm-mig mode`` run: sync's drain, wait, write, reconfigure, register and
    resume steps around the mode step."""

    command = "slurm-mig mode"
    who = MODE
    fix = MODE_FIX

    @staticmethod
    def failure_reason(step: str, err: BaseException) -> str:
        return reasons.mode_failed(step, err)

    def __init__(self, ctx: NodeChange, want: bool, gpus: Sequence[int], reset: bool,
                 wait: float, sleep: Callable[[float], None], poll: float):
        super().__init__(ctx, {}, None, wait, sleep, poll)
        self.want = want
        self.gpus = list(gpus)
        self.reset_asked = reset
        self.before: Dict[int, Tuple[bool, bool]] = {}
        self.done: Dict[int, Dict[str, Any]] = {g: {"destroyed": [], "set": False, "reset": False}
                                                for g in self.gpus}
        self.decisions: List[Decision] = []

    # -- reading -----------------------------------------------------------------------------

    def infos(self) -> Dict[int, GpuInfo]:
        return {i.index: i for i in self.backend.gpus() if i.index in self.gpus}

    def decide_all(self) -> List[Decision]:
        out = []
        for index, info in sorted(self.infos().items()):
            instances = self.backend.instances(index) if info.mig_current else []
            pids = self.backend.processes(index)
            out.append(decide(info, self.want, instances, pids, self.reset_asked))
        return out

    # -- the result --------------------------------------------------------------------------

    def gpu_entries(self) -> Tuple[Dict[str, Any], ...]:
        infos = self.infos()
        by_gpu = {d.gpu: d for d in self.decisions}
        out = []
        for g in self.gpus:
            info = infos[g]
            d = by_gpu.get(g)
            cur0, pend0 = self.before.get(g, (info.mig_current, info.mig_pending))
            out.append({
                "gpu": g, "name": info.name, "want": on_off(self.want),
                "before": {"current": cur0, "pending": pend0},
                "after": {"current": info.mig_current, "pending": info.mig_pending},
                "reset_needed_by_generation": mode_change_needs_reset(info.name),
                "refused": d.refusal if d else None,
                "destroyed": list(self.done[g]["destroyed"]),
                "set": self.done[g]["set"], "reset": self.done[g]["reset"],
                "plan": ({"destroy": list(d.destroy), "set": d.set_mode, "reset": d.reset}
                         if d else None),
                "needed": needed(g, info.name, self.want, info.mig_current, info.mig_pending),
            })
        return tuple(out)

    def mode_result(self, nothing: bool) -> ModeResult:
        return ModeResult(
            node=self.node, mode=on_off(self.want), reset=self.reset_asked, dry_run=self.dry_run,
            nothing_to_do=nothing, gpus=self.gpu_entries(), gres_before=self.gres_before,
            gres_after=self.gres_after, drained_by_us=self.drained_by_us,
            drained_before=self.drained_before, resumed=self.resumed, files=dict(self.files),
            steps=self.steps.snapshot(), seconds=round(self.clock() - self.steps.t0, 3))

    # -- the steps ---------------------------------------------------------------------------

    def execute(self) -> ModeResult:
        records = node_gres_records(self.config, self.backend, self.node)
        self.gres_before = self.gres_after = node_gres_value(records)
        self.before = {g: (i.mig_current, i.mig_pending) for g, i in self.infos().items()}
        self.decisions = self.decide_all()
        files_match = self.files_match(records)
        st = self.status()
        parsed = reasons.parse_reason(st.reason) if st.drain_flagged else None
        ours = parsed is not None and parsed.kind in (reasons.MODE_CHANGING, reasons.MODE_FAILED)
        if st.drain_flagged and not ours:
            self.drained_before = st.reason or "(no reason)"
        gres_match = st.gres == parse_gres(self.gres_before)
        if not any(d.acts or d.refusal for d in self.decisions) and files_match and gres_match:
            self.steps.add("check", "done", self.check_text(st))
            if ours:  # an earlier mode run failed after draining; it is consistent now
                self.resume(f"left drained by an earlier slurm-mig mode ({st.reason})")
            return self.mode_result(True)
        refused = [d for d in self.decisions if d.refusal]
        if refused and idle(st):  # no job to wait for: the processes are not Slurm's
            self.steps.add("check", "failed", refused[0].refusal or "")
            raise ModeRefused("; ".join(d.refusal or "" for d in refused) + "; the node was not drained")
        self.steps.add("check", "done", self.check_text(st))
        if self.dry_run:
            return self.plan_mode(st)
        self.drain_and_wait(st, ours)
        self.decisions = self.decide_all()  # again, now that the node is idle
        refused = [d for d in self.decisions if d.refusal]
        if refused:
            refusal = ModeRefused("; ".join(d.refusal or "" for d in refused))
            self.undo_drain(st, refusal)
            raise refusal
        self.run_steps([("mode", self.change_modes), ("reset", self.reset_gpus),
                        ("write", lambda: self.write_changed(st)), ("reconfigure", self.reconfigure),
                        ("register", self.register)])
        if self.drained_before is not None:
            self.steps.add("resume", "skipped", f"drained before by someone else "
                                                f"({self.drained_before}): left drained")
        else:
            self.resume("MIG mode " + "; ".join(
                f"gpu {e['gpu']} {on_off(e['after']['current'])}"
                + (f" (pending {on_off(e['after']['pending'])})"
                   if e["after"]["current"] != e["after"]["pending"] else "")
                for e in self.gpu_entries()))
        return self.mode_result(False)

    def undo_drain(self, st: NodeStatus, err: ModeRefused) -> None:
        """A refusal after the wait changed nothing: undo our drain (as a failed wait does)."""
        t0 = self.clock()
        self.steps.add("mode", "failed", one_line(err), t0)
        if st.drain_flagged:
            if self.drained_before is None:  # drained by an earlier failed mode run
                self.set_failure_reason("mode", err)
            return
        try:
            self.slurm.resume(self.node)
            self.resumed = True
            self.steps.add("resume", "done", "nothing was changed: drain undone", t0)
        except Exception as resume_err:  # say so; the refusal is the error raised
            self.steps.add("resume", "failed", one_line(resume_err), t0)
            log.error("%s: node %s: could not resume it after the refusal: %s; resume it with "
                      "`scontrol update nodename=%s state=resume`", MODE, self.node,
                      one_line(resume_err), self.node)

    def check_text(self, st: NodeStatus) -> str:
        parts = []
        for d in self.decisions:
            now = f"gpu {d.gpu} {on_off(d.current)}" + (
                f" (pending {on_off(d.pending)})" if d.current != d.pending else "")
            if d.refusal:
                parts.append(f"{now}: refused ({d.refusal.split(': ', 1)[-1]})")
            elif not d.acts:
                parts.append(f"{now}: " + ("already" if d.current == self.want else "waits for a reset"))
            else:
                acts = ([f"destroy {len(d.destroy)} instance(s)"] if d.destroy else []) + (
                    [f"set {on_off(self.want)}"] if d.set_mode else []) + (["reset"] if d.reset else [])
                parts.append(f"{now}: {', '.join(acts)}")
        return f"{'; '.join(parts)}; Slurm reports {state_text(st)}"

    def plan_mode(self, st: NodeStatus) -> ModeResult:
        add = self.steps.add
        self.plan_drain_and_wait(st)
        add("mode", "planned", "; ".join(
            f"gpu {d.gpu}: " + (d.refusal and "refused unless its processes end while the node "
                                              "drains" or ", ".join(
                ([f"destroy gi {','.join(map(str, d.destroy))}"] if d.destroy else [])
                + ([f"set MIG {on_off(self.want)}"] if d.set_mode else []) or ["nothing"])
                + (" (pending until a reset: Ampere)" if d.set_mode and mode_change_needs_reset(d.name)
                   else ""))
            for d in self.decisions))
        resets = [d.gpu for d in self.decisions if d.reset]
        add("reset", "planned", f"gpu {','.join(map(str, resets))}" if resets else "none")
        paths = self.config.paths
        add("write", "planned", f"{paths.gres_conf} and {paths.node_gres_include}, if a GPU's "
                                f"current MIG mode changes")
        add("reconfigure", "planned", " ".join(self.config.slurm.reconfigure_command) + " (if written)")
        add("register", "planned", f"until slurmctld reports {self.node} with the new gres")
        add("resume", "planned", "no: drained before by someone else"
            if self.drained_before is not None else self.node)
        return self.mode_result(False)

    def drain_reason(self) -> str:
        acting = [d.gpu for d in self.decisions if d.acts] or self.gpus
        return reasons.mode_changing(f"MIG {on_off(self.want)} on gpu {','.join(map(str, acting))}"
                                     + (" with a GPU reset" if self.reset_asked else ""))

    def busy_text(self, st: Optional[NodeStatus]) -> str:
        jobs: Set[str] = set()
        pids: Set[int] = set()
        for g in self.gpus:
            pids.update(self.backend.processes(g))
            for info in self.backend.gpus():
                if info.index == g and info.mig_current:
                    for m in self.backend.instances(g):
                        jobs.update(m.jobs)
        state = state_text(st).split(" ")[0]
        if jobs:
            return f"jobs {', '.join(sorted(jobs))} still run on its GPUs, node {state}"
        if pids:
            return f"processes still run on its GPUs (pids {', '.join(map(str, sorted(pids)))}), node {state}"
        return f"still {state} (jobs on GPUs not being changed, or an epilog still running)"

    def change_modes(self) -> None:
        t0 = self.clock()
        off = {d.gpu: Layout(()) for d in self.decisions if d.destroy}
        if off:  # the apply engine: journaled, refuses a busy instance (a job that just landed)
            for r in apply_layouts(self.config, self.backend, off):
                self.done[r.gpu]["destroyed"] = r.as_dict()["steps"]
        said = []
        for d in self.decisions:
            if not d.set_mode:
                continue
            got = self.backend.set_mig_mode(d.gpu, self.want)
            self.done[d.gpu]["set"] = True
            said.append(f"gpu {d.gpu} {on_off(got.current)}" + (
                f" (pending {on_off(got.pending)}: needs a reset)" if got.reset_required else ""))
        self.steps.add("mode", "done", "; ".join(said) or "no mode to set", t0)

    def write_changed(self, st: NodeStatus) -> bool:
        """The write step: gres.conf and the node include, unless they and Slurm's gres
        (``st``: as the check read them) already match the GPUs' current modes.  False when
        nothing was written: the run ends there, without a reconfigure."""
        records = node_gres_records(self.config, self.backend, self.node)
        if self.files_match(records) and st.gres == parse_gres(node_gres_value(records)):
            self.steps.add("write", "skipped", "no GPU changed its current MIG mode: "
                                               "gres.conf and Gres= stay as they are")
            return False
        self.write()
        return True

    def reset_gpus(self) -> None:
        t0 = self.clock()
        infos = self.infos()
        due = [d for d in self.decisions if self.reset_asked and infos[d.gpu].mig_current != self.want]
        if not due:
            self.steps.add("reset", "skipped", "not asked (--reset)" if not self.reset_asked
                           else "no change waits for a reset")
            return
        said = []
        for d in due:
            pids = self.backend.processes(d.gpu)
            if pids:  # a process started since the check: the reset would fail or kill it
                raise ModeRefused(f"gpu {d.gpu}: processes {', '.join(map(str, pids))} run on it; "
                                  f"not reset (MIG mode pending {on_off(self.want)})")
            got = self.backend.reset_gpu(d.gpu)
            self.done[d.gpu]["reset"] = True
            said.append(f"gpu {d.gpu} {on_off(got.current)}")
        self.steps.add("reset", "done", "; ".join(said), t0)

