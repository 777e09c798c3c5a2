"""Slurm prolog and epilog hooks: give each job the MIG instance gres.conf promised it.

Run by slurmd as root (``prolog.d/50-slurm-mig``, ``epilog.d/50-slurm-mig``), through the
fast entry point ``python3 -m slurm_mig.hooks prolog|epilog`` (no click, no psutil unless
processes must be ended).  docs/hooks.md has the failure table.

:func:`run_hook` tries :mod:`slurm_mig.hooks.fast` first: it only verifies, without loading
the engine, that the facts a full prolog derived (``<state_dir>/hook-snapshot.json``) still
hold and that the instance is idle and free; then it writes the same job record.  Any
doubt, and every failure, goes to the full hook (:mod:`slurm_mig.hooks.full`).  Design and
invariants: docs/hooks.md.

A job slurmd gave no ``SLURM_JOB_GPUS`` is asked about (:mod:`slurm_mig.hooks.guard`): one
that asked for gpus is refused, so it never runs without its instance.

A failure prints one line, ``slurm-mig prolog: error: job <id>: <what>; <fix>``, to stderr
(slurmd logs it), writes it to ``<state_dir>/last-error`` and exits non-zero: Slurm drains
the node and requeues the job held.
"""

from __future__ import annotations

import os
import sys
import time

from ..core.errors import EXIT_INTERNAL, EXIT_USAGE, InputError, SlurmMigError
from .jobenv import WIPE_ENV, epilog_overrides, parse_job_gpus

TYPE_CHECKING = False  # no `typing` at run time: the hooks start on every job (docs/benchmarks.md)
if TYPE_CHECKING:
    from typing import Mapping, Sequence

LAST_ERROR = "last-error"


def _load_config(environ: Mapping[str, str]):
    from ..host.config import load_config, resolve_config_path

    return load_config(resolve_config_path(None, environ))


def _backend(config):
    from ..gpu.backend import make_backend

    return make_backend(config.backend, sim_root=config.sim.root)


def sim_run(config, environ: Mapping[str, str], command: Sequence[str],
            out_path: str | None = None) -> dict:
    """Inside a job (simulator only): attach this process to the job's instances, report
    what it reached as JSON (to ``out_path`` or stdout), then exec ``command``.

    The job's record is read here; the simulator, a guest, is reached by name through
    :mod:`slurm_mig.core.guests` and handed it (:func:`slurm_mig.sim.entry.run_in_job`)."""
    from ..core.guests import visit
    from ..node.jobs import check_job_id, read_job

    if config.backend != "sim":
        raise InputError("`sim run` is for the simulator backend only (backend = \"sim\")")
    job = check_job_id(environ.get("SLURM_JOB_ID"))
    record = read_job(config.paths.state_dir, job)
    if record is None:
        raise InputError(f"no slurm-mig record for job {job}: is the slurm-mig prolog in "
                         f"slurm.conf (Prolog=, PrologFlags=Alloc) and did the job ask for a gpu?")
    return visit("sim").run_in_job(config.sim.root, job, record, environ, command, out_path)


def _record_error(config, line: str) -> None:
    if config is None:
        return
    try:
        from ..host.atomic import write_atomic
        from ..host.safefs import ensure_dir

        ensure_dir(config.paths.state_dir, 0o700, "state directory")
        write_atomic(os.path.join(config.paths.state_dir, LAST_ERROR), line + "\n", mode=0o600,
                     keep_prev=False, follow=False)
    except Exception:  # the error line on stderr is what matters
        pass


def _fast(which: str, environ: Mapping[str, str], proc_root: str) -> dict | None:
    """The hook's result through :mod:`.fast`, or None: then the full hook runs."""
    from . import fast as hookfast

    if environ.get(hookfast.FAST_ENV) == "0":
        return None
    try:
        if which == "prolog":
            result = hookfast.prolog(environ, parse_job_gpus(environ.get("SLURM_JOB_GPUS")),
                                     proc_root)
        else:
            epilog_overrides(environ)  # a bad one: the full path reports it (and last-error)
            result = hookfast.epilog(environ, WIPE_ENV, proc_root)
    except (hookfast.Doubt, SlurmMigError, OSError, ValueError, KeyError, TypeError,
            AttributeError, IndexError) as err:
        if environ.get(hookfast.REPORT_ENV) == "1":
            why = str(err) if isinstance(err, (hookfast.Doubt, SlurmMigError)) else repr(err)
            sys.stderr.write(f"slurm-mig {which}: job {_job_label(environ.get('SLURM_JOB_ID'))}: "
                             f"full path ({why})\n")
        return None
    if environ.get(hookfast.REPORT_ENV) == "1":
        sys.stderr.write(f"slurm-mig {which}: job {_job_label(environ.get('SLURM_JOB_ID'))}: fast path\n")
    return result


