"""The CLI, run in-process: output and exit code together, JSON keys pinned."""

from __future__ import annotations

import json

from slurm_mig.catalog import load_catalog
from slurm_mig.layout import maximal_layouts


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


def test_catalog_verify_on_simulator_matches(cli, node_config):
    code, out, _ = cli("catalog", "--verify", config=node_config())
    assert code == 0
    assert out.count("matches the catalog") == 2


import pytest  # noqa: E402

from conftest import tree_snapshot  # noqa: E402


@pytest.mark.parametrize("layout, fragment", [
    ("3g.41gb@0", "profile '3g.41gb' is not offered by NVIDIA A100-SXM4-40GB"),
    ("3g.20gb@2", "2 is not a placement of 3g.20gb"),
    ("3g.20gb@0,2g.10gb@2", "overlap"),
    ("1g.5gb@0,1g.5gb:2", "mixes PROFILE@START and PROFILE:COUNT"),
    ("1g.5gb@x", "placement start 'x' is not a number"),
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
                                  "blocked_creates", "changed", "resumed", "partial", "dry_run", "warnings"])
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
    assert code == 4 and "not in MIG mode" in err and "nvidia-smi -i 0 -mig 1" in err
