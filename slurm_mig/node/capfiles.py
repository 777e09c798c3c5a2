"""Keep each MIG instance's ``/dev/nvidia-caps`` files, as ``nvidia-modprobe -f`` would.

The driver makes no ``/dev`` node for a new instance (a lent H200 on driver 580 showed only
``nvidia-cap1`` and ``nvidia-cap2``); gres.conf names two per instance and slurmd fatals on
a missing one.  :func:`ensure_cap_files` runs after every apply (:func:`slurm_mig.node.apply.apply_node`)
and :class:`CapFileKeeper` in the prolog's repair (docs/gres.md, "Capability device files").

What it never does: remove a file.  A cap file's minor names one (gpu, gi[, ci]) for the
life of the driver (``mig-minors``), so the file of a destroyed instance is the right file
for the next instance with those ids; removing it gains nothing and could race a job.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..core.capfiles import CHMOD, CREATE, KEPT, OK, REPLACE, UNMANAGED, WantedNode, decide
from ..core.devices import DeviceFilesError
from ..core.gputypes import MigInstance

log = logging.getLogger(__name__)

_FIX_ENTRY = "check the driver (`ls {dir}`, `nvidia-smi mig -lgi -i {gpu}`)"


@dataclass(frozen=True)
class CapReport:
    """What one pass did: paths made, fixed, kept (wrong but in use) and unmanaged."""

    checked: int = 0
    made: Tuple[str, ...] = ()  #: "path (mknod)" or "path (nvidia-modprobe)"
    fixed: Tuple[str, ...] = ()  #: replaced or chmod-ed, with why
    kept: Tuple[str, ...] = ()  #: wrong, left because the instance is in use
    unmanaged: Tuple[str, ...] = ()  #: DeviceFileModify: 0

    def warnings(self) -> List[str]:
        return [f"cap file {line}" for line in self.kept + self.unmanaged]

    def as_dict(self) -> dict:
        return {"checked": self.checked, "made": list(self.made), "fixed": list(self.fixed),
                "kept": list(self.kept), "unmanaged": list(self.unmanaged)}

    def __add__(self, other: "CapReport") -> "CapReport":
        return CapReport(self.checked + other.checked, self.made + other.made,
                         self.fixed + other.fixed, self.kept + other.kept,
                         self.unmanaged + other.unmanaged)


def _users(inst: MigInstance) -> Tuple[str, ...]:
    return tuple([f"pid {p}" for p in inst.pids] + [f"job {j}" for j in inst.jobs])


def wanted_nodes(nodes, gpu_minor: int, inst: MigInstance, major: int,
                 in_use: Tuple[str, ...] = ()) -> List[WantedNode]:
    """The GPU-instance and compute-instance cap files of a complete instance, from the
    driver's capability entries."""
    out = []
    for ci in (None, inst.ci_id):
        found = nodes.cap_entry(gpu_minor, inst.gi_id, ci)
        owner = f"gpu {inst.gpu} gi {inst.gi_id}" + ("" if ci is None else f" ci {ci}")
        if found is None:
            where = os.path.dirname(os.path.dirname(nodes.access_path(gpu_minor, inst.gi_id)))
            raise DeviceFilesError(
                f"{owner}: the driver shows no capability entry for it, so its "
                f"/dev/nvidia-caps file cannot be made; {_FIX_ENTRY.format(dir=where, gpu=inst.gpu)}")
        access, entry = found
        path = os.path.join(nodes.dev, "nvidia-caps", f"nvidia-cap{entry.minor}")
        out.append(WantedNode(path, access, major, entry, owner, in_use))
    return out


