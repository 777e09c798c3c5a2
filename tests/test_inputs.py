"""Strict inputs (issue 8, item 6): every number from the config, the environment, the
command line or a state file is ASCII digits, finite and bounded; the config file is a
small regular file.  Each bad input is one line and a documented exit code (2 bad input,
3 config), never an internal error (1) or a hang.

Driven through the real entry points: the CLI in-process (``cli`` fixture) or as a
subprocess where today's code would hang, the hooks through :func:`slurm_mig.hooks.run.run_hook`
with an environment, as slurmd gives it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys

import pytest

from slurm_mig.change.channel import ChannelError, parse_channel
from slurm_mig.core import inputs
from slurm_mig.core.gresconf import GresConfError, expand_hostlist
from slurm_mig.hooks import jobenv, run as hooks
from slurm_mig.host import config as config_mod
from slurm_mig.host.config import ConfigError, load_config, parse_config
from slurm_mig.sim.driver import SimDriver

import test_hooks
from test_hooks import one_error_line

node = test_hooks.node  # the fixture: three simulated A100-40GB, gres.conf written

ODD_DIGITS = ["٣", "１", "²", "߃", "𝟑"]  # Arabic-Indic, fullwidth, superscript, NKo, math bold


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("slurm-mig: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    return err


# ----------------------------------------------------------------------------- the parser


@pytest.mark.parametrize("text", ODD_DIGITS + ["", " 1", "1 ", "+1", "-1", "1_0", "1e3", "0x1",
                                               "inf", "nan", "1.5", "9" * 5000])
def test_whole_numbers_are_ascii_digits_only(text):
    with pytest.raises(inputs.NumberError, match=r"^not a whole number \(0 to 100\)$"):
        inputs.from_text(text, 0, 100)


@pytest.mark.parametrize("text", ["٣.5", "1.", ".5", "1.2.3", "inf", "nan", "-5", "1e1", "99999"])
def test_seconds_refuse_other_digits_signs_exponents_and_the_bound(text):
    with pytest.raises(inputs.NumberError, match=r"^not a number of seconds \(0 to 3600\)$"):
        inputs.seconds_text(text, 3600)


def test_seconds_take_ascii_decimals_within_the_bound():
    assert inputs.seconds_text("2.5", 3600) == 2.5 and inputs.seconds_text("3600", 3600) == 3600.0


@pytest.mark.parametrize("value", [True, False, float("inf"), float("nan"), "5", None, [5], -1, 101])
def test_parsed_values_must_be_finite_numbers_within_bounds(value):
    with pytest.raises(inputs.NumberError):
        inputs.from_value(value, 0, 100, whole=False)


def test_a_long_input_is_shown_cut_short():
    assert inputs.shown("9" * 5000) == f"{'9' * 40!r}... (5000 characters)"


# ----------------------------------------------------------------------------- config keys


def number_keys():
    """``section.key`` of every int/float field of the config's sections."""
    out = []
    for section in dataclasses.fields(config_mod.Config):
        cls = section.default.__class__ if dataclasses.is_dataclass(section.default) else None
        if cls is None:
            continue
        for f in dataclasses.fields(cls):
            if f.type in ("int", "float", "Optional[int]", "Optional[float]"):
                out.append(f"{section.name}.{f.name}")
    return out


def bound(key: str):
    """(kind, hi) of a number key, from the config module's tables."""
    if key in config_mod.SECONDS:
        return "a number of seconds", config_mod.SECONDS[key]
    return "a whole number", config_mod.COUNTS[key]


def test_every_number_key_has_a_bound():
    keys = number_keys()
    assert "hooks.kill_grace" in keys and "rebalance.max_nodes_per_cycle" in keys
    tables = list(config_mod.SECONDS) + list(config_mod.COUNTS)
    assert sorted(keys) == sorted(k for k in tables if "<" not in k)


def _key_text(key: str, value: str) -> str:
    section, name = key.split(".", 1)
    return f"version = 1\n[{section}]\n{name} = {value}\n"


@pytest.mark.parametrize("key", number_keys())
@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "-1", "true", "'5'", "over"])
def test_every_number_key_refuses_bad_values_with_exit_3(cli, tmp_path, key, value):
    kind, hi = bound(key)
    text = _key_text(key, str(hi + 1) if value == "over" else value)
    path = tmp_path / "c.toml"
    path.write_text(text)
    code, out, err = cli("status", config=str(path))
    assert (code, out) == (3, "")
    assert f"c.toml: {key}: " in one_line(err) and f"is not {kind} (0 to {hi})" in err


