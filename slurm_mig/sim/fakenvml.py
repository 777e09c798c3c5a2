"""A pynvml look-alike over the simulated driver, to run the NVML backend without a GPU.

``fake_pynvml(root)`` returns a module with the same function names and parameters as
nvidia-ml-py's ``pynvml`` for every call :class:`~slurm_mig.gpu.nvml.NvmlBackend`
makes, answering from the :class:`~slurm_mig.sim.driver.SimDriver` state under
``root``.  Everything else the backend touches is the real thing, re-exported from
the installed ``pynvml``: the ``NVML_*`` constants, the ``c_nvml*`` structures (filled
in as the C library fills them) and ``NVMLError`` with its per-code subclasses, so
``except pynvml.NVMLError_InUse`` works on the fake exactly as on a GPU.

Handles are what real pynvml hands out, ctypes pointers (``c_nvmlDevice_t``,
``c_nvmlGpuInstance_t``, ``c_nvmlComputeInstance_t``), so they fit the arrays that
``nvmlDeviceGetGpuInstances`` and ``nvmlGpuInstanceGetComputeInstances`` fill.  They
point nowhere: the address encodes (gpu) / (gpu, GI id) / (gpu, GI id, CI id), and
the handles this module returns are small subclasses that show it.  Callers must
treat them as opaque.  GI ids are never computed here: every answer is read from the
driver's state, which picks them by a per-GPU permutation.

Not modelled: engine counts other than copy engines (0), process memory (None, as
pynvml reports "not available"), privileges (inject a ``NO_PERMISSION`` fault into
the ``SimDriver`` instead), and graphics processes.

Latency: ``fake_pynvml(root, latency=latency_table(recorded))`` makes each call take as
long as it did on a real driver (the first call of a function in the process, then
every later one), from a table ``bench/nvml_latency.py`` recorded
(``tests/data/nvml/h200-580.159.04-latency.json``); ``bench/hooks.py`` times the hooks'
NVML path with it.  :func:`write_pynvml_shim` makes a directory whose ``pynvml`` module,
put first on ``PYTHONPATH``, is this fake in any Python process (for benchmarks and
tests that run the hooks as slurmd does, as processes).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import types
from typing import Iterator, List, Optional, Tuple

import pynvml as _real

from ..core.catalog import load_catalog
from ..core.errors import GpuError
from .driver import CI_PROFILE_SLICES, SimDriver, SimNvmlError, pci_bus_id

__all__ = ["FakeNvml", "fake_pynvml", "FUNCTIONS", "DeviceHandle", "GpuInstanceHandle",
           "ComputeInstanceHandle", "latency_table", "write_pynvml_shim", "SHIM_ROOT_ENV",
           "SHIM_LATENCY_ENV"]

DRIVER_VERSION = "580.82.07"

#: The pynvml functions the fake provides (aliases included).
FUNCTIONS = (
    "nvmlInit", "nvmlInitWithFlags", "nvmlShutdown", "nvmlErrorString",
    "nvmlSystemGetDriverVersion", "nvmlSystemGetNVMLVersion", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetMinorNumber", "nvmlDeviceGetPciInfo",
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMigMode", "nvmlDeviceSetMigMode",
    "nvmlDeviceGetGpuInstanceProfileInfo", "nvmlDeviceGetGpuInstanceProfileInfoV",
    "nvmlDeviceGetGpuInstanceProfileInfoById", "nvmlDeviceGetGpuInstanceProfileInfoByIdV",
    "nvmlDeviceGetGpuInstancePossiblePlacements", "nvmlDeviceGetGpuInstanceRemainingCapacity",
    "nvmlDeviceCreateGpuInstance", "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlDeviceGetGpuInstances", "nvmlDeviceGetGpuInstanceById", "nvmlGpuInstanceGetInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo", "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
    "nvmlGpuInstanceCreateComputeInstance", "nvmlGpuInstanceGetComputeInstances",
    "nvmlGpuInstanceGetComputeInstanceById", "nvmlComputeInstanceGetInfo",
    "nvmlComputeInstanceGetInfo_v2", "nvmlComputeInstanceDestroy", "nvmlGpuInstanceDestroy",
    "nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceIsMigDeviceHandle", "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v3",
)

# ---------------------------------------------------------------------- handles

_BASE = 0x5EED << 32  # a user-space address range nothing maps; never dereferenced
_DEVICE, _GI, _CI, _MIG = 1, 2, 3, 4


def _address(kind: int, gpu: int, gi: int = 0, ci: int = 0) -> int:
    return _BASE | kind << 28 | gpu << 16 | gi << 8 | ci


def _decode(handle) -> Tuple[int, int, int, int]:
    """(kind, gpu, gi, ci) of a handle; INVALID_ARGUMENT for anything else."""
    if not isinstance(handle, ctypes._Pointer):
        raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
    addr = ctypes.cast(handle, ctypes.c_void_p).value or 0
    if addr >> 32 != _BASE >> 32:
        raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
    return (addr >> 28) & 0xF, (addr >> 16) & 0xFFF, (addr >> 8) & 0xFF, addr & 0xFF


class _Shown:
    """Readable ``repr`` for the handles this module returns."""

    def __repr__(self) -> str:
        kind, gpu, gi, ci = _decode(self)
        parts = {_DEVICE: f"gpu={gpu}", _GI: f"gpu={gpu} gi={gi}", _CI: f"gpu={gpu} gi={gi} ci={ci}",
                 _MIG: f"gpu={gpu} gi={gi} ci={ci} (MIG device)"}
        return f"<{type(self).__name__} {parts.get(kind, '?')}>"

    @property
    def ids(self) -> Tuple[int, ...]:
        kind, gpu, gi, ci = _decode(self)
        return {_DEVICE: (gpu,), _GI: (gpu, gi)}.get(kind, (gpu, gi, ci))


class DeviceHandle(_Shown, _real.c_nvmlDevice_t):
    """A GPU, or a MIG device, as ``nvmlDeviceGetHandleByIndex`` returns it."""

    _type_ = _real.struct_c_nvmlDevice_t


class GpuInstanceHandle(_Shown, _real.c_nvmlGpuInstance_t):
    _type_ = _real.struct_c_nvmlGpuInstance_t


class ComputeInstanceHandle(_Shown, _real.c_nvmlComputeInstance_t):
    _type_ = _real.struct_c_nvmlComputeInstance_t


def _handle(cls, kind: int, gpu: int, gi: int = 0, ci: int = 0):
    return ctypes.cast(ctypes.c_void_p(_address(kind, gpu, gi, ci)), cls)


# ---------------------------------------------------------------------- ctypes arguments


def _out_scalar(ref):
    """The object behind ``byref(x)``, ``pointer(x)`` or ``x`` (None for NULL)."""
    if ref is None:
        return None
    obj = getattr(ref, "_obj", None)  # ctypes.byref(...)
    if obj is not None:
        return obj
    if isinstance(ref, ctypes._Pointer):
        return ref.contents if ref else None
    return ref


def _out_array(ref):
    """An array argument: an array, ``byref(array)``, or a pointer to its first element."""
    if ref is None:
        return None
    obj = getattr(ref, "_obj", None)
    if obj is not None:
        return obj
    if isinstance(ref, ctypes._Pointer) and not ref:
        return None
    return ref


def _check_room(array, needed: int, count) -> None:
    if hasattr(array, "__len__") and len(array) < needed:
        count.value = needed
        raise _real.NVMLError(_real.NVML_ERROR_INSUFFICIENT_SIZE)


def _error(code: int) -> _real.NVMLError:
    return _real.NVMLError(code)


# ---------------------------------------------------------------------- the fake library


class FakeNvml:
    """The fake NVML library over the simulated driver state under ``root``.

    ``profile_info_v2=False`` plays a driver without ``nvmlDeviceGetGpuInstanceProfileInfoV``
    (and the compute-instance ``V`` call): version 2 raises ``NVMLError_FunctionNotFound``.
    """

    def __init__(self, root: str, *, profile_info_v2: bool = True, driver_version: str = DRIVER_VERSION):
        self.root = os.path.abspath(root)
        self.profile_info_v2 = profile_info_v2
        self.driver_version = driver_version
        self._refcount = 0
        self._driver: Optional[SimDriver] = None

    # ------------------------------------------------------------------ plumbing

    def _require_init(self) -> None:
        if self._refcount <= 0 or self._driver is None:
            raise _error(_real.NVML_ERROR_UNINITIALIZED)

    @property
    def driver(self) -> SimDriver:
        """The simulated driver; NVMLError_Uninitialized before ``nvmlInit``."""
        self._require_init()
        assert self._driver is not None  # _require_init: set while initialised
        return self._driver

    @contextlib.contextmanager
    def _codes(self) -> Iterator[None]:
        """The driver's NVML codes as real pynvml exceptions."""
        try:
            yield
        except SimNvmlError as err:
            raise _error(err.code) from err

    def _ids(self, handle, *kinds: int) -> Tuple[int, int, int, int]:
        """(kind, gpu, gi, ci) of a handle of one of ``kinds``."""
        self._require_init()
        ids = _decode(handle)
        if ids[0] not in kinds:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return ids

    def _gpu_record(self, gpu: int) -> dict:
        for g in self.driver.gpus():
            if g["index"] == gpu:
                return g
        raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)

    def _gis(self, gpu: int) -> List[dict]:
        with self._codes():
            return self.driver.gpu_instances(gpu)

    def _gi_record(self, gpu: int, gi_id: int) -> dict:
        for gi in self._gis(gpu):
            if gi["id"] == gi_id:
                return gi
        raise _error(_real.NVML_ERROR_NOT_FOUND)

    def _ci_record(self, gpu: int, gi_id: int, ci_id: int) -> Tuple[dict, dict]:
        gi = self._gi_record(gpu, gi_id)
        for ci in gi["cis"]:
            if ci["id"] == ci_id:
                return gi, ci
        raise _error(_real.NVML_ERROR_NOT_FOUND)

    def _gi_profile(self, gpu: int, profile_id: int):
        with self._codes():
            return self.driver.profile_by_id(gpu, profile_id)

    # ------------------------------------------------------------------ init, system

    def nvmlInit(self):
        return self.nvmlInitWithFlags(0)

    def nvmlInitWithFlags(self, flags):
        if self._driver is None:
            try:
                self._driver = SimDriver(self.root)
            except GpuError as err:  # no state: as if the kernel module were not loaded
                raise _error(_real.NVML_ERROR_DRIVER_NOT_LOADED) from err
        self._refcount += 1
        return None

    def nvmlShutdown(self):
        if self._refcount <= 0:
            raise _error(_real.NVML_ERROR_UNINITIALIZED)
        self._refcount -= 1
        return None

    def nvmlErrorString(self, result):
        return _real.NVMLError._errcode_to_string.get(result, f"NVML error {result}")

    def nvmlSystemGetDriverVersion(self):
        self._require_init()
        return self.driver_version

    def nvmlSystemGetNVMLVersion(self):
        self._require_init()
        return "13." + self.driver_version  # as a real 580 driver answers: 13.580.159.04

    # ------------------------------------------------------------------ devices

    def nvmlDeviceGetCount(self):
        return len(self.driver.gpus())

    def nvmlDeviceGetHandleByIndex(self, index):
        self._gpu_record(int(index))
        return _handle(DeviceHandle, _DEVICE, int(index))

    def nvmlDeviceGetName(self, handle):
        kind, gpu, gi_id, ci_id = self._ids(handle, _DEVICE, _MIG)
        g = self._gpu_record(gpu)
        if kind == _DEVICE:
            return g["name"]
        gi, ci = self._ci_record(gpu, gi_id, ci_id)
        with self._codes():
            _, profile = self.driver.profile_by_id(gpu, gi["profile_id"])
        return f"{g['name']} MIG {_ci_name(profile, CI_PROFILE_SLICES[ci['profile_id']])}"

    def nvmlDeviceGetUUID(self, handle):
        kind, gpu, gi_id, ci_id = self._ids(handle, _DEVICE, _MIG)
        if kind == _DEVICE:
            return self._gpu_record(gpu)["uuid"]
        return self._ci_record(gpu, gi_id, ci_id)[1]["uuid"]

    def nvmlDeviceGetMinorNumber(self, handle):
        kind, gpu, _, _ = self._ids(handle, _DEVICE, _MIG)
        if kind == _MIG:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return self._gpu_record(gpu)["minor"]

    def nvmlDeviceGetPciInfo(self, handle):
        _, gpu, _, _ = self._ids(handle, _DEVICE, _MIG)
        g = self._gpu_record(gpu)
        info = _real.nvmlPciInfo_t()
        bus_id = pci_bus_id(gpu)  # the simulated driver's /proc/driver/nvidia/gpus/ names it
        bus = int(bus_id.split(":")[1], 16)
        info.busIdLegacy = bus_id[4:].encode()
        info.busId = bus_id.encode()
        info.domain, info.bus, info.device = 0, bus, 0
        info.pciDeviceId = int(g["pci_device_id"], 16)
        info.pciSubSystemId = 0
        return info

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        """The full-GPU profile's memory as the total (the catalog holds no other figure)."""
        _, gpu, _, _ = self._ids(handle, _DEVICE)
        g = self._gpu_record(gpu)
        info = _real.c_nvmlMemory_t()
        if g["model"] is not None:
            full = max(load_catalog().model(g["model"]).profiles, key=lambda p: p.memory_mib or 0)
            info.total = info.free = (full.memory_mib or 0) * 1024 * 1024
        return info

    def nvmlDeviceGetMigMode(self, device):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        with self._codes():
            current, pending = self.driver.mig_mode(gpu)
        return [current, pending]

    def nvmlDeviceSetMigMode(self, device, mode):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        if mode not in (_real.NVML_DEVICE_MIG_DISABLE, _real.NVML_DEVICE_MIG_ENABLE):
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        with self._codes():
            return self.driver.set_mig_mode(gpu, mode == _real.NVML_DEVICE_MIG_ENABLE)

    # ------------------------------------------------------------------ GPU-instance profiles

    def nvmlDeviceGetGpuInstanceProfileInfo(self, device, profile, version=2):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        info = self._new_info(version, _real.c_nvmlGpuInstanceProfileInfo_v2_t,
                              _real.c_nvmlGpuInstanceProfileInfo_t)
        if not 0 <= profile < _real.NVML_GPU_INSTANCE_PROFILE_COUNT:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        with self._codes():
            _, p = self.driver.profile_by_enum(gpu, profile)
        return _fill_gi_profile(info, p)

    nvmlDeviceGetGpuInstanceProfileInfoV = nvmlDeviceGetGpuInstanceProfileInfo

    def nvmlDeviceGetGpuInstanceProfileInfoById(self, device, profileId):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        info = self._new_info(2, _real.c_nvmlGpuInstanceProfileInfo_v2_t, None)
        _, p = self._gi_profile(gpu, profileId)
        return _fill_gi_profile(info, p)

    nvmlDeviceGetGpuInstanceProfileInfoByIdV = nvmlDeviceGetGpuInstanceProfileInfoById

    def _new_info(self, version, v2_type, v1_type):
        if version == 2 and self.profile_info_v2:
            return v2_type()
        if version == 1 and v1_type is not None:
            return v1_type()
        raise _error(_real.NVML_ERROR_FUNCTION_NOT_FOUND)

    def nvmlDeviceGetGpuInstancePossiblePlacements(self, device, profileId, placementsRef, countRef):
        """As ``..._v2`` in C: NULL ``placementsRef`` asks only for the count."""
        _, gpu, _, _ = self._ids(device, _DEVICE)
        count = _out_scalar(countRef)
        if count is None:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        _, p = self._gi_profile(gpu, profileId)
        array = _out_array(placementsRef)
        if array is not None:
            _check_room(array, len(p.placements), count)
            for i, start in enumerate(p.placements):
                array[i].start = start
                array[i].size = p.placement_size
        count.value = len(p.placements)
        return _real.NVML_SUCCESS

    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, device, profileId):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        with self._codes():
            return self.driver.remaining_capacity(gpu, profileId)

    # ------------------------------------------------------------------ GPU instances

    def nvmlDeviceCreateGpuInstance(self, device, profileId):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        with self._codes():
            gi = self.driver.create_gpu_instance(gpu, profileId)
        return _handle(GpuInstanceHandle, _GI, gpu, gi["id"])

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, device, profileId, placement):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        where = _out_scalar(placement)
        if where is None or not hasattr(where, "start") or not hasattr(where, "size"):
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        try:
            _, p = self.driver.profile_by_id(gpu, profileId)
        except SimNvmlError:
            p = None  # the create below answers, and counts as a call
        if p is not None and where.size != p.placement_size:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        with self._codes():
            gi = self.driver.create_gpu_instance(gpu, profileId, int(where.start))
        return _handle(GpuInstanceHandle, _GI, gpu, gi["id"])

    def nvmlDeviceGetGpuInstances(self, device, profileId, gpuInstancesRef, countRef):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        count, array = _out_scalar(countRef), _out_array(gpuInstancesRef)
        if count is None or array is None:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        self._gi_profile(gpu, profileId)
        gis = [gi for gi in self._gis(gpu) if gi["profile_id"] == profileId]
        _check_room(array, len(gis), count)
        for i, gi in enumerate(gis):
            array[i] = _handle(_real.c_nvmlGpuInstance_t, _GI, gpu, gi["id"])
        count.value = len(gis)
        return _real.NVML_SUCCESS

    def nvmlDeviceGetGpuInstanceById(self, device, gpuInstanceId):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        gi = self._gi_record(gpu, gpuInstanceId)
        return _handle(GpuInstanceHandle, _GI, gpu, gi["id"])

    def nvmlGpuInstanceGetInfo(self, gpuInstance):
        _, gpu, gi_id, _ = self._ids(gpuInstance, _GI)
        gi = self._gi_record(gpu, gi_id)
        info = _real.c_nvmlGpuInstanceInfo_t()
        info.device = _handle(_real.c_nvmlDevice_t, _DEVICE, gpu)
        info.id = gi["id"]
        info.profileId = gi["profile_id"]
        info.placement.start = gi["start"]
        info.placement.size = gi["size"]
        return info

    def nvmlGpuInstanceDestroy(self, gpuInstance):
        _, gpu, gi_id, _ = self._ids(gpuInstance, _GI)
        with self._codes():
            self.driver.destroy_gpu_instance(gpu, gi_id)
        return _real.NVML_SUCCESS

    # ------------------------------------------------------------------ compute instances

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(self, device, profile, engProfile, version=2):
        _, gpu, gi_id, _ = self._ids(device, _GI)
        info = self._new_info(version, _real.c_nvmlComputeInstanceProfileInfo_v2_t,
                              _real.c_nvmlComputeInstanceProfileInfo_t)
        if (not 0 <= profile < _real.NVML_COMPUTE_INSTANCE_PROFILE_COUNT
                or engProfile != _real.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED):
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        gi = self._gi_record(gpu, gi_id)
        _, gi_profile = self._gi_profile(gpu, gi["profile_id"])
        slices = CI_PROFILE_SLICES.get(profile)
        if slices is None or slices > gi_profile.compute_slices:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        info.id = profile  # the simulator's CI profile ids are the enum indexes
        info.sliceCount = slices
        info.instanceCount = gi_profile.compute_slices // slices
        info.multiprocessorCount = (gi_profile.sm_count or 0) * slices // gi_profile.compute_slices
        info.sharedCopyEngineCount = gi_profile.compute_slices
        if hasattr(info, "name"):
            info.name = ("MIG " + _ci_name(gi_profile, slices)).encode()
        return info

    nvmlGpuInstanceGetComputeInstanceProfileInfoV = nvmlGpuInstanceGetComputeInstanceProfileInfo

    def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance, profileId):
        _, gpu, gi_id, _ = self._ids(gpuInstance, _GI)
        with self._codes():
            ci = self.driver.create_compute_instance(gpu, gi_id, profileId)
        return _handle(ComputeInstanceHandle, _CI, gpu, gi_id, ci["id"])

    def nvmlGpuInstanceGetComputeInstances(self, gpuInstance, profileId, computeInstancesRef, countRef):
        _, gpu, gi_id, _ = self._ids(gpuInstance, _GI)
        count, array = _out_scalar(countRef), _out_array(computeInstancesRef)
        if count is None or array is None or profileId not in CI_PROFILE_SLICES:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        cis = sorted((ci for ci in self._gi_record(gpu, gi_id)["cis"] if ci["profile_id"] == profileId),
                     key=lambda ci: ci["id"])
        _check_room(array, len(cis), count)
        for i, ci in enumerate(cis):
            array[i] = _handle(_real.c_nvmlComputeInstance_t, _CI, gpu, gi_id, ci["id"])
        count.value = len(cis)
        return _real.NVML_SUCCESS

    def nvmlGpuInstanceGetComputeInstanceById(self, gpuInstance, computeInstanceId):
        _, gpu, gi_id, _ = self._ids(gpuInstance, _GI)
        _, ci = self._ci_record(gpu, gi_id, computeInstanceId)
        return _handle(ComputeInstanceHandle, _CI, gpu, gi_id, ci["id"])

    def nvmlComputeInstanceGetInfo(self, computeInstance):
        _, gpu, gi_id, ci_id = self._ids(computeInstance, _CI)
        gi, ci = self._ci_record(gpu, gi_id, ci_id)
        start = 0  # compute instances are packed in the order they were made
        for other in gi["cis"]:
            if other["id"] == ci_id:
                break
            start += CI_PROFILE_SLICES[other["profile_id"]]
        info = _real.c_nvmlComputeInstanceInfo_t()
        info.device = _handle(_real.c_nvmlDevice_t, _DEVICE, gpu)
        info.gpuInstance = _handle(_real.c_nvmlGpuInstance_t, _GI, gpu, gi_id)
        info.id = ci["id"]
        info.profileId = ci["profile_id"]
        info.placement.start = start
        info.placement.size = CI_PROFILE_SLICES[ci["profile_id"]]
        return info

    nvmlComputeInstanceGetInfo_v2 = nvmlComputeInstanceGetInfo

    def nvmlComputeInstanceDestroy(self, computeInstance):
        _, gpu, gi_id, ci_id = self._ids(computeInstance, _CI)
        with self._codes():
            self.driver.destroy_compute_instance(gpu, gi_id, ci_id)
        return _real.NVML_SUCCESS

    # ------------------------------------------------------------------ MIG devices

    def _mig_devices(self, gpu: int) -> List[Tuple[dict, dict]]:
        """(GI, CI) pairs in MIG-device index order: by GI id, then CI id."""
        return [(gi, ci) for gi in self._gis(gpu) for ci in sorted(gi["cis"], key=lambda c: c["id"])]

    def nvmlDeviceGetMaxMigDeviceCount(self, device):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        model = self._gpu_record(gpu)["model"]
        if model is None:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return load_catalog().model(model).compute_slices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device, index):
        _, gpu, _, _ = self._ids(device, _DEVICE)
        if not 0 <= index < self.nvmlDeviceGetMaxMigDeviceCount(device):
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        devices = self._mig_devices(gpu)
        if index >= len(devices):
            raise _error(_real.NVML_ERROR_NOT_FOUND)
        gi, ci = devices[index]
        return _handle(DeviceHandle, _MIG, gpu, gi["id"], ci["id"])

    def nvmlDeviceIsMigDeviceHandle(self, device):
        kind, _, _, _ = self._ids(device, _DEVICE, _MIG)
        return ctypes.c_uint(int(kind == _MIG))  # pynvml returns the c_uint itself

    def nvmlDeviceGetGpuInstanceId(self, device):
        _, gpu, gi_id, ci_id = self._ids(device, _MIG)
        self._ci_record(gpu, gi_id, ci_id)
        return gi_id

    def nvmlDeviceGetComputeInstanceId(self, device):
        _, gpu, gi_id, ci_id = self._ids(device, _MIG)
        self._ci_record(gpu, gi_id, ci_id)
        return ci_id

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice):
        _, gpu, gi_id, ci_id = self._ids(migDevice, _MIG)
        self._ci_record(gpu, gi_id, ci_id)
        return _handle(DeviceHandle, _DEVICE, gpu)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        """On a MIG device: its processes.  On a GPU in MIG mode: all of them."""
        kind, gpu, gi_id, ci_id = self._ids(handle, _DEVICE, _MIG)
        if kind == _MIG:
            gi, ci = self._ci_record(gpu, gi_id, ci_id)
            pairs = [(gi, ci)]
        elif self._gpu_record(gpu)["mig_current"]:
            pairs = self._mig_devices(gpu)
        else:  # MIG mode off: the processes on the whole GPU
            with self._codes():
                pids = self.driver.gpu_processes(gpu)
            return [self._process(pid, 0xFFFFFFFF, 0xFFFFFFFF) for pid in pids]
        procs = []
        for gi, ci in pairs:
            for p in ci["procs"]:
                procs.append(self._process(p["pid"], gi["id"], ci["id"]))
        return procs

    @staticmethod
    def _process(pid: int, gi_id: int, ci_id: int):
        """One process entry as pynvml returns it (ids 0xFFFFFFFF outside MIG)."""
        info = _real.c_nvmlProcessInfo_v3_t(
            pid=pid, usedGpuMemory=_real.NVML_VALUE_NOT_AVAILABLE_ulonglong.value,
            gpuInstanceId=gi_id, computeInstanceId=ci_id,
        )
        obj = _real.nvmlStructToFriendlyObject(info)
        obj.usedGpuMemory = None  # as pynvml reports "not available"
        return obj

    nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses


