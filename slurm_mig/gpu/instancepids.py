"""The processes on one MIG instance, asked of the driver as cheaply as each backend allows.

The hooks' fast epilog cannot see processes on MIG instances (docs/hooks.md, "The fast
path"); every :data:`slurm_mig.hooks.fast.FAST_EPILOGS_IN_A_ROW` + 1-th epilog on an
instance asks the driver with :func:`instance_pids`, and takes the full path when anything
runs there.  For NVML that is the smallest query there is: ``nvmlInit``, the GPU's handle,
a walk of its MIG device handles to the one with that GPU-instance and compute-instance
id, that device's compute processes, ``nvmlShutdown`` (about 30 ms on an H200 with driver
580, nearly all of it init, first handle and shutdown: docs/hardware.md).  It imports
pynvml and nothing of the engine (no catalog, not :mod:`slurm_mig.gpu.backend`; the
package's ``__init__`` is empty).  Any other backend is asked through
:func:`slurm_mig.gpu.backend.make_backend`, the one factory.

Errors are :class:`slurm_mig.core.errors.GpuError` (the hook then takes its full path).
"""

from __future__ import annotations

from ..core.errors import GpuError

#: NVML_ERROR_NOT_FOUND, as :data:`slurm_mig.gpu.nvmlcodes.NOT_FOUND` (a test pins it): an
#: empty MIG device slot.
NOT_FOUND = 6


def instance_pids(kind: str, gpu: int, gi_id: int, ci_id: int, *, sim_root=None,
                  nvml_module=None) -> list | None:
    """The pids on gpu ``gpu``'s GPU instance ``gi_id``, compute instance ``ci_id``, sorted;
    None when the driver lists no such instance.  ``kind``: the configured backend."""
    if kind == "nvml":
        return _nvml_pids(gpu, gi_id, ci_id, nvml_module)
    from .backend import make_backend

    backend = make_backend(kind, sim_root=sim_root)
    try:
        for inst in backend.instances(gpu):
            if inst.gi_id == gi_id and inst.ci_id == ci_id:
                return sorted(inst.pids)
        return None
    finally:
        backend.close()


def _nvml_pids(gpu: int, gi_id: int, ci_id: int, module) -> list | None:
    nv = module
    if nv is None:
        try:
            import pynvml

            nv = pynvml
        except ImportError as err:
            raise GpuError("the NVML backend needs pynvml: install nvidia-ml-py") from err
    try:
        nv.nvmlInit()
    except nv.NVMLError as err:
        raise GpuError(f"initialize NVML: {err}") from err
    try:
        handle = nv.nvmlDeviceGetHandleByIndex(gpu)
        for index in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
            except nv.NVMLError as err:
                if err.value == NOT_FOUND:
                    continue
                raise
            if (nv.nvmlDeviceGetGpuInstanceId(mig), nv.nvmlDeviceGetComputeInstanceId(mig)) == (gi_id, ci_id):
                return sorted({p.pid for p in _processes(nv, mig)})
        return None
    except nv.NVMLError as err:
        raise GpuError(f"list the processes of gpu {gpu} gi {gi_id} ci {ci_id}: {err}") from err
    finally:
        try:
            nv.nvmlShutdown()
        except nv.NVMLError:
            pass


def _processes(nv, handle) -> list:
    """As :meth:`slurm_mig.gpu.nvml.NvmlBackend._processes`: the ``_v2`` call on a driver
    without ``_v3``."""
    try:
        return nv.nvmlDeviceGetComputeRunningProcesses(handle)
    except getattr(nv, "NVMLLibraryMismatchError", ()) as err:
        older = getattr(nv, "nvmlDeviceGetComputeRunningProcesses_v2", None)
        if older is None:
            raise GpuError(f"list processes of a MIG device: {err}") from err
        return older(handle)
