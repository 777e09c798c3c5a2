"""``slurm-mig demo``: slurm-mig under a real Slurm, on simulated GPUs, in under a minute.

The default walkthrough brings up the sandbox cluster (:mod:`slurm_mig.sandbox.mig`), submits
jobs for different MIG profiles with ``sbatch``, shows which job holds which instance while they
run and what each job reached, and leaves the cluster up for the reader (``sandbox down`` ends
it).  It needs root and Debian's Slurm packages (``bash .ci/setup``).

``--no-slurm`` keeps the older walkthrough that needs neither: the simulator alone (catalog,
layouts, apply, a busy instance protecting itself).
"""

from __future__ import annotations

import os
import shlex
import tempfile
import textwrap
import time
from typing import Callable, List, Optional, Tuple

Echo = Callable[[str], None]

DEMO_GPUS = ("A100-80GB", "H100-80GB")  # the simulator-only walkthrough
# (profile, count) per job: two 3g.40gb (one per node), 1g.10gb ones, one job with two.
DEMO_JOBS: Tuple[Tuple[str, int], ...] = (("3g.40gb", 1), ("3g.40gb", 1), ("1g.10gb", 1),
                                          ("1g.10gb", 2), ("1g.10gb", 1))
JOB_SECONDS = 3


def run_demo(root: Optional[str], echo: Echo, slurm: bool = True) -> int:
    return run_slurm_demo(root, echo) if slurm else run_sim_demo(root, echo)


# ----------------------------------------------------------------------------- with Slurm


def run_slurm_demo(root: Optional[str], echo: Echo) -> int:
    from .errors import EXIT_SLURM
    from .sandbox import mig
    from .sandbox.cluster import SandboxCluster
    from .sandbox.errors import SandboxError
    from .sandbox.text import export_lines, next_steps, root_option, status_text, up_text

    missing = mig.missing_requirements()
    if missing:
        raise mig.SandboxUnavailable(f"the demo needs {'; '.join(missing)}: {mig.SETUP_HINT}; "
                                     f"or `slurm-mig demo --no-slurm` for the simulator alone")
    spec = mig.SandboxSpec(os.path.abspath(root or mig.DEFAULT_ROOT))
    opt = root_option(spec.root)
    t0 = time.monotonic()
    echo(f"slurm-mig demo: a real Slurm cluster on this machine ({spec.nodes} nodes), each node "
         f"with a simulated {', '.join(spec.gpus)} GPU")
    echo(_title("1. The sandbox: munged, slurmctld and one slurmd per node; each GPU cut into "
                f"{spec.layout} by `slurm-mig apply`; gres.conf and the nodes' Gres= written by "
                "`slurm-mig gres-conf/node-conf --write`; slurm-mig's prolog and epilog as "
                "Prolog=/Epilog= (PrologFlags=Alloc)"))
    echo(f"$ slurm-mig sandbox up{opt}")
    up = mig.up(spec)
    echo(up_text(up))
    cluster = SandboxCluster.attach(spec.root)
    files = mig.SandboxFiles(spec.root)

    echo(_title("2. Slurm sees every MIG instance as a typed gpu"))
    _show(cluster, echo, ["sinfo", "-N", "-o", "%N %t %G"])

    echo(_title(f"3. Jobs for different profiles; each attaches to its instance (bin/sim-job: "
                f"`python -m slurm_mig.hooks sim-run`), then sleeps {JOB_SECONDS}s"))
    jobs: List[int] = []
    for profile, count in DEMO_JOBS:
        args = mig.sim_job_argv(files, profile, count, ("sleep", str(JOB_SECONDS)))
        proc = cluster.command(["sbatch", "--parsable", *args])
        jobs.append(int(proc.stdout.strip().split(";")[0]))
        echo(f"$ sbatch {' '.join(shlex.quote(a) for a in args)}   # job {jobs[-1]}")

    try:
        _wait(lambda: all(mig.read_seen(files, j) for j in jobs), 30,
              lambda: _stuck(cluster, jobs))
        echo(_title("4. While they run: which job holds which instance (the prolog's job "
                    "records; the simulator lists each job's pid on its instance)"))
        echo(f"$ slurm-mig sandbox status{opt}")
        echo(status_text(mig.status(spec.root)))
        infos = [cluster.wait_job(j, timeout=30) for j in jobs]
    except SandboxError as err:
        echo(f"\nThe jobs did not run as expected: {err}")
        echo(f"Look at: slurm-mig sandbox status{opt}; {cluster.paths.log}/slurmd-n*.log; "
             f"{cluster.paths.jobs}/slurm-<job>.out")
        return EXIT_SLURM
    failed = [i for i in infos if i.state != "COMPLETED"]

    echo(_title("5. What each job reached: the instance Slurm's gres record named, by the ids "
                "the driver gave it (ENXIO on its device files: allowed by its cgroup, no driver "
                "behind the fake device)"))
    echo(_job_table(files, jobs))
    _wait(lambda: not any(n["jobs"] for n in mig.status(spec.root)["nodes"]), 15, lambda: "")
    echo(_title("6. The epilogs ran: every instance is free again"))
    _show(cluster, echo, ["sinfo", "-N", "-o", "%N %t %G"])

    echo(_title(f"Done in {time.monotonic() - t0:.0f}s. The cluster is still up; in your shell:"))
    echo("\n".join(export_lines(up["env"])))
    echo("\n".join(next_steps(up)))
    echo(textwrap.dedent(f"""\
        #
        # Change a node's layout: drain, wait for its jobs, apply, rewrite gres.conf and
        # Gres=, reconfigure (`slurm-mig sandbox reconfigure`), resume (docs/sync.md):
        #   slurm-mig --config {files.node_config('n2')} sync --layout 3g.40gb:2
        # Tear it down: slurm-mig sandbox down{opt}   (--purge also removes {spec.root})"""))
    if failed:
        echo(f"\nNot every job completed: {', '.join(f'{i.job_id} {i.state}' for i in failed)}")
        return EXIT_SLURM
    return 0


