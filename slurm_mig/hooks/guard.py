"""The prolog's guard: a job that asked for a gpu must not start without one.

slurmd tells the prolog which gres records it gave the job (``SLURM_JOB_GPUS``) and nothing
about what the job *asked* for (docs/slurm-prolog-env.md: no variable of the Prolog's
environment carries the request, on 22.05, 24.11 or 26.05).  Right after slurmctld starts
(a restart, or the re-exec that ``scontrol reconfigure`` is on >= 23.11) a node's gres have
counts from slurm.conf but no per-record bitmap until its slurmd registers again, and a job
allocated in that window gets a count with no record: no ``SLURM_JOB_GPUS``, and it ran as
a CPU job without its MIG instance (issue 10, measured on 22.05).

So for a job without ``SLURM_JOB_GPUS`` the prolog asks slurmctld for the job's request,
through ``squeue`` printing only the fields slurmctld itself validated (the node count and
the four ``tres-per-*`` fields; never the job's name, comment or anything else a user
types), and refuses the job when it asked for gpus on every node (``--gres``,
``--gpus-per-node``, ``--gpus-per-task``, ``--gpus-per-socket``; ``--gpus`` for a
one-node job).  :func:`gpu_request` is pure; :func:`check` is the edge (subprocess, argv
lists only).  Stdlib only and no ``typing`` at run time: it runs for every CPU job.
"""

from __future__ import annotations

from ..core.errors import SlurmError, SlurmUnreadable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Mapping, Sequence

#: ``0`` in the hooks' defaults file: no guard (CPU jobs start without asking slurmctld).
GUARD_ENV = "SLURM_MIG_PROLOG_GUARD"
#: The commands the guard runs (default: found on PATH, which the prolog script sets).
SQUEUE_ENV = "SLURM_MIG_SQUEUE"
SCONTROL_ENV = "SLURM_MIG_SCONTROL"

#: squeue ``--Format`` fields, in this order; each printed whole (width 0) and followed by SEP.
FIELDS = ("NumNodes", "tres-per-job", "tres-per-node", "tres-per-socket", "tres-per-task")
SEP = "|"
#: Seconds per squeue attempt, and the pauses between attempts: a slurmctld that is
#: restarting again (rebalance's next reconfigure) answers within them.
TIMEOUT = 10.0
PAUSES = (1.0, 3.0)
#: What squeue says for a job slurmctld does not know (it ended, or was cancelled).
GONE = "Invalid job id"
#: The gres name a request must name to be a gpu request (Slurm spells the tres
#: ``gres:gpu`` on 22.05, ``gres/gpu`` from 23.02 on).
GPU_NAMES = ("gpu", "gres:gpu", "gres/gpu")


class GpusNotGiven(SlurmError):
    """The job asked for gpus on this node and Slurm gave it none (exit 8)."""


def squeue_argv(squeue: str, job: str) -> list[str]:
    return [squeue, "--noheader", "--states=all", f"--jobs={job}",
            "--Format=" + ",".join(f"{f}:0{SEP}" for f in FIELDS)]


def _gpu_count(item: str) -> int | None:
    """``gres/gpu:1g.10gb:2`` -> 2, ``gres:gpu`` -> 1, ``gres/gpu:0`` -> 0; not a gpu -> None.
    A count that is not plain ASCII digits (a type alone, a suffix) counts as 1: asking."""
    item = item.strip()
    for name in GPU_NAMES:
        rest = item[len(name):]
        if not item.startswith(name) or rest[:1] not in ("", ":", "="):
            continue
        last = rest[1:].replace("=", ":").rsplit(":", 1)[-1]
        return int(last) if last.isascii() and last.isdigit() else 1
    return None


def _asks(value: str) -> str | None:
    """The gpu items of one ``tres-per-*`` value with a count above zero, or None."""
    value = value.strip()
    if value in ("", "N/A", "(null)"):
        return None
    items = [i.strip() for i in value.split(",") if (_gpu_count(i) or 0) > 0]
    return ",".join(items) or None


def gpu_request(fields: Sequence[str]) -> str | None:
    """What the job asked that puts a gpu on each of its nodes, as ``field value`` text, or
    None (a CPU job, or ``--gpus`` spread over several nodes: some may rightly have none).

    ``fields``: squeue's values for :data:`FIELDS`, in that order."""
    numnodes, per_job, per_node, per_socket, per_task = (f.strip() for f in fields)
    for name, value in (("tres-per-node", per_node), ("tres-per-task", per_task),
                        ("tres-per-socket", per_socket)):
        asked = _asks(value)
        if asked:
            return f"{name} {asked}"
    asked = _asks(per_job)
    if asked and not (numnodes.isascii() and numnodes.isdigit() and int(numnodes) > 1):
        return f"tres-per-job {asked}"
    return None


