"""``slurm-mig demo``: slurm-mig under a real Slurm, on simulated GPUs, in under a minute.

The default walkthrough brings up the sandbox cluster (:mod:`slurm_mig.sandbox.mig`), submits
jobs for different MIG profiles with ``sbatch``, shows which job holds which instance while they
run and what each job reached.  Then the point of the project, the cut following the queue:
an admin recuts n1 for big jobs (``slurm-mig sync --layout 3g.40gb:2``), small 1g.10gb jobs
fill the queue, n2's 1g instances run some and the rest wait while n1 sits idle, and one
``slurm-mig rebalance`` (the controller's config of the sandbox) drains n1 for a 1g-rich
layout, n1's node timer applies it, the same run reconfigures Slurm once and resumes n1, and
the waiting jobs run there.  Every line shown is a real command's output.  The cluster stays
up for the reader (``sandbox down`` ends it).  It needs root and Debian's Slurm packages
(``bash .ci/setup``).

``--no-slurm`` keeps the older walkthrough that needs neither: the simulator alone (catalog,
layouts, apply, a busy instance protecting itself).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
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
# The rebalance story: n1 recut for big jobs, then more small jobs than n2's four 1g.10gb
# instances take.  Long enough that n2 is still full when rebalance has resumed n1 (a run
# takes ~3 s here), so the waiting jobs go to n1's new instances, not to n2's freed ones.
BIG_LAYOUT = "3g.40gb:2"
SMALL = ("1g.10gb", 10, 10)  # profile, jobs, seconds each


def run_demo(root: Optional[str], echo: Echo, slurm: bool = True) -> int:
    return run_slurm_demo(root, echo) if slurm else run_sim_demo(root, echo)


# ----------------------------------------------------------------------------- with Slurm


def run_slurm_demo(root: Optional[str], echo: Echo) -> int:
    from ..core.errors import EXIT_SLURM
    from . import mig
    from .cluster import SandboxCluster
    from .errors import SandboxError
    from .files import SandboxFiles, read_seen, sim_job_argv
    from .text import export_lines, next_steps, root_option, status_text, up_text

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
    files = SandboxFiles(spec.root)

    echo(_title("2. Slurm sees every MIG instance as a typed gpu"))
    _show(cluster, echo, ["sinfo", "-N", "-o", "%N %t %G"])

    echo(_title(f"3. Jobs for different profiles; each attaches to its instance (bin/sim-job: "
                f"`python -m slurm_mig.hooks sim-run`), then sleeps {JOB_SECONDS}s"))
    jobs: List[int] = []
    for profile, count in DEMO_JOBS:
        args = sim_job_argv(files, profile, count, ("sleep", str(JOB_SECONDS)))
        proc = cluster.command(["sbatch", "--parsable", *args])
        jobs.append(int(proc.stdout.strip().split(";")[0]))
        echo(f"$ sbatch {' '.join(shlex.quote(a) for a in args)}   # job {jobs[-1]}")

    try:
        _wait(lambda: all(read_seen(files, j) for j in jobs), 30,
              lambda: _stuck(cluster, jobs))
        echo(_title("4. While they run: which job holds which instance (the prolog's job "
                    "records; the simulator lists each job's pid on its instance)"))
        echo(f"$ slurm-mig sandbox status{opt}")
        echo(status_text(mig.status(spec.root)))
        infos = [cluster.wait_job(j, timeout=30) for j in jobs]
    except SandboxError as err:
        echo(f"\nThe jobs did not run as expected: {err}; look at: slurm-mig sandbox status{opt}, "
             f"{cluster.paths.log}/slurmd-n*.log, {cluster.paths.jobs}/slurm-<job>.out")
        return EXIT_SLURM
    failed = [i for i in infos if i.state != "COMPLETED"]

    echo(_title("5. What each job reached: the instance Slurm's gres record named, by the ids "
                "the driver gave it (ENXIO on its device files: allowed by its cgroup, no driver "
                "behind the fake device)"))
    echo(_job_table(files, jobs))
    _wait(lambda: not any(n["jobs"] for n in mig.status(spec.root)["nodes"]), 15, lambda: "")
    echo(_title("6. The epilogs ran: every instance is free again"))
    _show(cluster, echo, ["sinfo", "-N", "-o", "%N %t %G"])

    try:
        small = _rebalance_story(cluster, files, echo)
    except SandboxError as err:
        echo(f"\nThe rebalance part did not go as expected: {err}; look at: slurm-mig sandbox "
             f"status{opt}, {cluster.paths.log}/timer-n1.log, reconfigure.log, slurmctld.log")
        return EXIT_SLURM
    failed += [i for i in small if i.state != "COMPLETED"]

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


def _rebalance_story(cluster, files, echo: Echo) -> list:
    """Sections 7-10 (the module doc's story); the small jobs' final states.  Raises
    SandboxError saying what did not happen."""
    from . import mig
    from .errors import SandboxError
    from .files import sim_job_argv
    from .timer import PERIOD

    profile, count, seconds = SMALL
    echo(_title("7. The cut should follow the queue. Say an admin recut n1 for big jobs "
                "(drain, apply, gres.conf and Gres=, reconfigure, resume: docs/sync.md):"))
    _slurm_mig(cluster, echo, ["--config", files.node_config("n1"), "sync", "--layout", BIG_LAYOUT])
    _wait(lambda: _published(cluster, "n1"), 20, lambda: "n1's node timer did not publish its "
          "new layout in its Extra field (log/timer-n1.log)")
    _show_nodes(cluster, echo)

    echo(_title(f"8. Then the queue fills with small jobs: {count} x {profile}, {seconds}s each. "
                f"n2's {profile} instances take some; the rest wait, while n1 sits idle with "
                f"instances nobody asks for"))
    jobs: List[int] = []
    for _ in range(count):
        args = sim_job_argv(files, profile, 1, ("sleep", str(seconds)), name="small")
        jobs.append(int(cluster.command(["sbatch", "--parsable", *args]).stdout.strip()
                        .split(";")[0]))
    echo(f"$ sbatch {' '.join(shlex.quote(a) for a in args)}   # {count} times: jobs "
         f"{jobs[0]}..{jobs[-1]}")
    queue = _wait(lambda: _settled(cluster, jobs), 30, lambda: _stuck(cluster, jobs))
    waiting = [j for j in jobs if queue[j][0] == "PENDING"]
    _show(cluster, echo, ["squeue", "-o", "%.8i %.6j %.8T %.6N %.22b %r"])
    _show_nodes(cluster, echo)
    if not waiting:
        raise SandboxError(f"no {profile} job waited: the layout already served them all")

    echo(_title(f"9. The controller's timer runs rebalance (here by hand). It plans from the "
                f"queue, leaves n1 a new layout in its Slurm Extra field and drains it; n1's "
                f"node timer (`slurm-mig sync --pending`, every {PERIOD:g} s) applies it and "
                f"writes gres.conf; the same run writes n1's Gres=, reconfigures Slurm once "
                f"and resumes n1"))
    before = len(mig.reconfigures(files.root))
    offset = _size(files.timer_log("n1"))
    _slurm_mig(cluster, echo, ["--config", files.controller_config, "rebalance", "--explain"])
    timer_lines = _read_from(files.timer_log("n1"), offset).rstrip()
    if timer_lines:
        echo(f"# meanwhile n1's node timer ({files.timer_log('n1')}):")
        echo("\n".join("#   " + line for line in timer_lines.splitlines()))
    n1 = cluster.status()["n1"]
    if not n1.gres.get(profile) or n1.drain_flagged:
        raise SandboxError(f"after rebalance n1 is {n1.state} with gres {n1.gres_text or '-'}"
                           + (f" ({n1.reason})" if n1.reason else "") + f", not {profile} "
                           f"instances for the waiting jobs")
    reconfigures = mig.reconfigures(files.root)[before:]
    echo(f"# reconfigures during the run ({files.reconfigure_log}): {len(reconfigures)}")
    echo("\n".join("#   " + line for line in reconfigures))
    _show_nodes(cluster, echo)

    echo(_title(f"10. Where each {profile} job ran, and how long it waited in the queue"))
    infos = {j: cluster.wait_job(j, timeout=3 * seconds + 30) for j in jobs}
    echo(_job_table(files, jobs, infos))
    moved = [j for j in waiting if infos[j].nodes == "n1"]
    at_once = sorted({infos[j].nodes for j in jobs if j not in waiting})
    echo(f"{len(moved)} of the {len(waiting)} jobs that waited ran on n1's new instances; "
         f"the other {len(jobs) - len(waiting)} started at once on {', '.join(at_once)}")
    return list(infos.values())


def _slurm_mig(cluster, echo: Echo, args: List[str]) -> None:
    """Run ``slurm-mig ARGS`` as its own process, as the reader would, and show it."""
    from .errors import SandboxError

    echo("$ slurm-mig " + " ".join(shlex.quote(a) for a in args))
    proc = subprocess.run([sys.executable, "-m", "slurm_mig", *args], capture_output=True,
                          text=True, env=cluster.env(), cwd=cluster.paths.jobs, timeout=180,
                          stdin=subprocess.DEVNULL)
    for text in (proc.stdout, proc.stderr):
        if text.strip():
            echo(text.rstrip())
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise SandboxError(f"`slurm-mig {' '.join(args[2:])}` exited {proc.returncode}: "
                           f"{lines[-1] if lines else 'no output'}")


def _show_nodes(cluster, echo: Echo) -> None:
    """sinfo, once every node responds: right after slurmctld restarts (a reconfigure), a
    node is ``idle*`` (not responding) for about a second, which says nothing here."""
    from .errors import SandboxError

    with contextlib.suppress(SandboxError):
        cluster.wait_nodes(lambda nodes: all(s.responding for s in nodes.values()), 10,
                           "every node responding")
    _show(cluster, echo, ["sinfo", "-N", "-o", "%N %t %G"])


def _published(cluster, node: str) -> bool:
    """The node's Extra says the layout Slurm has (its timer republished after a change)."""
    from ..change.channel import ChannelError, have_counts, parse_channel
    from ..core.catalog import load_catalog
    from ..slurm.scontrol import parse_pairs, parse_scontrol_nodes

    out = cluster.command(["scontrol", "show", "node", "-o", node], timeout=10).stdout
    st = parse_scontrol_nodes(out).get(node)
    try:
        ch = parse_channel(parse_pairs(out.strip()).get("Extra", ""), node)
    except ChannelError:
        return False
    return (st is not None and ch is not None and bool(ch.have)
            and have_counts(ch, load_catalog()) == {t: n for t, n in st.gres.items() if n})


def _settled(cluster, jobs: List[int]):
    """job -> (state, reason) once each runs or waits with a reason; else None."""
    out = cluster.command(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(map(str, jobs))],
                          timeout=10).stdout
    queue = {int(i): (t, r) for i, t, r in (l.split("|") for l in out.split())}
    done = len(queue) == len(jobs) and all(
        t == "RUNNING" or (t == "PENDING" and r not in ("", "None")) for t, r in queue.values())
    return queue if done else None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


