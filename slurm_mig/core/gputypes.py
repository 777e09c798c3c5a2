"""Value types that every GPU backend returns.  Plain frozen data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


#: GPU families (Ampere) whose MIG mode change waits for a GPU reset; Hopper and later
#: (H100, H200, GH200, H20, B200, GB200, RTX PRO 6000 Blackwell) apply it at once.  The
#: driver has the last word (current != pending after the change); this only predicts it.
RESET_FAMILIES = ("A100", "A30", "A800")


def mode_change_needs_reset(name: str) -> bool:
    """Whether a MIG mode change on a GPU of this NVML name waits for a GPU reset (Ampere)."""
    return any(family in name for family in RESET_FAMILIES)


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as the driver sees it."""

    index: int  #: NVML index
    minor: int  #: device minor number: /dev/nvidia<minor>, and the mig-minors ``gpu<minor>``
    uuid: str
    name: str  #: nvmlDeviceGetName, e.g. "NVIDIA A100-SXM4-40GB"
    pci_device_id: str  #: e.g. "0x20B010DE"
    mig_current: bool
    mig_pending: bool

    @property
    def mig_reset_pending(self) -> bool:
        """MIG mode was changed but needs a GPU reset (or reboot) to take effect."""
        return self.mig_current != self.mig_pending


@dataclass(frozen=True)
class MigInstance:
    """A GPU instance and its (full-size) compute instance, ids as the driver reported them."""

    gpu: int  #: NVML index of the parent GPU
    gi_id: int
    profile_id: int  #: GPU-instance profile id
    start: int  #: placement start
    size: int  #: placement size
    ci_id: Optional[int] = None  #: None: a GPU instance with no compute instance (half-made)
    ci_profile_id: Optional[int] = None
    uuid: Optional[str] = None  #: MIG device UUID ("MIG-..."), once a compute instance exists
    pids: Tuple[int, ...] = ()  #: processes running on it
    jobs: Tuple[str, ...] = ()  #: Slurm jobs the prolog gave it (filled in by the apply engine)

    @property
    def busy(self) -> bool:
        """In use: processes run on it, or a job holds it (before its processes start)."""
        return bool(self.pids or self.jobs)

    @property
    def complete(self) -> bool:
        return self.ci_id is not None


@dataclass(frozen=True)
class MigModeResult:
    """What setting MIG mode did: current and pending mode, and whether a reset is needed."""

    gpu: int
    current: bool
    pending: bool
    reset_required: bool
