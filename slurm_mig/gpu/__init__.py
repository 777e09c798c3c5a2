"""The GPU side: the :class:`~slurm_mig.gpu.backend.GpuBackend` interface, its factory and
the NVML implementation (docs/design.md).  Nothing above this package imports pynvml.

Kept empty: the hooks' fast epilog imports :mod:`slurm_mig.gpu.instancepids`, and with it
this file, on every eighth job."""
