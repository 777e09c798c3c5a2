"""The CLI, run in-process: output and exit code together, JSON keys pinned."""

from __future__ import annotations

import json

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.layout import maximal_layouts


def test_layouts_prints_one_canonical_layout_per_line(cli):
    code, out, err = cli("layouts", "A100-40GB", "--maximal", "--no-me")
    assert code == 0 and err == ""
    lines = out.splitlines()
    model = load_catalog().model("A100-40GB")
    assert len(lines) == len(maximal_layouts(model, include_me=False))
    assert "1g.5gb@0,1g.5gb@1,1g.5gb@2,1g.5gb@3,1g.5gb@4,1g.5gb@5,1g.5gb@6" in lines
    assert "7g.40gb@0" in lines


def test_layouts_accepts_nvml_names_and_aliases(cli):
    by_key = cli("layouts", "A100-80GB")[1]
    by_name = cli("layouts", "NVIDIA A100 80GB PCIe")[1]
    assert by_key == by_name and by_key


def test_unknown_model_is_one_line_with_the_fix_and_exit_2(cli):
    code, out, err = cli("layouts", "V100")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("slurm-mig: error: unknown GPU model 'V100'; known models: A100-40GB")


def test_broken_config_is_exit_3_one_line(cli, tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("version = 1\n[apply]\npartiall = true\n")
    code, out, err = cli("status", config=str(bad))
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "apply.partiall" in err


def test_catalog_json_keys_are_stable(cli):
    code, out, _ = cli("--json", "catalog", "H100-80GB")
    assert code == 0
    data = json.loads(out)
    assert list(data) == ["models"]
    model = data["models"][0]
    assert sorted(model) == sorted([
        "key", "name", "aliases", "pci_device_ids", "compute_slices", "memory_slices",
        "placement_units", "profiles", "unverified"])
    assert sorted(model["profiles"][0]) == sorted([
        "id", "name", "aliases", "compute_slices", "memory_slices", "memory_mib", "max_count",
        "placements", "placement_size"])
    assert {p["name"]: p["id"] for p in model["profiles"]}["3g.40gb"] == 9


def test_status_on_fresh_simulator_shows_empty_mig_gpus(cli, node_config):
    code, out, err = cli("status", config=node_config())
    assert code == 0, err
    assert "GPU 0: NVIDIA A100-SXM4-40GB (A100-40GB) minor 0 MIG on" in out
    assert "GPU 1: NVIDIA H100 80GB HBM3 (H100-80GB)" in out
    assert "layout: empty" in out


def test_status_json_keys_are_stable(cli, node_config):
    code, out, _ = cli("--json", "status", config=node_config())
    assert code == 0
    data = json.loads(out)
    assert sorted(data) == ["backend", "gpus", "warnings"]
    assert sorted(data["gpus"][0]) == sorted([
        "index", "name", "model", "uuid", "minor", "mig", "layout", "maximal", "instances"])
    assert data["gpus"][0]["mig"] == {"current": True, "pending": True}


@pytest.mark.parametrize("argv", [("status", "--json"), ("layouts", "A100-40GB", "--json"),
                                  ("mig-parted", "export", "--json")])
def test_json_after_the_command_is_the_same_as_before_it(cli, node_config, argv):
    """Admins type `slurm-mig status --json`; it means `slurm-mig --json status`."""
    config = node_config()
    code, after, err = cli(*argv, config=config)
    assert code == 0, err
    code, before, err = cli("--json", *argv[:-1], config=config)
    assert code == 0, err
    assert json.loads(after) == json.loads(before)


def test_catalog_verify_on_simulator_matches(cli, node_config):
    code, out, _ = cli("catalog", "--verify", config=node_config())
    assert code == 0
    assert out.count("matches the catalog") == 2



from conftest import tree_snapshot  # noqa: E402


@pytest.mark.parametrize("layout, fragment", [
    ("3g.41gb@0", "profile '3g.41gb' is not offered by NVIDIA A100-SXM4-40GB"),
    ("3g.20gb@2", "2 is not a placement of 3g.20gb"),
    ("3g.20gb@0,2g.10gb@2", "overlap"),
    ("1g.5gb@0,1g.5gb:2", "mixes PROFILE@START and PROFILE:COUNT"),
    ("1g.5gb@x", "placement start 'x' is not a whole number (0 to 64)"),
    ("7g.40gb:2", "does not fit on one NVIDIA A100-SXM4-40GB"),
    ("1g.5gb,", "empty item"),
])
def test_bad_layout_is_one_line_exit_2_and_changes_nothing(cli, node_config, tmp_path, layout, fragment):
    config = node_config(gpus=("A100-40GB",))
    assert cli("apply", "1g.5gb:3", config=config)[0] == 0
    before = tree_snapshot(tmp_path / "host")
    code, out, err = cli("apply", layout, config=config)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("slurm-mig: error: ") and fragment in err
    assert tree_snapshot(tmp_path / "host") == before


def test_broken_config_changes_nothing_on_disk(cli, node_config, tmp_path):
    config = node_config(gpus=("A100-40GB",))
    assert cli("apply", "3g.20gb:2", config=config)[0] == 0
    before = tree_snapshot(tmp_path / "host")
    with open(config, "a") as f:
        f.write("[layout]\ndefault = 3\n")
    code, _, err = cli("apply", "7g.40gb:1", config=config)
    assert code == 3 and "layout.default" in err and err.count("\n") == 1
    assert tree_snapshot(tmp_path / "host") == before


def test_apply_busy_instance_refuses_exit_5_then_partial_exit_6(cli, node_config):
    config = node_config(gpus=("A100-80GB",))
    assert cli("apply", "1g.10gb:7", config=config)[0] == 0
    status = json.loads(cli("--json", "status", config=config)[1])
    first = status["gpus"][0]["instances"][0]
    assert cli("sim", "attach", 0, first["gi_id"], 4242, config=config)[0] == 0
    status = json.loads(cli("--json", "status", config=config)[1])

    code, out, err = cli("apply", "3g.40gb:2", config=config)
    assert code == 5 and out == ""
    assert f"1g.10gb@0 (gi {first['gi_id']}) is in use by pid 4242" in err and "--partial" in err
    assert json.loads(cli("--json", "status", config=config)[1]) == status

    code, out, _ = cli("--json", "apply", "3g.40gb:2", "--partial", config=config)
    assert code == 6
    result = json.loads(out)
    assert sorted(result) == ["blocked", "dry_run", "gpus", "warnings"]
    gpu = result["gpus"][0]
    assert sorted(gpu) == sorted(["gpu", "uuid", "model", "wanted", "before", "after", "steps", "blocked",
                                  "blocked_creates", "changed", "resumed", "partial", "dry_run", "warnings",
                                  "cap_files"])
    assert gpu["blocked"] == [{"profile": "1g.10gb", "start": 0, "gi_id": first["gi_id"], "pids": [4242], "jobs": []}]
    assert gpu["after"] == "1g.10gb@0,3g.40gb@4"


def test_apply_twice_is_untouched_the_second_time(cli, node_config):
    config = node_config(gpus=("H100-80GB",))
    assert cli("apply", "3g.40gb:1,1g.10gb:3", config=config)[0] == 0
    code, out, _ = cli("apply", "3g.40gb:1,1g.10gb:3", config=config)
    assert code == 0 and "already matches, untouched" in out


def test_apply_to_gpu_not_in_mig_mode_says_how_to_enable(cli, node_config, tmp_path):
    config = node_config(gpus=("A100-40GB",))
    assert cli("sim", "init", "--mig-off", config=config)[0] == 0
    code, _, err = cli("apply", "7g.40gb:1", "--gpu", "0", config=config)
    assert code == 4 and "not in MIG mode" in err and "`slurm-mig mode on --gpu 0`" in err


# -- docs/apply.md's decisions, each through the CLI: output and exit code together ---------

EMPTY_TEXT = ("slurm-mig: error: empty layout text; write 'empty' to remove every instance, or "
              "e.g. 3g.40gb@0,1g.10gb@6 or 1g.10gb:2,3g.40gb:1\n")


@pytest.mark.parametrize("text", ["", "   "])
def test_apply_empty_string_is_refused_exit_2_as_documented(cli, node_config, tmp_path, text):
    """An unset shell variable must not mean "destroy every idle instance"."""
    config = node_config(gpus=("A100-40GB",))
    assert cli("apply", "1g.5gb:3", config=config)[0] == 0
    before = tree_snapshot(tmp_path / "host")
    assert cli("apply", text, config=config) == (2, "", EMPTY_TEXT)
    code, out, err = cli("sync", "--layout", text, "--node", "n1", config=config)
    assert (code, out) == (2, "") and err.endswith(EMPTY_TEXT[len("slurm-mig: error: "):])
    assert tree_snapshot(tmp_path / "host") == before


@pytest.mark.parametrize("word", ["empty", "none", "NONE", "Empty"])
def test_apply_empty_or_none_means_no_instances_as_documented(cli, node_config, word):
    config = node_config(gpus=("A100-40GB",))
    assert cli("apply", "3g.20gb:2", config=config)[0] == 0
    code, out, err = cli("apply", word, "--dry-run", config=config)
    assert (code, err) == (0, "")
    lines = [line.split(" (GI ")[0] for line in out.splitlines()]  # GI ids are the driver's
    assert lines == ["GPU 0: 3g.20gb@0,3g.20gb@4 -> empty",
                     "  would destroy 3g.20gb@0", "  would destroy 3g.20gb@4"]


def test_apply_all_without_a_mig_gpu_exits_4_with_the_fix_as_documented(cli, node_config, tmp_path):
    """Nothing was applied, so not a success (docs/apply.md once said exit 0)."""
    config = node_config(gpus=("A100-40GB", "H100-80GB"))
    assert cli("sim", "init", "--mig-off", config=config)[0] == 0
    before = tree_snapshot(tmp_path / "host")
    want = ("slurm-mig: error: no GPU on this node is in MIG mode (gpu 0 off; gpu 1 off); "
            "nothing was changed; enable it with `slurm-mig mode on --gpu <index>` (Ampere GPUs "
            "then need a reset; docs/mig-mode.md), see `slurm-mig status`\n")
    assert cli("apply", "empty", config=config) == (4, "", want)
    assert cli("apply", "empty", "--gpu", "all", "--dry-run", config=config) == (4, "", want)
    assert cli("sync", "--layout", "empty", "--node", "n1", config=config) == (4, "", want)
    assert tree_snapshot(tmp_path / "host") == before


def test_dry_run_with_a_busy_instance_exits_as_the_real_run_as_documented(cli, node_config, tmp_path):
    """5 without --partial (a warning says the real run refuses), 6 with it (no such
    warning: the dry run used to ignore --partial); nothing changed by either."""
    config = node_config(gpus=("A100-80GB",))
    assert cli("apply", "1g.10gb:7", config=config)[0] == 0
    gi = json.loads(cli("--json", "status", config=config)[1])["gpus"][0]["instances"][0]["gi_id"]
    assert cli("sim", "attach", 0, gi, 4242, config=config)[0] == 0
    before = tree_snapshot(tmp_path / "host")
    plan = ["GPU 0: " + ",".join(f"1g.10gb@{i}" for i in range(7)) + " -> 3g.40gb@0,3g.40gb@4"]
    plan += [f"  would destroy 1g.10gb@{i} (GI " for i in range(1, 7)]
    plan += ["  would create 3g.40gb@4", f"  kept busy 1g.10gb@0 (GI {gi}, pids 4242)",
             "  not created 3g.40gb@0: its space is held by a busy instance"]

    code, out, err = cli("apply", "3g.40gb:2", "--dry-run", config=config)
    lines = out.splitlines()
    assert (code, err) == (5, "") and len(lines) == len(plan) + 1
    assert all(line.startswith(p) for line, p in zip(lines, plan))
    assert lines[-1].startswith("  warning: gpu 0 (GPU-") and lines[-1].endswith(
        f"cannot apply 3g.40gb@0,3g.40gb@4: 1g.10gb@0 (gi {gi}) is in use by pid 4242; a real "
        f"run refuses: wait for the jobs, drain the node, or pass --partial")
    assert cli("apply", "3g.40gb:2", config=config)[0] == 5  # the real run: refused

    code, out, err = cli("apply", "3g.40gb:2", "--dry-run", "--partial", config=config)
    lines = out.splitlines()
    assert (code, err) == (6, "") and len(lines) == len(plan)
    assert all(line.startswith(p) for line, p in zip(lines, plan)) and "warning" not in out
    assert tree_snapshot(tmp_path / "host") == before
    assert cli("apply", "3g.40gb:2", "--partial", config=config)[0] == 6  # the real run


def test_count_form_keeps_the_instances_the_gpu_has_as_documented(cli, node_config):
    config = node_config(gpus=("A100-80GB",))
    assert cli("apply", "1g.10gb:1", "--dry-run", config=config)[1].splitlines()[0] == \
        "GPU 0: empty -> 1g.10gb@6"  # on an empty GPU: most room
    assert cli("apply", "1g.10gb@0", config=config)[0] == 0
    assert cli("apply", "1g.10gb:1", config=config) == (
        0, "GPU 0: 1g.10gb@0 -> 1g.10gb@0: already matches, untouched\n", "")
    gi = json.loads(cli("--json", "status", config=config)[1])["gpus"][0]["instances"][0]["gi_id"]
    assert cli("sim", "attach", 0, gi, 4242, config=config)[0] == 0
    code, out, err = cli("apply", "1g.10gb:2", config=config)  # busy @0 kept, not refused
    lines = [line.split(" (GI ")[0] for line in out.splitlines()]
    assert (code, err, lines) == (0, "", ["GPU 0: 1g.10gb@0 -> 1g.10gb@0,1g.10gb@1",
                                          "  did create 1g.10gb@1"])


def test_every_exit_code_is_documented():
    """Each EXIT_* of slurm_mig/core/errors.py has its row in docs/exit-codes.md and its line in
    errors.py's docstring, and no row names a code the code does not have."""
    import os
    import re

    from slurm_mig.core import errors

    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "exit-codes.md")) as f:
        rows = {int(m) for m in re.findall(r"^\| (\d+) \|", f.read(), re.M)}
    assert rows - {130} == codes
    doc = {int(m) for m in re.findall(r"^  (\d+)  ", errors.__doc__, re.M)}
    assert doc == codes
