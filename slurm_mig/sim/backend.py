"""The simulator backend: :class:`GpuBackend` over :class:`SimDriver`.

It reads and writes the same state file as every other process on the "node", and
turns the driver's NVML codes into project errors through the same table as the
NVML backend (:mod:`slurm_mig.gpu.nvmlcodes`).
"""

from __future__ import annotations

from typing import List, Tuple

from ..core.catalog import ObservedProfile
from ..core.gputypes import GpuInfo, MigInstance, MigModeResult
from ..gpu import nvmlcodes
from .driver import CI_PROFILE_SLICES, GI_PROFILE_ENUMS, SimDriver, SimNvmlError


class SimBackend:
    """Simulated GPUs under ``root`` (see :meth:`SimDriver.create`)."""

    def __init__(self, root: str):
        self.driver = SimDriver(root)

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except SimNvmlError as err:
            raise nvmlcodes.error_for(err.code, what) from err

    def gpus(self) -> List[GpuInfo]:
        return [
            GpuInfo(
                index=g["index"], minor=g["minor"], uuid=g["uuid"], name=g["name"],
                pci_device_id=g["pci_device_id"], mig_current=g["mig_current"],
                mig_pending=g["mig_pending"],
            )
            for g in self.driver.gpus()
        ]

    def profiles(self, gpu: int) -> List[ObservedProfile]:
        model = self._call(f"read profiles of gpu {gpu}", self.driver.profile_model, gpu)
        return [
            ObservedProfile(
                id=p.id, name=p.name, compute_slices=p.compute_slices, max_count=p.max_count,
                memory_mib=p.memory_mib or 0, placements=tuple(p.placements),
                placement_size=p.placement_size, enum=GI_PROFILE_ENUMS.get(p.enum, -1),
            )
            for p in model.profiles
        ]

    def instances(self, gpu: int) -> List[MigInstance]:
        what = f"list instances of gpu {gpu}"
        self._call(what, self.driver.mig_model, gpu)  # MIG mode off: NOT_SUPPORTED, as NvmlBackend
        gis = self._call(what, self.driver.gpu_instances, gpu)
        return [self._instance(gpu, gi) for gi in gis]

    @staticmethod
    def _instance(gpu: int, gi: dict) -> MigInstance:
        ci = min(gi["cis"], key=lambda c: c["id"]) if gi["cis"] else None
        pids = sorted({p["pid"] for c in gi["cis"] for p in c["procs"]})
        return MigInstance(
            gpu=gpu, gi_id=gi["id"], profile_id=gi["profile_id"], start=gi["start"], size=gi["size"],
            ci_id=ci["id"] if ci else None, ci_profile_id=ci["profile_id"] if ci else None,
            uuid=ci["uuid"] if ci else None, pids=tuple(pids),
        )

    def create_instance(self, gpu: int, profile_id: int, start: int) -> MigInstance:
        what = f"create GPU instance (profile id {profile_id}) at {start} on gpu {gpu}"
        gi = self._call(what, self.driver.create_gpu_instance, gpu, profile_id, start)
        return self.create_compute_instance(gpu, gi["id"])

    def create_compute_instance(self, gpu: int, gi_id: int) -> MigInstance:
        gi = self._gi(gpu, gi_id)
        _, profile = self._call(f"gpu {gpu}", self.driver.profile_by_id, gpu, gi["profile_id"])
        ci_profile = full_ci_profile(profile.compute_slices)
        what = f"create compute instance on gpu {gpu} gi {gi_id}"
        self._call(what, self.driver.create_compute_instance, gpu, gi_id, ci_profile)
        return self._instance(gpu, self._gi(gpu, gi_id))

    def _gi(self, gpu: int, gi_id: int) -> dict:
        for gi in self._call(f"list instances of gpu {gpu}", self.driver.gpu_instances, gpu):
            if gi["id"] == gi_id:
                return gi
        raise nvmlcodes.error_for(nvmlcodes.NOT_FOUND, f"gpu {gpu} gi {gi_id}")

    def destroy_instance(self, gpu: int, gi_id: int) -> None:
        gi = self._gi(gpu, gi_id)
        for ci in gi["cis"]:
            what = f"destroy compute instance {ci['id']} of gpu {gpu} gi {gi_id}"
            self._call(what, self.driver.destroy_compute_instance, gpu, gi_id, ci["id"])
        self._call(f"destroy gpu {gpu} gi {gi_id}", self.driver.destroy_gpu_instance, gpu, gi_id)

    def set_mig_mode(self, gpu: int, enabled: bool) -> MigModeResult:
        what = f"{'enable' if enabled else 'disable'} MIG mode on gpu {gpu}"
        status = self._call(what, self.driver.set_mig_mode, gpu, enabled)
        current, pending = self.driver.mig_mode(gpu)
        waiting = current != pending and bool(pending) == enabled
        if status not in (nvmlcodes.SUCCESS, nvmlcodes.RESET_REQUIRED) and not (
                status == nvmlcodes.IN_USE and waiting):
            raise nvmlcodes.error_for(status, what)
        return MigModeResult(gpu, bool(current), bool(pending),
                             reset_required=current != pending or status == nvmlcodes.RESET_REQUIRED)

    def processes(self, gpu: int) -> Tuple[int, ...]:
        what = f"list processes of gpu {gpu}"
        current, _ = self._call(what, self.driver.mig_mode, gpu)
        if not current:
            return tuple(self._call(what, self.driver.gpu_processes, gpu))
        return tuple(sorted({pid for m in self.instances(gpu) for pid in m.pids}))

    def reset_gpu(self, gpu: int) -> MigModeResult:
        self._call(f"reset gpu {gpu}", self.driver.reset_gpu, gpu)
        current, pending = self.driver.mig_mode(gpu)
        return MigModeResult(gpu, bool(current), bool(pending), reset_required=current != pending)

    def close(self) -> None:
        pass


def full_ci_profile(gi_compute_slices: int) -> int:
    """The compute-instance profile id covering a whole GPU instance of that many slices."""
    for enum, slices in CI_PROFILE_SLICES.items():
        if slices == gi_compute_slices:
            return enum
    raise ValueError(f"no compute-instance profile with {gi_compute_slices} slices")
