"""dcgm-exporter's HPC job mapping files, kept equal to the job records.

dcgm-exporter (``--hpc-job-mapping-dir`` / ``DCGM_HPC_JOB_MAPPING_DIR``) labels a GPU's
metrics with the job ids listed, one per line, in the file named after the GPU: ``<gpu
index>`` for a whole GPU, ``<gpu index>.<GPU-instance id>`` for a MIG instance (the MIG
form from dcgm-exporter 4.5.3-4.8.2, ``internal/pkg/transformation/hpc.go``; older
releases read only ``<gpu index>``).

:func:`rewrite` makes the directory say exactly what this boot's job records say: each
instance a record holds gets its file with that job id, every other file of that name form
goes.  The prolog and epilog call it under the node lock after they wrote or removed the
record; apply, sync and ``mode`` call :func:`refresh` (takes the lock) afterwards, so a
file never names a GPU-instance id that no longer exists.  Files are written atomically
(:func:`~slurm_mig.host.safefs.write_file`: temp file ``.<name>.<pid>.tmp``, which
dcgm-exporter skips, then rename; a file already right is not rewritten), mode 0644.
Files of other names are never touched.  Stdlib only: the hooks' fast path imports it.
"""

from __future__ import annotations

import os
import stat

from ..host import safefs
from . import jobs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable


def is_mapping_name(name: str) -> bool:
    """``<digits>`` or ``<digits>.<digits>``: the names dcgm-exporter reads (and we own)."""
    parts = name.split(".")
    return 1 <= len(parts) <= 2 and all(p.isascii() and p.isdigit() for p in parts)


def wanted(readings: Iterable, current_boot: str | None) -> dict:
    """file name -> job ids (sorted) from the job records (:class:`~.jobs.Reading`), leaving
    out records of an earlier boot.  A damaged record maps the pairs it still names.  Pure."""
    out: dict = {}
    for reading in readings:
        if reading.stale(current_boot):
            continue
        names = {f"{gpu}.{gi}" for gpu, gi in reading.pairs}
        record = reading.record if type(reading.record) is dict else {}
        for inst in record.get("instances", ()) if type(record.get("instances")) is list else ():
            if (type(inst) is dict and "gi_id" in inst and inst["gi_id"] is None
                    and type(inst.get("gpu")) is int and inst["gpu"] >= 0):
                names.add(str(inst["gpu"]))  # a whole GPU
        for name in names:
            out.setdefault(name, set()).add(reading.job)
    return {name: sorted(ids, key=int) for name, ids in out.items()}


def _check_dir(directory: str) -> None:
    os.makedirs(directory, 0o755, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"{directory} is not a directory of uid {os.geteuid()} writable only by it; "
                      f"fix its owner and mode (chmod 0755) or set [hooks] dcgm_job_mapping_dir "
                      f"to another one")


def rewrite(directory: str, state_dir: str, current_boot: str | None) -> dict:
    """Make ``directory`` match the job records (caller holds the node lock).  Returns
    ``{"written": [names], "removed": [names]}``."""
    _check_dir(directory)
    want = wanted(jobs.scan(state_dir), current_boot)
    written = [name for name in sorted(want)
               if safefs.write_file(os.path.join(directory, name),
                                    "".join(f"{j}\n" for j in want[name]).encode(), 0o644)]
    removed = []
    for name in sorted(os.listdir(directory)):
        if is_mapping_name(name) and name not in want:
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return {"written": written, "removed": removed}


def refresh(directory: str, state_dir: str, lock_timeout, proc_root: str = "/proc") -> dict:
    """:func:`rewrite` under the node lock (apply, sync and ``mode`` call it afterwards)."""
    from ..host.locking import node_lock

    with node_lock(os.path.join(state_dir, "node.lock"), lock_timeout):
        return rewrite(directory, state_dir, jobs.boot_id(proc_root))
