"""A synthetic trace with shifting demand, for ``slurm-mig simulate --generate``.  Pure and
seeded: the same arguments give the same jobs.

Phases of ``phase_s`` seconds follow each other, round and round: ``small`` (1g and 2g
jobs), ``large`` (3g, 4g and 7g jobs), ``mixed`` (all of them), as in MISO's mixes.  Arrivals
are Poisson at the rate that keeps ``load`` of the cluster's compute slices busy on average;
durations are log-normal around ``mean_s``; time limits are the duration times 1.2 to 3,
rounded up to a minute (users ask for more than they use); priorities 1 to 3.
"""

from __future__ import annotations

import math
import random
from typing import Dict, List, Sequence, Tuple

from .trace import SimJob

#: Per phase: (type, instances per job, share of the phase's jobs); A100-80GB names.
PHASES: Dict[str, Tuple[Tuple[str, int, float], ...]] = {
    "small": (("1g.10gb", 1, 0.6), ("1g.10gb", 2, 0.2), ("2g.20gb", 1, 0.2)),
    "large": (("3g.40gb", 1, 0.5), ("4g.40gb", 1, 0.2), ("7g.80gb", 1, 0.3)),
    "mixed": (("1g.10gb", 1, 0.3), ("2g.20gb", 1, 0.15), ("3g.40gb", 1, 0.25),
              ("4g.40gb", 1, 0.1), ("7g.80gb", 1, 0.2)),
}
SLICES = {"1g.10gb": 1, "2g.20gb": 2, "3g.40gb": 3, "4g.40gb": 4, "7g.80gb": 7}


def generate(*, gpus: int, duration_s: float, seed: int = 1, load: float = 0.85,
             phase_s: float = 6 * 3600, mean_s: float = 1800.0,
             phases: Sequence[str] = ("small", "large", "mixed"),
             partitions: Sequence[str] = ()) -> List[SimJob]:
    """Jobs for a cluster of ``gpus`` A100-80GB over ``duration_s`` seconds (module doc)."""
    rng = random.Random(seed)
    sigma = 0.8
    mu = math.log(mean_s) - sigma * sigma / 2  # log-normal with mean mean_s
    capacity = 7 * gpus  # compute slices
    jobs: List[SimJob] = []
    t = 0.0
    n = 0
    while True:
        phase = phases[int(t // phase_s) % len(phases)]
        mix = PHASES[phase]
        slices = sum(SLICES[ty] * k * share for ty, k, share in mix)
        rate = load * capacity / (slices * mean_s)  # jobs per second
        t += rng.expovariate(rate)
        if t >= duration_s:
            break
        r = rng.random()
        for ty, k, share in mix:
            r -= share
            if r <= 0:
                break
        dur = max(30.0, round(rng.lognormvariate(mu, sigma)))
        limit = math.ceil(dur * rng.uniform(1.2, 3.0) / 60.0) * 60.0
        n += 1
        parts = (partitions[n % len(partitions)],) if partitions else ()
        jobs.append(SimJob(str(n), round(t, 1), dur, ((ty, k),), limit, rng.randint(1, 3), parts))
    return jobs
