"""Queue-driven repartitioning: which idle (or drainable) nodes get which MIG layouts.

Pure code: no Slurm, no clock, no files (beyond the packaged catalog).  The caller turns
Slurm's view into :class:`PlanNode` and :class:`DemandItem` values; :func:`plan` returns
a :class:`Plan` with a keep/change decision per node, per-GPU before/after layouts and a
one-line reason per node.

Modules: :mod:`.model` (input and output values), :mod:`.flow` (demand matched to free
instances, per type), :mod:`.candidates` (the layouts a GPU may get), :mod:`.problem`
(the inputs indexed by type and partition set), :mod:`.scoring` (what a change is
worth), :mod:`.search` (the greedy), :mod:`.explain` (reasons and totals).
"""

from .model import (
    DemandItem,
    GpuChange,
    JobEnd,
    NodePlan,
    Plan,
    PlanGpu,
    PlanNode,
    PlanTotals,
    Policy,
    condition,
)
from .search import plan

__all__ = [
    "DemandItem",
    "GpuChange",
    "JobEnd",
    "NodePlan",
    "Plan",
    "PlanGpu",
    "PlanNode",
    "PlanTotals",
    "Policy",
    "condition",
    "plan",
]
