"""The apply engine: assert, then apply, one instance at a time.

For each GPU the engine reads what the driver has, diffs it against the wanted
layout (:func:`plan_gpu`, pure) and changes only the difference: instances present
in both are kept (their jobs keep running), so a small change never rebuilds the
whole GPU.  A GPU that already matches gets no driver call that changes anything.

Rules
  * Only idle instances are destroyed.  An instance with processes that the wanted
    layout drops is *blocked*; so is every creation that would need its space.  By
    default a blocked instance refuses the whole apply before anything changes
    (:class:`~slurm_mig.core.errors.ApplyRefused`, exit 5); with ``partial=True`` the
    possible part is applied and the blocked items come back in the result (the CLI
    turns that into exit 6).  Busy state is re-read right before each destroy.
  * Order: destroy, then complete half-made instances (a GPU instance left without
    its compute instance is finished, not destroyed, when it is wanted), then create
    in order of placement start.
  * Afterwards the layout is read back from the driver and must equal the wanted one
    (or its possible part); anything else is a :class:`~slurm_mig.core.errors.GpuError`
    naming both layouts.

Interrupted runs: roll forward
  Before its first change to a GPU a run records its intent (the wanted layout) in
  the journal (:mod:`slurm_mig.node.journal`) and removes it once the GPU reads back
  right.  A run that finds an intent knows the previous run died or failed part-way.
  It *rolls forward*: it converges the GPU to the recorded layout (never destroying
  a busy instance, completing or destroying half-made GPU instances), clears the
  intent, reports ``resumed=True`` and only then carries on with its own request.

  Why forward and not back: the intent is the only trustworthy record of where the
  GPU was going, while "where it came from" would need a second, earlier snapshot
  whose instances may be gone already; going back would also destroy instances
  that a job may have been handed since.  Rolling forward needs no more than the
  normal apply (the same diff), it is idempotent if the recovery itself is killed,
  and the caller's new request then starts from a known, complete layout.

  Details: the busy check of the new request comes before the recovery, so a
  refusal still means nothing changed (the intent stays for a later run); the
  recovery's own changes are ``Step(recovery=True)``; a request refused before its
  first change (a job landed between plan and destroy) removes its intent, so a
  refused layout never comes back later; a dry run never recovers, it only warns;
  driver errors leave the intent, as a kill would.

Callers hold the node lock (:func:`apply_node` does) so that no two runs interleave.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..core.catalog import GpuModel
from ..core.errors import ApplyRefused, GpuError, InputError, LayoutError, SlurmMigError
from ..core.gputypes import GpuInfo, MigInstance
from ..core.layout import Instance, Layout, format_layout, is_valid, layout_from
from ..host.locking import node_lock
from . import journal
from .inventory import current_layout, gpu_model
from .jobs import boot_id, holders

log = logging.getLogger(__name__)

FIX_BLOCKED = "wait for the jobs, drain the node, or pass --partial"


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Step:
    """One change to a GPU: ``destroy``, ``create`` or ``complete`` an instance."""

    action: str
    profile: str
    start: int
    gi_id: Optional[int] = None  #: None for a create not done yet (dry run)
    recovery: bool = False  #: done to finish an interrupted earlier run

    def __str__(self) -> str:
        gi = f" (gi {self.gi_id})" if self.gi_id is not None else ""
        return f"{self.action} {self.profile}@{self.start}{gi}"


@dataclass(frozen=True)
class Blocked:
    """An instance the wanted layout drops but that has processes on it."""

    profile: str
    start: int
    gi_id: int
    pids: Tuple[int, ...]
    jobs: Tuple[str, ...] = ()

    def users(self) -> str:
        """``pid 4242``, ``pids 1, 2``, ``job 812``, or both."""
        out = []
        if self.pids:
            out.append(f"{'pid' if len(self.pids) == 1 else 'pids'} {', '.join(map(str, self.pids))}")
        if self.jobs:
            out.append(f"{'job' if len(self.jobs) == 1 else 'jobs'} {', '.join(self.jobs)}")
        return " and ".join(out)

    def __str__(self) -> str:
        return f"{self.profile}@{self.start} (gi {self.gi_id}, {self.users()})"


@dataclass(frozen=True)
class GpuPlan:
    """The difference between what a GPU has and what is wanted.  Pure data.

    ``create`` holds only the creations that can be done; those needing the space,
    the count or the compute slices of a blocked instance are in ``blocked_creates``.
    ``target`` is the layout the GPU carries once the plan is done: the wanted one,
    less the blocked creations, plus the blocked instances.
    """

    keep: Tuple[MigInstance, ...]
    destroy: Tuple[MigInstance, ...]
    blocked: Tuple[MigInstance, ...]
    create: Tuple[Instance, ...]
    complete: Tuple[MigInstance, ...]
    blocked_creates: Tuple[Instance, ...]
    target: Layout
    model: GpuModel = field(repr=False, compare=False)

    @property
    def actions(self) -> int:
        """How many changes the plan makes."""
        return len(self.destroy) + len(self.complete) + len(self.create)

    @property
    def is_noop(self) -> bool:
        """True when the GPU already carries exactly the wanted layout."""
        return not (self.actions or self.blocked or self.blocked_creates)

    def steps(self) -> Tuple[Step, ...]:
        """The planned changes, in the order the engine makes them."""
        name = lambda pid: self.model.profile(pid).name  # noqa: E731
        out = [Step("destroy", name(m.profile_id), m.start, m.gi_id) for m in self.destroy]
        out += [Step("complete", name(m.profile_id), m.start, m.gi_id) for m in self.complete]
        out += [Step("create", i.name, i.start) for i in self.create]
        return tuple(out)

    def blocked_records(self) -> Tuple[Blocked, ...]:
        return tuple(
            Blocked(self.model.profile(m.profile_id).name, m.start, m.gi_id, tuple(m.pids),
                    tuple(m.jobs))
            for m in self.blocked
        )


@dataclass(frozen=True)
class ApplyResult:
    """What :func:`apply_gpu` did to one GPU (or, in a dry run, would do)."""

    gpu: int
    uuid: str
    model: str  #: the GPU's name as the driver reports it
    wanted: str  #: canonical text
    before: str  #: canonical text, as read at the start
    after: str  #: canonical text, as read back at the end (dry run: as it would be)
    steps: Tuple[Step, ...] = ()
    blocked: Tuple[Blocked, ...] = ()
    blocked_creates: Tuple[str, ...] = ()  #: wanted instances not created, as ``profile@start``
    changed: bool = False  #: some change was made (dry run: would be made)
    resumed: bool = False  #: an interrupted earlier run was found and finished first
    partial: bool = False  #: the wanted layout was only partly reached (see ``blocked``)
    dry_run: bool = False
    warnings: Tuple[str, ...] = ()
    cap_files: Optional[dict] = None  #: what the cap-file pass did (None: not run)

    def as_dict(self) -> dict:
        """Plain data with stable keys, for ``--json``."""
        return {
            "gpu": self.gpu,
            "uuid": self.uuid,
            "model": self.model,
            "wanted": self.wanted,
            "before": self.before,
            "after": self.after,
            "steps": [
                {"action": s.action, "profile": s.profile, "start": s.start, "gi_id": s.gi_id,
                 "recovery": s.recovery}
                for s in self.steps
            ],
            "blocked": [
                {"profile": b.profile, "start": b.start, "gi_id": b.gi_id, "pids": list(b.pids),
                 "jobs": list(b.jobs)}
                for b in self.blocked
            ],
            "blocked_creates": list(self.blocked_creates),
            "changed": self.changed,
            "resumed": self.resumed,
            "partial": self.partial,
            "dry_run": self.dry_run,
            "warnings": list(self.warnings),
            "cap_files": self.cap_files,
        }


# ----------------------------------------------------------------------------- planning


def plan_gpu(model: GpuModel, instances: Iterable[MigInstance], wanted: Layout) -> GpuPlan:
    """Diff the driver's ``instances`` against ``wanted``; instances match on (profile id, start)."""
    wanted_keys = wanted.keys()
    keep: List[MigInstance] = []
    complete: List[MigInstance] = []
    destroy: List[MigInstance] = []
    blocked: List[MigInstance] = []
    have = set()
    for m in sorted(instances, key=lambda m: (m.start, m.profile_id)):
        key = (m.profile_id, m.start)
        have.add(key)
        if key in wanted_keys:
            (keep if m.complete else complete).append(m)
        elif m.busy:
            blocked.append(m)
        else:
            destroy.append(m)
    missing = [i for i in wanted if (i.profile_id, i.start) not in have]
    staying = [_as_instance(model, m) for m in keep + complete]
    held = [_as_instance(model, m) for m in blocked]
    create: List[Instance] = []
    blocked_creates: List[Instance] = []
    for inst in missing:  # by start: Layout keeps its instances ordered
        if held and (
            any(inst.overlaps(b) for b in held) or not is_valid(model, staying + held + create + [inst])
        ):
            blocked_creates.append(inst)
        else:
            create.append(inst)
    return GpuPlan(
        keep=tuple(keep),
        destroy=tuple(destroy),
        blocked=tuple(blocked),
        create=tuple(create),
        complete=tuple(complete),
        blocked_creates=tuple(blocked_creates),
        target=Layout(tuple(staying + held + create)),
        model=model,
    )


