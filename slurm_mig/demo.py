"""``slurm-mig demo``: a guided run on simulated GPUs, for a first look without GPUs.

It writes a config that keeps everything under one directory, then runs the same
commands an admin would, printing each command line before its output.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from typing import Callable, Optional

DEMO_GPUS = ("A100-80GB", "H100-80GB")


def _config_text(root: str) -> str:
    models = ", ".join(f'"{m}"' for m in DEMO_GPUS)
    return textwrap.dedent(f"""\
        version = 1
        backend = "sim"
        [paths]
        root = "{root}/host"
        [sim]
        gpus = [{models}]
        """)


def run_demo(root: Optional[str], echo: Callable[[str], None]) -> int:
    from .cli import main

    root = os.path.abspath(root) if root else tempfile.mkdtemp(prefix="slurm-mig-demo.")
    os.makedirs(root, exist_ok=True)
    config = os.path.join(root, "config.toml")
    with open(config, "w") as f:
        f.write(_config_text(root))

    def step(title: str, *args: str) -> int:
        echo(f"\n== {title}\n$ slurm-mig {' '.join(args)}")
        return main(["--config", config, *args])

    echo(f"slurm-mig demo: simulated {', '.join(DEMO_GPUS)} under {root}")
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
        Remove with: rm -rf {root}"""))
    return 0


def _first_gi(config: str) -> str:
    from .config import load_config
    from .gpu.sim import SimBackend

    backend = SimBackend(load_config(config).sim.root)
    first = min(backend.instances(0), key=lambda i: i.start)
    return str(first.gi_id)
