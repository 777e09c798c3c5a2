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
    assert sorted(data) == ["backend", "gpus"]
    assert sorted(data["gpus"][0]) == sorted([
        "index", "name", "model", "uuid", "minor", "mig", "layout", "maximal", "instances"])
    assert data["gpus"][0]["mig"] == {"current": True, "pending": True}


def test_catalog_verify_on_simulator_matches(cli, node_config):
    code, out, _ = cli("catalog", "--verify", config=node_config())
    assert code == 0
    assert out.count("matches the catalog") == 2