def _as_instance(model: GpuModel, m: MigInstance) -> Instance:
    return Instance.of(model.profile(m.profile_id), m.start)


# ----------------------------------------------------------------------------- applying


def apply_gpu(
    backend,
    gpu: int,
    wanted: Layout,
    *,
    state_dir: str,
    partial: bool = False,
    dry_run: bool = False,
) -> ApplyResult:
    """Bring GPU ``gpu`` to ``wanted``, changing only the difference.  See the module doc.

    The caller holds the node lock.  Raises ApplyRefused (a busy instance is in the
    way and ``partial`` is off; nothing changed), LayoutError (``wanted`` does not
    fit this GPU), GpuError and its kinds (driver failures; the intent stays in the
    journal and the next run finishes the change).
    """
    backend = _job_aware(backend, state_dir)
    info, model, wanted, instances, plan = _prepare(backend, gpu, wanted)
    before = format_layout(current_layout(model, instances))
    warnings: List[str] = []
    try:
        intent = journal.read_intent(state_dir, info.uuid, quarantine=not dry_run)
    except journal.JournalCorrupt as err:
        log.warning("%s", err)
        warnings.append(str(err))
        intent = None

    def result(**kw) -> ApplyResult:
        kw.setdefault("after", before)
        kw.setdefault("blocked", plan.blocked_records())
        kw.setdefault("blocked_creates", tuple(str(i) for i in plan.blocked_creates))
        kw.setdefault("partial", bool(plan.blocked or plan.blocked_creates))
        return ApplyResult(gpu=gpu, uuid=info.uuid, model=info.name, wanted=format_layout(wanted),
                           before=before, warnings=tuple(warnings), **kw)

    if dry_run:
        if intent is not None:
            warnings.append(
                f"gpu {gpu}: an interrupted apply towards {intent.layout} is on record "
                f"({journal.journal_path(state_dir, info.uuid)}); a real run finishes it first"
            )
        if plan.blocked and not partial:
            warnings.append(_refusal(gpu, info, wanted, plan.blocked_records(), done=None)
                            + f"; a real run refuses: {FIX_BLOCKED}")
        return result(after=format_layout(plan.target), steps=plan.steps(),
                      changed=bool(plan.actions), dry_run=True)

    if plan.blocked and not partial:
        raise _refused(backend, _refusal(gpu, info, wanted, plan.blocked_records(), done=0),
                       plan.blocked_records())

    steps: List[Step] = []
    resumed = False
    if intent is not None:
        target = _intent_layout(model, intent, state_dir, warnings)
        if target is not None:
            log.info("gpu %d: finishing an interrupted apply towards %s", gpu, intent.layout)
            _, now = _converge(backend, gpu, model, target, partial=True, steps=steps, recovery=True)
            journal.clear_intent(state_dir, info.uuid)
            resumed = True
            plan = plan_gpu(model, now, wanted)
            if plan.blocked and not partial:
                raise _refused(backend, _refusal(gpu, info, wanted, plan.blocked_records(),
                                                 done=len(steps)), plan.blocked_records())

    if plan.actions:
        journal.write_intent(
            state_dir,
            journal.new_intent(gpu, info.uuid, format_layout(wanted), wanted.keys()),
        )
        done = len(steps)
        try:
            plan, now = _converge(backend, gpu, model, wanted, partial=partial, steps=steps,
                                  recovery=False, first=plan, info=info)
        except ApplyRefused:
            if len(steps) == done:  # refused before its first change: nothing to finish later
                journal.clear_intent(state_dir, info.uuid)
            raise
        journal.clear_intent(state_dir, info.uuid)

    if not steps:
        return result(resumed=resumed)
    after = format_layout(current_layout(model, now))
    return result(after=after, steps=tuple(steps), changed=True, resumed=resumed)


