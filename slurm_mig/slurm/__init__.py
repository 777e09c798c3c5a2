"""The Slurm side: one small interface over the controller, and its adapters.

:class:`SlurmClient` is what sync (and later rebalance) need from slurmctld.  The
default adapter runs the Slurm commands (:mod:`.client`); output is parsed once, at
the edge, into frozen values (:mod:`.scontrol`).
"""

from __future__ import annotations

from typing import Dict, Optional, Protocol, Sequence

from .scontrol import NodeStatus

__all__ = ["NodeStatus", "SlurmClient"]


class SlurmClient(Protocol):
    def nodes(self, names: Optional[Sequence[str]] = None) -> Dict[str, NodeStatus]:
        """Nodes by name (all, or those named)."""

    def drain(self, node: str, reason: str) -> None:
        """Stop new jobs on ``node``; running ones go on."""

    def drain_nodes(self, nodes: Sequence[str], reason: str) -> None:
        """:meth:`drain` for several nodes at once (one scontrol call: ``nodename=n1,n2``)."""

    def resume(self, node: str) -> None:
        """Take ``node`` out of drain."""

    def reconfigure(self) -> None:
        """Make slurmctld and the slurmds re-read slurm.conf and gres.conf."""
