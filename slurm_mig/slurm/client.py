"""The command adapter: :class:`SlurmClient` over ``scontrol``, argument lists only.

Which commands run is configurable (``[slurm]`` in config.toml): sites put
``scontrol`` elsewhere, and on Slurm < 23.11 a gres.conf change that keeps the
record count but changes types is only picked up by a slurmctld restart
(docs/sandbox-notes.md), so the reconfigure step is a whole command line that a site
can point at its own procedure.
"""

from __future__ import annotations

import subprocess
from typing import Dict, Mapping, Optional, Sequence, Type

from ..core.errors import SlurmError
from .scontrol import NodeStatus, parse_scontrol_nodes


def run_process(argv: Sequence[str], what: str, env: Optional[Mapping[str, str]] = None,
                timeout: float = 60.0, hint: str = "is slurmctld up? (`scontrol ping`)",
                error: Type[SlurmError] = SlurmError) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell) whatever its exit status; a command that is missing or does
    not finish in ``timeout`` seconds is one ``error`` line (``what``: the line's start)."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
    except FileNotFoundError as err:
        raise error(f"{what}: {argv[0]} not found; install Slurm's client commands or set "
                    f"its path in [slurm] of config.toml") from err
    except subprocess.TimeoutExpired as err:
        raise error(f"{what}: `{' '.join(argv)}` did not finish in {timeout:g}s; {hint}") from err


def failure_detail(done: subprocess.CompletedProcess[str]) -> str:
    """What a failed command said, on one line (stderr, else stdout, else its exit code)."""
    return " ".join((done.stderr or done.stdout).split()) or f"exit {done.returncode}"


def run_command(argv: Sequence[str], what: str, env: Optional[Mapping[str, str]] = None,
                timeout: float = 60.0) -> str:
    """Run ``argv`` (no shell) and return stdout; a failure is one SlurmError line."""
    done = run_process(argv, what, env, timeout)
    if done.returncode != 0:
        raise SlurmError(f"{what}: `{' '.join(argv)}` failed: {failure_detail(done)}")
    return str(done.stdout)


class CommandSlurm:
    """Talk to slurmctld through the Slurm commands."""

    def __init__(self, scontrol: str = "scontrol", reconfigure_command: Optional[Sequence[str]] = None,
                 env: Optional[Mapping[str, str]] = None, timeout: float = 60.0):
        self.scontrol = scontrol
        self.reconfigure_command = list(reconfigure_command or [scontrol, "reconfigure"])
        self.env = dict(env) if env is not None else None
        self.timeout = timeout

    def _run(self, argv: Sequence[str], what: str) -> str:
        return run_command(argv, what, self.env, self.timeout)

    def nodes(self, names: Optional[Sequence[str]] = None) -> Dict[str, NodeStatus]:
        argv = [self.scontrol, "show", "node", "-o"]
        if names:
            argv.append(",".join(names))
        return parse_scontrol_nodes(self._run(argv, "read node state"))

    def drain(self, node: str, reason: str) -> None:
        self._run([self.scontrol, "update", f"nodename={node}", "state=drain", f"reason={reason}"],
                  f"drain {node}")

    def drain_nodes(self, nodes: Sequence[str], reason: str) -> None:
        """One ``scontrol update`` for every node: a node list is what scontrol takes for
        ``nodename=`` (names joined with commas)."""
        if not nodes:
            return
        names = ",".join(nodes)
        self._run([self.scontrol, "update", f"nodename={names}", "state=drain", f"reason={reason}"],
                  f"drain {names}")

    def resume(self, node: str) -> None:
        self._run([self.scontrol, "update", f"nodename={node}", "state=resume"], f"resume {node}")

    def reconfigure(self) -> None:
        self._run(self.reconfigure_command, "reconfigure Slurm")
