"""MIG device files: which ``/dev`` nodes a job on one MIG instance needs.

A MIG instance is reached through three character devices: the parent GPU
(``/dev/nvidia<minor>``) and two capability files, one for the GPU instance and one
for the compute instance (``/dev/nvidia-caps/nvidia-cap<N>``).  The cap minors are
listed by the driver in ``/proc/driver/nvidia-caps/mig-minors``; that file is the
truth.  The well-known formula is used only when the file is absent (no driver on a
build host, or a simulator without a fake ``/proc``), and the result says so.

Parsing and path construction are pure; :func:`read_mig_minors` and
:func:`missing_device_files` are the only functions that touch the filesystem, and
both take their root as a parameter so tests run in a temporary tree.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import GpuError

MIG_MINORS_RELPATH = "driver/nvidia-caps/mig-minors"
FORMULA = "formula"  #: the ``source`` of minors computed rather than read

MAX_GPUS = 32  #: gpu minors 0..31, as the driver numbers them
MAX_GIS = 15  #: GPU-instance ids 0..14
MAX_CIS = 8  #: compute-instance ids 0..7

_FIX = "check that the nvidia driver is loaded and supports MIG (nvidia-smi -L)"
_FIX_IDS = "check the GPU minor (nvidia-smi -q | grep Minor) and the instance ids (nvidia-smi mig -lgi)"



class DeviceFilesError(GpuError):
    """The MIG device files or the driver's list of their minors are not usable."""


@dataclass(frozen=True)
class MigMinors:
    """The cap-file minors of every MIG access file, as the driver (or formula) gives them."""

    config: int
    monitor: int
    gis: Mapping[Tuple[int, int], int]  #: (gpu minor, gi id) -> minor
    cis: Mapping[Tuple[int, int, int], int]  #: (gpu minor, gi id, ci id) -> minor
    source: str = field(default=FORMULA, compare=False)  #: file path, or "formula"

    def __post_init__(self) -> None:
        # Read-only views: the value is frozen, so its tables must be too.
        object.__setattr__(self, "gis", types.MappingProxyType(dict(self.gis)))
        object.__setattr__(self, "cis", types.MappingProxyType(dict(self.cis)))

    @property
    def from_formula(self) -> bool:
        return self.source == FORMULA

    def gi_minor(self, gpu_minor: int, gi_id: int) -> int:
        try:
            return self.gis[(gpu_minor, gi_id)]
        except KeyError:
            raise self._absent(f"gpu{gpu_minor}/gi{gi_id}/access") from None

    def ci_minor(self, gpu_minor: int, gi_id: int, ci_id: int) -> int:
        try:
            return self.cis[(gpu_minor, gi_id, ci_id)]
        except KeyError:
            raise self._absent(f"gpu{gpu_minor}/gi{gi_id}/ci{ci_id}/access") from None

    def _absent(self, name: str) -> DeviceFilesError:
        where = "the formula (no mig-minors file)" if self.from_formula else self.source
        return DeviceFilesError(f"no MIG device minor for {name} in {where}; {_FIX_IDS}")


