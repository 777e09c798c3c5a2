"""``scontrol`` output -> small frozen values.  Pure functions; the commands run elsewhere.

Shared by the Slurm client (sync, rebalance) and the sandbox cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Mapping, Tuple

from .model import drain_flagged

# "Key=value" pairs of one `scontrol show ... -o` line; a value may hold blanks (OS=, Reason=)
# and runs up to the next " Key=".
_PAIR = re.compile(r"(?:^|\s)([A-Za-z][\w/:.]*)=(.*?)(?=\s+[A-Za-z][\w/:.]*=|\s*$)")


def parse_pairs(line: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for m in _PAIR.finditer(line.strip()):
        out.setdefault(m.group(1), m.group(2).strip())
    return out


@dataclass(frozen=True)
class NodeStatus:
    """One node as ``scontrol show node -o`` reports it.

    (Not sinfo: its state column shows a drained node as ``drain`` even before the node has
    registered, when the base state is still UNKNOWN.)
    """

    name: str
    base: str  # base state, lower case: idle, allocated, mixed, down, unknown, future, ...
    flags: FrozenSet[str] = frozenset()  # DRAIN, NOT_RESPONDING, INVALID_REG, ...
    gres: Mapping[str, int] = field(default_factory=dict)  # type -> count, {"1g.10gb": 2}
    gres_text: str = ""
    reason: str = ""

    @property
    def state(self) -> str:
        """sinfo's compact state: idle, alloc, mix, drain, drng, inval, down, unk, ..."""
        if any(f.startswith("INVAL") for f in self.flags):
            return "inval"
        if self.drain_flagged:
            return "drng" if self.base in ("allocated", "mixed", "completing") else "drain"
        return _COMPACT.get(self.base, self.base)

    @property
    def responding(self) -> bool:
        return "NOT_RESPONDING" not in self.flags

    @property
    def drain_flagged(self) -> bool:
        """Drained or draining (:func:`~slurm_mig.slurm.model.drain_flagged`)."""
        return drain_flagged(self.flags)

    @property
    def registered(self) -> bool:
        """The node's slurmd registered and slurmctld accepted it."""
        return (self.responding and self.base not in ("unknown", "down", "future")
                and not any(f.startswith("INVAL") for f in self.flags))


_COMPACT = {"allocated": "alloc", "mixed": "mix", "unknown": "unk", "completing": "comp"}


def parse_gres(text: str) -> Dict[str, int]:
    """``gpu:1g.10gb:2(S:0),gpu:3g.40gb:1`` -> ``{"1g.10gb": 2, "3g.40gb": 1}``.

    An untyped ``gpu:2`` is counted under ``""``.  Only ``gpu`` entries are kept.
    """
    out: Dict[str, int] = {}
    text = re.sub(r"\([^)]*\)", "", text.strip())
    if text in ("", "(null)"):
        return out
    for item in text.split(","):
        parts = item.split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        if len(parts) == 2:
            gtype, count = "", parts[1]
        else:
            gtype, count = ":".join(parts[1:-1]), parts[-1]
        try:
            out[gtype] = out.get(gtype, 0) + int(count)
        except ValueError:  # "gpu:1g.10gb" with no count means 1
            out[":".join(parts[1:])] = out.get(":".join(parts[1:]), 0) + 1
    return out


def parse_state(text: str) -> Tuple[str, FrozenSet[str]]:
    """``IDLE+DRAIN`` / ``IDLE*`` / ``MIXED+NOT_RESPONDING`` -> ("idle", {"DRAIN"}) etc."""
    parts = [p for p in text.strip().split("+") if p]
    if not parts:
        return "unknown", frozenset()
    flags = set(p.rstrip("*").upper() for p in parts[1:])
    if any(p.endswith("*") for p in parts):
        flags.add("NOT_RESPONDING")
    return parts[0].rstrip("*").lower(), frozenset(flags)


def parse_scontrol_nodes(text: str) -> Dict[str, NodeStatus]:
    """Lines of ``scontrol show node -o`` -> node name -> :class:`NodeStatus`."""
    nodes: Dict[str, NodeStatus] = {}
    for line in text.splitlines():
        pairs = parse_pairs(line)
        if "NodeName" not in pairs:
            continue
        base, flags = parse_state(pairs.get("State", ""))
        gres = pairs.get("Gres", "")
        reason = pairs.get("Reason", "")
        nodes[pairs["NodeName"]] = NodeStatus(pairs["NodeName"], base, flags, parse_gres(gres),
                                              gres, "" if reason == "(null)" else reason)
    return nodes
