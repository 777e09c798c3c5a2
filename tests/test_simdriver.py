"""The simulated driver itself: shared state, swizzle ids, faults, processes, locking, files."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_mig.core import errors
from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.devices import parse_mig_minors
from slurm_mig.gpu import nvmlcodes as rc
from slurm_mig.sim.driver import ID_RANGES, SimDriver, SimNvmlError

REPO = Path(__file__).resolve().parents[1]
A100 = "A100-40GB"
P_1G5, P_1G10, P_3G20 = 19, 15, 9


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "sim")


def gi_keys(driver, gpu=0):
    return [(gi["profile_id"], gi["start"]) for gi in driver.gpu_instances(gpu)]


def test_state_survives_reopening(root):
    first = SimDriver.create(root, [A100])
    gi = first.create_gpu_instance(0, P_3G20, 4)
    ci = first.create_compute_instance(0, gi["id"], 2)
    again = SimDriver(root)
    (seen,) = again.gpu_instances(0)
    assert (seen["id"], seen["start"], seen["cis"][0]["uuid"]) == (gi["id"], 4, ci["uuid"])


def test_missing_state_says_how_to_create_it(root):
    with pytest.raises(errors.GpuError, match="sim init"):
        SimDriver(root)


def test_gpu_instance_ids_are_a_per_gpu_permutation(root):
    driver = SimDriver.create(root, [A100, A100])
    model = load_catalog().model(A100)
    ids = {0: [], 1: []}
    for gpu in ids:
        for p in model.profiles:
            for start in p.placements:
                gi = driver.create_gpu_instance(gpu, p.id, start)
                assert gi["id"] in ID_RANGES[model.size_class(p)]
                ids[gpu].append(gi["id"])
                driver.destroy_gpu_instance(gpu, gi["id"])
    assert ids[0] != ids[1]
    assert len(set(ids[0][:7])) == 7  # 1g.5gb at 0..6: seven distinct ids


def test_refused_create_changes_nothing(root):
    driver = SimDriver.create(root, [A100])
    driver.create_gpu_instance(0, P_3G20, 0)
    before = driver.snapshot()["gpus"]
    with pytest.raises(SimNvmlError) as excinfo:
        driver.create_gpu_instance(0, P_1G10, 2)
    assert excinfo.value.code == rc.INSUFFICIENT_RESOURCES
    assert driver.snapshot()["gpus"] == before


def test_injected_code_fails_only_the_nth_call(root):
    driver = SimDriver.create(root, [A100])
    driver.inject_fault("create_gi", nth=2, code=rc.NO_PERMISSION)
    driver.create_gpu_instance(0, P_1G5, 0)
    with pytest.raises(SimNvmlError) as excinfo:
        driver.create_gpu_instance(0, P_1G5, 1)
    assert excinfo.value.code == rc.NO_PERMISSION
    driver.create_gpu_instance(0, P_1G5, 1)
    assert gi_keys(driver) and sorted(s for _, s in gi_keys(driver)) == [0, 1]


def test_crash_before_leaves_the_state_unchanged(root):
    driver = SimDriver.create(root, [A100])
    driver.inject_fault("create_gi", crash="raise", when="before")
    with pytest.raises(errors.SimulatedCrash):
        driver.create_gpu_instance(0, P_3G20, 0)
    assert gi_keys(driver) == []
    assert driver.snapshot()["faults"] == []  # spent


def test_crash_after_keeps_the_change(root):
    driver = SimDriver.create(root, [A100])
    driver.inject_fault("create_gi", crash="raise", when="after")
    with pytest.raises(errors.SimulatedCrash):
        driver.create_gpu_instance(0, P_3G20, 0)
    assert gi_keys(driver) == [(P_3G20, 0)]


def test_crash_exit_kills_the_process_and_leaves_consistent_state(root):
    driver = SimDriver.create(root, [A100])
    driver.inject_fault("create_gi", crash="exit", when="after")
    child = (
        "import sys\n"
        "from slurm_mig.sim.driver import SimDriver\n"
        "SimDriver(sys.argv[1]).create_gpu_instance(0, 9, 4)\n"
        "print('survived')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", child, root], env=env, capture_output=True, text=True)
    assert proc.returncode == 137 and "survived" not in proc.stdout
    with open(os.path.join(root, "state.json")) as f:
        json.load(f)  # whole, not half-written
    assert gi_keys(driver) == [(P_3G20, 4)]
    assert not [n for n in os.listdir(root) if n.startswith(".state.")]  # no temp file left
    driver.create_gpu_instance(0, P_3G20, 0)  # the lock died with the process


def test_tracked_process_vanishes_when_its_pid_dies(root):
    driver = SimDriver.create(root, [A100])
    gi = driver.create_gpu_instance(0, P_3G20, 0)
    ci = driver.create_compute_instance(0, gi["id"], 2)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        driver.attach_process(0, gi["id"], ci["id"], sleeper.pid, track=True)
        driver.attach_process(0, gi["id"], ci["id"], 999999999)  # untracked: stays
        procs = lambda: sorted(p["pid"] for p in driver.gpu_instances(0)[0]["cis"][0]["procs"])  # noqa: E731
        assert procs() == sorted([sleeper.pid, 999999999])
        with pytest.raises(SimNvmlError) as excinfo:
            driver.destroy_compute_instance(0, gi["id"], ci["id"])
        assert excinfo.value.code == rc.IN_USE
    finally:
        sleeper.kill()
        sleeper.wait()
    assert procs() == [999999999]
    driver.detach_process(0, gi["id"], ci["id"])
    driver.destroy_compute_instance(0, gi["id"], ci["id"])
    driver.destroy_gpu_instance(0, gi["id"])


def test_gpu_instance_with_compute_instance_cannot_be_destroyed(root):
    driver = SimDriver.create(root, [A100])
    gi = driver.create_gpu_instance(0, P_1G10, 2)
    driver.create_compute_instance(0, gi["id"], 0)
    with pytest.raises(SimNvmlError) as excinfo:
        driver.destroy_gpu_instance(0, gi["id"])
    assert excinfo.value.code == rc.IN_USE


def test_lock_held_elsewhere_times_out_with_lock_busy(root):
    SimDriver.create(root, [A100])
    fd = os.open(os.path.join(root, "state.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(errors.LockBusy) as excinfo:
            SimDriver(root, lock_timeout=0.1).gpus()
        assert excinfo.value.exit_code == errors.EXIT_LOCKED
    finally:
        os.close(fd)
    assert SimDriver(root, lock_timeout=0.1).gpus()


def test_node_files_are_laid_out_under_the_root(root):
    SimDriver.create(root, [A100, A100], minors=[2, 5], device_nodes=False)
    with open(os.path.join(root, "proc/driver/nvidia-caps/mig-minors")) as f:
        minors = parse_mig_minors(f.read())
    assert (minors.config, minors.monitor) == (1, 2)
    assert {g for g, _ in minors.gis} == {2, 5}
    dev = os.path.join(root, "dev")
    for name in ("nvidiactl", "nvidia-uvm", "nvidia2", "nvidia5", "nvidia-caps/nvidia-cap1",
                 "nvidia-caps/nvidia-cap2", f"nvidia-caps/nvidia-cap{minors.gi_minor(5, 14)}",
                 f"nvidia-caps/nvidia-cap{minors.ci_minor(2, 3, 7)}"):
        assert os.path.exists(os.path.join(dev, name)), name
    assert not os.path.exists(os.path.join(dev, "nvidia0"))


def test_mig_mode_on_ampere_waits_for_reset(root):
    """Ampere: the driver cannot reset a GPU a client holds ("In use by another client"):
    IN_USE, pending until a reset.  Hopper and later: current at once."""
    driver = SimDriver.create(root, [A100, "H100-80GB"], mig_enabled=False)
    assert driver.set_mig_mode(0, True) == rc.IN_USE
    assert driver.mig_mode(0) == (0, 1)
    assert driver.set_mig_mode(1, True) == rc.SUCCESS
    assert driver.mig_mode(1) == (1, 1)
    driver.reset_gpu(0)
    assert driver.mig_mode(0) == (1, 1)


def test_a_pending_ampere_change_taken_back_is_success_and_needs_no_reset(root):
    driver = SimDriver.create(root, [A100], mig_enabled=False)
    assert driver.set_mig_mode(0, True) == rc.IN_USE
    assert driver.set_mig_mode(0, False) == rc.SUCCESS
    assert driver.mig_mode(0) == (0, 0)


def test_hopper_mode_change_with_a_process_on_the_gpu_stays_pending(root):
    driver = SimDriver.create(root, ["H100-80GB"], mig_enabled=False)
    driver.attach_gpu_process(0, 4242)
    assert driver.gpu_processes(0) == [4242]
    assert driver.set_mig_mode(0, True) == rc.IN_USE
    assert driver.mig_mode(0) == (0, 1)
    with pytest.raises(SimNvmlError) as excinfo:
        driver.reset_gpu(0)
    assert excinfo.value.code == rc.IN_USE and driver.mig_mode(0) == (0, 1)
    driver.detach_gpu_process(0, 4242)
    driver.reset_gpu(0)
    assert driver.mig_mode(0) == (1, 1) and driver.gpu_processes(0) == []


def test_reset_is_refused_while_gpu_instances_exist(root):
    driver = SimDriver.create(root, [A100])
    driver.create_gpu_instance(0, P_1G5, 0)
    with pytest.raises(SimNvmlError) as excinfo:
        driver.reset_gpu(0)
    assert excinfo.value.code == rc.IN_USE


def test_mig_mode_change_with_instances_answers_in_use(root):
    driver = SimDriver.create(root, ["H100-80GB"])
    driver.create_gpu_instance(0, P_1G5, 0)
    assert driver.set_mig_mode(0, False) == rc.IN_USE
    assert driver.mig_mode(0) == (1, 1)
