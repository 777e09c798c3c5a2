"""The two Slurm readers on the same large queue: pyslurm (``Jobs.load()`` + ``job().get()``,
``Nodes.load()``) beside ``squeue --json`` / ``sinfo -N --json``.

Needs root, Slurm and pyslurm: run it inside the 24.11 root, under the sandbox lock:

    flock /tmp/slurm-mig-sandbox-tests.lock bash .ci/matrix 24.11 --exec \\
        python bench/readers.py [--jobs 2000] [--runs 5]

Starts a sandbox cluster (tests/sbx.py: three A100-80GB nodes cut in 1g.10gb), submits
``--jobs`` pending jobs (``--begin=now+1hour``, the request forms cycling through typed and
untyped ``--gres``, ``--gpus``, ``--gpus-per-task``), then, in one child process per reader
(pyslurm binds slurm.conf at import), times the import and ``--runs`` reads of the queue and
the nodes.  Prints a table; asserts only that both readers saw every job.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from sbx import sandbox  # noqa: E402

CHILD = textwrap.dedent("""\
    import json, sys, time
    t0 = time.perf_counter()
    from slurm_mig.slurm.reader import slurm_reader
    r = slurm_reader(sys.argv[1])
    if r.name == "pyslurm":
        r.module
    t_import = time.perf_counter() - t0
    jobs, nodes, n = [], [], 0
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter(); n = len(r.pending_jobs()); jobs.append(time.perf_counter() - t)
        t = time.perf_counter(); r.nodes(); nodes.append(time.perf_counter() - t)
    print(json.dumps({"import": t_import, "jobs": jobs, "nodes": nodes, "pending": n}))
    """)
FORMS = (["--gres=gpu:1g.10gb:1"], ["--gres=gpu:1"], ["--gpus=1g.10gb:2"],
         ["--gpus-per-task=1g.10gb:1", "-n", "2"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    gpus = {n: ["A100-80GB"] for n in ("n1", "n2", "n3")}
    layouts = {n: [("0", "1g.10gb:7")] for n in gpus}
    with sandbox("sbx-bench-readers-", gpus, layouts) as sbx:
        env = sbx.cluster.env()
        # One shell loop of sbatch: a process per job from Python would time Python.
        lines = [" ".join(["sbatch", "-Q", "--begin=now+1hour", *FORMS[i % len(FORMS)],
                           "--wrap", "true"]) for i in range(args.jobs)]
        subprocess.run(["bash", "-euc", "\n".join(lines)], env=env, check=True, cwd=REPO)
        rows = {}
        for prefer in ("json", "pyslurm"):
            out = subprocess.run([sys.executable, "-c", CHILD, prefer, str(args.runs)], env=env,
                                 cwd=REPO, check=True, capture_output=True, text=True).stdout
            rows[prefer] = json.loads(out)
        print(f"{args.jobs} pending jobs, 3 nodes, {args.runs} reads each (median, min, max in ms)")
        print(f"{'reader':8} {'import':>8} {'queue':>24} {'nodes':>24} pending")
        for prefer, r in rows.items():
            def fmt(xs):
                return (f"{statistics.median(xs) * 1e3:7.1f} {min(xs) * 1e3:7.1f} "
                        f"{max(xs) * 1e3:7.1f}")
            print(f"{prefer:8} {r['import'] * 1e3:8.1f} {fmt(r['jobs']):>24} {fmt(r['nodes']):>24} "
                  f"{r['pending']}")
        assert all(r["pending"] == args.jobs for r in rows.values()), rows


if __name__ == "__main__":
    main()