def parse_mig_minors(text: str, source: str = "mig-minors") -> MigMinors:
    """Parse the driver's ``mig-minors`` text.

    Names the driver may add in future (not ``config``, ``monitor`` or ``gpu...``) are
    skipped, so a newer driver does not break us; a malformed ``gpu...`` line is not.
    """
    config: Optional[int] = None
    monitor: Optional[int] = None
    gis: Dict[Tuple[int, int], int] = {}
    cis: Dict[Tuple[int, int, int], int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise _malformed(source, lineno, line)
        name, minor = parts[0], int(parts[1])
        if name == "config":
            config = minor
        elif name == "monitor":
            monitor = minor
        elif name.startswith("gpu"):
            # Plain splitting, not a regex per line: the file has 4,322 lines and every
            # prolog reads it.
            key = _gpu_entry(name)
            if key is None:
                raise DeviceFilesError(
                    f"{source}:{lineno}: unknown entry {name!r} (expected gpuN/giG/access "
                    f"or gpuN/giG/ciC/access); {_FIX}"
                )
            if len(key) == 3:
                cis[(key[0], key[1], key[2])] = minor
            else:
                gis[(key[0], key[1])] = minor
    for name, value in (("config", config), ("monitor", monitor)):
        if value is None:
            raise DeviceFilesError(f"{source}: no '{name}' entry; {_FIX}")
    assert config is not None and monitor is not None  # checked just above
    return MigMinors(config=config, monitor=monitor, gis=gis, cis=cis, source=source)


def _gpu_entry(name: str) -> Optional[Tuple[int, ...]]:
    """``gpu0/gi3/access`` -> (0, 3); ``gpu0/gi3/ci1/access`` -> (0, 3, 1); else None."""
    p = name.split("/")
    if p[-1] != "access" or len(p) not in (3, 4) or not p[1].startswith("gi"):
        return None
    nums = [p[0][3:], p[1][2:]]
    if len(p) == 4:
        if not p[2].startswith("ci"):
            return None
        nums.append(p[2][2:])
    if not all(n.isdigit() for n in nums):
        return None
    return tuple(int(n) for n in nums)


def _malformed(source: str, lineno: int, line: str) -> DeviceFilesError:
    return DeviceFilesError(
        f"{source}:{lineno}: malformed line {line!r} (expected '<name> <minor>'); {_FIX}"
    )


def _formula_gi(gpu_minor: int, gi_id: int) -> int:
    return 3 + 135 * gpu_minor + 9 * gi_id


def _formula_ci(gpu_minor: int, gi_id: int, ci_id: int) -> int:
    return 4 + 135 * gpu_minor + 9 * gi_id + ci_id


def formula_minors(gpu_minors: Iterable[int] = range(MAX_GPUS)) -> MigMinors:
    """The minors the driver has always assigned; a fallback only, never preferred."""
    gis = {}
    cis = {}
    for g in gpu_minors:
        for gi in range(MAX_GIS):
            gis[(g, gi)] = _formula_gi(g, gi)
            for ci in range(MAX_CIS):
                cis[(g, gi, ci)] = _formula_ci(g, gi, ci)
    return MigMinors(config=1, monitor=2, gis=gis, cis=cis, source=FORMULA)


def render_mig_minors(gpu_minors: Iterable[int] = range(MAX_GPUS)) -> str:
    """The ``mig-minors`` text as the driver writes it; the simulator's fake ``/proc`` uses it."""
    lines = ["config 1", "monitor 2"]
    for g in gpu_minors:
        for gi in range(MAX_GIS):
            lines.append(f"gpu{g}/gi{gi}/access {_formula_gi(g, gi)}")
            for ci in range(MAX_CIS):
                lines.append(f"gpu{g}/gi{gi}/ci{ci}/access {_formula_ci(g, gi, ci)}")
    return "\n".join(lines) + "\n"


def read_mig_minors(proc_root: str = "/proc") -> MigMinors:
    """Read the driver's list; fall back to the formula only when the file does not exist."""
    path = os.path.join(proc_root, MIG_MINORS_RELPATH)
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        return formula_minors()
    except (OSError, UnicodeDecodeError) as err:
        raise DeviceFilesError(f"cannot read {path}: {err}; {_FIX}") from err
    return parse_mig_minors(text, source=path)


@dataclass(frozen=True)
class InstanceDevices:
    """The device files one MIG instance is reached through."""

    gpu_device: str  #: e.g. /dev/nvidia0
    gi_cap: str  #: e.g. /dev/nvidia-caps/nvidia-cap21
    ci_cap: str  #: e.g. /dev/nvidia-caps/nvidia-cap22

    def files(self) -> Tuple[str, str, str]:
        return (self.gpu_device, self.gi_cap, self.ci_cap)

    def multiple_files(self) -> str:
        """The value for a gres.conf ``MultipleFiles=`` entry."""
        return ",".join(self.files())


def _cap(dev_root: str, minor: int) -> str:
    return os.path.join(dev_root, "nvidia-caps", f"nvidia-cap{minor}")


def instance_devices(
    minors: MigMinors, gpu_minor: int, gi_id: int, ci_id: int, dev_root: str = "/dev"
) -> InstanceDevices:
    return InstanceDevices(
        gpu_device=os.path.join(dev_root, f"nvidia{gpu_minor}"),
        gi_cap=_cap(dev_root, minors.gi_minor(gpu_minor, gi_id)),
        ci_cap=_cap(dev_root, minors.ci_minor(gpu_minor, gi_id, ci_id)),
    )


def common_device_files(dev_root: str = "/dev",
                        minors: Optional[MigMinors] = None) -> Tuple[str, ...]:
    """Files every GPU job needs besides its instance's: control, UVM, and MIG config/monitor caps."""
    config, monitor = (minors.config, minors.monitor) if minors is not None else (1, 2)
    return (
        os.path.join(dev_root, "nvidiactl"),
        os.path.join(dev_root, "nvidia-uvm"),
        os.path.join(dev_root, "nvidia-uvm-tools"),
        _cap(dev_root, config),
        _cap(dev_root, monitor),
    )


def missing_device_files(devices: InstanceDevices) -> List[str]:
    """The instance's files that do not exist: a job must not start on such an instance."""
    return [p for p in devices.files() if not os.path.exists(p)]