def _title(text: str) -> str:
    return "\n== " + text


def _show(cluster, echo: Echo, argv: List[str]) -> None:
    echo("$ " + " ".join(shlex.quote(a) for a in argv))
    echo(cluster.command(argv).stdout.rstrip())


def _wait(done: Callable[[], object], timeout: float, why: Callable[[], str]):
    """``done()``'s first true value, looked at every 0.2 s for ``timeout`` seconds."""
    from .errors import SandboxError

    deadline = time.monotonic() + timeout
    while True:
        value = done()
        if value:
            return value
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


def _job_table(files, jobs: List[int], infos: Optional[dict] = None) -> str:
    """One row per instance a job reached; with ``infos`` (job -> final JobInfo), how long
    each job waited in the queue instead of what open() of its device files gave."""
    from .files import read_seen
    from .text import table

    rows = []
    for j in jobs:
        seen = read_seen(files, j) or {}  # a job's own report: data, shape not trusted
        instances = seen.get("instances")
        for inst in instances if isinstance(instances, list) else []:
            if not isinstance(inst, dict):
                continue
            access = inst.get("access")
            last = (_waited(infos[j]) if infos else ",".join(sorted(
                {str(v) for v in access.values()} if isinstance(access, dict) else ())) or "-")
            rows.append([j, seen.get("node", "?"), *(inst.get(k, "?") for k in (
                "type", "gpu", "gi_id", "ci_id")), inst.get("uuid") or "-", last])
    return "\n".join(table(rows, ["JOB", "NODE", "PROFILE", "GPU", "GI", "CI", "MIG UUID",
                                   "WAITED" if infos else "OPEN()"]))