def apply_node(
    backend,
    wanted_by_gpu: Dict[int, Layout],
    *,
    state_dir: str,
    partial: bool = False,
    dry_run: bool = False,
    lock_timeout: Optional[float] = 60,
    devices=None,
) -> List[ApplyResult]:
    """Apply a layout to each GPU of ``wanted_by_gpu`` under the node lock, by GPU index.

    Without ``partial``, every GPU is checked first and a busy instance on any of
    them refuses the whole node before anything changes.  A dry run takes no lock.
    ``devices`` (:class:`slurm_mig.host.devnodes.DeviceNodes`): afterwards, still under the
    lock, every instance of these GPUs gets its ``/dev/nvidia-caps`` files
    (:func:`slurm_mig.node.capfiles.ensure_cap_files`); what it made or could not fix is in
    each GPU's ``cap_files`` and ``warnings``.
    """
    gpus = sorted(wanted_by_gpu)
    backend = _job_aware(backend, state_dir)
    if dry_run:
        return [apply_gpu(backend, g, wanted_by_gpu[g], state_dir=state_dir, partial=partial,
                          dry_run=True) for g in gpus]
    with node_lock(os.path.join(os.fspath(state_dir), "node.lock"), lock_timeout):
        if not partial:
            refusals, blocked = [], []
            for g in gpus:
                info, _, wanted, _, plan = _prepare(backend, g, wanted_by_gpu[g])
                if plan.blocked:
                    refusals.append(_refusal(g, info, wanted, plan.blocked_records(), done=None))
                    blocked.extend(plan.blocked_records())
            if refusals:
                raise _refused(backend, "; ".join(refusals) + f"; nothing was changed; {FIX_BLOCKED}",
                               blocked)
        results = [apply_gpu(backend, g, wanted_by_gpu[g], state_dir=state_dir, partial=partial)
                   for g in gpus]
        if devices is None:
            return results
        return [_with_cap_files(devices, backend, r) for r in results]


