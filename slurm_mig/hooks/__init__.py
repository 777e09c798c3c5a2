"""The Slurm prolog and epilog (docs/hooks.md): ``python3 -m slurm_mig.hooks prolog|epilog``.

Kept empty: slurmd starts the hooks on every job, and this file is imported with them."""