# ---------------------------------------------------------------------- structure filling


def _fill_gi_profile(info, p):
    info.id = p.id
    info.isP2pSupported = 0
    info.sliceCount = p.compute_slices
    info.instanceCount = p.max_count
    info.multiprocessorCount = p.sm_count or 0
    info.copyEngineCount = p.compute_slices
    info.memorySizeMB = p.memory_mib or 0
    if hasattr(info, "name"):
        info.name = ("MIG " + p.name).encode()
    return info


def _ci_name(gi_profile, ci_slices: int) -> str:
    """``3g.40gb`` for a whole-GI compute instance, ``1c.3g.40gb`` for a part of one."""
    if ci_slices == gi_profile.compute_slices:
        return gi_profile.name
    return f"{ci_slices}c.{gi_profile.name}"


def fake_pynvml(root: str, *, latency: Optional[dict] = None, **options) -> types.ModuleType:
    """A module that can stand in for ``pynvml``: the fake calls plus the real constants,
    structures and exceptions.  The :class:`FakeNvml` behind it is ``module.fake``.
    ``latency``: ``{function name: (first call ms, later calls ms)}`` (:func:`latency_table`);
    each call then lasts at least that long (the look-alike's own time included)."""
    fake = FakeNvml(root, **options)
    module = types.ModuleType("fake_pynvml", __doc__)
    for name, value in vars(_real).items():
        if name.startswith("_") or isinstance(value, (types.FunctionType, types.ModuleType)):
            continue
        setattr(module, name, value)
    for name in ("nvmlStructToFriendlyObject", "nvmlFriendlyObjectToStruct", "nvmlExceptionClass"):
        setattr(module, name, getattr(_real, name))
    for name in FUNCTIONS:
        fn = getattr(fake, name)
        if latency and name in latency:
            fn = _delayed(fn, *latency[name])
        setattr(module, name, fn)
    setattr(module, "fake", fake)
    return module


