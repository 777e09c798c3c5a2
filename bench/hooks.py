"""Prolog and epilog wall time on the simulator, beside ``python3 -c pass`` in the same run.

Target (issue 3): each hook <= 3x the bare interpreter start.  Prints a table; asserts
nothing.  Run from the repository root:

    .venv/bin/python bench/hooks.py [--runs 30] [--gpus 8]

Each measured run is a fresh process, as slurmd starts it: ``python -m slurm_mig.hooks
prolog`` for a job on one instance, then ``epilog`` for the same job, against a
simulated node of ``--gpus`` A100s cut into seven instances each (gres.conf and the node
include written by slurm-mig itself).  Bytecode is compiled first, as a package install
does; this machine sets PYTHONDONTWRITEBYTECODE, which would otherwise hide that.

The hooks run with ``SLURM_MIG_HOOK_REPORT=1``, and the table says how many took the fast
path (docs/hooks.md): the first prolog takes the full path and writes the snapshot.  The
"full path" rows are the same hooks with ``SLURM_MIG_HOOK_FAST=0``, on other records.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from slurm_mig.cli import main as cli  # noqa: E402
from slurm_mig.config import sim_config_text  # noqa: E402

NODE = "bench1"


def node(root: str, gpus: int) -> str:
    config = os.path.join(root, "config.toml")
    with open(config, "w") as f:
        f.write(sim_config_text(root, ["A100-40GB"] * gpus))
    for argv in (["apply", "1g.5gb:7"], ["gres-conf", "--node", NODE, "--write"],
                 ["node-conf", "--node", NODE, "--write"]):
        code = cli(["--config", config, *argv])
        if code:
            raise SystemExit(f"bench: setup step {argv} failed with exit {code}")
    return config


def timed(argv, env, paths=None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"bench: {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    if paths is not None:
        paths.append(done.stderr.endswith(": fast path\n"))
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--gpus", type=int, default=8)
    args = ap.parse_args()

    compileall.compile_dir(os.path.join(REPO, "slurm_mig"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="slurm-mig-bench.") as root:
        config = node(root, args.gpus)
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURMD_NODENAME": NODE,
                "SLURM_MIG_CONFIG": config, "SLURM_JOB_UID": "1000"}
        records = args.gpus * 7
        times = {"python3 -c pass": [], "prolog": [], "epilog": [], "prolog, full path": [],
                 "epilog, full path": [], "prolog (CPU job, script)": []}
        fast = {"prolog": [], "epilog": []}
        hook = [sys.executable, "-m", "slurm_mig.hooks"]
        script = os.path.join(REPO, "prolog.d", "50-slurm-mig")
        for i in range(args.runs):
            job = str(1000 + i)
            env = dict(base, SLURM_JOB_ID=job, SLURM_JOB_GPUS=str(i % records),
                       SLURM_MIG_HOOK_REPORT="1")
            times["python3 -c pass"].append(timed([sys.executable, "-c", "pass"], base))
            times["prolog"].append(timed(hook + ["prolog"], env, fast["prolog"]))
            times["epilog"].append(timed(hook + ["epilog"], dict(env, SLURM_JOB_GPUS=""), fast["epilog"]))
            full = dict(base, SLURM_JOB_ID=str(5000 + i), SLURM_JOB_GPUS=str((i + 1) % records),
                        SLURM_MIG_HOOK_FAST="0")
            times["prolog, full path"].append(timed(hook + ["prolog"], full))
            times["epilog, full path"].append(timed(hook + ["epilog"], dict(full, SLURM_JOB_GPUS="")))
            times["prolog (CPU job, script)"].append(timed([script], dict(base, SLURM_JOB_ID=job)))
    ref = statistics.median(times["python3 -c pass"])
    print(f"hooks on the simulator: {args.gpus} GPUs x 7 instances, {args.runs} runs each, "
          f"Python {sys.version.split()[0]}")
    print(f"{'what':28} {'median ms':>10} {'p90 ms':>8} {'x python -c pass':>17}")
    for name, values in times.items():
        values = sorted(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        print(f"{name:28} {statistics.median(values) * 1e3:10.1f} {p90 * 1e3:8.1f} "
              f"{statistics.median(values) / ref:17.2f}")
    print(f"fast path taken: prolog {sum(fast['prolog'])}/{args.runs}, "
          f"epilog {sum(fast['epilog'])}/{args.runs}")
    print("target: prolog and epilog <= 3.00x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
