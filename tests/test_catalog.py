"""The packaged catalog's own invariants, checked for every model."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.sim.driver import GI_PROFILE_ENUMS

MODELS = load_catalog().models
REQUIRED = {"A30", "A100-40GB", "A100-80GB", "H100-80GB", "H100-NVL", "GH200-96GB", "GH200-144GB",
            "H200", "B200", "RTX-PRO-6000"}


def test_catalog_has_the_required_models():
    assert REQUIRED <= {m.key for m in MODELS}


def test_catalog_json_has_only_known_keys():
    data = json.loads(resources.files("slurm_mig").joinpath("data/catalog.json").read_text())
    model_keys = {"key", "name", "aliases", "pci_device_ids", "compute_slices", "memory_slices",
                  "placement_units", "unverified", "sources", "profiles"}
    profile_keys = {"name", "id", "enum", "compute_slices", "memory_slices", "memory_mib", "max_count",
                    "placements", "placement_size", "sm_count", "aliases"}
    for m in data["models"]:
        assert set(m) <= model_keys, m["key"]
        for p in m["profiles"]:
            assert set(p) <= profile_keys, (m["key"], p["name"])


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.key)
def test_profiles_fit_the_placement_axis_and_are_unique(model):
    ids = [p.id for p in model.profiles]
    names = [n for p in model.profiles for n in p.names()]
    assert len(ids) == len(set(ids)) and len(names) == len(set(names))
    for p in model.profiles:
        assert p.enum in GI_PROFILE_ENUMS, p.name
        assert p.placements == tuple(sorted(set(p.placements)))
        assert all(s % p.placement_size == 0 or p.placement_size == 1 for s in p.placements)
        assert p.placements[-1] + p.placement_size <= model.placement_units
        assert 1 <= p.compute_slices <= model.compute_slices
        assert 1 <= p.memory_slices <= model.memory_slices
        assert 1 <= p.max_count <= len(p.placements)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.key)
def test_model_is_found_by_key_name_aliases_and_pci_id(model):
    cat = load_catalog()
    for name in (model.key, model.name) + tuple(model.aliases) + tuple(model.pci_device_ids):
        assert cat.model(name) is model
