"""NVML return codes and their translation into slurm-mig errors.

Both the NVML backend (``pynvml.NVMLError.value``) and the simulator (which raises
the same codes) go through :func:`error_for`, so a given driver answer becomes the
same project error whichever backend saw it.
"""

from __future__ import annotations

from ..core import errors

SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
INSUFFICIENT_SIZE = 7
GPU_IS_LOST = 15
RESET_REQUIRED = 16
IN_USE = 19
INSUFFICIENT_RESOURCES = 23
UNKNOWN = 999

NAMES = {
    INVALID_ARGUMENT: "invalid argument",
    NOT_SUPPORTED: "not supported",
    NO_PERMISSION: "no permission",
    NOT_FOUND: "not found",
    DRIVER_NOT_LOADED: "driver not loaded",
    LIBRARY_NOT_FOUND: "NVML library (libnvidia-ml.so.1) not found",
    GPU_IS_LOST: "GPU is lost",
    RESET_REQUIRED: "GPU reset required",
    IN_USE: "in use",
    INSUFFICIENT_RESOURCES: "insufficient resources",
    UNKNOWN: "unknown error",
}

_HINTS = {
    NOT_SUPPORTED: "is MIG mode enabled on this GPU? (`slurm-mig status`)",
    NO_PERMISSION: "run as root (MIG changes need the mig/config capability)",
    IN_USE: "wait for its jobs to end or drain the node",
    INSUFFICIENT_RESOURCES: "the placement overlaps an existing instance or the profile's count is exhausted",
    INVALID_ARGUMENT: "the profile or placement is not offered by this GPU (`slurm-mig catalog`)",
    RESET_REQUIRED: "reset the GPU or reboot the node",
    GPU_IS_LOST: "the GPU fell off the bus; check dmesg and reboot the node",
    DRIVER_NOT_LOADED: "load the nvidia kernel module (`nvidia-smi` should work), or use --backend sim",
    LIBRARY_NOT_FOUND: "install the NVIDIA driver's NVML library, or use --backend sim",
}

_CLASSES = {
    NOT_SUPPORTED: errors.NotSupported,
    NO_PERMISSION: errors.NoPermission,
    NOT_FOUND: errors.NotFound,
    IN_USE: errors.InstanceInUse,
    INSUFFICIENT_RESOURCES: errors.InsufficientResources,
    INVALID_ARGUMENT: errors.InvalidPlacement,
}


def name_of(code: int) -> str:
    return NAMES.get(code, f"NVML error {code}")


def error_for(code: int, what: str) -> errors.GpuError:
    """The project error for NVML ``code`` while doing ``what`` (e.g. 'create 3g.40gb@4 on gpu 0')."""
    cls = _CLASSES.get(code, errors.GpuError)
    hint = _HINTS.get(code)
    text = f"{what}: {name_of(code)}" + (f"; {hint}" if hint else "")
    return cls(text)
