"""A simulated NVIDIA driver with MIG, shared between processes through a state file.

It answers in NVML's terms (profile ids, placements, GPU-instance and compute-instance
ids, NVML return codes) so that both the simulator backend and the pynvml-compatible
fake (:mod:`slurm_mig.sim.fakenvml`) can sit on it.  What it models, because code
above it must cope with it:

* GPU-instance ids are the driver's swizzle ids: a memory-size class picks the id
  range (FULL 0, HALF 1-2, QUARTER 3-6, EIGHTH 7-14) and a per-GPU permutation picks
  the id inside it, never the identity.  Code that computes ids from placements fails.
* Create errors: INVALID_ARGUMENT (placement not offered), INSUFFICIENT_RESOURCES
  (overlap, count exhausted), NOT_SUPPORTED (MIG off), and IN_USE on destroy while
  processes (compute instance) or compute instances (GPU instance) exist.
* MIG mode, per generation (docs/mig-mode.md): on Ampere (A100, A30, A800) a change
  stays pending and ``nvmlDeviceSetMigMode`` answers IN_USE ("In use by another client"),
  as a real node where a GPU client (nvidia-persistenced, DCGM, fabric manager) keeps the
  driver from resetting the GPU itself; :meth:`SimDriver.reset_gpu` (``nvidia-smi -r``)
  makes it current.  Hopper and later (H100, H200, GH200, H20, B200, GB200, RTX PRO 6000)
  apply it at once, unless processes run on the whole GPU: then IN_USE and pending until
  they are gone and the GPU is reset (the answer NVML documents for a busy device).  A GPU
  with GPU instances answers IN_USE and keeps its mode; a reset with processes or GPU
  instances is refused with IN_USE.  Processes on the whole GPU (MIG mode off) are
  :meth:`SimDriver.attach_gpu_process`'s.
  With MIG mode off, profile info, placements and remaining capacity still answer and
  the instance lists are empty, as a real H200 on driver 580.159.04 did
  (tests/data/nvml/); creating an instance then fails with NOT_SUPPORTED.
* Processes attached to an instance make it "in use"; a tracked process disappears
  from the listing once the real pid is gone, as with the real driver.
* Faults: fail the Nth call of an operation with an NVML code, or crash (raise or
  ``os._exit``) before or after the Nth mutation reaches the state file.
* The driver's cheap facts under ``<root>/proc`` (the node's ``/proc``), kept in step
  with every change as the kernel module keeps its own (:func:`sync_proc`):
  ``driver/nvidia/version``, ``driver/nvidia/gpus/<bus id>/information`` (model,
  UUID, bus, device minor), ``driver/nvidia/capabilities/mig/{config,monitor}`` and, for
  each created instance, ``capabilities/gpu<minor>/mig/gi<G>/access`` and
  ``.../gi<G>/ci<C>/access`` (``DeviceFileMinor:``, as the MIG user guide shows them), and
  ``devices`` with the ``nvidia-caps`` major the simulated cap files carry.
  An entry made again is a new file (a new inode and modification time), as a procfs
  entry the driver removes and creates again is a new inode; one that did not change is
  left alone.  The hooks' fast path trusts only these facts (docs/hooks.md), never the
  state file.

State lives in ``<root>/state.json``, rewritten atomically under an exclusive
``flock`` on ``<root>/state.lock``; the prologs that a real slurmd starts share it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

from ..core.catalog import GI_PROFILE_ENUMS, GpuModel, load_catalog
from ..core.errors import GpuError, LockBusy, SimulatedCrash
from ..core.gputypes import mode_change_needs_reset
from ..core.layout import is_media_extension
from ..gpu import nvmlcodes as rc
from ..host.atomic import write_atomic, write_json_atomic
from ..host.jobprocs import pid_alive
from ..host.safefs import ensure_dir, open_file

STATE_VERSION = 1
ID_RANGES = {"FULL": (0,), "HALF": (1, 2), "QUARTER": (3, 4, 5, 6), "EIGHTH": tuple(range(7, 15))}
GI_PROFILE_COUNT = 0x12
#: NVML_COMPUTE_INSTANCE_PROFILE_* enum index -> compute slices (the CI profile id is the enum).
CI_PROFILE_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6, 7: 1}
CI_PROFILE_COUNT = 0x9
MUTATIONS = ("create_gi", "create_ci", "destroy_ci", "destroy_gi", "set_mig_mode", "reset_gpu")
NVIDIA_MAJOR = 195
CAPS_MAJOR = 511  # any major works for the device cgroup; the real one is dynamic
#: What the simulated driver calls itself in ``<root>/proc/driver/nvidia/version``.
DRIVER_VERSION_TEXT = ("NVRM version: slurm-mig simulated driver (an NVIDIA UNIX Open Kernel "
                       "Module look-alike)  580.82.07  Release Build\n")
#: ``/proc/devices`` as a loaded driver leaves it: the majors of its character devices.
PROC_DEVICES_TEXT = (f"Character devices:\n  1 mem\n  5 /dev/tty\n{NVIDIA_MAJOR} nvidia\n"
                     f"235 nvidia-uvm\n{CAPS_MAJOR} nvidia-caps\n\n"
                     f"Block devices:\n  7 loop\n  8 sd\n")
#: DeviceFileMode of the MIG capability files, as the driver reports them (0444, in decimal).
CAP_FILE_MODE = 292


class SimNvmlError(GpuError):
    """An NVML return code from the simulated driver."""

    def __init__(self, code: int, what: str = ""):
        self.code = code
        super().__init__(f"{what}: {rc.name_of(code)}" if what else rc.name_of(code))


def _id_permutation(seed: int, n: int) -> List[int]:
    """A per-GPU, never-identity permutation of ``n`` swizzle-id slots."""
    import random  # here, not at import: the hooks start on every job and rarely get here

    slots = list(range(n))
    if n < 2:
        return slots
    rng = random.Random(seed)
    rng.shuffle(slots)
    if slots == list(range(n)):
        slots = slots[1:] + slots[:1]
    return slots


class SimDriver:
    """The simulated driver over one state directory.  Every call locks, loads, saves."""

    def __init__(self, root: str, lock_timeout: float = 30.0):
        self.root = os.path.abspath(root)
        self.state_path = os.path.join(self.root, "state.json")
        self.lock_path = os.path.join(self.root, "state.lock")
        self.lock_timeout = lock_timeout
        if not os.path.exists(self.state_path):
            raise GpuError(
                f"no simulated GPUs under {self.root}; create them with "
                f"`slurm-mig --backend sim sim init` (or set [sim] gpus in config.toml)"
            )

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        root: str,
        models: Sequence[str],
        *,
        mig_enabled: bool = True,
        minors: Optional[Sequence[int]] = None,
        device_nodes: bool = True,
        seed: Optional[int] = None,
    ) -> "SimDriver":
        """Lay out a simulated GPU node under ``root``: state, mig-minors, /dev files.

        ``models`` are catalog keys or names; an entry ``"nomig:<name>"`` is a GPU
        without MIG support.  Existing state is replaced.
        """
        import hashlib
        import uuid as uuidlib

        from ..core.devices import render_mig_minors

        catalog = load_catalog()
        root = os.path.abspath(root)
        ensure_dir(root, 0o755, "simulator root")
        minors = list(minors) if minors is not None else list(range(len(models)))
        # New GPUs get new UUIDs (and id permutations) unless a seed pins them, so that
        # state keyed by UUID (the apply journal) never follows a GPU that was replaced.
        run_seed = seed if seed is not None else uuidlib.uuid4().hex
        gpus: List[Dict[str, Any]] = []
        for index, query in enumerate(models):
            mig_capable = not query.startswith("nomig:")
            model: Optional[GpuModel] = catalog.model(query) if mig_capable else None
            name = model.name if model else query[len("nomig:"):]
            digest = hashlib.sha256(f"{root}:{index}:{run_seed}".encode()).hexdigest()
            gpus.append(
                {
                    "index": index,
                    "model": model.key if model else None,
                    "name": name,
                    "uuid": "GPU-" + str(uuidlib.UUID(digest[:32])),
                    "minor": minors[index],
                    "pci_device_id": (model.pci_device_ids[0] if model and model.pci_device_ids else "0x00000000"),
                    "mig_current": bool(mig_enabled and mig_capable),
                    "mig_pending": bool(mig_enabled and mig_capable),
                    "id_seed": int(digest[32:40], 16),
                    "gis": [],
                }
            )
        state = {"version": STATE_VERSION, "gpus": gpus, "faults": [], "calls": {}, "serial": 0}
        with _exclusive(os.path.join(root, "state.lock"), 30.0):
            _atomic_write_json(os.path.join(root, "state.json"), state)
            proc = os.path.join(root, "proc", "driver", "nvidia-caps")
            ensure_dir(proc, 0o755, "simulated /proc")
            write_atomic(os.path.join(proc, "mig-minors"), render_mig_minors(sorted(set(minors))),
                         mode=0o444, keep_prev=False, follow=False)
            # A new node is a freshly loaded driver: every entry of the old one goes.
            _remove_tree(os.path.join(root, "proc", "driver", "nvidia"))
            sync_proc(root, state)
        _make_device_files(os.path.join(root, "dev"), minors, device_nodes)
        return cls(root)

    def refresh_proc(self) -> None:
        """Bring ``<root>/proc`` in step with the state (for tests that edit the state file
        by hand: what the kernel module would show for that state)."""
        with self._state() as state:
            sync_proc(self.root, state)

    # ------------------------------------------------------------------ state plumbing

    @contextlib.contextmanager
    def _state(self, mutate: bool = False) -> Iterator[dict]:
        with _exclusive(self.lock_path, self.lock_timeout):
            with open(self.state_path) as f:
                state = json.load(f)
            yield state
            if mutate:
                _atomic_write_json(self.state_path, state)

    def snapshot(self) -> dict:
        """The whole state, for tests and `slurm-mig sim show`."""
        with self._state() as state:
            self._prune_dead(state)
            return state

    def _gpu(self, state: dict, index: int) -> dict:
        for g in state["gpus"]:
            if g["index"] == index:
                return g
        raise SimNvmlError(rc.INVALID_ARGUMENT, f"gpu {index}")

    def _model(self, gpu: dict) -> GpuModel:
        if gpu["model"] is None:
            raise SimNvmlError(rc.NOT_SUPPORTED, f"gpu {gpu['index']} ({gpu['name']}) has no MIG")
        return load_catalog().model(gpu["model"])

    def _mig_model(self, gpu: dict) -> GpuModel:
        model = self._model(gpu)
        if not gpu["mig_current"]:
            raise SimNvmlError(rc.NOT_SUPPORTED, f"gpu {gpu['index']}: MIG mode is disabled")
        return model

    def _find_gi(self, gpu: dict, gi_id: int) -> dict:
        for gi in gpu["gis"]:
            if gi["id"] == gi_id:
                return gi
        raise SimNvmlError(rc.NOT_FOUND, f"gpu {gpu['index']} gi {gi_id}")

    @staticmethod
    def _prune_dead(state: dict) -> None:
        for gpu in state["gpus"]:
            gpu["procs"] = [p for p in gpu.get("procs", []) if not p.get("track") or pid_alive(p["pid"])]
            for gi in gpu["gis"]:
                for ci in gi["cis"]:
                    ci["procs"] = [p for p in ci["procs"] if not p.get("track") or pid_alive(p["pid"])]

    def _fault(self, state: dict, op: str, when: str) -> None:
        """Fire a matching injected fault.  Called with the state lock held."""
        if when == "before":
            calls = state.setdefault("calls", {})
            calls[op] = calls.get(op, 0) + 1
            calls["any"] = calls.get("any", 0) + 1
        for fault in list(state.get("faults", [])):
            if fault["op"] not in (op, "any") or fault.get("when", "before") != when:
                continue
            count = state["calls"].get(fault["op"], 0)
            if count != fault["nth"]:
                continue
            state["faults"].remove(fault)
            if fault.get("crash"):
                # The fault is spent whether or not the state write below happens:
                # persist that first, as a real crash leaves the driver as it was.
                _atomic_write_json(self.state_path, state)
                if fault["crash"] == "exit":
                    os._exit(137)
                raise SimulatedCrash(f"simulated crash at {op} #{count} ({when})")
            _atomic_write_json(self.state_path, state)
            raise SimNvmlError(fault["code"], f"injected fault at {op} #{count}")

    @contextlib.contextmanager
    def _mutation(self, op: str) -> Iterator[dict]:
        """Lock, count the call, fire 'before' faults, mutate, save, fire 'after' faults."""
        with _exclusive(self.lock_path, self.lock_timeout):
            with open(self.state_path) as f:
                state = json.load(f)
            self._fault(state, op, "before")
            self._prune_dead(state)
            try:
                yield state
            except SimNvmlError:
                # A refused call changes nothing but still counts as a call.
                with open(self.state_path) as f:
                    fresh = json.load(f)
                fresh["calls"] = state["calls"]
                _atomic_write_json(self.state_path, fresh)
                raise
            state["serial"] = state.get("serial", 0) + 1
            _atomic_write_json(self.state_path, state)
            sync_proc(self.root, state)  # the change reached the driver: so did its entries
            self._fault(state, op, "after")

    # ------------------------------------------------------------------ faults, processes

    def inject_fault(self, op: str, nth: int = 1, *, code: Optional[int] = None,
                     crash: Optional[str] = None, when: str = "before") -> None:
        """Make the ``nth`` call of ``op`` (counted from now) fail with ``code`` or crash.

        ``op`` is one of MUTATIONS or ``any``; ``crash`` is ``raise`` (SimulatedCrash)
        or ``exit`` (``os._exit(137)``, a process killed mid-way); ``when`` is
        ``before`` (nothing changed) or ``after`` (the change reached the driver).
        """
        if op not in MUTATIONS + ("any",):
            raise ValueError(f"unknown operation {op!r}")
        if (code is None) == (crash is None):
            raise ValueError("give exactly one of code= or crash=")
        with self._state(mutate=True) as state:
            done = state.setdefault("calls", {}).get(op, 0)
            state.setdefault("faults", []).append(
                {"op": op, "nth": done + nth, "code": code, "crash": crash, "when": when}
            )

    def clear_faults(self) -> None:
        with self._state(mutate=True) as state:
            state["faults"] = []

    def attach_process(self, gpu: int, gi_id: int, ci_id: int, pid: int, *, track: bool = False) -> None:
        """Show ``pid`` running on an instance.  ``track``: drop it once the real pid is gone."""
        with self._state(mutate=True) as state:
            ci = self._find_ci(self._find_gi(self._gpu(state, gpu), gi_id), ci_id)
            if all(p["pid"] != pid for p in ci["procs"]):
                ci["procs"].append({"pid": pid, "track": track})

    def detach_process(self, gpu: int, gi_id: int, ci_id: int, pid: Optional[int] = None) -> None:
        """Stop showing ``pid`` (all processes when None) on an instance."""
        with self._state(mutate=True) as state:
            ci = self._find_ci(self._find_gi(self._gpu(state, gpu), gi_id), ci_id)
            ci["procs"] = [p for p in ci["procs"] if pid is not None and p["pid"] != pid]

    def attach_gpu_process(self, gpu: int, pid: int, *, track: bool = False) -> None:
        """Show ``pid`` running on the whole GPU (MIG mode off: a CUDA process, or a client
        such as DCGM).  NOT_SUPPORTED while MIG mode is on: processes run on instances then."""
        with self._state(mutate=True) as state:
            g = self._gpu(state, gpu)
            if g["mig_current"]:
                raise SimNvmlError(rc.NOT_SUPPORTED, f"gpu {gpu} is in MIG mode: attach to an instance")
            procs = g.setdefault("procs", [])
            if all(p["pid"] != pid for p in procs):
                procs.append({"pid": pid, "track": track})

    def detach_gpu_process(self, gpu: int, pid: Optional[int] = None) -> None:
        """Stop showing ``pid`` (all processes when None) on the whole GPU."""
        with self._state(mutate=True) as state:
            g = self._gpu(state, gpu)
            g["procs"] = [p for p in g.get("procs", []) if pid is not None and p["pid"] != pid]

    def gpu_processes(self, gpu: int) -> List[int]:
        """Processes on the whole GPU (MIG mode off), as nvmlDeviceGetComputeRunningProcesses
        on the device handle lists them; [] in MIG mode."""
        with self._state() as state:
            self._prune_dead(state)
            g = self._gpu(state, gpu)
            return sorted(p["pid"] for p in g.get("procs", [])) if not g["mig_current"] else []

    def _find_ci(self, gi: dict, ci_id: int) -> dict:
        for ci in gi["cis"]:
            if ci["id"] == ci_id:
                return ci
        raise SimNvmlError(rc.NOT_FOUND, f"gi {gi['id']} ci {ci_id}")

    # ------------------------------------------------------------------ NVML-shaped reads

    def gpus(self) -> List[dict]:
        with self._state() as state:
            return [{k: v for k, v in g.items() if k != "gis"} for g in state["gpus"]]

    def mig_mode(self, gpu: int):
        with self._state() as state:
            g = self._gpu(state, gpu)
            self._model(g)
            return int(g["mig_current"]), int(g["mig_pending"])

    def profile_model(self, gpu: int) -> GpuModel:
        """The catalog model of a MIG-capable GPU, MIG mode on or off (profile reads
        answer either way); NOT_SUPPORTED for a GPU without MIG."""
        with self._state() as state:
            return self._model(self._gpu(state, gpu))

    def mig_model(self, gpu: int) -> GpuModel:
        """The catalog model of a GPU in MIG mode; NOT_SUPPORTED otherwise."""
        with self._state() as state:
            return self._mig_model(self._gpu(state, gpu))

    def profile_by_enum(self, gpu: int, enum: int):
        """The catalog profile at NVML enum index ``enum``; NOT_SUPPORTED when absent."""
        with self._state() as state:
            model = self._model(self._gpu(state, gpu))  # MIG mode off too (module doc)
        for p in model.profiles:
            if GI_PROFILE_ENUMS.get(p.enum) == enum:
                return model, p
        raise SimNvmlError(rc.NOT_SUPPORTED, f"gpu {gpu} profile enum {enum}")

    def profile_by_id(self, gpu: int, profile_id: int):
        with self._state() as state:
            model = self._model(self._gpu(state, gpu))  # MIG mode off too (module doc)
        for p in model.profiles:
            if p.id == profile_id:
                return model, p
        raise SimNvmlError(rc.INVALID_ARGUMENT, f"gpu {gpu} profile id {profile_id}")

    def gpu_instances(self, gpu: int) -> List[dict]:
        with self._state() as state:
            g = self._gpu(state, gpu)
            self._model(g)  # MIG mode off: no instances, not an error (as NVML 580 answers)
            self._prune_dead(state)
            return sorted(g["gis"], key=lambda gi: gi["id"])

    def remaining_capacity(self, gpu: int, profile_id: int) -> int:
        """How many more of a profile fit: free placements, capped by the profile's count
        (a real H200 answers 1, not 7, for 1g.18gb+me on an empty GPU)."""
        model, profile = self.profile_by_id(gpu, profile_id)
        gis = self.gpu_instances(gpu)
        fits = sum(1 for s in profile.placements if self._fits(model, gis, profile, s))
        existing = sum(1 for gi in gis if gi["profile_id"] == profile.id)
        return max(0, min(fits, profile.max_count - existing))

    @staticmethod
    def _fits(model: GpuModel, gis: List[dict], profile, start: int) -> bool:
        if start not in profile.placements:
            return False
        if sum(1 for gi in gis if gi["profile_id"] == profile.id) >= profile.max_count:
            return False
        end = start + profile.placement_size
        if any(gi["start"] < end and start < gi["start"] + gi["size"] for gi in gis):
            return False
        if is_media_extension(profile) and any(
            is_media_extension(model.profile(gi["profile_id"])) for gi in gis
        ):
            return False  # the media engines are taken
        used = sum(model.profile(gi["profile_id"]).compute_slices for gi in gis)
        return used + profile.compute_slices <= model.compute_slices

    # ------------------------------------------------------------------ NVML-shaped writes

    def create_gpu_instance(self, gpu: int, profile_id: int, start: Optional[int] = None) -> dict:
        """nvmlDeviceCreateGpuInstance[WithPlacement]; returns the new GI record."""
        with self._mutation("create_gi") as state:
            g = self._gpu(state, gpu)
            model = self._mig_model(g)
            profile = next((p for p in model.profiles if p.id == profile_id), None)
            if profile is None:
                raise SimNvmlError(rc.INVALID_ARGUMENT, f"gpu {gpu}: profile id {profile_id}")
            if start is None:  # the driver packs from the top when not told where
                free = [s for s in profile.placements if self._fits(model, g["gis"], profile, s)]
                if not free:
                    raise SimNvmlError(rc.INSUFFICIENT_RESOURCES, f"gpu {gpu}: {profile.name}")
                start = free[-1]
            elif start not in profile.placements:
                raise SimNvmlError(rc.INVALID_ARGUMENT, f"gpu {gpu}: {profile.name}@{start}")
            if not self._fits(model, g["gis"], profile, start):
                raise SimNvmlError(rc.INSUFFICIENT_RESOURCES, f"gpu {gpu}: {profile.name}@{start}")
            gi_id = self._swizzle_id(g, model, profile, start)
            gi = {"id": gi_id, "profile_id": profile.id, "start": start,
                  "size": profile.placement_size, "cis": []}
            g["gis"].append(gi)
            return dict(gi)

    @staticmethod
    def _swizzle_id(gpu: dict, model: GpuModel, profile, start: int) -> int:
        ids = ID_RANGES[model.size_class(profile)]
        slot = start // profile.placement_size
        perm = _id_permutation(gpu["id_seed"] + len(ids), len(ids))
        return ids[perm[slot % len(ids)]]

    def create_compute_instance(self, gpu: int, gi_id: int, ci_profile: int) -> dict:
        """nvmlGpuInstanceCreateComputeInstance; CI ids are the lowest free, from 0."""
        with self._mutation("create_ci") as state:
            g = self._gpu(state, gpu)
            model = self._mig_model(g)
            gi = self._find_gi(g, gi_id)
            slices = CI_PROFILE_SLICES.get(ci_profile)
            gi_slices = model.profile(gi["profile_id"]).compute_slices
            if slices is None or slices > gi_slices:
                raise SimNvmlError(rc.NOT_SUPPORTED, f"gpu {gpu} gi {gi_id}: CI profile {ci_profile}")
            used = sum(CI_PROFILE_SLICES[ci["profile_id"]] for ci in gi["cis"])
            if used + slices > gi_slices:
                raise SimNvmlError(rc.INSUFFICIENT_RESOURCES, f"gpu {gpu} gi {gi_id}: CI profile {ci_profile}")
            import uuid as uuidlib  # here, not at import: see _id_permutation

            taken = {ci["id"] for ci in gi["cis"]}
            ci_id = next(i for i in range(8) if i not in taken)
            ci = {"id": ci_id, "profile_id": ci_profile, "uuid": "MIG-" + str(uuidlib.uuid4()), "procs": []}
            gi["cis"].append(ci)
            return dict(ci)

    def destroy_compute_instance(self, gpu: int, gi_id: int, ci_id: int) -> None:
        with self._mutation("destroy_ci") as state:
            gi = self._find_gi(self._gpu(state, gpu), gi_id)
            ci = self._find_ci(gi, ci_id)
            if ci["procs"]:
                raise SimNvmlError(rc.IN_USE, f"gpu {gpu} gi {gi_id} ci {ci_id}")
            gi["cis"].remove(ci)

    def destroy_gpu_instance(self, gpu: int, gi_id: int) -> None:
        with self._mutation("destroy_gi") as state:
            g = self._gpu(state, gpu)
            gi = self._find_gi(g, gi_id)
            if gi["cis"]:
                raise SimNvmlError(rc.IN_USE, f"gpu {gpu} gi {gi_id} has compute instances")
            g["gis"].remove(gi)

    def set_mig_mode(self, gpu: int, enabled: bool) -> int:
        """nvmlDeviceSetMigMode: returns the activation status (an NVML code, not raised).

        The pending mode always becomes ``enabled`` (except with GPU instances: IN_USE, no
        change); whether it becomes current follows the generation (module doc)."""
        with self._mutation("set_mig_mode") as state:
            g = self._gpu(state, gpu)
            self._model(g)
            if g["gis"]:
                return rc.IN_USE
            g["mig_pending"] = bool(enabled)
            if g["mig_current"] == g["mig_pending"]:
                return rc.SUCCESS  # nothing to change, or a pending change taken back
            if mode_change_needs_reset(g["name"]) or g.get("procs"):
                return rc.IN_USE  # pending: the driver could not reset the GPU itself
            g["mig_current"] = bool(enabled)
            return rc.SUCCESS

    def reset_gpu(self, gpu: int) -> None:
        """What `nvidia-smi -r -i N` does for MIG mode: the pending mode becomes current.
        Refused (IN_USE) while processes or GPU instances are on the GPU."""
        with self._mutation("reset_gpu") as state:
            g = self._gpu(state, gpu)
            busy = [p["pid"] for p in g.get("procs", [])] + [
                p["pid"] for gi in g["gis"] for ci in gi["cis"] for p in ci["procs"]]
            if busy:
                raise SimNvmlError(rc.IN_USE, f"gpu {gpu} has processes {sorted(busy)}")
            if g["gis"]:
                raise SimNvmlError(rc.IN_USE, f"gpu {gpu} has GPU instances")
            g["mig_current"] = g["mig_pending"]


# ---------------------------------------------------------------------- file helpers


@contextlib.contextmanager
def _exclusive(path: str, timeout: float) -> Iterator[None]:
    fd = open_file(path, os.O_RDWR | os.O_CREAT, 0o600, "simulator lock")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise LockBusy(
                        f"simulated driver state {path} is locked by another process for "
                        f"{timeout:.0f}s; find it with `fuser {path}`"
                    ) from err
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- the driver's /proc


def pci_bus_id(index: int) -> str:
    """The PCI bus id of simulated gpu ``index``, as NVML writes it (``00000000:10:00.0``)."""
    return "00000000:%02X:00.0" % (0x10 * (index + 1) & 0xFF)


def _proc_bus_dir(index: int) -> str:
    """``/proc/driver/nvidia/gpus/<dir>`` of a GPU: the bus id with a 4-digit domain,
    lower case (``0000:10:00.0``), as the driver names it."""
    return pci_bus_id(index)[4:].lower()


def _cap_text(minor: int, mode: int = CAP_FILE_MODE) -> str:
    return f"DeviceFileMinor: {minor}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n"


def proc_entries(state: dict) -> dict:
    """Every file the simulated driver shows under ``<root>/proc`` for ``state``:
    relative path -> text.  Pure."""
    from ..core.devices import formula_minors

    out = {os.path.join("driver", "nvidia", "version"): DRIVER_VERSION_TEXT,
           "devices": PROC_DEVICES_TEXT}
    caps = os.path.join("driver", "nvidia", "capabilities")
    out[os.path.join(caps, "mig", "config")] = _cap_text(1, 256)
    out[os.path.join(caps, "mig", "monitor")] = _cap_text(2, 292)
    for g in state["gpus"]:
        info = (f"Model: \t\t {g['name']}\nIRQ:   \t\t 0\nGPU UUID: \t {g['uuid']}\n"
                f"Bus Type: \t PCIe\nBus Location: \t {_proc_bus_dir(g['index'])}\n"
                f"Device Minor: \t {g['minor']}\nGPU Excluded:\t No\n")
        out[os.path.join("driver", "nvidia", "gpus", _proc_bus_dir(g["index"]), "information")] = info
        if g["model"] is None or not g["gis"]:
            continue
        fm = formula_minors([g["minor"]])  # the simulator's mig-minors is the formula
        mig = os.path.join(caps, f"gpu{g['minor']}", "mig")
        for gi in g["gis"]:
            out[os.path.join(mig, f"gi{gi['id']}", "access")] = _cap_text(fm.gi_minor(g["minor"], gi["id"]))
            for ci in gi["cis"]:
                out[os.path.join(mig, f"gi{gi['id']}", f"ci{ci['id']}", "access")] = _cap_text(
                    fm.ci_minor(g["minor"], gi["id"], ci["id"]))
    return out


def sync_proc(root: str, state: dict) -> None:
    """Make ``<root>/proc/driver/nvidia`` show ``state``: new entries are new files (each
    with its own modification time, so one made again is never the one before), entries
    of what is gone are removed, unchanged ones are left alone.  ``capabilities/gpu<minor>/mig``
    exists for every MIG-capable GPU (empty with MIG off, as a real H200 showed)."""
    base = os.path.join(root, "proc")
    wanted = proc_entries(state)
    dirs = {os.path.join(base, "driver", "nvidia", "capabilities", f"gpu{g['minor']}", "mig")
            for g in state["gpus"] if g["model"] is not None}
    top = os.path.join(base, "driver", "nvidia")
    have = set()
    for dirpath, _, files in os.walk(top):
        for name in files:
            have.add(os.path.relpath(os.path.join(dirpath, name), base))
    for rel in sorted(have - set(wanted)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(base, rel))
    for rel, text in sorted(wanted.items()):
        path = os.path.join(base, rel)
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except (FileNotFoundError, NotADirectoryError):
            pass
        _mkdirs(os.path.dirname(path))
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o444)
        stamp = time.time_ns()
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, path)
    for d in dirs:
        _mkdirs(d)
    # Empty gi<G>/ci<C> directories of what is gone (deepest first).
    caps = os.path.join(top, "capabilities")
    for dirpath, subdirs, files in sorted(os.walk(caps), key=lambda w: -len(w[0])):
        if dirpath not in dirs and not files and os.path.basename(dirpath).startswith(("gi", "ci")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def _mkdirs(path: str) -> None:
    """``path`` and what is missing above it, each 0755 whatever the umask (as /proc shows)."""
    if os.path.isdir(path):
        return
    _mkdirs(os.path.dirname(path))
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    os.chmod(path, 0o755)


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _atomic_write_json(path: str, data: dict) -> None:
    write_json_atomic(path, data, mode=0o600, durable=False)


def _make_device_files(dev_root: str, minors: Sequence[int], device_nodes: bool) -> None:
    """/dev/nvidia<N>, nvidiactl, nvidia-uvm and every nvidia-caps/nvidia-cap<k> of these GPUs.

    Character devices where mknod is allowed (root), so Slurm's device cgroup can
    fence them; plain empty files otherwise (the paths are what the code checks).
    """
    from ..core.devices import formula_minors

    fm = formula_minors()
    ensure_dir(os.path.join(dev_root, "nvidia-caps"), 0o755, "simulated /dev")
    nodes = [("nvidiactl", NVIDIA_MAJOR, 255, 0o666), ("nvidia-uvm", 235, 0, 0o666),
             ("nvidia-uvm-tools", 235, 1, 0o666)]
    nodes += [(f"nvidia{m}", NVIDIA_MAJOR, m, 0o666) for m in minors]
    caps = [(fm.config, 0o400), (fm.monitor, 0o444)]  # as the driver makes them
    for m in minors:
        for gi in range(15):
            caps.append((fm.gi_minor(m, gi), 0o444))
            caps += [(fm.ci_minor(m, gi, ci), 0o444) for ci in range(8)]
    nodes += [(f"nvidia-caps/nvidia-cap{k}", CAPS_MAJOR, k, mode) for k, mode in caps]
    for rel, major, minor, mode in nodes:
        path = os.path.join(dev_root, rel)
        if os.path.lexists(path):
            continue
        made = False
        if device_nodes:
            try:
                os.mknod(path, mode | stat.S_IFCHR, os.makedev(major, minor))
                made = True
            except (PermissionError, OSError):
                pass
        if not made:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode))
        os.chmod(path, mode)  # the modes the driver gives, whatever the umask
