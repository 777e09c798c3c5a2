"""Prolog and epilog wall time, simulator and NVML backends, beside ``python3 -c pass`` in
the same run.

Target (issues 3 and 9): the production hooks (the NVML backend) and the simulator's, each
<= 3x the bare interpreter start.  Prints a table; asserts nothing.  Run from the
repository root:

    .venv/bin/python bench/hooks.py [--runs 30] [--gpus 8]

Each measured run is a fresh process, as slurmd starts it: ``python -m slurm_mig.hooks
prolog`` for a job on one instance, then ``epilog`` for the same job, against a node of
``--gpus`` A100s cut into seven instances each (gres.conf and the node include written by
slurm-mig itself).  Bytecode is compiled first (slurm_mig and pynvml), as a package install
does; this machine sets PYTHONDONTWRITEBYTECODE, which would otherwise hide that.

Two nodes, measured in turn in every run:

* **sim**: ``backend = "sim"``, the simulated driver.
* **nvml**: ``backend = "nvml"``, the production backend, over the pynvml look-alike
  (``slurm_mig/sim/fakenvml.py``) on a simulated driver of its own, reached through a
  ``pynvml`` module first on ``PYTHONPATH`` (:func:`~slurm_mig.sim.fakenvml.write_pynvml_shim`).
  Each NVML call is delayed as long as it took on a real NVIDIA H200 with driver
  580.159.04 (``tests/data/nvml/h200-580.159.04-latency.json``, docs/hardware.md): the
  process's first ``nvmlInit`` 12.8 ms, ``nvmlShutdown`` 9.5 ms, the first device handle
  6.5 ms, and so on.  ``paths.dev``/``paths.proc`` point at that driver's ``dev`` and
  ``proc``: the driver's capability files, GPU information and ``mig-minors`` are read
  there, as on a real node.  A call lasts the recorded time or the look-alike's own time
  (it reads the simulated driver's state file), whichever is longer.  Whatever imports
  pynvml (the full paths, the epilog asking the driver) also imports the look-alike and
  its simulator, which production does not: the "import pynvml" rows measure that
  overhead (shim minus plain), and the summary subtracts it.

Before the timed runs, one full prolog and epilog per node touches one instance of every
GPU (so the fast path has the facts a node in service has: docs/hooks.md, "The fast path").
The hooks run with ``SLURM_MIG_HOOK_REPORT=1``, and the table says how many took the fast
path.  The "full path" rows are the same hooks with ``SLURM_MIG_HOOK_FAST=0``, on other
records.  On a node in service one epilog in ``FAST_EPILOGS_IN_A_ROW + 1`` per instance
asks the driver what runs on the job's instance (``slurm_mig/gpu/instancepids.py``); the
"epilog, asking the driver" rows time that one (a job whose held fact is set to that count
before its epilog, a bench-only edit), and the last lines give the average over the
``FAST_EPILOGS_IN_A_ROW + 1`` epilogs.
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

from slurm_mig.hooks import fast as hookfast
from slurm_mig.node import jobs  # noqa: E402
from slurm_mig.app.cli import main as cli  # noqa: E402
from slurm_mig.host.config import load_config, sim_config_text  # noqa: E402
from slurm_mig.hooks.fast import FAST_EPILOGS_IN_A_ROW  # noqa: E402

NODE = "bench1"
LATENCY = os.path.join(REPO, "tests", "data", "nvml", "h200-580.159.04-latency.json")
TARGET = 3.0


def _setup(config: str) -> None:
    for argv in (["apply", "1g.5gb:7"], ["gres-conf", "--node", NODE, "--write"],
                 ["node-conf", "--node", NODE, "--write"]):
        code = cli(["--config", config, *argv])
        if code:
            raise SystemExit(f"bench: setup step {argv} failed with exit {code}")


#: ``--metrics``: the node's textfile on (docs/metrics.md), in the node's own tree.
METRICS = '[metrics]\ntextfile = "/textfile/slurm_mig.prom"\n'


def sim_node(root: str, gpus: int, extra: str = "") -> tuple:
    """(config path, extra environment) of the simulator node."""
    config = os.path.join(root, "config.toml")
    with open(config, "w") as f:
        f.write(sim_config_text(root, ["A100-40GB"] * gpus, extra))
    _setup(config)
    return config, {}


def nvml_node(root: str, gpus: int, extra: str = "") -> tuple:
    """(config path, extra environment) of the NVML node: ``backend = "nvml"`` over the
    look-alike, its driver files under the simulated driver's root."""
    from slurm_mig.sim import fakenvml
    from slurm_mig.sim.driver import SimDriver

    sim = os.path.join(root, "host", "sim")
    SimDriver.create(sim, ["A100-40GB"] * gpus)
    config = os.path.join(root, "config.toml")
    with open(config, "w") as f:
        f.write(f'version = 1\nbackend = "nvml"\n[paths]\nroot = "{root}/host"\n'
                f'dev = "/sim/dev"\nproc = "/sim/proc"\n' + extra)
    saved = sys.modules.get("pynvml")
    sys.modules["pynvml"] = fakenvml.fake_pynvml(sim)  # setup only: no latency
    try:
        _setup(config)
    finally:
        if saved is None:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = saved
    shim = fakenvml.write_pynvml_shim(os.path.join(root, "shim"))
    return config, {"PYTHONPATH": shim, fakenvml.SHIM_ROOT_ENV: sim,
                    fakenvml.SHIM_LATENCY_ENV: LATENCY}


