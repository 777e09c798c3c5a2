"""The one error type of the sandbox cluster."""

from __future__ import annotations

from ..core.errors import EXIT_CONFIG, SlurmMigError


class SandboxError(SlurmMigError):
    """The private Slurm cluster could not start, answer or finish a job.

    The message is one line and names the log file to read; ``log_tails`` keeps the last
    lines of each daemon log (name -> text) for a test report.
    """

    exit_code = EXIT_CONFIG  # the local munge/Slurm setup, not a bug in slurm-mig

    def __init__(self, message: str, log_tails: dict | None = None) -> None:
        super().__init__(message)
        self.log_tails = dict(log_tails or {})
