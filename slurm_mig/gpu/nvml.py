"""The production backend: :class:`GpuBackend` over pynvml (nvidia-ml-py).

Every pynvml error is translated here, once, into a :mod:`slurm_mig.core.errors` type
through :func:`.nvmlcodes.error_for` and chained with ``raise ... from err``.  pynvml
is imported on first use, so importing this module costs nothing on a host without
the driver; any module with pynvml's names can be given instead (the tests give
:func:`slurm_mig.sim.fakenvml.fake_pynvml`).

Nothing here computes an id: GPU-instance ids, compute-instance ids and MIG UUIDs
are always read back from the driver, which picks GI ids by memory-size class and
position in ways that differ between GPUs (:mod:`slurm_mig.sim.driver` models this).  The call
sequence is NVML's: discover profiles by enum index (v2 info, v1 on old drivers) and
their placements; create the GPU instance at a placement, then its full-size compute
instance; destroy compute instances before the GPU instance; find MIG devices by
walking MIG device handles and matching GI/CI ids, as NVML has no direct lookup.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Dict, List, Optional, Tuple

from ..core import errors
from ..core.catalog import ObservedProfile, load_catalog
from ..core.gputypes import GpuInfo, MigInstance, MigModeResult
from . import nvmlcodes as rc

FUNCTION_NOT_FOUND = 13  # NVML_ERROR_FUNCTION_NOT_FOUND: the driver predates the call
_SKIP_PROFILE = (rc.NOT_SUPPORTED, rc.INVALID_ARGUMENT)

#: (gi id, ci id) -> (MIG UUID, pids)
MigDevices = Dict[Tuple[int, int], Tuple[str, Tuple[int, ...]]]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """GPUs as NVML reports them.  ``nvml_module``: pynvml or a stand-in (default: import pynvml)."""

    def __init__(self, nvml_module: Any = None) -> None:
        self._module = nvml_module
        self._started = False
        self._handles: Dict[int, object] = {}
        self._profiles: Dict[int, List[ObservedProfile]] = {}
        self._ci_cache: Dict[Tuple[int, int], List[Tuple[int, int, int]]] = {}
        self._gi_info_version: Optional[int] = 2  # None: a pynvml without the parameter
        self._ci_info_version: Optional[int] = 2

    # ------------------------------------------------------------------ plumbing

    @property
    def nvml(self):
        """The pynvml module, initialized (``nvmlInit``) on first use."""
        if self._module is None:
            try:
                import pynvml
            except ImportError as err:
                raise errors.GpuError(
                    "the NVML backend needs pynvml: install nvidia-ml-py "
                    "(or set backend = \"sim\" in config.toml)"
                ) from err
            self._module = pynvml
        if not self._started:
            try:
                self._module.nvmlInit()
            except self._module.NVMLError as err:
                raise rc.error_for(
                    err.value, "initialize NVML (is the NVIDIA driver loaded? check `nvidia-smi`)"
                ) from err
            self._started = True
        return self._module

    def _call(self, what: str, fn, *args, **kwargs):
        """``fn(*args)``, with an NVML error turned into the project's error for ``what``."""
        try:
            return fn(*args, **kwargs)
        except self._module.NVMLError as err:
            raise rc.error_for(err.value, what) from err

    def _device(self, gpu: int):
        nv = self.nvml
        handle = self._handles.get(gpu)
        if handle is None:
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(gpu)
            except nv.NVMLError as err:
                if err.value != rc.INVALID_ARGUMENT:
                    raise rc.error_for(err.value, f"open gpu {gpu}") from err
                count = self._call("count GPUs", nv.nvmlDeviceGetCount)
                raise errors.NotFound(
                    f"no GPU with NVML index {gpu} (this node has {count}); see `slurm-mig status`"
                ) from err
            self._handles[gpu] = handle
        return handle

    def close(self) -> None:
        """Release NVML (``nvmlShutdown``); the next call initializes it again."""
        if self._started:
            self._started = False
            self._handles.clear()
            self._call("shut NVML down", self._module.nvmlShutdown)

    def __enter__(self) -> "NvmlBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ GPUs

    def gpus(self) -> List[GpuInfo]:
        nv = self.nvml
        out = []
        for index in range(self._call("count GPUs", nv.nvmlDeviceGetCount)):
            h = self._device(index)
            what = f"read gpu {index}"
            pci = self._call(what + " PCI info", nv.nvmlDeviceGetPciInfo, h)
            current, pending = self._mig_mode(index, h)
            out.append(GpuInfo(
                index=index,
                minor=self._call(what + " minor number", nv.nvmlDeviceGetMinorNumber, h),
                uuid=_text(self._call(what + " UUID", nv.nvmlDeviceGetUUID, h)),
                name=_text(self._call(what + " name", nv.nvmlDeviceGetName, h)),
                pci_device_id="0x%08X" % pci.pciDeviceId,
                mig_current=current,
                mig_pending=pending,
            ))
        return out

    def _mig_mode(self, gpu: int, h) -> Tuple[bool, bool]:
        """(current, pending); a GPU that is not MIG capable (NOT_SUPPORTED) is (False, False)."""
        nv = self._module
        try:
            current, pending = nv.nvmlDeviceGetMigMode(h)
        except nv.NVMLError as err:
            if err.value == rc.NOT_SUPPORTED:
                return False, False
            raise rc.error_for(err.value, f"read MIG mode of gpu {gpu}") from err
        return bool(current), bool(pending)

    def _require_mig(self, gpu: int, what: str):
        h = self._device(gpu)
        current, pending = self._mig_mode(gpu, h)
        if not current:
            state = "has MIG mode disabled" if not pending else "waits for a reset to enable MIG mode"
            raise rc.error_for(rc.NOT_SUPPORTED, f"{what}: gpu {gpu} {state}")
        return h

    # ------------------------------------------------------------------ profiles

    def profiles(self, gpu: int) -> List[ObservedProfile]:
        """The GPU-instance profiles NVML offers, MIG mode on or off: a real H200 on
        driver 580.159.04 answered every profile and placement with MIG off
        (tests/data/nvml/).  A driver that answers nothing with MIG off gives []."""
        return list(self._profile_table(gpu))

    def _profile_table(self, gpu: int) -> List[ObservedProfile]:
        h = self._device(gpu)
        if gpu not in self._profiles:
            nv = self._module
            found: Dict[int, ObservedProfile] = {}
            for enum in range(nv.NVML_GPU_INSTANCE_PROFILE_COUNT):
                info = self._gi_profile_info(h, gpu, enum)
                if info is None or info.id in found:
                    continue
                placements = self._placements(h, gpu, info.id)
                found[info.id] = ObservedProfile(
                    id=info.id,
                    name=self._profile_name(h, gpu, info),
                    compute_slices=info.sliceCount,
                    max_count=info.instanceCount,
                    memory_mib=info.memorySizeMB,
                    placements=tuple(start for start, _ in placements),
                    placement_size=placements[0][1] if placements else 0,
                    enum=enum,
                )
            self._profiles[gpu] = list(found.values())
        return self._profiles[gpu]

    def _gi_profile_info(self, h, gpu: int, enum: int):
        """Profile info at enum index ``enum`` (v2, or v1 on old drivers); None when not offered."""
        nv = self._module
        try:
            return self._versioned("_gi_info_version", nv.nvmlDeviceGetGpuInstanceProfileInfo, h, enum)
        except nv.NVMLError as err:
            if err.value in _SKIP_PROFILE:
                return None
            raise rc.error_for(err.value, f"read GPU-instance profile {enum} of gpu {gpu}") from err

    def _versioned(self, attr: str, fn, *args):
        """``fn(*args, version=2)``, falling back to version 1 where the driver lacks the
        ``V`` call, and to no version argument on a pynvml older than it."""
        version = getattr(self, attr)
        try:
            return fn(*args) if version is None else fn(*args, version=version)
        except TypeError:
            if version is None:
                raise
            setattr(self, attr, None)
        except self._module.NVMLError as err:
            if err.value != FUNCTION_NOT_FOUND or version != 2:
                raise
            setattr(self, attr, 1)
        return self._versioned(attr, fn, *args)

    def _profile_name(self, h, gpu: int, info) -> str:
        raw = _text(getattr(info, "name", b"")).strip()
        if raw:
            return raw[4:] if raw.upper().startswith("MIG ") else raw
        # v1 profile info has no name: the catalog's, else Slurm's way of naming one.
        gpu_name = self._call(f"read gpu {gpu} name", self._module.nvmlDeviceGetName, h)
        model = load_catalog().find(_text(gpu_name))
        known = next((p for p in model.profiles if p.id == info.id), None) if model else None
        if known is not None:
            return known.name
        return f"{info.sliceCount}g.{math.ceil(info.memorySizeMB / 1024)}gb"

    def _placements(self, h, gpu: int, profile_id: int) -> List[Tuple[int, int]]:
        nv = self._module
        what = f"read placements of profile id {profile_id} on gpu {gpu}"
        count = ctypes.c_uint(0)
        fn = nv.nvmlDeviceGetGpuInstancePossiblePlacements
        self._call(what, fn, h, profile_id, None, ctypes.byref(count))  # NULL: the count only
        array = (nv.c_nvmlGpuInstancePlacement_t * max(count.value, 1))()
        count.value = len(array)
        self._call(what, fn, h, profile_id, array, ctypes.byref(count))
        return sorted((array[i].start, array[i].size) for i in range(count.value))

    # ------------------------------------------------------------------ instances

    def instances(self, gpu: int) -> List[MigInstance]:
        h = self._require_mig(gpu, f"list the MIG instances of gpu {gpu}")
        table = self._profile_table(gpu)
        mig = self._mig_devices(gpu, h)
        out = []
        for profile in table:
            for gi in self._gpu_instances(h, gpu, profile):
                out.append(self._read_instance(gpu, gi, mig))
        return sorted(out, key=lambda i: i.gi_id)

    def _gpu_instances(self, h, gpu: int, profile: ObservedProfile) -> list:
        nv = self._module
        array = (nv.c_nvmlGpuInstance_t * max(profile.max_count, 1))()
        count = ctypes.c_uint(len(array))
        self._call(f"list {profile.name} GPU instances of gpu {gpu}",
                   nv.nvmlDeviceGetGpuInstances, h, profile.id, array, ctypes.byref(count))
        return [array[i] for i in range(count.value)]

    def _read_instance(self, gpu: int, gi, mig: MigDevices) -> MigInstance:
        nv = self._module
        info = self._call(f"read a GPU instance of gpu {gpu}", nv.nvmlGpuInstanceGetInfo, gi)
        cis = self._compute_instances(gpu, gi, info.id, info.profileId)
        first = cis[0] if cis else None
        uuid = mig.get((info.id, first[0]), (None, ()))[0] if first else None
        pids = sorted({pid for ci_id, _, _ in cis for pid in mig.get((info.id, ci_id), (None, ()))[1]})
        return MigInstance(
            gpu=gpu, gi_id=info.id, profile_id=info.profileId,
            start=info.placement.start, size=info.placement.size,
            ci_id=first[0] if first else None, ci_profile_id=first[1] if first else None,
            uuid=uuid, pids=tuple(pids),
        )

    def _ci_profiles(self, gpu: int, gi, gi_profile_id: int) -> List[Tuple[int, int, int]]:
        """(CI profile id, slices, max count) of each compute-instance profile of a GI profile."""
        key = (gpu, gi_profile_id)
        if key not in self._ci_cache:
            nv = self._module
            found: Dict[int, Tuple[int, int, int]] = {}
            for enum in range(nv.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
                info = self._ci_profile_info(gpu, gi, enum)
                if info is not None and info.id not in found:
                    found[info.id] = (info.id, info.sliceCount, info.instanceCount)
            self._ci_cache[key] = list(found.values())
        return self._ci_cache[key]

    def _ci_profile_info(self, gpu: int, gi, enum: int):
        nv = self._module
        shared = nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
        try:
            return self._versioned("_ci_info_version", nv.nvmlGpuInstanceGetComputeInstanceProfileInfo,
                                   gi, enum, shared)
        except nv.NVMLError as err:
            if err.value in _SKIP_PROFILE:
                return None
            raise rc.error_for(err.value, f"read compute-instance profile {enum} on gpu {gpu}") from err

    def _compute_instances(self, gpu: int, gi, gi_id: int, gi_profile_id: int) -> List[tuple]:
        """(CI id, CI profile id, handle) of a GPU instance's compute instances, by CI id."""
        nv = self._module
        found: Dict[int, tuple] = {}
        for ci_profile, _, max_count in self._ci_profiles(gpu, gi, gi_profile_id):
            array = (nv.c_nvmlComputeInstance_t * max(max_count, 1))()
            count = ctypes.c_uint(len(array))
            self._call(f"list compute instances of gpu {gpu} gi {gi_id}",
                       nv.nvmlGpuInstanceGetComputeInstances, gi, ci_profile, array, ctypes.byref(count))
            for i in range(count.value):
                info = self._call(f"read a compute instance of gpu {gpu} gi {gi_id}",
                                  nv.nvmlComputeInstanceGetInfo, array[i])
                found.setdefault(info.id, (info.id, info.profileId, array[i]))
        return [found[k] for k in sorted(found)]

    def _mig_devices(self, gpu: int, h) -> MigDevices:
        """Every MIG device of a GPU by (GI id, CI id): there is no direct lookup."""
        nv = self._module
        out: MigDevices = {}
        slots = self._call(f"count MIG devices of gpu {gpu}", nv.nvmlDeviceGetMaxMigDeviceCount, h)
        for index in range(slots):
            try:
                mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, index)
                key = (nv.nvmlDeviceGetGpuInstanceId(mh), nv.nvmlDeviceGetComputeInstanceId(mh))
                uuid = _text(nv.nvmlDeviceGetUUID(mh))
                pids = tuple(p.pid for p in self._processes(mh))
            except nv.NVMLError as err:
                if err.value == rc.NOT_FOUND:  # no device at this index, or it just went away
                    continue
                raise rc.error_for(err.value, f"read MIG device {index} of gpu {gpu}") from err
            out[key] = (uuid, pids)
        return out

    def _processes(self, handle) -> list:
        nv = self._module
        try:
            return nv.nvmlDeviceGetComputeRunningProcesses(handle)
        except getattr(nv, "NVMLLibraryMismatchError", ()) as err:  # a driver without _v3
            older = getattr(nv, "nvmlDeviceGetComputeRunningProcesses_v2", None)
            if older is None:
                raise errors.GpuError(f"list processes of a MIG device: {err}") from err
            return older(handle)

    # ------------------------------------------------------------------ changes

    def create_instance(self, gpu: int, profile_id: int, start: int) -> MigInstance:
        nv = self.nvml
        self._require_mig(gpu, f"create a GPU instance on gpu {gpu}")
        table = {p.id: p for p in self._profile_table(gpu)}
        profile = table.get(profile_id)
        label = f"{profile.name}@{start}" if profile else f"profile id {profile_id} at {start}"
        what = f"create GPU instance {label} on gpu {gpu}"
        if profile is None:
            raise rc.error_for(rc.INVALID_ARGUMENT, f"{what}: gpu {gpu} offers no profile id {profile_id}")
        h = self._device(gpu)
        placement = nv.c_nvmlGpuInstancePlacement_t()
        placement.start = start
        placement.size = profile.placement_size
        gi = self._call(what, nv.nvmlDeviceCreateGpuInstanceWithPlacement,
                        h, profile_id, ctypes.byref(placement))
        info = self._call(f"read the new GPU instance {label} on gpu {gpu}", nv.nvmlGpuInstanceGetInfo, gi)
        # If this fails the GPU instance stays, without a compute instance: the apply
        # journal finds it (complete=False) and finishes or removes it.
        self._create_full_ci(gpu, gi, info.id, profile)
        return self._read_instance(gpu, gi, self._mig_devices(gpu, h))

    def create_compute_instance(self, gpu: int, gi_id: int) -> MigInstance:
        nv = self.nvml
        self._require_mig(gpu, f"create a compute instance on gpu {gpu}")
        table = {p.id: p for p in self._profile_table(gpu)}
        h = self._device(gpu)
        gi = self._call(f"find gpu {gpu} gi {gi_id}", nv.nvmlDeviceGetGpuInstanceById, h, gi_id)
        info = self._call(f"read gpu {gpu} gi {gi_id}", nv.nvmlGpuInstanceGetInfo, gi)
        profile = table.get(info.profileId)
        if profile is None:
            raise errors.NotSupported(
                f"gpu {gpu} gi {gi_id} has profile id {info.profileId}, which the driver does not list")
        self._create_full_ci(gpu, gi, gi_id, profile)
        return self._read_instance(gpu, gi, self._mig_devices(gpu, h))

    def _create_full_ci(self, gpu: int, gi, gi_id: int, profile: ObservedProfile) -> None:
        what = f"create the compute instance of {profile.name} (gpu {gpu} gi {gi_id})"
        full = [cid for cid, slices, _ in self._ci_profiles(gpu, gi, profile.id)
                if slices == profile.compute_slices]
        if not full:
            raise errors.NotSupported(
                f"{what}: the driver offers no compute-instance profile of {profile.compute_slices} slices")
        self._call(what, self._module.nvmlGpuInstanceCreateComputeInstance, gi, full[0])

    def destroy_instance(self, gpu: int, gi_id: int) -> None:
        nv = self.nvml
        h = self._device(gpu)
        gi = self._call(f"find gpu {gpu} gi {gi_id}", nv.nvmlDeviceGetGpuInstanceById, h, gi_id)
        info = self._call(f"read gpu {gpu} gi {gi_id}", nv.nvmlGpuInstanceGetInfo, gi)
        where = f"gpu {gpu} gi {gi_id} (profile id {info.profileId} at {info.placement.start})"
        for ci_id, _, ci in self._compute_instances(gpu, gi, gi_id, info.profileId):
            self._call(f"destroy compute instance {ci_id} of {where}", nv.nvmlComputeInstanceDestroy, ci)
        self._call(f"destroy {where}", nv.nvmlGpuInstanceDestroy, gi)

    def set_mig_mode(self, gpu: int, enabled: bool) -> MigModeResult:
        nv = self.nvml
        h = self._device(gpu)
        what = f"{'enable' if enabled else 'disable'} MIG mode on gpu {gpu}"
        mode = nv.NVML_DEVICE_MIG_ENABLE if enabled else nv.NVML_DEVICE_MIG_DISABLE
        status = self._call(what, nv.nvmlDeviceSetMigMode, h, mode)
        # The GPU may have been reset and rebound: drop what was read about it.
        self._handles.pop(gpu, None)
        self._profiles.pop(gpu, None)
        self._ci_cache = {k: v for k, v in self._ci_cache.items() if k[0] != gpu}
        current, pending = self._mig_mode(gpu, self._device(gpu))
        waiting = current != pending and pending == enabled
        if status not in (rc.SUCCESS, rc.RESET_REQUIRED) and not (status == rc.IN_USE and waiting):
            raise rc.error_for(status, what)
        return MigModeResult(gpu, current, pending,
                             reset_required=current != pending or status == rc.RESET_REQUIRED)

    def processes(self, gpu: int) -> Tuple[int, ...]:
        """Every process on the GPU: on the whole GPU with MIG mode off (the device handle's
        compute processes), on its MIG devices with MIG mode on."""
        nv = self.nvml
        h = self._device(gpu)
        current, _ = self._mig_mode(gpu, h)
        if current:
            found = self._mig_devices(gpu, h)
            return tuple(sorted({pid for _, pids in found.values() for pid in pids}))
        try:
            procs = self._processes(h)
        except nv.NVMLError as err:
            raise rc.error_for(err.value, f"list processes of gpu {gpu}") from err
        return tuple(sorted({p.pid for p in procs}))

    def reset_gpu(self, gpu: int) -> MigModeResult:
        """NVML has no GPU reset call (pynvml wraps none; ``nvidia-smi -r`` resets through
        the driver): say so, with the command that does it."""
        raise errors.NotSupported(
            f"gpu {gpu}: NVML has no GPU reset call, so slurm-mig cannot reset it; run "
            f"`nvidia-smi -r -i {gpu}` (no process may use the GPU: stop nvidia-persistenced, "
            f"DCGM or nvidia-fabricmanager if they hold it) or reboot the node")