def _with_cap_files(devices, backend, result: ApplyResult) -> ApplyResult:
    """One GPU's result with its cap files made right (after the apply, under the lock)."""
    from .capfiles import ensure_cap_files

    try:
        report = ensure_cap_files(devices, backend, [result.gpu])
    except SlurmMigError as err:
        raise _with_context(err, f"{err} (gpu {result.gpu}: the layout {result.after} was applied; "
                            f"its device files were not all made)") from err
    return replace(result, cap_files=report.as_dict(),
                   warnings=result.warnings + tuple(report.warnings()))


# ----------------------------------------------------------------------------- internals


class JobAwareBackend:
    """A backend whose instances also count as busy while a Slurm job holds them.

    The prolog records which job it gave an instance (:mod:`slurm_mig.node.jobs`) before the
    job's processes start; an apply in that gap must not destroy it.  A damaged record
    never frees an instance: the pairs it still names stay held, and when what it holds
    cannot be known, every instance no readable record holds is busy as ``<job>?``
    (:class:`slurm_mig.node.jobs.Holders`).  Each damaged record's warning is kept, once, in
    ``record_warnings``.  Everything but ``instances`` goes straight to the wrapped backend.
    """

    def __init__(self, backend, state_dir: str):
        self._backend = backend
        self._state_dir = os.fspath(state_dir)
        self.record_warnings: List[str] = []
        self.unknown: Dict[str, str] = {}  #: job whose record is unreadable -> its warning

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def instances(self, gpu: int) -> List[MigInstance]:
        held = holders(self._state_dir, boot_id())
        for line in held.warnings:
            if line not in self.record_warnings:
                log.warning("%s", line)
                self.record_warnings.append(line)
        self.unknown.update(held.unknown)
        out = []
        for m in self._backend.instances(gpu):
            jobs = held.jobs_of(gpu, m.gi_id)
            out.append(replace(m, jobs=jobs) if jobs else m)
        return out