def _set_fast_epilogs(config: str, job: str) -> None:
    """Make the job's held facts say FAST_EPILOGS_IN_A_ROW: its epilog then asks the driver."""
    import json

    state_dir = load_config(config).paths.state_dir
    for inst in jobs.read_job(state_dir, job)["instances"]:
        path = hookfast.fact_path(state_dir, inst["gpu"], inst["gi_id"], job)
        with open(path) as f:
            fact = json.load(f)
        fact["fast_epilogs"] = FAST_EPILOGS_IN_A_ROW
        with open(path, "w") as f:
            json.dump(fact, f)


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
    ap.add_argument("--metrics", action="store_true",
                    help="with [metrics] textfile set: every hook also writes the textfile")
    args = ap.parse_args()

    compileall.compile_dir(os.path.join(REPO, "slurm_mig"), quiet=1)
    import importlib.util

    compileall.compile_file(importlib.util.find_spec("pynvml").origin, quiet=1)  # as pip does
    hook = [sys.executable, "-m", "slurm_mig.hooks"]
    script = os.path.join(REPO, "prolog.d", "50-slurm-mig")
    records = args.gpus * 7
    times: dict = {"python3 -c pass": []}
    fast: dict = {}
    with tempfile.TemporaryDirectory(prefix="slurm-mig-bench.") as tmp:
        # The CPU job's prolog asks squeue whether it asked for gpus (the guard): a stand-in
        # that answers "a CPU job", as tests/conftest.py's cpu_squeue.
        squeue = os.path.join(tmp, "squeue")
        with open(squeue, "w") as f:
            f.write("#!/bin/sh\necho '1|N/A|N/A|N/A|N/A|'\n")
        os.chmod(squeue, 0o755)
        nodes = {}
        for kind, make in (("sim", sim_node), ("nvml", nvml_node)):
            root = os.path.join(tmp, kind)
            os.makedirs(root)
            config, extra = make(root, args.gpus, METRICS if args.metrics else "")
            base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURMD_NODENAME": NODE,
                    "SLURM_MIG_CONFIG": config, "SLURM_JOB_UID": "1000",
                    "SLURM_MIG_SQUEUE": squeue, **extra}
            nodes[kind] = base
            warm = dict(base, SLURM_JOB_ID="999",
                        SLURM_JOB_GPUS=",".join(str(7 * g) for g in range(args.gpus)))
            timed(hook + ["prolog"], warm)
            timed(hook + ["epilog"], dict(warm, SLURM_JOB_GPUS=""))
            for row in ("prolog", "epilog", "epilog, asking the driver", "prolog, full path",
                        "epilog, full path"):
                times[f"{kind}: {row}"] = []
            fast[kind] = {"prolog": [], "epilog": []}
        times["prolog (CPU job, script)"] = []
        times["import pynvml"] = []
        times["import pynvml, through the shim"] = []
        plain = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        shim = {k: v for k, v in nodes["nvml"].items() if k not in ("SLURMD_NODENAME",)}
        for i in range(args.runs):
            times["python3 -c pass"].append(timed([sys.executable, "-c", "pass"], plain))
            for kind, base in nodes.items():
                job = str(1000 + i)
                env = dict(base, SLURM_JOB_ID=job, SLURM_JOB_GPUS=str(i % records),
                           SLURM_MIG_HOOK_REPORT="1")
                times[f"{kind}: prolog"].append(timed(hook + ["prolog"], env, fast[kind]["prolog"]))
                times[f"{kind}: epilog"].append(
                    timed(hook + ["epilog"], dict(env, SLURM_JOB_GPUS=""), fast[kind]["epilog"]))
                checked = dict(env, SLURM_JOB_ID=str(3000 + i), SLURM_JOB_GPUS=str((i + 2) % records))
                timed(hook + ["prolog"], checked)
                _set_fast_epilogs(base["SLURM_MIG_CONFIG"], checked["SLURM_JOB_ID"])
                times[f"{kind}: epilog, asking the driver"].append(
                    timed(hook + ["epilog"], dict(checked, SLURM_JOB_GPUS="")))
                full = dict(base, SLURM_JOB_ID=str(5000 + i), SLURM_JOB_GPUS=str((i + 1) % records),
                            SLURM_MIG_HOOK_FAST="0")
                times[f"{kind}: prolog, full path"].append(timed(hook + ["prolog"], full))
                times[f"{kind}: epilog, full path"].append(
                    timed(hook + ["epilog"], dict(full, SLURM_JOB_GPUS="")))
            times["prolog (CPU job, script)"].append(
                timed([script], dict(nodes["sim"], SLURM_JOB_ID=str(1000 + i))))
            times["import pynvml"].append(timed([sys.executable, "-c", "import pynvml"], plain))
            times["import pynvml, through the shim"].append(
                timed([sys.executable, "-c", "import pynvml"], shim))
    ref = statistics.median(times["python3 -c pass"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"hook wall time: {args.gpus} GPUs x 7 instances, {args.runs} runs each, "
          f"Python {sys.version.split()[0]}; nvml = the NVML backend over the pynvml look-alike "
          f"with each call delayed as recorded on an H200, driver 580.159.04 "
          f"({os.path.relpath(LATENCY, REPO)})")
    print(f"{'what':30} {'median ms':>10} {'p90 ms':>8} {'x python -c pass':>17}")
    for name, values in times.items():
        values = sorted(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        print(f"{name:30} {medians[name] * 1e3:10.1f} {p90 * 1e3:8.1f} {medians[name] / ref:17.2f}")
    extra = medians["import pynvml, through the shim"] - medians["import pynvml"]
    print(f"the look-alike's own import: {extra * 1e3:.1f} ms; without it (as on a real node):")
    for row in ("epilog, asking the driver", "prolog, full path", "epilog, full path"):
        est = medians[f"nvml: {row}"] - extra
        print(f"  nvml: {row:28} {est * 1e3:8.1f} ms {est / ref:6.2f}x")
    n = FAST_EPILOGS_IN_A_ROW + 1
    for kind in fast:
        asking = medians[f"{kind}: epilog, asking the driver"] - (extra if kind == "nvml" else 0)
        mixed = ((n - 1) * medians[f"{kind}: epilog"] + asking) / n
        print(f"{kind}: epilog in service ({n - 1} fast, then 1 asking the driver"
              f"{', less the look-alike import' if kind == 'nvml' else ''}): "
              f"{mixed * 1e3:.1f} ms, {mixed / ref:.2f}x")
    print("fast path taken: " + "; ".join(
        f"{kind} prolog {sum(f['prolog'])}/{args.runs}, epilog {sum(f['epilog'])}/{args.runs}"
        for kind, f in fast.items()))
    met = [name for name in medians if name.startswith(("sim:", "nvml:")) and medians[name] / ref <= TARGET]
    # (the target line reads the rows as measured, look-alike import included)
    missed = [name for name in medians if name.startswith(("sim:", "nvml:")) and name not in met]
    print(f"target: prolog and epilog <= {TARGET:.2f}x; met by: {', '.join(met) or 'none'}; "
          f"missed by: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