# ---------------------------------------------------------------------- recorded latency


def latency_table(recorded: dict) -> dict:
    """``{function: (first call ms, later calls ms)}`` from a ``bench/nvml_latency.py`` JSON:
    the process's first call (``cold_first_ms`` where recorded: ``nvmlInit`` loading the
    library, ``nvmlShutdown``; else ``first_ms``), then the median; a call that could not
    be measured (MIG off) takes its recorded estimate both times."""
    out = {}
    for name, entry in recorded["calls"].items():
        later = entry.get("median_ms")
        if later is None:
            later = entry.get("estimate_ms")
        if later is None:
            continue
        first = entry.get("cold_first_ms", entry.get("first_ms"))
        out[name] = (later if first is None else first, later)
    return out


def _delayed(fn, first_ms: float, later_ms: float):
    """``fn`` taking at least the recorded time: its own time counts towards it (the
    look-alike reads the simulated driver's state on each call, which a driver does not)."""
    import time

    calls = [0]

    def call(*args, **kwargs):
        wait = (first_ms if calls[0] == 0 else later_ms) / 1e3
        calls[0] += 1
        end = time.perf_counter() + wait
        try:
            return fn(*args, **kwargs)
        finally:
            left = end - time.perf_counter()
            if left > 0.002:
                time.sleep(left - 0.001)
            while time.perf_counter() < end:  # the last part spun: sleep overshoots by ~0.1 ms
                pass

    call.__name__ = getattr(fn, "__name__", "call")
    return call