def _refused(backend, text: str, blocked: Iterable[Blocked]) -> ApplyRefused:
    """The refusal, with the warning of each unreadable record that makes an instance busy."""
    unknown = getattr(backend, "unknown", {})
    notes = []
    for b in blocked:
        for job in b.jobs:
            line = unknown.get(job[:-1]) if job.endswith("?") else None
            if line and line not in notes:
                notes.append(line)
    return ApplyRefused("; ".join([text] + notes))


def _job_aware(backend, state_dir) -> "JobAwareBackend":
    return backend if isinstance(backend, JobAwareBackend) else JobAwareBackend(backend, state_dir)


def _prepare(backend, gpu: int, wanted: Layout):
    """Read one GPU and plan: (info, effective model, wanted on it, instances, plan)."""
    info = _gpu_info(backend, gpu)
    model = gpu_model(backend, info)
    try:
        wanted = layout_from(model, [(i.profile_id, i.start) for i in wanted])
    except InputError as err:
        raise LayoutError(f"gpu {gpu} ({info.name}): {err}") from err
    instances = backend.instances(gpu)
    return info, model, wanted, instances, plan_gpu(model, instances, wanted)


def _gpu_info(backend, gpu: int) -> GpuInfo:
    gpus = backend.gpus()
    for info in gpus:
        if info.index == gpu:
            return info
    raise InputError(
        f"gpu {gpu} not found; this node has gpu {', '.join(str(g.index) for g in gpus) or 'none'} "
        f"(`slurm-mig status` lists them)"
    )


def _intent_layout(model: GpuModel, intent: journal.Intent, state_dir: str, warnings: List[str]):
    """The layout an intent wanted, or None (set aside, with a warning) when it does not fit."""
    try:
        return layout_from(model, intent.instances)
    except InputError as err:
        moved = journal.set_aside(state_dir, intent.uuid)
        text = (f"intent journal for gpu {intent.gpu} wants {intent.layout}, which does not fit "
                f"{model.name} ({err}); moved to {moved}; applying the new request directly")
        log.warning("%s", text)
        warnings.append(text)
        return None