def _title(text: str) -> str:
    return "\n== " + text


def _show(cluster, echo: Echo, argv: List[str]) -> None:
    echo("$ " + " ".join(shlex.quote(a) for a in argv))
    echo(cluster.command(argv).stdout.rstrip())


def _wait(done: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    from .sandbox.errors import SandboxError

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SandboxError(f"gave up after {timeout:g}s; {why()}")
        time.sleep(0.2)


def _stuck(cluster, jobs: List[int]) -> str:
    states = []
    for j in jobs:
        info = cluster.job(j)
        states.append(f"job {j} {info.state}" + (f" ({info.reason})" if info.reason not in
                                                  ("", "None") else ""))
    return ", ".join(states)


def _job_table(files, jobs: List[int]) -> str:
    from .sandbox import mig
    from .sandbox.text import table

    rows = []
    for j in jobs:
        seen = mig.read_seen(files, j) or {"node": "?", "instances": []}
        for inst in seen["instances"]:
            access = sorted(set(inst.get("access", {}).values()))
            rows.append([j, seen["node"], inst["type"], inst["gpu"], inst["gi_id"], inst["ci_id"],
                         inst.get("uuid") or "-", ",".join(access) or "-"])
    return "\n".join(table(rows, ["JOB", "NODE", "PROFILE", "GPU", "GI", "CI", "MIG UUID",
                                   "OPEN()"]))


# ----------------------------------------------------------------------------- simulator only


def _config_text(root: str) -> str:
    from .config import sim_config_text

    return sim_config_text(root, DEMO_GPUS)


def run_sim_demo(root: Optional[str], echo: Echo) -> int:
    from .cli import main

    root = os.path.abspath(root) if root else tempfile.mkdtemp(prefix="slurm-mig-demo.")
    os.makedirs(root, exist_ok=True)
    config = os.path.join(root, "config.toml")
    with open(config, "w") as f:
        f.write(_config_text(root))

    def step(title: str, *args: str) -> int:
        echo(f"\n== {title}\n$ slurm-mig {' '.join(args)}")
        return main(["--config", config, *args])

    echo(f"slurm-mig demo --no-slurm: simulated {', '.join(DEMO_GPUS)} under {root}")
    step("Fresh simulated GPUs (state shared by every process on the node)", "sim", "init")
    step("The catalog knows each GPU model's profiles and placements", "catalog", "A100-80GB")
    step("Every layout of an A30 to which nothing more fits", "layouts", "A30", "--maximal")
    step("Cut both GPUs into seven 1g.10gb instances", "apply", "1g.10gb:7")
    step("What the driver now has: ids are read back, never computed", "status")
    step("Plan a change first: two 1g instances stay, a 3g.40gb takes the top half",
         "apply", "1g.10gb:2,3g.40gb:1", "--gpu", "0", "--dry-run")
    step("A job is running on GPU 0's first instance", "sim", "attach", "0", _first_gi(config), "4242")
    code = step("So a layout that needs its space is refused, and nothing changes",
                "apply", "3g.40gb:2", "--gpu", "0")
    echo(f"(exit code {code}: refused)")
    step("A compatible change keeps the busy instance and applies the rest",
         "apply", "1g.10gb:2,3g.40gb:1", "--gpu", "0")
    step("Done", "status")
    echo(textwrap.dedent(f"""
        Go on with:  export SLURM_MIG_CONFIG={config}
                     slurm-mig status | slurm-mig apply LAYOUT [--gpu N] [--dry-run]
        Remove with: rm -rf {root}
        With a real Slurm (root, `bash .ci/setup`): slurm-mig demo"""))
    return 0


def _first_gi(config: str) -> str:
    from .config import load_config
    from .gpu.sim import SimBackend

    backend = SimBackend(load_config(config).sim.root)
    first = min(backend.instances(0), key=lambda i: i.start)
    return str(first.gi_id)
