"""Recent demand kept between rebalance cycles: ``[rebalance] demand_file``.

What spare room on a recut GPU gets is decided by the pure planner
(:mod:`slurm_mig.rebalance.planning.spare`) from the instances asked for per type in recent
cycles.  This module is the cycle's edge for it: what the cycle read (:func:`in_use`,
:func:`update`, both pure) and the file (:func:`read_memory`, :func:`write_memory`).

The file is a hint, not a record anything else depends on: a missing or damaged one gives
one warning line and an empty memory (spare room then follows the current queue), never a
stopped cycle; the next cycle that is not a dry run writes it again (atomic write).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ..slurm.model import NodeInfo
from .planning.model import DemandItem
from .planning.spare import asked, remember

VERSION = 1
#: Larger than any memory file slurm-mig writes (a few hundred types at most).
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Memory:
    """Instances asked for per type, as an exponentially weighted mean; ``at``: the wall
    time (seconds) of the cycle that made it (None: no cycle yet)."""

    types: Mapping[str, float] = field(default_factory=dict)
    at: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"version": VERSION, "at": self.at,
                "types": {t: round(v, 6) for t, v in sorted(self.types.items())}}


def in_use(infos: Iterable[NodeInfo]) -> Dict[str, int]:
    """Instances in use per type over the nodes (Slurm's ``gres_used``)."""
    out: Dict[str, int] = {}
    for info in infos:
        for t, n in info.gres_used.items():
            if n > 0:
                out[t] = out.get(t, 0) + int(n)
    return out


def update(memory: Memory, now_asked: Mapping[str, float], now: float, half_life_s: float) -> Memory:
    """The memory with this cycle's instances asked for per type (pending plus in use,
    :func:`asked`) blended in, at wall time ``now``.  Pure."""
    elapsed = None if memory.at is None else now - memory.at
    return Memory(remember(memory.types, now_asked, elapsed, half_life_s), now)


def asked_now(demand: Iterable[DemandItem], infos: Iterable[NodeInfo]) -> Dict[str, float]:
    """Instances asked for now per type: every pending job of ``demand`` plus the instances
    in use on ``infos``.  Pure."""
    return asked(demand, in_use(infos))


def read_memory(path: str) -> Tuple[Memory, Optional[str]]:
    """The memory in ``path`` and, when it could not be used, the one-line warning why
    (the memory is then empty)."""
    from ..host.safefs import UnsafePath, read_file

    start = "starting with an empty memory of recent demand; the next cycle writes it again"
    try:
        raw = read_file(path, "rebalance demand file", limit=MAX_BYTES)
        if raw is None:
            return Memory(), f"{path}: not found (normal on the first cycle); {start}"
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError, UnsafePath) as err:
        reason = " ".join(str(err).split())[:200]
        return Memory(), f"{path}: cannot read it ({reason}); {start}"
    types = data.get("types") if isinstance(data, dict) else None
    at = data.get("at") if isinstance(data, dict) else None
    if (not isinstance(types, dict) or not (at is None or _finite(at))
            or not all(isinstance(k, str) and _finite(v) and v >= 0 for k, v in types.items())):
        return Memory(), (f"{path}: not a rebalance demand file (types: type -> instances, at: "
                          f"seconds); {start}")
    return Memory({k: float(v) for k, v in types.items()}, None if at is None else float(at)), None


def _finite(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def write_memory(path: str, memory: Memory) -> None:
    """Atomic write (temp file + rename)."""
    from ..host.atomic import write_json_atomic

    write_json_atomic(path, memory.as_dict())
