"""What slurmd hands a hook, checked: ``SLURM_JOB_GPUS``, the epilog's overrides; the errors
both paths raise.  Stdlib only, no ``typing`` at run time: the fast path imports it on every job.
"""

from __future__ import annotations

from ..core.errors import EXIT_REFUSED, InputError, SlurmMigError

TYPE_CHECKING = False  # no `typing` at run time: the hooks start on every job (docs/benchmarks.md)
if TYPE_CHECKING:
    from typing import Mapping

#: Overrides of [hooks] epilog_wipe / kill_grace for one run ("1"/"0", seconds).
WIPE_ENV = "SLURM_MIG_EPILOG_WIPE"
GRACE_ENV = "SLURM_MIG_EPILOG_GRACE"
#: Highest SLURM_JOB_GPUS index (a gres record of this node: GPUs x 7 instances) and the
#: longest SLURM_JOB_GPUS text read.
MAX_JOB_GPU_INDEX = 4095
MAX_JOB_GPUS_TEXT = 65536
FIX_GRES = ("regenerate gres.conf and the node's Gres= from the GPUs (`slurm-mig gres-conf "
            "--write`, `slurm-mig node-conf --write`), reconfigure Slurm, then resume the node")


class JobGpusError(InputError):
    pass


class InstanceRefused(SlurmMigError):
    """The instance is held by another job or has its processes: the job must not get it."""

    exit_code = EXIT_REFUSED


class InstanceMismatch(SlurmMigError):
    """gres.conf and the GPU disagree (profile, placement, ids): exit 3 like a config error."""

    exit_code = 3


def parse_job_gpus(text: str | None) -> list[int]:
    """``"0,2"``, ``"0-2,5"`` -> indexes (sorted, unique); ``""``/None -> [] (a CPU job).

    Indexes are ASCII digits, 0 to :data:`MAX_JOB_GPU_INDEX` (:mod:`slurm_mig.core.inputs`), so
    a range holds at most that many."""
    from ..core.inputs import NumberError, from_text, shown

    text = (text or "").strip()
    if not text:
        return []
    if len(text) > MAX_JOB_GPUS_TEXT:
        raise JobGpusError(f"SLURM_JOB_GPUS={shown(text)} is longer than {MAX_JOB_GPUS_TEXT} "
                           f"characters; expected a list of gpu indexes (e.g. 0,2 or 0-2)")
    out: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first = from_text(lo, 0, MAX_JOB_GPU_INDEX, kind="a gpu index")
            last = from_text(hi, 0, MAX_JOB_GPU_INDEX, kind="a gpu index") if sep else first
        except NumberError as err:
            which = "" if part.strip() == text else f" {shown(part.strip())} is"
            raise JobGpusError(f"SLURM_JOB_GPUS={shown(text)}:{which} {err}; expected a list of "
                               f"gpu indexes (e.g. 0,2 or 0-2)") from err
        if last < first:
            raise JobGpusError(f"SLURM_JOB_GPUS={shown(text)}: bad range {shown(part)} (its end "
                               f"is below its start)")
        out.update(range(first, last + 1))
    return sorted(out)


def epilog_overrides(environ: Mapping[str, str]) -> tuple:
    """(wipe, grace) from non-empty ``SLURM_MIG_EPILOG_WIPE`` / ``SLURM_MIG_EPILOG_GRACE``,
    None for each one unset.  A value that is not a flag, or not a number of seconds from 0
    to ``[hooks] kill_grace``'s bound (ASCII digits), is an InputError (exit 2), never a guess."""
    from ..core.inputs import MAX_TIMEOUT, NumberError, flag_text, seconds_text, shown

    wipe = grace = None
    if environ.get(WIPE_ENV):
        try:
            wipe = flag_text(environ[WIPE_ENV])
        except ValueError as err:
            raise InputError(f"{WIPE_ENV}={shown(environ[WIPE_ENV])}: {err}; fix or unset it "
                             f"(it overrides [hooks] epilog_wipe)") from err
    if environ.get(GRACE_ENV):
        try:
            grace = seconds_text(environ[GRACE_ENV], MAX_TIMEOUT)
        except NumberError as err:
            raise InputError(f"{GRACE_ENV}={shown(environ[GRACE_ENV])}: {err}; fix or unset it "
                             f"(it overrides [hooks] kill_grace)") from err
    return wipe, grace
