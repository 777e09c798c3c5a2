"""Bounded, seeded fuzzing of every input an admin, slurmd or a job can hand slurm-mig (issue 8).

Four families, each a fixed number of cases from a fixed seed (the same cases on every run,
so a failure reproduces with its case number):

* layout text given to ``slurm-mig apply`` (dry runs and real ones);
* config TOML: the shipped example, mutated (values of every type, non-finite and huge
  numbers, Unicode digits, NUL, deep nesting, truncation);
* the hooks' environment (``SLURM_JOB_ID``, ``SLURM_JOB_GPUS``, the epilog overrides);
* state files (job records, the journal, the hooks' snapshot and config cache) damaged in
  place before ``status``, ``apply``, the prolog and the epilog run.

Every case must end with a documented exit code (docs/exit-codes.md, docs/hooks.md), never 1
(an internal error), with at most one error line and no traceback; and a refusal must change
nothing on the GPUs.
"""

from __future__ import annotations

import json
import os
import pathlib
import random

import pytest

from slurm_mig.hooks import run as hooks
from slurm_mig.host.config import ConfigError, parse_config
from slurm_mig.sim.driver import SimDriver

ROOT = pathlib.Path(__file__).resolve().parent.parent
NODE = "n1"
#: What the CLI may exit with (docs/exit-codes.md); 1 is a bug and never allowed.
CLI_CODES = {0, 2, 3, 4, 5, 6, 7, 8, 9}
#: What a hook may exit with (docs/hooks.md's failure table).
HOOK_CODES = {0, 2, 3, 4, 5, 7}

PROFILES = ["1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb", "1g.5gb+me",
            "1g.10gb+me", "3g.40gb", "zz"]
NUMBERS = ["0", "1", "2", "3", "4", "6", "7", "8", "-1", "99", "9" * 30, "٣", "１", "²", "1.5",
           "0x1", "1e3", " 2", ""]
SEPARATORS = [",", ":", "@", " ", ",,", "@@", "::", ";", "\t", "\n"]


