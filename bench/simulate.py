"""How fast `slurm-mig simulate` runs, and how its time grows with nodes and jobs.

    .venv/bin/python bench/simulate.py                 # the issue's month: 128 x 8 GPUs, 100,000 jobs
    .venv/bin/python bench/simulate.py --grow          # also halves/quarters of nodes and jobs

The trace is the generator's (phases of small, large and mixed jobs, load 0.85) with the
mean duration set so that a month holds about the asked number of jobs; one plan every
60 s; the default config (cap 4, hysteresis 3, no drain_mixed).  Prints wall time and
the policy's numbers per run; best-static is timed separately (it is several static runs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slurm_mig.core.catalog import load_catalog  # noqa: E402
from slurm_mig.host.config import default_config  # noqa: E402
from slurm_mig.rebalance.cycle import policy_of  # noqa: E402
from slurm_mig.simulate.cluster import parse_cluster  # noqa: E402
from slurm_mig.simulate.engine import Settings  # noqa: E402
from slurm_mig.simulate.generate import generate  # noqa: E402
from slurm_mig.simulate.run import Options, simulate  # noqa: E402
from slurm_mig.simulate.trace import Trace  # noqa: E402

MONTH = 30 * 86400


def one(nodes: int, jobs: int, days: float, policies, load: float) -> None:
    cat = load_catalog()
    cluster = parse_cluster(f'[[node]]\nname = "gpu[001-{nodes:03d}]"\ngpus = ["A100-80GB:8"]\n'
                            f'layout = "3g.40gb:1,2g.20gb:1,1g.10gb:2"\n', "bench", cat)
    gpus = nodes * 8
    span = days * 86400
    # jobs = rate * span; rate = load * 7 * gpus / (slices per job * mean_s), per phase; the
    # mean of 1 / (slices per job) over the three phases is 0.419
    mean_s = load * 7 * gpus * span * 0.419 / jobs
    t0 = time.perf_counter()
    trace = Trace(tuple(generate(gpus=gpus, duration_s=span, seed=7, load=load, mean_s=mean_s,
                                 phase_s=span / 12)))
    t1 = time.perf_counter()
    result = simulate(trace, cluster, policy_of(default_config()), cat,
                      Options(tuple(policies), settings=Settings(cycle_s=60)))
    t2 = time.perf_counter()
    for p in result["policies"]:
        print(f"nodes {nodes:4d} gpus {gpus:5d} jobs {len(trace.jobs):6d} days {days:4.1f} "
              f"{p['policy']:11s} sim {t2 - t1:7.1f} s (trace {t1 - t0:4.1f} s) "
              f"unserved {p['unserved']} mean_jct {p['mean_jct_s'] / 3600:.1f} h "
              f"reconf {p['reconfigurations']} planner_calls {p['planner_calls']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=128)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--days", type=float, default=30)
    ap.add_argument("--load", type=float, default=0.85)
    ap.add_argument("--policy", action="append", default=None)
    ap.add_argument("--grow", action="store_true", help="also 1/4 and 1/2 of nodes and of jobs")
    a = ap.parse_args()
    policies = a.policy or ["static", "dynamic"]
    if a.grow:
        for f in (4, 2):
            for pol in policies:
                one(a.nodes // f, a.jobs, a.days, [pol], a.load)
                one(a.nodes, a.jobs // f, a.days / f, [pol], a.load)
    for pol in policies:
        one(a.nodes, a.jobs, a.days, [pol], a.load)


if __name__ == "__main__":
    main()