@pytest.mark.parametrize("key", number_keys())
def test_every_number_key_takes_zero_and_its_bound(key):
    _, hi = bound(key)
    for value in (0, hi):
        config = parse_config(_key_text(key, str(value)), "c.toml")
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == value


@pytest.mark.parametrize("key", [k for k in number_keys() if k.startswith("rebalance.")
                                 and k not in config_mod.SECONDS])
def test_counts_are_whole_numbers(key):
    with pytest.raises(ConfigError, match=rf"{key}: 1.5 is not a whole number"):
        parse_config(_key_text(key, "1.5"), "c.toml")


@pytest.mark.parametrize("value", ["inf", "-1", "true", "1.5", "100001"])
def test_floor_counts_are_bounded_whole_numbers(value):
    text = f'version = 1\n[rebalance.floor]\n"3g.40gb" = {value}\n'
    with pytest.raises(ConfigError, match=r"rebalance.floor.3g.40gb: .* is not a whole number"):
        parse_config(text, "c.toml")


@pytest.mark.parametrize("key", ["1024", "99999999999999999999999", "٣"])
def test_layout_gpu_keys_are_bounded_ascii_indexes(key):
    text = f'version = 1\n[layout.gpus]\n"{key}" = "1g.5gb:7"\n'
    with pytest.raises(ConfigError, match=r"layout.gpus: key .* is not a GPU index"):
        parse_config(text, "c.toml")


def test_kill_grace_inf_is_refused_so_the_epilog_cannot_wait_forever():
    with pytest.raises(ConfigError, match=r"hooks.kill_grace: inf is not a number of seconds "
                                          r"\(0 to 3600\)"):
        parse_config("version = 1\n[hooks]\nkill_grace = inf\n", "c.toml")


# ----------------------------------------------------------------------------- config file


def _cli_subprocess(config: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``slurm-mig status`` in a subprocess: today's code hangs on some of these files, and
    a hang must fail the test, not the suite (the timeout is a guard, not an assertion)."""
    env = dict(os.environ, SLURM_MIG_CONFIG=config)
    return subprocess.run([sys.executable, "-m", "slurm_mig", "status"], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limit_memory)


def _limit_memory() -> None:
    """Reading /dev/zero to the end must fail (MemoryError), not take the machine's memory."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("make, kind", [
    (lambda d: "/dev/zero", "a device"),
    (lambda d: (os.mkfifo(d / "fifo"), str(d / "fifo"))[1], "a FIFO"),
    (lambda d: str(d), "a directory"),
])
def test_config_that_is_not_a_regular_file_is_exit_3_not_a_hang(tmp_path, make, kind):
    path = make(tmp_path)
    proc = _cli_subprocess(path)
    assert (proc.returncode, proc.stdout) == (3, "")
    assert one_line(proc.stderr) == (f"slurm-mig: error: {path}: config file is {kind}, not a "
                                     f"regular file; point it at the TOML file (see "
                                     f"etc/config.toml)\n")


