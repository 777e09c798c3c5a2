"""A real, private Slurm cluster on one machine for integration tests and the demo.

:class:`SandboxCluster` runs munged, slurmctld and one slurmd per node (each in its own UTS
namespace) under one directory; :func:`make_device_nodes` makes fake NVIDIA device files that
gres.conf can name.  Needs root and the Debian packages munge, slurmctld, slurmd, slurm-client.
"""

from __future__ import annotations

from ..slurm.scontrol import NodeStatus
from .cgroups import Isolation, detect_isolation
from .cluster import ReconfigureResult, SandboxCluster
from .devices import DeviceNodes, make_device_nodes
from .errors import SandboxError
from .host import missing_requirements
from .parse import JobInfo

__all__ = [
    "DeviceNodes", "Isolation", "JobInfo", "NodeStatus", "ReconfigureResult", "SandboxCluster",
    "SandboxError", "detect_isolation", "make_device_nodes", "missing_requirements",
]
