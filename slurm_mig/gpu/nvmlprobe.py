"""A read-only dump of what NVML says about each GPU's MIG support, as raw as NVML gives it.

Why this exists beside ``catalog --verify``: the verify command goes through
:class:`~slurm_mig.gpu.nvml.NvmlBackend`, which stops at "MIG mode is off" and skips
profiles NVML does not offer.  To check the catalog on a GPU that we may only read
(a lent, shared machine), we want every answer NVML gives, errors included, for every
profile enum index, whether MIG is on or off, recorded to a file that tests can replay
(tests/data/nvml/).  Nothing here ever calls a create, destroy or set function: the
names called are listed in :data:`CALLS` and a test holds the probe to that list.

Run it as root on a GPU node::

    python3 -m slurm_mig.gpu.nvmlprobe > nvml-probe.json
"""

from __future__ import annotations

import ctypes
import json
import sys
from typing import Any, Dict, List, Optional

#: Every NVML function the probe calls; all of them only read.
CALLS = (
    "nvmlInit", "nvmlShutdown", "nvmlSystemGetDriverVersion", "nvmlSystemGetNVMLVersion",
    "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetName", "nvmlDeviceGetUUID",
    "nvmlDeviceGetPciInfo", "nvmlDeviceGetMinorNumber", "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetGpuInstanceProfileInfo", "nvmlDeviceGetGpuInstancePossiblePlacements",
    "nvmlDeviceGetGpuInstanceRemainingCapacity", "nvmlDeviceGetGpuInstances",
    "nvmlGpuInstanceGetInfo",
)

_PROFILE_FIELDS = ("id", "isP2pSupported", "sliceCount", "instanceCount", "multiprocessorCount",
                   "copyEngineCount", "decoderCount", "encoderCount", "jpegCount", "ofaCount",
                   "memorySizeMB")


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class _Prober:
    def __init__(self, nv):
        self.nv = nv

    def ask(self, name: str, *args, **kwargs) -> Dict[str, Any]:
        """NVML's ``name(*args)`` as ``{"value": ...}`` or ``{"error": code, "message": ...}``:
        a failure is a fact too.  Only names in :data:`CALLS` are ever called."""
        if name not in CALLS:
            raise ValueError(f"the probe only reads; {name} is not in CALLS")
        try:
            return {"value": getattr(self.nv, name)(*args, **kwargs)}
        except self.nv.NVMLError as err:
            return {"error": err.value, "message": str(err)}
        except Exception as err:  # a pynvml without the call, a struct without a field
            return {"error": None, "message": f"{type(err).__name__}: {err}"}

    def profile(self, h, enum: int) -> Dict[str, Any]:
        got = self.ask("nvmlDeviceGetGpuInstanceProfileInfo", h, enum, version=2)
        if "error" in got:
            got = self.ask("nvmlDeviceGetGpuInstanceProfileInfo", h, enum)
            got["info_version"] = 1
        else:
            got["info_version"] = 2
        if "error" in got:
            return {"enum": enum, **got}
        info = got["value"]
        out: Dict[str, Any] = {"enum": enum, "info_version": got["info_version"]}
        for field in _PROFILE_FIELDS:
            if hasattr(info, field):
                out[field] = getattr(info, field)
        if hasattr(info, "name"):
            out["name"] = _text(info.name)
        pid = out["id"]
        out["placements"] = self.placements(h, pid)
        cap = self.ask("nvmlDeviceGetGpuInstanceRemainingCapacity", h, pid)
        out["remaining_capacity"] = cap.get("value", cap)
        out["instances"] = self.instances(h, pid, max(out.get("instanceCount", 1), 1))
        return out

    def placements(self, h, profile_id: int):
        nv = self.nv
        count = ctypes.c_uint(0)
        fn = "nvmlDeviceGetGpuInstancePossiblePlacements"
        first = self.ask(fn, h, profile_id, None, ctypes.byref(count))
        if "error" in first:
            return first
        array = (nv.c_nvmlGpuInstancePlacement_t * max(count.value, 1))()
        count.value = len(array)
        got = self.ask(fn, h, profile_id, array, ctypes.byref(count))
        if "error" in got:
            return got
        return [[array[i].start, array[i].size] for i in range(count.value)]

    def instances(self, h, profile_id: int, room: int):
        nv = self.nv
        array = (nv.c_nvmlGpuInstance_t * room)()
        count = ctypes.c_uint(room)
        got = self.ask("nvmlDeviceGetGpuInstances", h, profile_id, array, ctypes.byref(count))
        if "error" in got:
            return got
        out = []
        for i in range(count.value):
            info = self.ask("nvmlGpuInstanceGetInfo", array[i])
            if "error" in info:
                out.append(info)
                continue
            v = info["value"]
            out.append({"id": v.id, "profileId": v.profileId,
                        "placement": [v.placement.start, v.placement.size]})
        return out

    def gpu(self, index: int) -> Dict[str, Any]:
        nv = self.nv
        got = self.ask("nvmlDeviceGetHandleByIndex", index)
        if "error" in got:
            return {"index": index, "handle": got}
        h = got["value"]
        out: Dict[str, Any] = {"index": index}
        for key, fn in (("name", "nvmlDeviceGetName"), ("uuid", "nvmlDeviceGetUUID"),
                        ("minor", "nvmlDeviceGetMinorNumber")):
            r = self.ask(fn, h)
            out[key] = _text(r["value"]) if "value" in r and key != "minor" else r.get("value", r)
        pci = self.ask("nvmlDeviceGetPciInfo", h)
        out["pci_device_id"] = (f"0x{pci['value'].pciDeviceId:08X}" if "value" in pci else pci)
        mem = self.ask("nvmlDeviceGetMemoryInfo", h)
        out["memory_total_mib"] = mem["value"].total // (1024 * 1024) if "value" in mem else mem
        mode = self.ask("nvmlDeviceGetMigMode", h)
        out["mig_mode"] = list(mode["value"]) if "value" in mode else mode
        slots = self.ask("nvmlDeviceGetMaxMigDeviceCount", h)
        out["max_mig_devices"] = slots.get("value", slots)
        count = getattr(nv, "NVML_GPU_INSTANCE_PROFILE_COUNT", 16)
        out["profiles"] = [self.profile(h, enum) for enum in range(count)]
        return out


def probe(nv) -> Dict[str, Any]:
    """Everything the probe reads, as one JSON-able dict (``nv``: pynvml or a stand-in)."""
    p = _Prober(nv)
    init = p.ask("nvmlInit")
    if "error" in init:
        return {"init": init}
    try:
        out: Dict[str, Any] = {
            "driver": _text(p.ask("nvmlSystemGetDriverVersion").get("value", "")),
            "nvml": _text(p.ask("nvmlSystemGetNVMLVersion").get("value", "")),
            "pynvml_profile_count": getattr(nv, "NVML_GPU_INSTANCE_PROFILE_COUNT", None),
        }
        count = p.ask("nvmlDeviceGetCount")
        out["gpus"] = [p.gpu(i) for i in range(count.get("value", 0))]
        if "error" in count:
            out["count"] = count
        return out
    finally:
        p.ask("nvmlShutdown")


def main(argv: Optional[List[str]] = None) -> int:
    import pynvml

    json.dump(probe(pynvml), sys.stdout, indent=1, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
