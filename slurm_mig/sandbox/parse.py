"""Slurm command output -> small frozen values.  Pure functions; the commands run elsewhere."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Mapping, Tuple

TERMINAL_JOB_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE",
})

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
        if "DRAIN" in self.flags:
            return "drng" if self.base in ("allocated", "mixed", "completing") else "drain"
        return _COMPACT.get(self.base, self.base)

    @property
    def responding(self) -> bool:
        return "NOT_RESPONDING" not in self.flags

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


@dataclass(frozen=True)
class JobInfo:
    """A job as ``scontrol show job -o`` reports it."""

    job_id: int
    state: str  # COMPLETED, FAILED, PENDING, RUNNING, ...
    reason: str
    exit_code: str  # "0:0"
    nodes: str
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_JOB_STATES


def parse_scontrol_job(text: str) -> JobInfo:
    """One ``scontrol show job -o <id>`` line -> :class:`JobInfo`."""
    fields = parse_pairs(text.strip().splitlines()[0] if text.strip() else "")
    if "JobId" not in fields or "JobState" not in fields:
        raise ValueError(f"not an 'scontrol show job -o' line: {text.strip()[:200]!r}")
    return JobInfo(int(fields["JobId"]), fields["JobState"], fields.get("Reason", ""),
                   fields.get("ExitCode", ""), fields.get("NodeList", ""), fields)


def parse_sbatch_parsable(text: str) -> int:
    """``sbatch --parsable`` prints ``<jobid>`` or ``<jobid>;<cluster>``."""
    first = text.strip().splitlines()[-1] if text.strip() else ""
    try:
        return int(first.split(";")[0])
    except ValueError:
        raise ValueError(f"sbatch --parsable printed no job id: {text.strip()[:200]!r}") from None


def parse_version(text: str) -> Tuple[int, ...]:
    """``slurm-wlm 22.05.8`` / ``slurm 24.11.5`` -> (22, 5, 8)."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return ()
    return tuple(int(g) for g in m.groups() if g is not None)


def error_lines(log_text: str, ignore: List[str]) -> List[str]:
    """Lines with 'error' or 'fatal' that are not known to be harmless here."""
    out = []
    for line in log_text.splitlines():
        low = line.lower()
        if ("error" in low or "fatal" in low) and not any(i in line for i in ignore):
            out.append(line.strip())
    return out
