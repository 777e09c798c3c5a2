"""What a real GPU said, replayed: the catalog, the simulator and the pynvml look-alike
are held to NVML output recorded read-only on a lent GPU (tests/data/nvml/).

h200-580.159.04-probe.json is ``python3 -m slurm_mig.gpu.nvmlprobe`` on an NVIDIA H200
(driver 580.159.04, MIG mode off, 2026-11-28); the -smi-lgip.txt beside it is
``nvidia-smi mig -lgip`` and ``-lgipp`` from the same run.
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest

from slurm_mig.app import commands
from slurm_mig.core import catalog as catalog_mod
from slurm_mig.core.catalog import GI_PROFILE_ENUMS, ObservedProfile
from slurm_mig.core.devices import formula_minors, parse_mig_minors, render_mig_minors
from slurm_mig.core.errors import NotSupported
from slurm_mig.gpu.nvml import NvmlBackend
from slurm_mig.gpu.nvmlprobe import CALLS, probe
from slurm_mig.sim.backend import SimBackend
from slurm_mig.sim.driver import SimDriver
from slurm_mig.sim.fakenvml import fake_pynvml

DATA = Path(__file__).parent / "data" / "nvml"
H200 = json.loads((DATA / "h200-580.159.04-probe.json").read_text())
H200_GPU = H200["gpus"][0]
#: What the catalog models of a profile, in NVML's field names.
MODELLED = ("id", "name", "sliceCount", "instanceCount", "multiprocessorCount", "memorySizeMB",
            "placements", "remaining_capacity", "instances")


def answered(gpu: dict) -> dict:
    """enum index -> the modelled fields of each profile NVML answered."""
    return {p["enum"]: {k: p[k] for k in MODELLED} for p in gpu["profiles"] if "error" not in p}


def observed(gpu: dict):
    return [
        ObservedProfile(
            id=p["id"], name=p["name"][4:], compute_slices=p["sliceCount"],
            max_count=p["instanceCount"], memory_mib=p["memorySizeMB"],
            placements=tuple(s for s, _ in p["placements"]),
            placement_size=p["placements"][0][1], enum=p["enum"],
        )
        for p in gpu["profiles"] if "error" not in p
    ]


def test_recording_is_what_the_lent_gpu_was():
    assert H200_GPU["name"] == "NVIDIA H200"
    assert H200_GPU["pci_device_id"] == "0x233510DE"
    assert H200["driver"] == "580.159.04"
    assert H200_GPU["mig_mode"] == [0, 0]
    assert len(answered(H200_GPU)) == 7


def test_catalog_h200_matches_the_real_driver_field_for_field():
    model = catalog_mod.load_catalog().find(H200_GPU["name"])
    assert model is not None and model.key == "H200"
    assert catalog_mod.verify(model, H200_GPU["name"], observed(H200_GPU)) == []
    by_id = {p.id: p for p in model.profiles}
    for p in observed(H200_GPU):
        assert GI_PROFILE_ENUMS[by_id[p.id].enum] == p.enum, by_id[p.id].name


def test_catalog_verify_would_flag_a_wrong_enum_or_placement():
    model = catalog_mod.load_catalog().model("H200")
    seen = observed(H200_GPU)
    swapped = [p if p.id != 15 else ObservedProfile(**{**p.__dict__, "enum": 7}) for p in seen]
    moved = [p if p.id != 9 else ObservedProfile(**{**p.__dict__, "placements": (0, 2)}) for p in seen]
    assert [(d.profile_id, d.field) for d in catalog_mod.verify(model, "NVIDIA H200", swapped)] == [(15, "enum")]
    assert [(d.profile_id, d.field) for d in catalog_mod.verify(model, "NVIDIA H200", moved)] == [(9, "placements")]


def test_smi_text_agrees_with_the_probe():
    text = (DATA / "h200-580.159.04-smi-lgip.txt").read_text()
    rows = re.findall(r"MIG (\S+)\s+(\d+)\s+(\d+)/(\d+)\s+([\d.]+)\s+\w+\s+(\d+)", text)
    by_id = {p["id"]: p for p in answered(H200_GPU).values()}
    assert len(rows) == 7
    for name, pid, free, total, gib, sm in rows:
        p = by_id[int(pid)]
        assert (p["name"], p["instanceCount"], p["multiprocessorCount"]) == ("MIG " + name, int(total), int(sm))
        assert p["memorySizeMB"] == round(float(gib) * 1024)
    placements = dict(re.findall(r"Profile ID\s+(\d+) Placements?\s*: \{([\d,]+)\}", text))
    assert {int(k): [int(s) for s in v.split(",")] for k, v in placements.items()} == {
        p["id"]: [s for s, _ in p["placements"]] for p in by_id.values()}


@pytest.fixture
def sim_h200_mig_off(tmp_path):
    root = str(tmp_path / "node")
    SimDriver.create(root, ["H200"], mig_enabled=False)
    return root


def test_fake_answers_as_the_real_h200_did_with_mig_off(sim_h200_mig_off):
    got = probe(fake_pynvml(sim_h200_mig_off))["gpus"][0]
    assert got["mig_mode"] == H200_GPU["mig_mode"]
    assert got["pci_device_id"] == H200_GPU["pci_device_id"]
    assert answered(got) == answered(H200_GPU)
    real_refused = {p["enum"] for p in H200_GPU["profiles"] if "error" in p}
    fake_refused = {p["enum"] for p in got["profiles"] if "error" in p}
    assert real_refused <= fake_refused  # pynvml may know more enums than the driver


def test_probe_only_calls_reading_functions(sim_h200_mig_off):
    fake = fake_pynvml(sim_h200_mig_off)
    # A module with only the probe's functions: any other call would show up as an error.
    only = types.ModuleType("only_reads")
    for name in dir(fake):
        value = getattr(fake, name)
        if not name.startswith("nvml") or not callable(value) or name in CALLS:
            setattr(only, name, value)
    got = probe(only)
    text = json.dumps(got)
    assert "AttributeError" not in text
    assert not any(word in name for name in CALLS for word in ("Create", "Destroy", "Set", "Reset"))
    assert answered(got["gpus"][0]) == answered(H200_GPU)


@pytest.mark.parametrize("kind", ["sim", "nvml"])
def test_catalog_verify_reads_profiles_with_mig_off(sim_h200_mig_off, kind):
    backend = SimBackend(sim_h200_mig_off) if kind == "sim" else NvmlBackend(fake_pynvml(sim_h200_mig_off))
    entry = commands.catalog_verify(backend)["gpus"][0]
    assert entry["mig"] is False
    assert entry["differences"] == []
    assert entry["note"].startswith("MIG mode is off; profiles read anyway")


def test_catalog_verify_says_so_when_the_driver_will_not_answer_with_mig_off(sim_h200_mig_off):
    class OldDriver(SimBackend):
        def profiles(self, gpu):
            raise NotSupported("read GPU-instance profile 0 of gpu 0: not supported")

    entry = commands.catalog_verify(OldDriver(sim_h200_mig_off))["gpus"][0]
    assert entry["differences"] == []
    assert entry["note"] == "MIG mode is off and the driver offers no MIG profiles until it is on"


def test_instances_still_need_mig_mode(sim_h200_mig_off):
    backend = NvmlBackend(fake_pynvml(sim_h200_mig_off))
    assert [p.id for p in backend.profiles(0)] == [19, 14, 9, 5, 0, 20, 15]
    with pytest.raises(NotSupported, match="MIG mode disabled"):
        backend.instances(0)


@pytest.mark.parametrize("kind", ["sim", "nvml"])
def test_catalog_verify_on_a_gpu_without_mig(tmp_path, kind):
    root = str(tmp_path / "node")
    SimDriver.create(root, ["nomig:Tesla T4"])
    backend = SimBackend(root) if kind == "sim" else NvmlBackend(fake_pynvml(root))
    entry = commands.catalog_verify(backend)["gpus"][0]
    assert (entry["model"], entry["differences"], entry["note"]) == (None, [], "no MIG profiles: not a MIG GPU")


def test_real_mig_minors_file_is_the_formula_byte_for_byte():
    # /proc/driver/nvidia-caps/mig-minors of the lent H200 (MIG off, driver 580.159.04):
    # 32 GPUs x 15 GIs x 8 CIs.  The formula is still only a fallback (docs/gres.md).
    text = (DATA / "h200-580.159.04-mig-minors").read_text()
    assert text == render_mig_minors()
    assert parse_mig_minors(text, "recorded") == formula_minors()


def test_verify_text_says_whether_a_mig_off_gpu_matched(sim_h200_mig_off):
    from slurm_mig.app.render import verify_text

    result = commands.catalog_verify(SimBackend(sim_h200_mig_off))
    assert sorted(result["gpus"][0]) == ["compared", "differences", "index", "mig", "model", "name", "note"]
    assert result["gpus"][0]["compared"] is True
    assert verify_text(result) == ("GPU 0: NVIDIA H200 (H200): MIG mode is off; profiles read anyway "
                                   "(this driver offers them): matches the catalog")
    off = {"index": 1, "name": "Tesla T4", "model": None, "mig": False, "compared": False,
           "differences": [], "note": "no MIG profiles: not a MIG GPU"}
    assert verify_text({"gpus": [off]}) == "GPU 1: Tesla T4 (not in catalog): no MIG profiles: not a MIG GPU"