def parse_squeue(out: str, job: str) -> list[list[str]]:
    """squeue's lines -> one list of :data:`FIELDS` values per line; a line of another
    shape is :class:`SlurmUnreadable` (the guard does not guess)."""
    rows = []
    for line in out.splitlines():
        if not line.strip():
            continue
        parts = line.split(SEP)
        if len(parts) != len(FIELDS) + 1 or parts[-1].strip():
            raise SlurmUnreadable(f"cannot tell whether job {job} asked for gpus: squeue printed "
                                  f"{line[:200]!r}, not {len(FIELDS)} fields ending in {SEP!r}; "
                                  f"check `squeue --version` against docs/hooks.md")
        rows.append(parts[:-1])
    return rows


def _run(argv: list[str], environ: Mapping[str, str], timeout: float):
    import subprocess

    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=dict(environ), check=False, stdin=subprocess.DEVNULL)


def ask(job: str, environ: Mapping[str, str], *, run: Callable = _run,
        sleep: Callable[[float], None] | None = None) -> str | None:
    """The job's gpu request (:func:`gpu_request`), asking slurmctld through squeue, with
    retries; None when the job asked for none, or slurmctld no longer knows it.  squeue
    missing, failing or silent past every attempt: :class:`SlurmUnreadable` (fail-closed)."""
    import subprocess
    import time

    sleep = time.sleep if sleep is None else sleep
    argv = squeue_argv(environ.get(SQUEUE_ENV) or "squeue", job)
    why = ""
    for attempt in range(len(PAUSES) + 1):
        if attempt:
            sleep(PAUSES[attempt - 1])
        try:
            done = run(argv, environ, TIMEOUT)
        except FileNotFoundError as err:
            raise SlurmUnreadable(f"cannot tell whether job {job} asked for gpus: {argv[0]} not "
                                  f"found; install Slurm's client commands on the node or set "
                                  f"{SQUEUE_ENV} in /etc/default/slurm-mig") from err
        except subprocess.TimeoutExpired:
            why = f"did not answer in {TIMEOUT:g}s"
            continue
        err_text = " ".join((done.stderr or "").split())
        if done.returncode == 0:
            rows = parse_squeue(done.stdout, job)
            asked = [a for a in map(gpu_request, rows) if a]
            return asked[0] if asked else None
        if GONE in err_text:
            return None  # the job is gone: it will not run, nothing to guard
        why = f"failed: {err_text[:200] or f'exit {done.returncode}'}"
    raise SlurmUnreadable(f"cannot tell whether job {job} asked for gpus: `{' '.join(argv)}` {why} "
                          f"({len(PAUSES) + 1} tries); refused rather than risk a gpu job running "
                          f"without its instance; check slurmctld (`scontrol ping`), then resume "
                          f"the node")


def drain(node: str, reason: str, environ: Mapping[str, str], *, run: Callable = _run) -> str:
    """Drain ``node`` with slurm-mig's ``reason`` before the prolog fails, so Slurm keeps it
    (slurmctld drains a node whose prolog failed with ``Prolog error`` only when it is not
    drained already).  Returns "" or why it could not (then Slurm's reason stands)."""
    argv = [environ.get(SCONTROL_ENV) or "scontrol", "update", f"nodename={node}", "state=drain",
            f"reason={reason}"]
    try:
        done = run(argv, environ, TIMEOUT)
    except Exception as err:  # the refusal matters, not the reason text
        return f"{type(err).__name__}: {err}"
    if done.returncode != 0:
        return " ".join((done.stderr or done.stdout or f"exit {done.returncode}").split())[:200]
    return ""


def check(job: str, environ: Mapping[str, str], *, run: Callable = _run,
          sleep: Callable[[float], None] | None = None) -> None:
    """For a job slurmd gave no ``SLURM_JOB_GPUS``: return when it asked for none; raise
    :class:`GpusNotGiven` (after draining the node with slurm-mig's reason) when it did."""
    if environ.get(GUARD_ENV) == "0":
        return
    asked = ask(job, environ, run=run, sleep=sleep)
    if asked is None:
        return
    node = environ.get("SLURMD_NODENAME") or "this node"
    from ..change import reasons

    reason = reasons.prolog_no_gpus(job, asked)
    drained = (drain(node, reason, environ, run=run) if environ.get("SLURMD_NODENAME")
               else "SLURMD_NODENAME unset")
    how = ("drained it with slurm-mig's reason" if not drained
           else f"Slurm drains it (Prolog error; slurm-mig's own drain failed: {drained})")
    raise GpusNotGiven(
        f"it asked for gpus ({asked}) but Slurm gave it none (no SLURM_JOB_GPUS): it was "
        f"allocated before {node} registered its gres with slurmctld (a slurmctld restart or "
        f"reconfigure); refused so it does not run without its instance; Slurm requeues it "
        f"(held unless SchedulerParameters has nohold_on_prolog_fail: `scontrol release "
        f"{job}`); {how}: once `scontrol show node {node}` lists its Gres, resume it "
        f"(`scontrol update nodename={node} state=resume`, or `slurm-mig sync` on the node)")