def _epilog_messages(job: str, result: dict) -> None:
    for line in result.get("warnings", ()):
        sys.stderr.write(f"slurm-mig epilog: job {job}: {line}\n")
    if not result["record"]:
        sys.stderr.write(f"slurm-mig epilog: job {job}: no job record (already cleaned up, or the "
                         f"job had no gpu); nothing to do\n")
    if result.get("strays"):
        from ..host.jobprocs import describe

        sys.stderr.write(f"slurm-mig epilog: job {job}: ended stray processes on its instances: "
                         + "; ".join(describe(*s) for s in result["strays"]) + "\n")
    if result["other_pids"]:
        sys.stderr.write(f"slurm-mig epilog: job {job}: left pids "
                         f"{', '.join(map(str, result['other_pids']))} alone (other jobs')\n")
    if result.get("strays_left"):
        sys.stderr.write(f"slurm-mig epilog: job {job}: left pids "
                         f"{', '.join(map(str, result['strays_left']))} alone (no job's, on "
                         f"instances this job did not hold; a prolog there refuses them)\n")


def _job_label(text: str | None) -> str:
    """The job as an error line names it: the id, or a short escaped form of whatever slurmd
    passed (a newline in it must not split the line)."""
    from ..node.jobs import _is_job_id

    if not text:
        return "?"
    if _is_job_id(text) or (len(text) <= 24 and text.isascii() and text.isprintable()
                            and " " not in text):
        return text
    return ascii(text[:24])


def run_hook(which: str, environ: Mapping[str, str] | None = None, *,
             proc_root: str = "/proc", config=None, backend=None) -> int:
    """Run ``prolog`` or ``epilog`` with one-line errors; returns the exit code.  Then, with
    ``[metrics] textfile`` set, its duration and any failure go to the node's metrics
    (:func:`_metrics`: a metrics failure is a warning, never the hook's exit code)."""
    environ = os.environ if environ is None else environ
    start = time.monotonic()
    seen: dict = {"path": "full", "config": config, "reason": None}
    code = _run_hook(which, environ, proc_root, config, backend, seen)
    if "skip" not in seen:
        _metrics(which, environ, proc_root, seen, time.monotonic() - start)
    return code


def _metrics(which: str, environ: Mapping[str, str], proc_root: str, seen: dict,
             seconds: float) -> None:
    """The hook's duration (and failure reason) into the node's metrics, when ``[metrics]
    textfile`` is set; settings from the config the full path read, else from the cache the
    fast path used.  Any failure: one warning line on stderr, and the hook's code stands."""
    try:
        config = seen["config"]
        if config is not None:
            textfile, state_file = config.metrics.textfile, config.metrics.state_file
            state_dir = config.paths.state_dir
        elif seen["path"] != "fast":
            return  # the config could not be read (the hook's error says why): no metrics
        else:
            from .fast import Doubt, load_settings

            try:
                cfg = load_settings(environ)  # what the fast path just read
            except Doubt:
                return
            textfile, state_file = cfg.get("metrics_textfile"), cfg.get("metrics_state_file")
            state_dir = cfg["state_dir"]
        if not textfile or not state_file:
            return
        from ..core.nodemetrics import record_hook
        from ..node.metrics import update

        update(state_file, textfile, state_dir,
               lambda state: record_hook(state, which, seen["path"], seconds, seen["reason"]),
               proc_root=proc_root)
    except Exception as err:  # metrics are never worth a drained node
        why = str(err) if isinstance(err, SlurmMigError) else f"{type(err).__name__}: {err}"
        sys.stderr.write(f"slurm-mig {which}: job {_job_label(environ.get('SLURM_JOB_ID'))}: "
                         f"warning: {' '.join(why.split())}\n")