#: Read by the module :func:`write_pynvml_shim` writes: the simulated node's root, and
#: (optional) a recorded latency JSON.
SHIM_ROOT_ENV = "SLURM_MIG_FAKE_NVML_ROOT"
SHIM_LATENCY_ENV = "SLURM_MIG_FAKE_NVML_LATENCY"

_SHIM = '''"""pynvml stand-in written by slurm_mig.sim.fakenvml.write_pynvml_shim (tests, benchmarks).

Imported as ``pynvml`` (this directory first on PYTHONPATH), it loads the real pynvml (for
its constants and structures), then puts the look-alike over ``$SLURM_MIG_FAKE_NVML_ROOT``
in its place, with the latency of ``$SLURM_MIG_FAKE_NVML_LATENCY`` when set."""
import importlib.machinery
import importlib.util
import json
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
_spec = importlib.machinery.PathFinder.find_spec("pynvml", _path)
_real = importlib.util.module_from_spec(_spec)
sys.modules["pynvml"] = _real
_spec.loader.exec_module(_real)

from slurm_mig.sim.fakenvml import SHIM_LATENCY_ENV, SHIM_ROOT_ENV, fake_pynvml, latency_table

_latency = None
if os.environ.get(SHIM_LATENCY_ENV):
    with open(os.environ[SHIM_LATENCY_ENV]) as _f:
        _latency = latency_table(json.load(_f))
sys.modules["pynvml"] = fake_pynvml(os.environ[SHIM_ROOT_ENV], latency=_latency)
'''


def write_pynvml_shim(directory: str) -> str:
    """Write ``<directory>/pynvml.py`` (see :data:`_SHIM`) and return ``directory``: put it
    first on ``PYTHONPATH`` with :data:`SHIM_ROOT_ENV` set, and ``import pynvml`` in that
    process gives the look-alike (imported only when something imports pynvml)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "pynvml.py"), "w") as f:
        f.write(_SHIM)
    return directory

