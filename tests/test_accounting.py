"""``slurm-mig accounting-tres``: the AccountingStorageTRES line for every MIG type."""

from __future__ import annotations

import json

import pytest

from slurm_mig.core.accounting import accounting_tres, gpu_types, parse_keep
from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.errors import EXIT_USAGE, InputError


def _model(key):
    return load_catalog().model(key)


def test_line_lists_untyped_gpu_then_every_profile_and_alias_in_natural_order():
    line = accounting_tres([_model("A100-40GB")]).line
    assert line == ("AccountingStorageTRES=gres/gpu,gres/gpu:1g.5gb,gres/gpu:1g.5gb+me,"
                    "gres/gpu:1g.10gb,gres/gpu:2g.10gb,gres/gpu:3g.19gb,gres/gpu:3g.20gb,"
                    "gres/gpu:4g.20gb,gres/gpu:7g.39gb,gres/gpu:7g.40gb")


def test_types_shared_by_two_models_appear_once():
    tres = accounting_tres([_model("A100-80GB"), _model("H100-80GB")]).tres
    assert len(tres) == len(set(tres))
    assert tres.count("gres/gpu:1g.10gb") == 1


def test_every_catalog_profile_is_listed():
    cat = load_catalog()
    tres = set(accounting_tres(cat.models).tres)
    for m in cat.models:
        for p in m.profiles:
            assert f"gres/gpu:{p.name}" in tres, (m.key, p.name)


def test_no_aliases_leaves_out_driver_spellings():
    assert "3g.39gb" not in gpu_types([_model("A100-80GB")], aliases=False)
    assert "3g.39gb" in gpu_types([_model("A100-80GB")])


def test_kept_tres_come_first_in_their_order_and_typed_gpus_merge_in():
    keep = parse_keep("AccountingStorageTRES=mem,cpu,gres/gpu,gres/gpu:a100,mem")
    result = accounting_tres([_model("A30")], keep)
    assert result.tres[:3] == ("mem", "cpu", "gres/gpu")
    assert "gres/gpu:a100" in result.tres
    assert len(result.tres) == len(set(result.tres))


@pytest.mark.parametrize("bad", ["cpu mem", "gres/gpu:a;b", "1cpu", "gres/gpu:x,=y"])
def test_keep_refuses_what_is_not_a_tres_name(bad):
    with pytest.raises(InputError, match="not a TRES name"):
        parse_keep(bad)


def test_cli_prints_the_line_for_named_models(cli):
    code, out, err = cli("accounting-tres", "--models", "A30", "--keep", "cpu,mem")
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("AccountingStorageTRES=cpu,mem,gres/gpu,gres/gpu:1g.6gb,")
    assert all(l.startswith("#") for l in out.strip().splitlines()[:-1])


def test_cli_unknown_model_is_one_line_naming_the_known_ones_exit_2(cli):
    code, out, err = cli("accounting-tres", "--models", "A30,B300")
    assert code == EXIT_USAGE
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "--models: unknown GPU model 'B300'" in err and "A100-80GB" in err


def test_cli_without_models_lists_the_whole_catalog_with_a_warning(cli):
    code, out, _ = cli("accounting-tres")
    assert code == 0
    assert "# slurm-mig: no --models" in out
    assert "gres/gpu:7g.186gb" in out  # GB200, from the catalog


def test_cli_from_config_takes_the_sim_gpus(cli, node_config):
    code, out, err = cli("--json", "accounting-tres", "--from-config",
                         config=node_config(gpus=("A30",)))
    assert code == 0, err
    data = json.loads(out)
    assert data["models"] == ["A30"] and data["source"] == "config"


def test_cli_from_node_uses_the_drivers_names(cli, node_config):
    code, out, err = cli("accounting-tres", "--json", "--from-node",
                         config=node_config(gpus=("A100-40GB", "H100-80GB")))
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "node"
    assert "gres/gpu:1g.5gb" in data["tres"] and "gres/gpu:1g.10gb+me" in data["tres"]


def test_cli_refuses_two_model_sources(cli):
    code, _, err = cli("accounting-tres", "--models", "A30", "--from-config")
    assert code == EXIT_USAGE
    assert "choose one of" in err


def test_cli_json_keys_are_stable(cli):
    code, out, _ = cli("accounting-tres", "--json", "--models", "H200")
    assert code == 0
    data = json.loads(out)
    assert sorted(data) == ["kept", "line", "models", "source", "tres", "value", "warnings"]
    assert data["line"] == "AccountingStorageTRES=" + data["value"]
    assert data["value"] == ",".join(data["tres"])