def test_huge_config_is_exit_3(cli, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("version = 1\n" + "#" * (inputs.MAX_CONFIG_BYTES + 1) + "\n")
    code, out, err = cli("status", config=str(path))
    assert (code, out) == (3, "")
    assert f"config file is larger than {inputs.MAX_CONFIG_BYTES} bytes" in one_line(err)


@pytest.mark.parametrize("nest", ["[" * 5000 + "]" * 5000, "{a = " * 5000 + "1" + "}" * 5000])
def test_deeply_nested_toml_is_exit_3(cli, tmp_path, nest):
    path = tmp_path / "c.toml"
    path.write_text(f"version = 1\nx = {nest}\n")
    code, out, err = cli("status", config=str(path))
    assert (code, out) == (3, "")
    assert "not valid TOML: arrays or tables nested too deeply" in one_line(err)


def test_a_symlinked_config_is_read(cli, node_config, tmp_path):
    link = tmp_path / "link.toml"
    link.symlink_to(node_config())
    code, _, err = cli("status", config=str(link))
    assert code == 0, err


def test_the_fast_hook_path_does_not_hang_on_a_fifo_config(node, tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    env = node.env("70", "0", SLURM_MIG_CONFIG=str(fifo))
    proc = subprocess.run([sys.executable, "-m", "slurm_mig.hooks", "prolog"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "config file is a FIFO, not a regular file" in one_error_line(proc.stderr, "70")


# ----------------------------------------------------------------------------- config paths


@pytest.mark.parametrize("body, message", [
    ('[paths]\nstate_dir = "/var/lib/a\\u0000b"\n', "paths.state_dir: '/var/lib/a\\x00b' holds a NUL"),
    (f'[paths]\ndev = "/{"x" * 256}"\n', "paths.dev: " + repr("x" * 40) + "... (256 characters) is "
                                          "longer than 255 bytes"),
    (f'[rebalance]\nlock = "/{"é" * 128}"\n', "rebalance.lock: " + repr("é" * 40) + "... (128 "
                                              "characters) is longer than 255 bytes"),
    ('[sim]\nroot = "/' + "/".join(["d" * 200] * 21) + '"\n', "sim.root: "),
    ('[paths]\nroot = "/' + "/".join(["d" * 200] * 20) + '"\n'
     '[rebalance]\nstate_file = "/' + "/".join(["s" * 100] * 2) + '"\n',
     "rebalance.state_file (with paths.root): "),
])
def test_paths_refuse_nul_and_names_and_paths_linux_cannot_hold(cli, tmp_path, body, message):
    path = tmp_path / "c.toml"
    path.write_text("version = 1\n" + body)
    code, out, err = cli("status", config=str(path))
    assert (code, out) == (3, "")
    assert f"c.toml: {message}" in one_line(err)
    if "NUL" not in message and "255" not in message:
        assert "is longer than 4095 bytes, the longest path Linux allows" in err


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize("gpu", ODD_DIGITS + ["9" * 5000, "1024", "-1"])
def test_gpu_option_is_an_ascii_index(cli, node_config, gpu):
    code, out, err = cli("apply", "1g.5gb:1", "--gpu", gpu, "--dry-run", config=node_config())
    assert (code, out) == (2, "")
    assert "not a GPU index (0 to 1023); give a GPU index (0, 1, ...) or 'all'" in one_line(err)
    assert len(err) < 200


@pytest.mark.parametrize("layout", ["1g.5gb:٣", "1g.5gb:３", "1g.5gb:" + "9" * 5000,
                                    "1g.5gb@٠", "1g.5gb@" + "9" * 5000, "1g.5gb:65"])
def test_layout_counts_and_starts_are_ascii_and_bounded(cli, node_config, layout):
    code, out, err = cli("apply", layout, "--dry-run", config=node_config())
    assert (code, out) == (2, "")
    assert "is not a whole number (0 to 64); write e.g." in one_line(err) and len(err) < 300


@pytest.mark.parametrize("args", [
    ("sync", "--wait", "nan"), ("sync", "--wait", "inf"), ("sync", "--wait", "٣"),
    ("sync", "--wait", str(inputs.MAX_WAIT + 1)),
    ("sandbox", "up", "--nodes", "٢"), ("sandbox", "up", "--nodes", "33"),
    ("sim", "attach", "٠", "1", "5"), ("sim", "attach", "0", "1", "0"),
    ("sim", "detach", "0", "1", "--ci", "٣"), ("sim", "detach", "0", "1", "--ci", "1e3"),
])
def test_numeric_options_are_ascii_bounded_exit_2(cli, args):
    code, out, err = cli(*args)
    assert (code, out) == (2, "")
    assert "Invalid value" in one_line(err) and " is not " in err


def test_sandbox_nodes_bound_is_the_sandboxs():
    from slurm_mig.app.cli import SANDBOX_NODES
    from slurm_mig.sandbox.mig import MAX_NODES

    assert SANDBOX_NODES.hi == MAX_NODES


# ----------------------------------------------------------------------------- hooks


@pytest.mark.parametrize("gpus", ODD_DIGITS + ["9" * 5000, "0-4096", "4096", "0,x", "1-٣"])
def test_job_gpus_that_are_not_ascii_indexes_are_exit_2(node, capsys, gpus):
    code = hooks.run_hook("prolog", node.env("71", gpus))
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    line = one_error_line(err, "71")
    assert "not a gpu index (0 to 4095); expected a list of gpu indexes (e.g. 0,2 or 0-2)" in line
    assert len(line) < 300 and node.record_of("71") is None


@pytest.mark.parametrize("name, value, wanted", [
    (jobenv.GRACE_ENV, "abc", "not a number of seconds (0 to 3600)"),
    (jobenv.GRACE_ENV, "nan", "not a number of seconds (0 to 3600)"),
    (jobenv.GRACE_ENV, "-5", "not a number of seconds (0 to 3600)"),
    (jobenv.GRACE_ENV, "inf", "not a number of seconds (0 to 3600)"),
    (jobenv.GRACE_ENV, "٥", "not a number of seconds (0 to 3600)"),
    (jobenv.GRACE_ENV, "3601", "not a number of seconds (0 to 3600)"),
    (jobenv.WIPE_ENV, "maybe", "not 1 or 0 (also yes/no, true/false, on/off)"),
])
def test_bad_epilog_overrides_are_exit_2_on_both_paths(node, capsys, name, value, wanted):
    assert hooks.run_hook("prolog", node.env("72", "3"), ) == 0
    capsys.readouterr()
    code = hooks.run_hook("epilog", node.env("72", **{name: value}))
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert f"{name}={value!r}: {wanted}; fix or unset it" in one_error_line(err, "72", "epilog")
    assert node.record_of("72") is not None  # nothing done: the node drains, the record stays
    with open(os.path.join(node.config.paths.state_dir, hooks.LAST_ERROR)) as f:
        assert f.read() == err


def test_good_epilog_overrides_are_read(node, capsys):
    rec = node.records()[5]
    assert hooks.run_hook("prolog", node.env("73", "5")) == 0
    before = node.instance(rec.gpu, rec.gi_id).uuid
    env = node.env("73", **{jobenv.WIPE_ENV: "On", jobenv.GRACE_ENV: "0.5"})
    assert hooks.run_hook("epilog", env) == 0, capsys.readouterr()
    assert node.instance(rec.gpu, rec.gi_id).uuid != before  # wiped: "On" is on


# ----------------------------------------------------------------------------- journal


@pytest.mark.parametrize("field, raw", [
    ("pid", "1e400"), ("gpu", '"x"'), ("started", "NaN"), ("started", "-Infinity"),
    ("gpu", "true"), ("gpu", '"\\u0663"'), ("pid", "1.5"), ("instances", '[[9, "\\u0663"]]'),
    ("instances", "[[9, 1e400]]"), ("version", "true"),
])
def test_journal_with_bad_numbers_is_set_aside_not_a_crash(cli, node_config, field, raw):
    config_path = node_config(gpus=("A100-40GB",))
    assert cli("apply", "1g.5gb:1", config=config_path)[0] == 0
    config = load_config(config_path)
    uuid = SimDriver(config.sim.root).gpus()[0]["uuid"]
    good = {"version": 1, "gpu": 0, "uuid": uuid, "layout": "1g.5gb@0", "instances": [[19, 0]],
            "started": 1.0, "pid": 5}
    text = json.dumps(good).replace(f'"{field}": {json.dumps(good[field])}', f'"{field}": {raw}')
    assert raw in text
    path = os.path.join(config.paths.state_dir, "journal", f"{uuid}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    code, out, err = cli("apply", "1g.5gb:2", "--dry-run", config=config_path)
    assert code == 0, err
    assert os.path.exists(path)  # a dry run changes nothing
    code, out, err = cli("apply", "1g.5gb:2", config=config_path)
    assert code == 0, err
    assert f"intent journal {path} is unreadable" in out + err
    assert not os.path.exists(path) and os.path.exists(path + ".corrupt")
    assert cli("apply", "1g.5gb:2", config=config_path)[0] == 0


# ----------------------------------------------------------------------------- other texts


def test_gres_conf_host_ranges_are_bounded():
    with pytest.raises(GresConfError, match="names more than 65536 nodes"):
        expand_hostlist("n[0-70000]")
    assert expand_hostlist("n[08-10]") == ["n08", "n09", "n10"]


@pytest.mark.parametrize("text", ["slurm-mig;want:٣/1g.10gb:7", "slurm-mig;want:0/1g.10gb:7;cycle:٣",
                                  "slurm-mig;applied:" + "9" * 5000])
def test_channel_numbers_are_ascii(text):
    with pytest.raises(ChannelError):
        parse_channel(text, "n1")


def test_the_bounds_table_in_the_docs_is_the_configs():
    import re

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")
    with open(path, encoding="utf-8") as f:
        rows = re.findall(r"^\| `([a-z_.<>]+)` \| [a-z]+ \| 0 to ([0-9]+) \|$", f.read(), re.M)
    assert {k: int(v) for k, v in rows} == {**config_mod.SECONDS, **config_mod.COUNTS}


@pytest.mark.parametrize("digits", ["9" * 5000, "٣"])
def test_gres_conf_cap_numbers_must_be_short_ascii(node, capsys, digits):
    path = node.config.paths.gres_conf
    with open(path) as f:
        text = f.read()
    cap = node.records()[0].files[1]
    assert text.count(cap + ",") + text.count(cap + " ") + text.count(cap + "\n") == 1
    bad = os.path.join(os.path.dirname(cap), "nvidia-cap" + digits)
    with open(path, "w") as f:
        f.write(text.replace(cap + ",", bad + ",").replace(cap + " ", bad + " ")
                .replace(cap + "\n", bad + "\n"))
    code = hooks.run_hook("prolog", node.env("74", "0"))
    out, err = capsys.readouterr()
    assert (code, out) == (3, "")
    assert "expected /dev/nvidiaN and two nvidia-caps/nvidia-capK files" in one_error_line(err, "74")