def _converge(
    backend,
    gpu: int,
    model: GpuModel,
    wanted: Layout,
    *,
    partial: bool,
    steps: List[Step],
    recovery: bool,
    first: Optional[GpuPlan] = None,
    info: Optional[GpuInfo] = None,
) -> Tuple[GpuPlan, List[MigInstance]]:
    """Make the changes planned for ``wanted``, then verify by reading back.

    Returns the final plan and the instances read back.

    Busy state is re-read before each destroy; an instance found busy then is blocked
    (with ``partial``) or refuses the rest (without), and the plan is made again.
    """
    plan = first or plan_gpu(model, backend.instances(gpu), wanted)
    while True:
        replan = False
        for m in plan.destroy:
            fresh = _find(backend.instances(gpu), m.gi_id)
            if fresh is None or (fresh.profile_id, fresh.start) != (m.profile_id, m.start):
                continue  # already gone: the read-back below still checks the result
            if fresh.busy:
                if not partial:
                    blocked = plan_gpu(model, [fresh], Layout()).blocked_records()
                    raise _refused(backend, _refusal(gpu, info, wanted, blocked, done=len(steps),
                                                     race=True), blocked)
                replan = True
                break
            _do(backend.destroy_instance, (gpu, m.gi_id),
                Step("destroy", model.profile(m.profile_id).name, m.start, m.gi_id, recovery),
                gpu, wanted, steps)
        if not replan:
            break
        plan = plan_gpu(model, backend.instances(gpu), wanted)
    for m in plan.complete:
        _do(backend.create_compute_instance, (gpu, m.gi_id),
            Step("complete", model.profile(m.profile_id).name, m.start, m.gi_id, recovery),
            gpu, wanted, steps)
    for inst in plan.create:
        _do(backend.create_instance, (gpu, inst.profile_id, inst.start),
            Step("create", inst.name, inst.start, None, recovery), gpu, wanted, steps)
    now = backend.instances(gpu)
    _verify(model, gpu, now, plan.target, wanted)
    return plan, now


def _do(call, args, step: Step, gpu: int, wanted: Layout, steps: List[Step]) -> None:
    """Make one driver call and record its step; driver errors get the apply's context."""
    try:
        out = call(*args)
    except SlurmMigError as err:
        raise _with_context(
            err,
            f"{err}; while applying {format_layout(wanted)} to gpu {gpu} ({step}, after "
            f"{len(steps)} other changes): the intent is journaled, the next apply finishes it",
        ) from err
    if step.action == "create" and isinstance(out, MigInstance):
        step = Step(step.action, step.profile, step.start, out.gi_id, step.recovery)
    log.info("gpu %d: %s", gpu, step)
    steps.append(step)


def _with_context(err: SlurmMigError, message: str) -> SlurmMigError:
    """The same kind of error with a longer message (the original stays as the cause)."""
    try:
        return type(err)(message)
    except Exception:  # an error class with another constructor: keep it as it is
        return err


def _verify(model: GpuModel, gpu: int, instances: Sequence[MigInstance], target: Layout, wanted: Layout):
    got = current_layout(model, instances)
    half = [m for m in instances if not m.complete]
    if got.keys() == target.keys() and not half:
        return
    what = "wanted" if target.keys() == wanted.keys() else f"possible (of {format_layout(wanted)})"
    extra = ""
    if half:
        extra = " with no compute instance on " + ", ".join(
            f"{model.profile(m.profile_id).name}@{m.start} (gi {m.gi_id})" for m in half
        )
    raise GpuError(
        f"gpu {gpu}: after apply the driver reports {format_layout(got)}{extra} but "
        f"{format_layout(target)} was {what}; check `slurm-mig status` and apply again"
    )


def _find(instances: Iterable[MigInstance], gi_id: int) -> Optional[MigInstance]:
    return next((m for m in instances if m.gi_id == gi_id), None)


def _refusal(gpu, info, wanted: Layout, blocked: Sequence[Blocked], *, done, race=False) -> str:
    """One line: which GPU, which busy instances and pids, what changed, how to proceed."""
    name = f"gpu {gpu}" + (f" ({info.uuid})" if info is not None else "")
    items = "; ".join(f"{b.profile}@{b.start} (gi {b.gi_id}) is in use by {b.users()}" for b in blocked)
    head = f"{name}: cannot apply {format_layout(wanted)}: {items}"
    if race:
        head += " (it became busy during the apply)"
    if done is None:
        return head
    if done == 0:
        return f"{head}; nothing was changed; {FIX_BLOCKED}"
    return (f"{head}; {done} changes were made first (finishing an interrupted run or this one); "
            f"{FIX_BLOCKED}")
