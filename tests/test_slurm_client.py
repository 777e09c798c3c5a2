"""The scontrol adapter through its real subprocess path, with a tiny stand-in for scontrol."""

from __future__ import annotations

import os
import stat

import pytest

from slurm_mig.core.errors import SlurmError
from slurm_mig.slurm.client import CommandSlurm

NODE_LINES = (
    "NodeName=n1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 Gres=gpu:1g.10gb:7(S:0) "
    "NodeAddr=127.0.0.2 State=IDLE+DRAIN ThreadsPerCore=1 Reason=slurm-mig sync: applying 3g.40gb:2 [root@2026-11-28T18:00:00]\n"
    "NodeName=n2 Arch=x86_64 CPUAlloc=1 Gres=gpu:3g.40gb:2 NodeAddr=127.0.0.3 State=MIXED ThreadsPerCore=1\n"
)


def fake_scontrol(tmp_path, body: str) -> str:
    path = tmp_path / "scontrol"
    log = tmp_path / "calls"
    path.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def calls(tmp_path):
    return (tmp_path / "calls").read_text().splitlines()


def test_nodes_parses_state_flags_gres_and_reason(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text(NODE_LINES)
    client = CommandSlurm(scontrol=fake_scontrol(tmp_path, f"cat {out}"))
    nodes = client.nodes()
    assert nodes["n1"].base == "idle" and "DRAIN" in nodes["n1"].flags
    assert nodes["n1"].gres == {"1g.10gb": 7}
    assert nodes["n1"].reason.startswith("slurm-mig sync: applying 3g.40gb:2")
    assert nodes["n2"].base == "mixed" and nodes["n2"].gres == {"3g.40gb": 2}
    assert calls(tmp_path) == ["show node -o"]


def test_drain_and_resume_pass_arguments_without_a_shell(tmp_path):
    client = CommandSlurm(scontrol=fake_scontrol(tmp_path, "true"))
    client.drain("n1", "slurm-mig: x; $(rm -rf /) `y`")
    client.resume("n1")
    assert calls(tmp_path) == [
        "update nodename=n1 state=drain reason=slurm-mig: x; $(rm -rf /) `y`",
        "update nodename=n1 state=resume",
    ]


def test_failing_command_is_one_line_slurm_error(tmp_path):
    client = CommandSlurm(scontrol=fake_scontrol(tmp_path, "echo 'slurm_update error: Invalid node name\n specified' >&2; exit 1"))
    with pytest.raises(SlurmError) as err:
        client.resume("nx")
    text = str(err.value)
    assert "\n" not in text and "Invalid node name specified" in text and "resume nx" in text
    assert err.value.exit_code == 8


def test_missing_scontrol_says_how_to_fix(tmp_path):
    client = CommandSlurm(scontrol=os.path.join(str(tmp_path), "nope"))
    with pytest.raises(SlurmError, match="not found; install Slurm's client commands"):
        client.nodes()


def test_reconfigure_runs_the_configured_command(tmp_path):
    script = fake_scontrol(tmp_path, "true")
    client = CommandSlurm(scontrol="scontrol", reconfigure_command=[script, "reconfigure", "--site"])
    client.reconfigure()
    assert calls(tmp_path) == ["reconfigure --site"]
