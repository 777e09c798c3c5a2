"""slurm-mig: dynamic NVIDIA MIG layouts for Slurm clusters."""

__version__ = "0.1.0"
