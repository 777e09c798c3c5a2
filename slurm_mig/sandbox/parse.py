"""Slurm command output -> small frozen values.  Pure functions; the commands run elsewhere."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Mapping, Tuple

from ..slurm.scontrol import parse_pairs

TERMINAL_JOB_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE",
})


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
