"""What a node's GPUs are, seen through a backend: effective models and current layouts.

The catalog gives the plan; the driver has the last word.  :func:`gpu_model` merges
the two (the driver's profiles win, the catalog fills gaps), and
:func:`current_layout` turns the driver's instances into a :class:`Layout`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ..core.catalog import GpuModel, load_catalog, observed_model
from ..core.errors import MigNotEnabled
from ..core.gputypes import GpuInfo, MigInstance
from ..core.layout import Instance, Layout


def catalog_model(info: GpuInfo):
    """The catalog entry for a GPU, by name then PCI device id; None when unknown."""
    catalog = load_catalog()
    return catalog.find(info.name) or catalog.find(info.pci_device_id)


def gpu_model(backend, info: GpuInfo) -> GpuModel:
    """The effective model of a live GPU (the driver's profiles over the catalog's)."""
    if not info.mig_current:
        raise MigNotEnabled(
            f"gpu {info.index} ({info.name}) is not in MIG mode; enable it with "
            f"`slurm-mig mode on --gpu {info.index}` (Ampere GPUs then need a reset; docs/mig-mode.md)"
        )
    return observed_model(info.name, backend.profiles(info.index), catalog_model(info))


def no_mig_gpu(infos: Sequence[GpuInfo]) -> MigNotEnabled:
    """The error for a node none of whose GPUs is in MIG mode (``apply --gpu all``, ``sync``):
    nothing was applied, so never a success (exit 4), naming each GPU's MIG state."""
    if not infos:
        return MigNotEnabled("the driver lists no GPU on this node; nothing to apply a MIG "
                             "layout to; see `slurm-mig status`")
    gpus = "; ".join(f"gpu {i.index} off" + (", on after a reset" if i.mig_pending else "")
                     for i in infos)
    return MigNotEnabled(f"no GPU on this node is in MIG mode ({gpus}); nothing was changed; "
                         f"enable it with `slurm-mig mode on --gpu <index>` (Ampere GPUs then "
                         f"need a reset; docs/mig-mode.md), see `slurm-mig status`")


def current_layout(model: GpuModel, instances: Iterable[MigInstance]) -> Layout:
    """The layout the driver reports (half-made instances included: they hold space)."""
    return Layout(tuple(Instance.of(model.profile(i.profile_id), i.start) for i in instances))
