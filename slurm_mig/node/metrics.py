"""The node's metrics files: the state that keeps counters across processes, and the textfile
node_exporter's textfile collector reads (docs/metrics.md).

:func:`update` is the one way in: under the state file's own lock (``.<state file>.lock``
beside it, never the node lock, so a metrics write never holds up a hook's work) it reads
the state, lets the caller change it (a hook's duration, a command's run, a new inventory:
:mod:`slurm_mig.core.nodemetrics`), writes it back, counts the job records of the moment
and rewrites the textfile.  Both files are written atomically (a temp file in the same
directory, then a rename; node_exporter skips the temp file, which does not end in
``.prom``); the textfile 0644, the state 0600.  No fsync: losing the last few counts to a
power cut is cheaper than a disk flush on every job, and Prometheus takes a lower counter
as a reset.

Callers treat every error here as a warning (:class:`MetricsWriteFailed` or OSError): a
metrics failure never fails a hook nor drains a node.

Stdlib only, no ``typing`` at run time: the hooks import this module when metrics are on.
"""

from __future__ import annotations

import json
import os

from ..core import metrics as m, nodemetrics
from ..core.errors import EXIT_CONFIG, SlurmMigError
from ..host import safefs
from ..host.locking import node_lock
from . import jobs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Tuple

#: Seconds a writer waits for the metrics lock; then it gives up (and says so).
LOCK_TIMEOUT = 5.0
STATE_MODE = 0o600
TEXTFILE_MODE = 0o644
MAX_STATE_BYTES = 4 << 20


class MetricsWriteFailed(SlurmMigError):
    """The metrics state or textfile could not be written: a warning for the hooks and the
    commands that change the node; exit 3 for ``slurm-mig metrics`` (the host needs a hand)."""

    exit_code = EXIT_CONFIG


def lock_path(state_file: str) -> str:
    directory, name = os.path.split(os.path.abspath(state_file))
    return os.path.join(directory, f".{name}.lock")


def write_file(path: str, text: str, mode: int) -> bool:
    """``path`` replaced with ``text`` through a temp file and a rename (unchanged content
    is not rewritten); the directory is made 0755 where missing and must be trusted."""
    directory, name = os.path.split(os.path.abspath(path))
    safefs.ensure_dir(directory, 0o755, f"directory of {name}")
    return safefs.write_file(path, text.encode("utf-8"), mode)


def read_state(state_file: str) -> Dict[str, Any]:
    """The kept state; a missing, unreadable or damaged file is a fresh state."""
    try:
        data = safefs.read_file(state_file, "metrics state file", limit=MAX_STATE_BYTES)
    except (OSError, SlurmMigError):
        data = None
    if data is None:
        return nodemetrics.new_state()
    try:
        return nodemetrics.clean_state(json.loads(data.decode("utf-8")))
    except ValueError:  # not JSON, not UTF-8
        return nodemetrics.new_state()


def held_counts(state_dir: str, proc_root: str = "/proc") -> Dict[Tuple[int, int], int]:
    """(gpu, GPU-instance id) -> jobs holding it, from this boot's job records."""
    held = jobs.holders(state_dir, jobs.boot_id(proc_root))
    out: Dict[Tuple[int, int], int] = {}
    for pair in held.held:
        out[pair] = out.get(pair, 0) + 1
    return out


def render(state: Dict[str, Any], state_dir: str, proc_root: str = "/proc") -> str:
    return m.render(nodemetrics.families(state, held_counts(state_dir, proc_root)))


def update(state_file: str, textfile: Optional[str], state_dir: str,
           change: Optional[Callable[[Dict[str, Any]], None]] = None, *, persist: bool = True,
           proc_root: str = "/proc", lock_timeout: float = LOCK_TIMEOUT) -> str:
    """Read the state, ``change`` it, write it back (unless not ``persist``) and (``textfile``
    set) rewrite the textfile; returns the text.  Raises MetricsWriteFailed (say it and go on)."""
    try:
        with node_lock(lock_path(state_file), lock_timeout, note_holder=False):
            state = read_state(state_file)
            if change is not None:
                change(state)
            if change is not None and persist:
                write_file(state_file, json.dumps(state, sort_keys=True, separators=(",", ":"))
                           + "\n", STATE_MODE)
            text = render(state, state_dir, proc_root)
            if textfile:
                write_file(textfile, text, TEXTFILE_MODE)
            return text
    except (OSError, SlurmMigError, m.MetricsError) as err:
        what = f"{state_file}" + (f" and {textfile}" if textfile else "")
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise MetricsWriteFailed(f"metrics not written ({what}: {reason}); the next hook or "
                                 f"command writes them again") from err


def read_inventory(backend) -> List[Dict[str, Any]]:
    """The node's GPUs and MIG instances as the driver shows them now, in the shape
    :func:`slurm_mig.core.nodemetrics.set_inventory` keeps (commands only: it loads the
    catalog)."""
    from .inventory import catalog_model, gpu_model

    out = []
    for info in backend.gpus():
        base = catalog_model(info)
        entry: Dict[str, Any] = {"index": info.index, "model": base.key if base else info.name,
                                 "mig": bool(info.mig_current), "mig_pending": bool(info.mig_pending),
                                 "instances": []}
        if info.mig_current:
            model = gpu_model(backend, info)
            entry["instances"] = [
                {"gi": inst.gi_id, "profile": model.profile(inst.profile_id).name,
                 "start": inst.start}
                for inst in sorted(backend.instances(info.index), key=lambda i: i.start)]
        out.append(entry)
    return out