def _run_hook(which: str, environ: Mapping[str, str], proc_root: str, config, backend,
              seen: dict) -> int:
    job = _job_label(environ.get("SLURM_JOB_ID"))
    own_backend = backend is None
    try:
        if which == "prolog" and not (environ.get("SLURM_JOB_GPUS") or "").strip():
            from ..node.jobs import check_job_id
            from .guard import check

            # a job Slurm gave no gpu: nothing to make, but it must not have asked for one
            # (gres not registered yet after a slurmctld restart; docs/hooks.md)
            check(check_job_id(environ.get("SLURM_JOB_ID")), environ)
            seen["skip"] = True  # a CPU job's prolog: not a hook slurm-mig did anything in
            return 0
        if config is None and backend is None:
            fast = _fast(which, environ, proc_root)
            if fast is not None:
                seen["path"] = "fast"
                if which == "epilog":
                    _epilog_messages(job, fast)
                return 0
        if config is None:
            config = seen["config"] = _load_config(environ)
            from .fast import config_path, write_config_cache

            write_config_cache(config_path(environ))
        if backend is None:
            backend = _backend(config)
        from . import full

        if which == "prolog":
            full.prolog(config, backend, environ, proc_root=proc_root)
        else:
            wipe, grace = epilog_overrides(environ)
            wipe = config.hooks.epilog_wipe if wipe is None else wipe
            grace = config.hooks.kill_grace if grace is None else grace
            result = full.epilog(config, backend, environ, proc_root=proc_root, wipe=wipe,
                                 grace=grace)
            _epilog_messages(job, result)
        return 0
    except SlurmMigError as err:
        line = f"slurm-mig {which}: error: job {job}: {err}"
        code = err.exit_code
        seen["reason"] = type(err).__name__
    except Exception as err:  # a bug: still one line, and the node drains
        line = (f"slurm-mig {which}: error: job {job}: internal error {type(err).__name__}: "
                f"{' '.join(str(err).split())}; report it (run with SLURM_MIG_DEBUG=1 for a traceback)")
        code = EXIT_INTERNAL
        seen["reason"] = "internal"
        if environ.get("SLURM_MIG_DEBUG"):
            import traceback

            traceback.print_exc()
    finally:
        if own_backend and backend is not None:
            backend.close()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if config is None:  # failed before the config was read (a CPU job's guard): try it now
        try:
            config = seen["config"] = _load_config(environ)
        except Exception:  # the line on stderr is what matters
            pass
    _record_error(config, line)
    return code


def task_prolog(environ: Mapping[str, str]) -> int:
    """TaskProlog, as the job's user: print the step's ``export`` lines (:mod:`.taskenv`).
    Always 0: a failing TaskProlog kills the task; without lines it keeps Slurm's values."""
    try:
        from .taskenv import task_prolog as lines

        out = lines(environ)
    except Exception as err:  # a bug must not kill the user's task
        sys.stderr.write(f"slurm-mig task-prolog: internal error {type(err).__name__}; "
                         f"the task keeps Slurm's CUDA_VISIBLE_DEVICES\n")
        return 0
    if out:
        sys.stdout.write("".join(line + "\n" for line in out))
        sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m slurm_mig.hooks prolog|epilog|sim-run [--out FILE] [--] CMD...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("prolog", "epilog") and len(argv) == 1:
        return run_hook(argv[0])
    if argv and argv[0] == "task-prolog" and len(argv) == 1:
        return task_prolog(os.environ)
    if argv and argv[0] == "sim-run":
        rest = argv[1:]
        out = None
        if rest[:1] == ["--out"] and len(rest) >= 2:
            out, rest = rest[1], rest[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        try:
            sim_run(_load_config(os.environ), os.environ, rest, out)
        except SlurmMigError as err:
            sys.stderr.write(f"slurm-mig sim run: error: {err}\n")
            return err.exit_code
        return 0
    sys.stderr.write("usage: python3 -m slurm_mig.hooks prolog|epilog|task-prolog|sim-run [--out FILE] [--] CMD...\n")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
