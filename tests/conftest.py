"""Shared fixtures: a simulated GPU node in a temp tree and an in-process CLI runner."""

from __future__ import annotations

import os
import pathlib
import tempfile
import textwrap

import pytest

from slurm_mig.app.cli import main
from slurm_mig.host.config import sim_config_text


@pytest.fixture
def node_config(tmp_path):
    """Write a config.toml that keeps everything (sim, state, Slurm files) under tmp_path."""

    def write(gpus=("A100-40GB", "H100-80GB"), extra: str = "") -> str:
        path = tmp_path / "config.toml"
        path.write_text(sim_config_text(str(tmp_path), gpus, textwrap.dedent(extra)))
        return str(path)

    return write


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``slurm-mig ARGS`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args, config=None):
        if config is not None:
            monkeypatch.setenv("SLURM_MIG_CONFIG", config)
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    monkeypatch.delenv("SLURM_MIG_CONFIG", raising=False)
    return run


#: What squeue prints for a CPU job (the prolog's guard, slurm_mig/hooks/guard.py).
CPU_JOB_ROW = "1|N/A|N/A|N/A|N/A|"


def fake_command(path: pathlib.Path, body: str) -> str:
    """A stand-in for a Slurm command at ``path``: appends its argv (one line, NUL-joined)
    to ``<path>.calls`` and runs the shell ``body``."""
    calls = f"{path}.calls"
    path.write_text(f'#!/bin/sh\nprintf \'%s\\0\' "$@" >> {calls}; echo >> {calls}\n{body}\n')
    path.chmod(0o755)
    return str(path)


def fake_calls(path: str) -> list:
    """Each call's argv (without argv[0]) of a :func:`fake_command`; [] when never called."""
    if not os.path.exists(f"{path}.calls"):
        return []
    return [line.split("\0")[:-1] for line in open(f"{path}.calls").read().splitlines()]


@pytest.fixture
def cpu_squeue(tmp_path):
    """A squeue that answers every job as a CPU job: hooks that run a job without
    SLURM_JOB_GPUS get it as SLURM_MIG_SQUEUE."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    return fake_command(tmp_path / "bin" / "squeue", f"echo '{CPU_JOB_ROW}'")


@pytest.fixture
def sim_root(tmp_path):
    return str(tmp_path / "sim")


def tree_snapshot(root) -> dict:
    """Every file under ``root`` with its bytes: to prove a failed command changed nothing."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if name.endswith(".lock") or not os.path.isfile(path):
                continue  # locks, and device nodes (opening one gives ENXIO)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture
def workdir(tmp_path):
    """Where a test's simulated node lives: a RAM disk when there is one, else tmp_path.

    The simulator fsyncs its whole state file on every driver call and lays out
    device files; on a disk that dominates the every-layout sweep (about 5 ms a
    layout against 1.5 ms in RAM).  Durability is not what these tests check.
    """
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(prefix="slurm-mig-test-", dir=shm) as d:
            yield pathlib.Path(d)
    else:
        yield tmp_path