def _layout_text(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(["", "empty", " empty ", "EMPTY", "none", "\x00", "é" * 5,
                           "1g.5gb:7" * 40])
    parts = []
    for _ in range(rng.randint(1, 5)):
        p = rng.choice(PROFILES)
        form = rng.random()
        if form < 0.45:
            parts.append(f"{p}:{rng.choice(NUMBERS)}")
        elif form < 0.9:
            parts.append(f"{p}@{rng.choice(NUMBERS)}")
        else:
            parts.append(p + rng.choice(SEPARATORS) + rng.choice(NUMBERS))
    return rng.choice([",", ",", ", ", ";"]).join(parts)


def _short(text: str) -> str:
    """A failing case as it can be read: long runs cut."""
    return "\n".join(line if len(line) < 200 else line[:100] + f"...({len(line)} chars)"
                     for line in text.splitlines())


def _check_cli(code: int, out: str, err: str, what: str, dry: bool = False) -> None:
    """A documented code, no traceback, and one error line for a failure; a dry run that
    finds busy instances exits as the real run would (5, or 6 with --partial) and prints the
    plan instead (docs/apply.md)."""
    what = _short(what)
    assert code in CLI_CODES, f"{what}: exit {code}\n{err}"
    assert "Traceback" not in err + out, f"{what}: traceback\n{err}"
    if dry and code == 5 and not err:
        assert "a real run refuses" in out, f"{what}: {out!r}"
    elif code not in (0, 6):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("slurm-mig: error: "), f"{what}: exit {code}: {err!r}"


def _gpu_state(config) -> list:
    """What the simulated GPUs carry (instances and ids), without the driver's counters."""
    with open(os.path.join(config.sim.root, "state.json")) as f:
        state = json.load(f)
    return [(g["index"], g["mig_current"],
             sorted((gi["id"], gi["profile_id"], gi["start"], tuple(c["id"] for c in gi["cis"]))
                    for gi in g["gis"])) for g in state["gpus"]]


# ----------------------------------------------------------------------------- layouts


def test_fuzz_layout_text(cli, node_config):
    config_path = node_config(gpus=("A100-40GB", "A100-40GB"))
    assert cli("apply", "1g.5gb:7", config=config_path)[0] == 0
    from slurm_mig.host.config import load_config

    config = load_config(config_path)
    driver = SimDriver(config.sim.root)
    busy = driver.gpu_instances(0)[0]
    driver.attach_process(0, busy["id"], busy["cis"][0]["id"], os.getpid())
    rng = random.Random(8_001)
    for case in range(160):
        text = _layout_text(rng)
        args = ["apply", text, "--gpu", rng.choice(["all", "0", "1", "0", "x", "٠", "7"])]
        dry = rng.random() < 0.5
        if dry:
            args.append("--dry-run")
        if rng.random() < 0.3:
            args.append("--partial")
        before = _gpu_state(config)
        code, out, err = cli(*args, config=config_path)
        what = f"case {case}: apply {text!r} {args[2:]}"
        _check_cli(code, out, err, what, dry)
        if dry or code not in (0, 6):
            assert _gpu_state(config) == before, f"{what}: exit {code} changed the GPUs"


# ----------------------------------------------------------------------------- config


VALUES = ["inf", "-inf", "nan", "1e400", "-5", "0", "1.5", "99999999999999999999999", "true",
          '"٣"', '"\\u0000"', '""', '"/dev/null"', '"relative/path"', '"/' + "a" * 300 + '"',
          "[]", "{}", '["x"]', '"sim"', "3", '"/' + "d/" * 3000 + '"', "[[[[[[[[]]]]]]]]",
          '"1g.10gb:٣"', '"1g.10gb:7"', "2026-12-04"]


def _mutate(rng: random.Random, lines: list) -> str:
    lines = list(lines)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(lines))
        if op < 0.45:  # uncomment a key and give it a random value
            line = lines[i].lstrip("# ")
            if "=" in line and not line.startswith("["):
                lines[i] = line.split("=", 1)[0] + "= " + rng.choice(VALUES)
        elif op < 0.6:
            del lines[i]
        elif op < 0.7:
            depth = rng.choice([5, 100, 2000])
            lines.insert(i, "deep = " + "[" * depth + "]" * depth)
        elif op < 0.8:
            lines.insert(i, "[" + ".".join(["t"] * rng.choice([3, 300])) + "]")
        elif op < 0.9:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        else:
            lines.insert(i, rng.choice(["version = 2", "backend = \"gpu\"", "\x00", "[paths]",
                                        "root = \"/tmp/x\x01\""]))
    return "\n".join(lines) + "\n"


def test_fuzz_config_toml():
    example = (ROOT / "etc" / "config.toml").read_text().splitlines()
    rng = random.Random(8_002)
    for case in range(600):
        text = _mutate(rng, example)
        try:
            parse_config(text, "fuzz.toml")
        except ConfigError as err:
            assert "\n" not in str(err), f"case {case}: {err!r}"
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case}: {type(err).__name__}: {str(err)[:200]}\n{_short(text)}")


# ----------------------------------------------------------------------------- hook environment


@pytest.fixture
def hook_node(cli, node_config):
    config_path = node_config(gpus=("A100-40GB", "A100-40GB"))
    assert cli("apply", "1g.5gb:7", config=config_path)[0] == 0
    for cmd in ("gres-conf", "node-conf"):
        assert cli(cmd, "--node", NODE, "--write", config=config_path)[0] == 0
    from slurm_mig.host.config import load_config

    return config_path, load_config(config_path)


JOB_IDS = ["1", "2", "42", "0", "-1", "٤", "1" * 25, "", "abc", "12\n", "007", "3"]
JOB_GPUS = ["0", "1", "0,1", "0-2", "13", "²", "٠", "9" * 5000, "1-0", "0-99999", "", " ",
            "0,,1", "a", "3", "0-13", "14", "1,1,1"]
GRACES = ["abc", "nan", "-5", "inf", "0", "1e3", "٣", "", "0.01"]
WIPES = ["1", "0", "yes", "x", ""]


