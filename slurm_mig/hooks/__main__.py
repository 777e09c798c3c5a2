"""``python3 -I -m slurm_mig.hooks prolog|epilog|sim-run``: what ``prolog.d/50-slurm-mig`` and
``epilog.d/50-slurm-mig`` run (no click, no psutil unless processes must be ended)."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
