"""The GPU side: one small interface, an NVML and a simulated implementation.

Everything above this package (apply engine, hooks, generators) talks to a
:class:`GpuBackend` and never to pynvml directly.  :func:`make_backend` is the one
factory that picks the implementation.
"""

from __future__ import annotations

from typing import Any, List, Optional, Protocol, Tuple

from ..core.catalog import ObservedProfile
from ..core.gputypes import GpuInfo, MigInstance, MigModeResult

__all__ = ["GpuBackend", "GpuInfo", "MigInstance", "MigModeResult", "make_backend"]


class GpuBackend(Protocol):
    """What slurm-mig needs from a GPU driver.  Errors are :mod:`slurm_mig.core.errors` types."""

    def gpus(self) -> List[GpuInfo]:
        """All GPUs, by NVML index."""

    def profiles(self, gpu: int) -> List[ObservedProfile]:
        """GPU-instance profiles and their placements as the driver reports them."""

    def instances(self, gpu: int) -> List[MigInstance]:
        """GPU instances with their compute instance, MIG UUID and processes."""

    def create_instance(self, gpu: int, profile_id: int, start: int) -> MigInstance:
        """Create a GPU instance at ``start`` and its full-size compute instance.

        The ids in the result are read back from the driver, never computed.
        """

    def create_compute_instance(self, gpu: int, gi_id: int) -> MigInstance:
        """Give an existing GPU instance (left without one) its full-size compute instance."""

    def destroy_instance(self, gpu: int, gi_id: int) -> None:
        """Destroy the compute instances, then the GPU instance.  Raises InstanceInUse."""

    def set_mig_mode(self, gpu: int, enabled: bool) -> MigModeResult:
        """Request MIG mode on or off; the result says whether a reset is still needed."""

    def processes(self, gpu: int) -> Tuple[int, ...]:
        """Every process on the GPU: on the whole GPU (MIG mode off) or on its instances."""

    def reset_gpu(self, gpu: int) -> MigModeResult:
        """Reset an idle GPU so that a pending MIG mode becomes current (``nvidia-smi -r``).
        The NVML backend cannot (NVML has no reset call) and raises NotSupported with the
        command to run; the simulator's is the test double."""

    def close(self) -> None:
        """Release the driver (nvmlShutdown)."""


def make_backend(kind: str, *, sim_root: Optional[str] = None,
                 nvml_module: Any = None) -> GpuBackend:
    """The factory: ``nvml`` (pynvml, production) or ``sim`` (state under ``sim_root``).

    The simulator is a guest: it is imported by name, through :mod:`slurm_mig.core.guests`,
    only when ``kind`` is ``sim``."""
    from ..core.errors import ConfigError

    if kind == "sim":
        from ..core.guests import visit

        if sim_root is None:
            raise ConfigError("backend 'sim' needs a state directory: set [sim] root in config.toml")
        backend: GpuBackend = visit("sim").backend(sim_root)
        return backend
    if kind == "nvml":
        from .nvml import NvmlBackend

        return NvmlBackend(nvml_module)
    raise ConfigError(f"unknown backend '{kind}': use 'nvml' or 'sim'")