def test_fuzz_hook_environment(hook_node, capsys, cpu_squeue):
    config_path, config = hook_node
    rng = random.Random(8_003)
    for case in range(150):
        which = rng.choice(["prolog", "prolog", "epilog"])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURM_MIG_CONFIG": config_path,
               "SLURMD_NODENAME": rng.choice([NODE, NODE, NODE, "", "../x", "n2"]),
               "SLURM_JOB_UID": rng.choice(["1000", "0", "x", ""]), "SLURM_MIG_SQUEUE": cpu_squeue}
        for key, pool in (("SLURM_JOB_ID", JOB_IDS), ("SLURM_JOB_GPUS", JOB_GPUS),
                          ("SLURM_MIG_EPILOG_GRACE", GRACES), ("SLURM_MIG_EPILOG_WIPE", WIPES)):
            if rng.random() < 0.85:
                env[key] = rng.choice(pool)
        env.setdefault("SLURM_MIG_EPILOG_GRACE", "0")
        before = _gpu_state(config)
        code = hooks.run_hook(which, env)
        out, err = capsys.readouterr()
        what = _short(f"case {case}: {which} {env}")
        assert code in HOOK_CODES, f"{what}: exit {code}: {err}"
        assert "Traceback" not in err, what
        if code:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith(f"slurm-mig {which}: error: "), \
                f"{what}: exit {code}: {err!r}"
            if which == "prolog":
                assert _gpu_state(config) == before, f"{what}: a refused prolog changed the GPUs"


# ----------------------------------------------------------------------------- state files


DAMAGE = [b"", b"{", b"[]", b"null", b"\x00\xff", b'{"job_id": 5}', b'{"instances": 3}',
          b'{"job_id": "9", "instances": [{"gpu": "x", "gi_id": 1e400}]}',
          b'{"job_id": "9", "instances": [{"gpu": 0, "gi_id": null}, 7]}',
          b'{"version": 1, "gpu": 1e400, "uuid": 5, "instances": [[1e400, 0]], "pid": 1e400}',
          b'{"version": 1, "gpu": 0, "uuid": "x", "layout": "empty", "instances": [], '
          b'"started": NaN, "pid": 1e400}',
          b'{"version": 1, "records": [{"gpu": "0"}], "node": "n1"}',
          b'{"version": 1, "config": "", "settings": {"backend": 5}}',
          b"1" * 5000, json.dumps({"a": [[[[[[]]]]]] * 50}).encode()]


def test_fuzz_state_files(hook_node, cli, capsys, cpu_squeue):
    config_path, config = hook_node
    state = pathlib.Path(config.paths.state_dir)
    driver = SimDriver(config.sim.root)
    uuid = driver.gpus()[0]["uuid"]
    # one real prolog, so the snapshot, the config cache and a record exist
    env = {"PATH": "/usr/bin:/bin", "SLURM_MIG_CONFIG": config_path, "SLURMD_NODENAME": NODE,
           "SLURM_JOB_UID": "1000", "SLURM_JOB_ID": "9", "SLURM_JOB_GPUS": "0"}
    assert hooks.run_hook("prolog", env) == 0
    capsys.readouterr()
    cache = pathlib.Path(config_path).parent / f".{pathlib.Path(config_path).name}.hooks-cache.json"
    targets = [state / "jobs" / "9.json", state / "jobs" / "11.json",
               state / "journal" / f"{uuid}.json", state / "hook-snapshot.json", cache]
    rng = random.Random(8_004)
    for case in range(60):
        target = rng.choice(targets)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.choice(DAMAGE))
        what = f"case {case}: {target.name} = {target.read_bytes()[:60]!r}"
        for args in (("status",), ("apply", "1g.5gb:7", "--dry-run"), ("apply", "1g.5gb:7")):
            code, out, err = cli(*args, config=config_path)
            _check_cli(code, out, err, f"{what}: {args}", "--dry-run" in args)
        for which, job, gpus in (("prolog", "10", "1"), ("epilog", "10", None),
                                 ("epilog", "9", None), ("prolog", "9", "0")):
            env = {"PATH": "/usr/bin:/bin", "SLURM_MIG_CONFIG": config_path, "SLURMD_NODENAME": NODE,
                   "SLURM_JOB_UID": "1000", "SLURM_JOB_ID": job, "SLURM_MIG_EPILOG_GRACE": "0",
                   "SLURM_MIG_SQUEUE": cpu_squeue}
            if gpus:
                env["SLURM_JOB_GPUS"] = gpus
            code = hooks.run_hook(which, env)
            _, err = capsys.readouterr()
            assert code in HOOK_CODES, f"{what}: {which} {job}: exit {code}: {err}"
            assert "Traceback" not in err
            assert len([ln for ln in err.splitlines() if "error:" in ln]) <= 1, err
