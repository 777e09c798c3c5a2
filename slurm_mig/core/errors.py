"""The project's exceptions, each with a documented exit code.

Every error reads as one line that names what is wrong and how to fix it.  Library
errors (pynvml, OSError, TOML) are translated at the boundary and chained with
``raise ... from err`` so the cause is kept for ``--debug`` and logs.

Exit codes (docs/exit-codes.md):
  0  success
  1  unexpected internal error (a bug: please report)
  2  bad input: unknown model/profile/placement, malformed layout text, bad option
  3  configuration error (config.toml unreadable, unknown key, contradiction)
  4  GPU/driver error (NVML failure, MIG not enabled, not supported, no permission)
  5  refused: an instance that must change is in use, or (mode) processes use a GPU
     whose MIG mode must change; nothing was changed
  6  partial: the possible part was applied, the rest is blocked by busy instances
  7  busy: another slurm-mig holds the lock and the wait timed out
  8  Slurm error: a Slurm command failed or Slurm did not reach the expected state
  9  Slurm could not be read (squeue/sinfo/pyslurm: slurmctld down or unreachable, an
     ``errors`` list in Slurm's JSON, no nodes at all): nothing was planned or changed
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_GPU = 4
EXIT_REFUSED = 5
EXIT_PARTIAL = 6
EXIT_LOCKED = 7
EXIT_SLURM = 8
EXIT_SLURM_UNREADABLE = 9


class SlurmMigError(Exception):
    """Base class: a one-line message and an exit code."""

    exit_code = EXIT_INTERNAL

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class InputError(SlurmMigError):
    """Bad input from the command line or a layout string."""

    exit_code = EXIT_USAGE


class UnknownModel(InputError):
    pass


class UnknownProfile(InputError):
    pass


class LayoutError(InputError):
    """A layout that is malformed or not valid on the GPU model."""


class ConfigError(SlurmMigError):
    exit_code = EXIT_CONFIG


class GpuError(SlurmMigError):
    """A failure reported by the GPU driver (NVML) or the simulator."""

    exit_code = EXIT_GPU


class MigNotEnabled(GpuError):
    pass


class NotSupported(GpuError):
    pass


class NoPermission(GpuError):
    pass


class InsufficientResources(GpuError):
    pass


class InvalidPlacement(GpuError):
    pass


class NotFound(GpuError):
    pass


class InstanceInUse(GpuError):
    """An instance has processes (or compute instances) and cannot be destroyed."""

    exit_code = EXIT_REFUSED


class ApplyRefused(SlurmMigError):
    """The wanted layout needs busy instances destroyed; nothing was changed."""

    exit_code = EXIT_REFUSED


class ModeRefused(SlurmMigError):
    """``slurm-mig mode``: processes (or jobs) use a GPU whose MIG mode must change; that
    GPU's mode was not changed."""

    exit_code = EXIT_REFUSED


class LockBusy(SlurmMigError):
    exit_code = EXIT_LOCKED


class SlurmError(SlurmMigError):
    """A Slurm command failed, or a node did not reach the state we waited for."""

    exit_code = EXIT_SLURM


class SlurmUnreadable(SlurmError):
    """The queue or the nodes could not be read (the command failed or timed out, Slurm's
    JSON carries ``errors``, no node at all, pyslurm raised): the caller did nothing.

    Its own exit code (9), apart from 8, so that a timer or a monitor can tell "the
    controller did not answer, nothing was done" from "an action on a node failed"."""

    exit_code = EXIT_SLURM_UNREADABLE


class SimulatedCrash(BaseException):
    """Raised by the simulator's fault injection to model a process dying mid-way.

    A BaseException so that no ``except Exception`` on the way can swallow it; the
    simulator's command-line path turns it into ``os._exit``.
    """