def _waited(info) -> str:
    """StartTime - SubmitTime of a finished job (Slurm's whole seconds)."""
    from datetime import datetime

    try:
        start, submit = (datetime.strptime(info.fields[k], "%Y-%m-%dT%H:%M:%S")
                         for k in ("StartTime", "SubmitTime"))
    except (KeyError, ValueError):
        return "?"
    return f"{(start - submit).total_seconds():.0f}s"


# ----------------------------------------------------------------------------- simulator only


def _config_text(root: str) -> str:
    from ..host.config import sim_config_text

    return sim_config_text(root, DEMO_GPUS)


def run_sim_demo(root: Optional[str], echo: Echo) -> int:
    from ..app.cli import main
    from ..host.atomic import write_atomic
    from ..host.safefs import ensure_dir

    root = os.path.abspath(root) if root else tempfile.mkdtemp(prefix="slurm-mig-demo.")
    ensure_dir(root, 0o755, "demo directory")  # a trusted one; made 0755 where missing
    config = os.path.join(root, "config.toml")
    write_atomic(config, _config_text(root), mode=0o644, keep_prev=False, follow=False)

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
    from ..host.config import load_config
    from ..sim.backend import SimBackend

    backend = SimBackend(load_config(config).sim.root)
    first = min(backend.instances(0), key=lambda i: i.start)
    return str(first.gi_id)
