"""What a node's GPUs are, seen through a backend: effective models and current layouts.

The catalog gives the plan; the driver has the last word.  :func:`gpu_model` merges
the two (the driver's profiles win, the catalog fills gaps), and
:func:`current_layout` turns the driver's instances into a :class:`Layout`.
"""

from __future__ import annotations

from typing import Iterable

from .catalog import GpuModel, load_catalog, observed_model
from .errors import MigNotEnabled
from .gpu.types import GpuInfo, MigInstance
from .layout import Instance, Layout


def catalog_model(info: GpuInfo):
    """The catalog entry for a GPU, by name then PCI device id; None when unknown."""
    catalog = load_catalog()
    return catalog.find(info.name) or catalog.find(info.pci_device_id)


def gpu_model(backend, info: GpuInfo) -> GpuModel:
    """The effective model of a live GPU (the driver's profiles over the catalog's)."""
    if not info.mig_current:
        raise MigNotEnabled(
            f"gpu {info.index} ({info.name}) is not in MIG mode; enable it with "
            f"`nvidia-smi -i {info.index} -mig 1` (Ampere GPUs then need a reset)"
        )
    return observed_model(info.name, backend.profiles(info.index), catalog_model(info))


def current_layout(model: GpuModel, instances: Iterable[MigInstance]) -> Layout:
    """The layout the driver reports (half-made instances included: they hold space)."""
    return Layout(tuple(Instance.of(model.profile(i.profile_id), i.start) for i in instances))
