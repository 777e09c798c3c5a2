"""``python -m slurm_mig ...``: the ``slurm-mig`` command, for callers without it on PATH
(slurmd's bare hook environment, the sandbox's ``reconfigure_command``)."""

from .app.cli import entry

if __name__ == "__main__":
    entry()
