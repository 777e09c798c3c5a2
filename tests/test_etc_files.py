"""The files shipped in etc/ call slurm-mig the way the CLI parses it, and the units
are complete: a typo in an ExecStart or a cron line would only show on a cluster."""

from __future__ import annotations

import configparser
import shlex
import warnings
from pathlib import Path

import click
import pytest

from slurm_mig.app.cli import cli

ETC = Path(__file__).resolve().parents[1] / "etc"
UNITS = sorted(ETC.glob("*.service"))


def slurm_mig_argv(command: str):
    argv = [w for w in shlex.split(command.split("|")[0]) if not w[:1].isdigit() and not w.startswith(">")]
    assert argv[0].endswith("/slurm-mig"), command
    return argv[1:]  # without the shell's redirections


def parses(argv) -> None:
    """Parse ``argv`` down to its subcommand without running anything."""
    ctx = cli.make_context("slurm-mig", list(argv), resilient_parsing=False)
    with warnings.catch_warnings():  # click 8.2 deprecates protected_args, 9 drops it
        warnings.simplefilter("ignore", DeprecationWarning)
        words = [*getattr(ctx, "protected_args", ()), *ctx.args]
    name, sub, rest = cli.resolve_command(ctx, words)
    assert isinstance(sub, click.Command), argv
    sub.make_context(name, rest, parent=ctx)


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


def test_there_is_a_controller_and_a_node_unit_each_with_a_timer():
    names = {p.stem for p in UNITS}
    assert {"slurm-mig-rebalance", "slurm-mig-node"} <= names
    for name in names:
        timer = unit(ETC / f"{name}.timer")
        assert timer["Install"]["WantedBy"] == "timers.target"
        assert timer["Timer"]["OnUnitInactiveSec"]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_service_exec_start_parses(path):
    service = unit(path)["Service"]
    assert service["Type"] == "oneshot"
    parses(slurm_mig_argv(service["ExecStart"]))


def test_cron_lines_parse_and_cover_both_sides():
    lines = [l for l in (ETC / "slurm-mig.cron").read_text().splitlines() if l and not l.startswith("#")]
    commands = []
    for line in lines:
        fields = line.split(None, 6)
        assert len(fields) == 7 and fields[5] == "root", line
        argv = slurm_mig_argv(fields[6])
        parses(argv)
        commands.append(argv)
    assert ["rebalance"] in commands and ["sync", "--pending"] in commands


def test_the_parser_check_would_catch_a_typo():
    with pytest.raises(click.UsageError):
        parses(["sync", "--pendin"])
    with pytest.raises(click.UsageError):
        parses(["rebalnce"])


def test_example_config_parses_as_shipped_and_with_every_setting_uncommented():
    """etc/config.toml documents each key as a commented `key = default` line: all of them
    together must still be a valid config (a renamed key or a bad example shows here)."""
    import re

    from slurm_mig.host.config import parse_config

    text = (ETC / "config.toml").read_text()
    parse_config(text, "etc/config.toml")
    settings = re.findall(r"(?m)^# ?([a-z_]+) = ", text)
    assert len(settings) >= 20 and "reader" in settings and "apply_wait" in settings
    every = parse_config(re.sub(r"(?m)^# ?([a-z_]+ = .*)$", r"\1", text), "uncommented")
    assert every.slurm.reader == "auto" and every.rebalance.apply_wait == 90


def _stubs(tmp_path, ping_fails: int = 0, systemctl_rc: int = 0):
    """scontrol and systemctl stand-ins that log their arguments; ping fails N times first."""
    log = tmp_path / "calls"
    count = tmp_path / "pings"
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text(
        "#!/bin/sh\n"
        f'echo "scontrol $*" >> {log}\n'
        'if [ "$1" = ping ]; then\n'
        f'  n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}\n'
        f'  [ "$n" -ge {ping_fails} ] || exit 1\n'
        "fi\n")
    (bin_ / "systemctl").write_text(f'#!/bin/sh\necho "systemctl $*" >> {log}\nexit {systemctl_rc}\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    return bin_, log


def _run_reconfigure(bin_, **env):
    import os
    import subprocess

    full = {"PATH": f"{bin_}:/usr/bin:/bin", "SLURM_MIG_PING_TIMEOUT": "3", **env}
    return subprocess.run([str(ETC / "slurm-mig-reconfigure")], env=full, capture_output=True,
                          text=True, timeout=30, cwd=os.getcwd())


def test_reconfigure_script_reconfigures_restarts_and_waits_for_slurmctld(tmp_path):
    bin_, log = _stubs(tmp_path, ping_fails=1)
    proc = _run_reconfigure(bin_, SLURM_MIG_CTLD_UNIT="slurm-ctld")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert log.read_text().splitlines() == ["scontrol reconfigure", "systemctl restart slurm-ctld",
                                            "scontrol ping", "scontrol ping"]


def test_reconfigure_script_fails_in_one_line(tmp_path):
    bin_, log = _stubs(tmp_path, systemctl_rc=5)
    proc = _run_reconfigure(bin_)
    assert proc.returncode == 1
    assert proc.stderr == "slurm-mig-reconfigure: systemctl restart slurmctld failed\n"
    assert "scontrol ping" not in log.read_text()
    down = tmp_path / "down"
    down.mkdir()
    bin2, _ = _stubs(down, ping_fails=99)  # slurmctld never comes back
    proc = _run_reconfigure(bin2, SLURM_MIG_PING_TIMEOUT="1")
    assert proc.returncode == 1 and "did not answer within 1s" in proc.stderr