def ensure_instances(nodes, pairs: Iterable[Tuple[int, MigInstance]], *,
                     held: Optional[Callable[[int, int], Tuple[str, ...]]] = None,
                     check_only: bool = False) -> CapReport:
    """Make the cap files of each (gpu minor, instance) right (see :func:`decide`).

    ``held(gpu, gi)`` names the jobs holding an instance (job records), asked only when a
    file is wrong; an instance with processes or a job is in use.  ``check_only`` decides
    and reports, changing nothing (``made``/``fixed`` then list what would be done)."""
    pairs = [(m, i) for m, i in pairs if i.complete]
    if not pairs:
        return CapReport()
    major = nodes.caps_major()
    made: List[str] = []
    fixed: List[str] = []
    kept: List[str] = []
    unmanaged: List[str] = []
    checked = 0
    for gpu_minor, inst in pairs:
        use = _users(inst)
        for node in wanted_nodes(nodes, gpu_minor, inst, major, use):
            checked += 1
            d = decide(node, nodes.look(node.path), simulated=nodes.simulated)
            if d.action in (REPLACE, CHMOD) and held is not None and not use:
                jobs = held(inst.gpu, inst.gi_id)
                if jobs:  # a job holds it before its processes start: in use too
                    node = WantedNode(node.path, node.access, node.major, node.entry, node.owner,
                                      tuple(f"job {j}" for j in jobs))
                    d = decide(node, nodes.look(node.path), simulated=nodes.simulated)
            if d.action == OK:
                continue
            if d.action == KEPT:
                log.warning("cap file %s", d)
                kept.append(str(d))
            elif d.action == UNMANAGED:
                unmanaged.append(str(d))
            elif d.action == CREATE:
                how = "check" if check_only else nodes.make(node)
                log.info("made %s (%s) for %s", node.path, how, node.owner)
                made.append(f"{node.path} ({how})")
            elif d.action == REPLACE:
                how = "check" if check_only else nodes.make(node)
                log.warning("replaced %s (%s): was %s", node.path, how, d.why)
                fixed.append(f"{node.path} ({how}): was {d.why}")
            elif d.action == CHMOD:
                if not check_only:
                    nodes.set_attrs(node)
                fixed.append(f"{node.path} (chmod): was {d.why}")
    return CapReport(checked, tuple(made), tuple(fixed), tuple(kept), tuple(unmanaged))


def ensure_cap_files(nodes, backend, gpus: Optional[Iterable[int]] = None, *,
                     held: Optional[Callable[[int, int], Tuple[str, ...]]] = None,
                     check_only: bool = False) -> CapReport:
    """:func:`ensure_instances` for every complete instance of the GPUs ``gpus`` (indexes;
    None: every GPU in MIG mode), as ``backend`` lists them."""
    wanted = None if gpus is None else set(gpus)
    pairs = []
    for info in backend.gpus():
        if not info.mig_current or (wanted is not None and info.index not in wanted):
            continue
        pairs += [(info.minor, inst) for inst in backend.instances(info.index)]
    return ensure_instances(nodes, pairs, held=held, check_only=check_only)


def job_holders(state_dir: str) -> Callable[[int, int], Tuple[str, ...]]:
    """``held(gpu, gi)`` from the job records (read once, when first asked)."""
    cache: Dict[str, object] = {}

    def held(gpu: int, gi: int) -> Tuple[str, ...]:
        if "h" not in cache:
            from .jobs import boot_id, holders

            cache["h"] = holders(state_dir, boot_id())
        return tuple(cache["h"].jobs_of(gpu, gi))  # type: ignore[attr-defined]

    return held


class CapFileKeeper:
    """A backend that keeps the cap files of every complete instance it lists or creates:
    the prolog's repair (:func:`keep_cap_files`).  Everything else goes straight through."""

    def __init__(self, backend, nodes, state_dir: str):
        self._backend = backend
        self._nodes = nodes
        self._held = job_holders(state_dir)
        self._minor: Optional[Dict[int, int]] = None
        self.report = CapReport()

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def _gpu_minor(self, gpu: int) -> int:
        if self._minor is None:
            self._minor = {g.index: g.minor for g in self._backend.gpus()}
        return self._minor[gpu]

    def _keep(self, insts: List[MigInstance]) -> None:
        if insts:
            self.report = self.report + ensure_instances(
                self._nodes, [(self._gpu_minor(i.gpu), i) for i in insts], held=self._held)

    def instances(self, gpu: int) -> List[MigInstance]:
        out = self._backend.instances(gpu)
        self._keep(out)
        return out

    def create_instance(self, gpu: int, profile_id: int, start: int) -> MigInstance:
        inst = self._backend.create_instance(gpu, profile_id, start)
        self._keep([inst])
        return inst

    def create_compute_instance(self, gpu: int, gi_id: int) -> MigInstance:
        inst = self._backend.create_compute_instance(gpu, gi_id)
        self._keep([inst])
        return inst


def keep_cap_files(backend, config):
    """The prolog's one call: ``backend`` wrapped so that each instance it lists or creates
    has its cap files (:class:`CapFileKeeper`)."""
    from ..host.devnodes import device_nodes

    return CapFileKeeper(backend, device_nodes(config), config.paths.state_dir)
