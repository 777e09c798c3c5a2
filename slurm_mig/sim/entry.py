"""What production code may ask of the simulator, through :func:`slurm_mig.core.guests.visit`.

The simulator is a guest (docs/design.md): no production module imports it.  The backend
factory (``backend = "sim"``), the CLI's ``slurm-mig sim ...`` commands and ``python -m
slurm_mig.hooks sim-run`` reach it by name, here, and hand it what it needs (a root, GPU
models, a job's record) as plain values; the simulator imports nothing above the GPU layer.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Mapping, Optional, Sequence

from ..core.errors import InputError
from .backend import SimBackend
from .driver import SimDriver, SimNvmlError

STATE_FILE = "state.json"


def backend(root: str) -> SimBackend:
    """The simulator backend over the state under ``root`` (``make_backend("sim")``)."""
    return SimBackend(root)


def ensure(root: str, models: Sequence[str]) -> None:
    """Create the simulated GPUs ``models`` under ``root`` unless a state is there already,
    so ``--backend sim`` just works."""
    if not os.path.exists(os.path.join(root, STATE_FILE)):
        SimDriver.create(root, list(models))


def init(root: str, models: Sequence[str], *, mig_enabled: bool = True) -> dict:
    """(Re)create simulated GPUs: ``{"root", "gpus": [name, ...]}`` (``slurm-mig sim init``)."""
    driver = SimDriver.create(root, list(models), mig_enabled=mig_enabled)
    return {"root": driver.root, "gpus": [g["name"] for g in driver.gpus()]}


def snapshot(root: str) -> dict:
    """The simulator's whole state (``slurm-mig sim show``)."""
    return SimDriver(root).snapshot()


def attach(root: str, gpu: int, gi_id: int, ci_id: int, pid: int) -> None:
    """Show process ``pid`` running on an instance (``slurm-mig sim attach``)."""
    try:
        SimDriver(root).attach_process(gpu, gi_id, ci_id, pid)
    except SimNvmlError as err:
        raise InputError(f"no instance gpu {gpu} gi {gi_id} ci {ci_id}; see `slurm-mig status`") from err


def detach(root: str, gpu: int, gi_id: int, ci_id: int, pid: Optional[int] = None) -> None:
    """Stop showing processes (``pid``, or all) on an instance (``slurm-mig sim detach``)."""
    try:
        SimDriver(root).detach_process(gpu, gi_id, ci_id, pid)
    except SimNvmlError as err:
        raise InputError(f"no instance gpu {gpu} gi {gi_id} ci {ci_id}; see `slurm-mig status`") from err


def run_in_job(root: str, job: str, record: dict, environ: Mapping[str, str],
               command: Sequence[str], out_path: Optional[str] = None) -> dict:
    """Inside job ``job``, whose record the caller read (:func:`slurm_mig.hooks.run.sim_run`):
    attach this process to the job's simulated instances, report what it reached as JSON
    (to ``out_path`` or stdout), then exec ``command``."""
    driver = SimDriver(root)
    pid = os.getpid()
    seen = []
    for inst in record["instances"]:
        entry = {k: inst.get(k) for k in ("index", "type", "gpu", "gi_id", "ci_id", "files")}
        if inst.get("gi_id") is not None:
            driver.attach_process(inst["gpu"], inst["gi_id"], inst["ci_id"], pid, track=True)
            gis = {g["id"]: g for g in driver.gpu_instances(inst["gpu"])}
            cis = gis.get(inst["gi_id"], {}).get("cis", [])
            entry["uuid"] = next((c["uuid"] for c in cis if c["id"] == inst["ci_id"]), None)
        access = {}
        for path in inst.get("files", ()):
            try:
                os.close(os.open(path, os.O_RDONLY))
                access[path] = "OPENED"
            except OSError as err:
                access[path] = errno.errorcode.get(err.errno or 0, str(err.errno))
        entry["access"] = access
        seen.append(entry)
    result = {"job_id": job, "node": record.get("node"), "pid": pid,
              "job_gpus": environ.get("SLURM_JOB_GPUS"), "instances": seen}
    text = json.dumps(result, sort_keys=True)
    if out_path:  # never through a link planted in a directory others can write (seen/)
        try:
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise InputError(f"cannot write {out_path}: {err.strerror} (a symbolic link is "
                             f"never followed); remove it or pick another --out") from err
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    if command:
        try:
            os.execvp(command[0], list(command))
        except OSError as err:
            raise InputError(f"cannot run {command[0]}: {err.strerror}") from err
    return result
