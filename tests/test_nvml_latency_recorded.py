"""The NVML latency table recorded on a lent GPU is one a bench can use for the hooks' path.

h200-580.159.04-latency.json is ``bench/nvml_latency.py`` run read-only on an NVIDIA H200
(driver 580.159.04, MIG mode off, 2026-12-04; docs/hardware.md).  A later NVML bench
(issue 9) takes each call's median from it, so every NVML call the backend makes on the
hooks' path must have an entry: measured, or estimated from a measured call where MIG off
gave no GPU instance to ask.  The calls are not listed here by hand: the backend is run
over the pynvml look-alike on a simulated MIG node and what it calls is recorded, so a
new call on that path without a latency entry fails this test.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

import pytest

from slurm_mig.gpu.nvml import NvmlBackend
from slurm_mig.sim.driver import SimDriver
from slurm_mig.sim.fakenvml import fake_pynvml

DATA = Path(__file__).parent / "data" / "nvml"
LATENCY = json.loads((DATA / "h200-580.159.04-latency.json").read_text())
P_1G5, P_3G20 = 19, 9  # A100-40GB profile ids


class Recorder:
    """A pynvml stand-in that passes everything through and notes each nvml* call."""

    def __init__(self, module):
        self._module = module
        self.called: set = set()

    def __getattr__(self, name):
        value = getattr(self._module, name)
        if not (name.startswith("nvml") and callable(value)):
            return value

        def call(*args, **kwargs):
            self.called.add(name)
            return value(*args, **kwargs)
        return call


@pytest.fixture
def hook_path_calls(tmp_path) -> set:
    """The NVML calls of what prolog and epilog ask the backend, on a MIG GPU with two
    instances (one running a process) and on a GPU without MIG."""
    driver = SimDriver.create(str(tmp_path), ["A100-40GB", "nomig:Tesla T4"])
    with NvmlBackend(fake_pynvml(driver.root)) as setup:
        setup.create_instance(0, P_3G20, 4)
        busy = setup.create_instance(0, P_1G5, 0)
    driver.attach_process(0, busy.gi_id, busy.ci_id, 4242)
    recorder = Recorder(fake_pynvml(driver.root))
    with NvmlBackend(recorder) as backend:
        for gpu in backend.gpus():
            if gpu.mig_current:
                backend.profiles(gpu.index)
                assert len(backend.instances(gpu.index)) == 2
    return recorder.called


def test_latency_table_has_an_entry_for_every_nvml_call_of_the_hook_path(hook_path_calls):
    assert "nvmlGpuInstanceGetComputeInstances" in hook_path_calls  # the node had instances
    missing = sorted(hook_path_calls - set(LATENCY["calls"]))
    assert missing == []


def test_the_bench_lists_the_hook_path_calls_the_backend_makes(hook_path_calls):
    assert set(LATENCY["hook_path_calls"]) == hook_path_calls


@pytest.mark.parametrize("name", sorted(LATENCY["calls"]))
def test_each_call_is_measured_or_estimated_from_a_measured_call(name):
    entry = LATENCY["calls"][name]
    if entry["median_ms"] is None:
        source = LATENCY["calls"][entry["estimate_from"]]
        assert source["n"] > 0 and entry["estimate_ms"] == source["median_ms"]
        return
    assert entry["n"] >= 100
    assert isinstance(entry["median_ms"], numbers.Real)
    assert 0 < entry["min_ms"] <= entry["median_ms"] <= entry["p90_ms"] <= entry["max_ms"]


def test_process_times_sit_beside_python_c_pass_of_the_same_run():
    variants = LATENCY["processes"]["variants"]
    assert variants["python3 -c pass"]["x_python_c_pass"] == 1.0
    for name, entry in variants.items():
        assert entry["rc"] == 0, name
        assert entry["n"] >= 10, name
        ratio = entry["median_ms"] / variants["python3 -c pass"]["median_ms"]
        assert entry["x_python_c_pass"] == pytest.approx(ratio, abs=0.01), name


def test_recording_is_the_lent_h200_read_only():
    assert LATENCY["format"] == 1
    assert LATENCY["gpu_name"] == "NVIDIA H200"
    assert LATENCY["driver"] == "580.159.04"
    assert LATENCY["mig_mode"] == [0, 0]
    assert LATENCY["guard"]["disabled"] > 0
    assert LATENCY["processes"]["guard_in_children"] > 0
    assert LATENCY["step_errors"] == {}
