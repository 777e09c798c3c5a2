"""The pynvml look-alike: same names and parameters as pynvml, real structures and
exceptions, C-style array filling, answers read from the simulated driver."""

from __future__ import annotations

import ctypes
import inspect

import pynvml
import pytest

from slurm_mig.sim.driver import SimDriver
from slurm_mig.sim.fakenvml import FUNCTIONS, fake_pynvml

A100 = "A100-40GB"
P_1G5, P_1G5_ME, P_3G20, P_7G40 = 19, 20, 9, 0


@pytest.fixture
def driver(tmp_path):
    return SimDriver.create(str(tmp_path), [A100, "nomig:Tesla T4"])


@pytest.fixture
def nv(driver):
    module = fake_pynvml(driver.root)
    module.nvmlInit()
    yield module
    module.nvmlShutdown()


def create(nv, dev, profile_id, start, size):
    placement = pynvml.c_nvmlGpuInstancePlacement_t(start, size)
    gi = nv.nvmlDeviceCreateGpuInstanceWithPlacement(dev, profile_id, ctypes.byref(placement))
    return gi


# ---------------------------------------------------------------------- same surface as pynvml


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_has_pynvml_name_and_parameters(tmp_path, name):
    fake = inspect.signature(getattr(fake_pynvml(str(tmp_path)), name)).parameters
    real = inspect.signature(getattr(pynvml, name)).parameters
    assert [(p.name, p.default) for p in fake.values()] == [(p.name, p.default) for p in real.values()]


def test_structures_constants_and_errors_are_pynvml_own(tmp_path):
    nv = fake_pynvml(str(tmp_path))
    for name in ("c_nvmlGpuInstancePlacement_t", "c_nvmlGpuInstanceInfo_t", "c_nvmlGpuInstance_t",
                 "c_nvmlComputeInstance_t", "c_nvmlGpuInstanceProfileInfo_v2_t", "NVMLError",
                 "NVMLError_InUse", "NVMLError_NotFound", "NVMLError_InsufficientResources"):
        assert getattr(nv, name) is getattr(pynvml, name)
    assert nv.NVML_GPU_INSTANCE_PROFILE_COUNT == pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT
    assert nv.NVML_ERROR_IN_USE == 19


def test_calls_before_init_and_after_shutdown_raise_uninitialized(driver):
    nv = fake_pynvml(driver.root)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlDeviceGetCount()
    nv.nvmlInit()
    nv.nvmlInit()
    nv.nvmlShutdown()
    assert nv.nvmlDeviceGetCount() == 2  # still one init left
    nv.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlShutdown()


def test_init_without_a_simulated_node_is_driver_not_loaded(tmp_path):
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        fake_pynvml(str(tmp_path / "nothing")).nvmlInit()


# ---------------------------------------------------------------------- devices


def test_device_queries_answer_like_pynvml(nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    assert isinstance(dev, pynvml.c_nvmlDevice_t)
    assert nv.nvmlDeviceGetName(dev) == "NVIDIA A100-SXM4-40GB"
    assert nv.nvmlDeviceGetUUID(dev).startswith("GPU-")
    assert nv.nvmlDeviceGetMinorNumber(dev) == 0
    pci = nv.nvmlDeviceGetPciInfo(dev)
    assert isinstance(pci, pynvml.nvmlPciInfo_t) and pci.pciDeviceId == 0x20B010DE
    assert pci.busId.startswith("00000000:")  # _PrintableStructure decodes
    assert nv.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert isinstance(nv.nvmlSystemGetDriverVersion(), str)


def test_bad_handles_and_indexes_are_invalid_argument(nv):
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetName("gpu0")
    gi = create(nv, nv.nvmlDeviceGetHandleByIndex(0), P_7G40, 0, 8)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetMigMode(gi)  # a GI handle is not a device


def test_gpu_without_mig_is_not_supported(nv):
    t4 = nv.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nv.nvmlDeviceGetMigMode(t4)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nv.nvmlDeviceGetGpuInstanceProfileInfo(t4, pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE)


def test_set_mig_mode_returns_the_activation_status(driver, nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    create(nv, dev, P_1G5, 0, 1)
    assert nv.nvmlDeviceSetMigMode(dev, pynvml.NVML_DEVICE_MIG_DISABLE) == pynvml.NVML_ERROR_IN_USE
    assert nv.nvmlDeviceGetMigMode(dev) == [1, 1]


def test_processes_on_a_gpu_without_mig_mode_come_from_the_device_handle(tmp_path):
    driver = SimDriver.create(str(tmp_path), ["H100-80GB"], mig_enabled=False)
    nv = fake_pynvml(driver.root)
    nv.nvmlInit()
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceGetComputeRunningProcesses(dev) == []
    driver.attach_gpu_process(0, 4242)
    (proc,) = nv.nvmlDeviceGetComputeRunningProcesses(dev)
    assert (proc.pid, proc.gpuInstanceId, proc.computeInstanceId) == (4242, 0xFFFFFFFF, 0xFFFFFFFF)
    # Hopper: the device is not idle, so the change stays pending (NVML's IN_USE).
    assert nv.nvmlDeviceSetMigMode(dev, pynvml.NVML_DEVICE_MIG_ENABLE) == pynvml.NVML_ERROR_IN_USE
    assert nv.nvmlDeviceGetMigMode(dev) == [0, 1]


def test_ampere_mode_change_answers_in_use_and_stays_pending(tmp_path):
    driver = SimDriver.create(str(tmp_path), [A100], mig_enabled=False)
    nv = fake_pynvml(driver.root)
    nv.nvmlInit()
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceSetMigMode(dev, pynvml.NVML_DEVICE_MIG_ENABLE) == pynvml.NVML_ERROR_IN_USE
    assert nv.nvmlDeviceGetMigMode(dev) == [0, 1]


# ---------------------------------------------------------------------- profiles, placements


def test_profile_info_is_the_real_v2_structure(nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    info = nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
    assert type(info) is pynvml.c_nvmlGpuInstanceProfileInfo_v2_t
    assert (info.id, info.sliceCount, info.instanceCount, info.name) == (P_3G20, 3, 2, "MIG 3g.20gb")
    assert info.memorySizeMB == 19968
    v1 = nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE, version=1)
    assert type(v1) is pynvml.c_nvmlGpuInstanceProfileInfo_t and v1.id == P_3G20
    by_id = nv.nvmlDeviceGetGpuInstanceProfileInfoById(dev, P_3G20)
    assert by_id.name == "MIG 3g.20gb"
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0, version=3)


def test_profile_enum_the_gpu_lacks_is_not_supported(nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, pynvml.NVML_GPU_INSTANCE_PROFILE_6_SLICE)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT)


def test_mig_off_answers_profiles_but_lists_no_instances_and_refuses_creates(tmp_path):
    # As a real H200 on driver 580.159.04 answered (tests/data/nvml/): profiles,
    # placements and capacity with MIG off; creating needs MIG mode.
    SimDriver.create(str(tmp_path), [A100], mig_enabled=False)
    nv = fake_pynvml(str(tmp_path))
    nv.nvmlInit()
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0).id == P_1G5
    assert nv.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, P_1G5) == 7
    array = (pynvml.c_nvmlGpuInstance_t * 7)()
    count = ctypes.c_uint(7)
    nv.nvmlDeviceGetGpuInstances(dev, P_1G5, array, ctypes.byref(count))
    assert count.value == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nv.nvmlDeviceCreateGpuInstance(dev, P_1G5)


def test_driver_without_v2_profile_info_raises_function_not_found(driver):
    nv = fake_pynvml(driver.root, profile_info_v2=False)
    nv.nvmlInit()
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0)
    assert nv.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0, version=1).id == P_1G5


def test_placements_fill_the_array_and_count_like_the_c_api(nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    count = ctypes.c_uint(0)
    assert nv.nvmlDeviceGetGpuInstancePossiblePlacements(dev, P_3G20, None, ctypes.byref(count)) == 0
    assert count.value == 2  # NULL array: the count only
    array = (pynvml.c_nvmlGpuInstancePlacement_t * count.value)()
    nv.nvmlDeviceGetGpuInstancePossiblePlacements(dev, P_3G20, array, ctypes.byref(count))
    assert [(p.start, p.size) for p in array] == [(0, 4), (4, 4)]
    small = (pynvml.c_nvmlGpuInstancePlacement_t * 1)()
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        nv.nvmlDeviceGetGpuInstancePossiblePlacements(dev, P_1G5, small, ctypes.byref(count))
    assert count.value == 7


def test_remaining_capacity_follows_the_instances(nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, P_3G20) == 2
    create(nv, dev, P_3G20, 4, 4)
    assert nv.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, P_3G20) == 1


# ---------------------------------------------------------------------- GPU and compute instances


@pytest.mark.parametrize("how", ["byref", "pointer", "struct"])
def test_create_with_placement_takes_byref_pointer_or_struct(driver, nv, how):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    placement = pynvml.c_nvmlGpuInstancePlacement_t(4, 4)
    arg = {"byref": ctypes.byref(placement), "pointer": ctypes.pointer(placement), "struct": placement}[how]
    gi = nv.nvmlDeviceCreateGpuInstanceWithPlacement(dev, P_3G20, arg)
    info = nv.nvmlGpuInstanceGetInfo(gi)
    assert type(info) is pynvml.c_nvmlGpuInstanceInfo_t
    (state,) = driver.gpu_instances(0)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (state["id"], P_3G20, 4, 4)


def test_create_errors_are_pynvml_exceptions(nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    create(nv, dev, P_3G20, 0, 4)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create(nv, dev, P_1G5, 1, 1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        create(nv, dev, P_3G20, 2, 4)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        create(nv, dev, P_3G20, 4, 2)  # wrong size
    with pytest.raises(pynvml.NVMLError):
        create(nv, dev, P_3G20, 0, 4)


def test_gpu_instances_fill_a_handle_array(driver, nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    made = [nv.nvmlGpuInstanceGetInfo(create(nv, dev, P_1G5, s, 1)).id for s in (0, 3, 5)]
    array = (pynvml.c_nvmlGpuInstance_t * 7)()
    count = ctypes.c_uint(7)
    nv.nvmlDeviceGetGpuInstances(dev, P_1G5, array, ctypes.byref(count))
    assert count.value == 3
    assert sorted(nv.nvmlGpuInstanceGetInfo(array[i]).id for i in range(3)) == sorted(made)
    assert sorted(made) == [gi["id"] for gi in driver.gpu_instances(0)]
    assert nv.nvmlGpuInstanceGetInfo(nv.nvmlDeviceGetGpuInstanceById(dev, made[1])).placement.start == 3
    with pytest.raises(pynvml.NVMLError_NotFound):
        nv.nvmlDeviceGetGpuInstanceById(dev, 0)


def test_compute_instance_life_cycle(nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    gi = create(nv, dev, P_3G20, 0, 4)
    shared = pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
    ci_profile_info = nv.nvmlGpuInstanceGetComputeInstanceProfileInfo
    info = ci_profile_info(gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE, shared)
    assert type(info) is pynvml.c_nvmlComputeInstanceProfileInfo_v2_t
    assert (info.sliceCount, info.instanceCount, info.name) == (3, 1, "MIG 3g.20gb")
    with pytest.raises(pynvml.NVMLError_NotSupported):
        ci_profile_info(gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE, shared)
    ci = nv.nvmlGpuInstanceCreateComputeInstance(gi, info.id)
    ci_info = nv.nvmlComputeInstanceGetInfo(ci)
    assert type(ci_info) is pynvml.c_nvmlComputeInstanceInfo_t
    assert (ci_info.id, ci_info.profileId, ci_info.placement.size) == (0, info.id, 3)
    array = (pynvml.c_nvmlComputeInstance_t * 1)()
    count = ctypes.c_uint(1)
    nv.nvmlGpuInstanceGetComputeInstances(gi, info.id, array, ctypes.byref(count))
    assert count.value == 1 and nv.nvmlComputeInstanceGetInfo(array[0]).id == 0
    with pytest.raises(pynvml.NVMLError_InUse):
        nv.nvmlGpuInstanceDestroy(gi)
    nv.nvmlComputeInstanceDestroy(nv.nvmlGpuInstanceGetComputeInstanceById(gi, 0))
    nv.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nv.nvmlGpuInstanceGetInfo(gi)


# ---------------------------------------------------------------------- MIG devices, processes


def test_mig_devices_are_found_by_index_and_identify_their_instance(driver, nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    gi = create(nv, dev, P_3G20, 4, 4)
    gi_id = nv.nvmlGpuInstanceGetInfo(gi).id
    ci = nv.nvmlGpuInstanceCreateComputeInstance(gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)
    assert nv.nvmlDeviceGetMaxMigDeviceCount(dev) == 7
    mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    assert nv.nvmlDeviceIsMigDeviceHandle(mig).value == 1  # a c_uint, as pynvml returns
    assert nv.nvmlDeviceIsMigDeviceHandle(dev).value == 0
    assert nv.nvmlDeviceGetGpuInstanceId(mig) == gi_id
    assert nv.nvmlDeviceGetComputeInstanceId(mig) == nv.nvmlComputeInstanceGetInfo(ci).id
    assert nv.nvmlDeviceGetUUID(mig) == driver.gpu_instances(0)[0]["cis"][0]["uuid"]
    assert nv.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
    parent = nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert nv.nvmlDeviceGetUUID(parent) == nv.nvmlDeviceGetUUID(dev)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nv.nvmlDeviceGetMigDeviceHandleByIndex(dev, 1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetGpuInstanceId(dev)


def test_running_processes_are_per_mig_device(driver, nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    for start in (0, 4):
        gi = create(nv, dev, P_3G20, start, 4)
        nv.nvmlGpuInstanceCreateComputeInstance(gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)
    busy = driver.gpu_instances(0)[1]
    driver.attach_process(0, busy["id"], 0, 31337)
    by_gi = {}
    for index in range(2):
        mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(dev, index)
        by_gi[nv.nvmlDeviceGetGpuInstanceId(mig)] = nv.nvmlDeviceGetComputeRunningProcesses(mig)
    (proc,) = by_gi[busy["id"]]
    seen = (proc.pid, proc.gpuInstanceId, proc.computeInstanceId, proc.usedGpuMemory)
    assert seen == (31337, busy["id"], 0, None)
    assert [p for gi_id, procs in by_gi.items() if gi_id != busy["id"] for p in procs] == []
    assert [p.pid for p in nv.nvmlDeviceGetComputeRunningProcesses(dev)] == [31337]


def test_handles_show_what_they_stand_for(nv):
    dev = nv.nvmlDeviceGetHandleByIndex(0)
    gi = create(nv, dev, P_7G40, 0, 8)
    assert (dev.ids, repr(dev)) == ((0,), "<DeviceHandle gpu=0>")
    assert gi.ids == (0, nv.nvmlGpuInstanceGetInfo(gi).id)


# ---------------------------------------------------------------------- recorded latency, shim


def test_the_latency_table_takes_the_first_call_and_the_median_as_recorded():
    import json
    from pathlib import Path

    from slurm_mig.sim.fakenvml import latency_table

    recorded = json.loads((Path(__file__).parent / "data" / "nvml"
                           / "h200-580.159.04-latency.json").read_text())
    table = latency_table(recorded)
    assert table["nvmlInit"] == (12.7821, 1.5576)  # the process's first loads the library
    assert table["nvmlShutdown"] == (9.4556, 8.5924)
    assert table["nvmlDeviceGetHandleByIndex"] == (6.5202, 0.0028)
    assert table["nvmlGpuInstanceGetInfo"] == (0.1568, 0.1568)  # not measured: its estimate
    assert set(table) == set(recorded["calls"])


def test_a_delayed_look_alike_answers_as_the_plain_one(driver):
    slow = fake_pynvml(driver.root, latency={"nvmlInit": (0.01, 0.0), "nvmlDeviceGetCount": (0.0, 0.0)})
    slow.nvmlInit()
    assert slow.nvmlDeviceGetCount() == 2
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        slow.nvmlDeviceGetHandleByIndex(7)
    slow.nvmlShutdown()


def test_the_shim_is_the_look_alike_in_another_process(driver, tmp_path):
    import os
    import subprocess
    import sys

    from slurm_mig.sim.fakenvml import SHIM_ROOT_ENV, write_pynvml_shim

    shim = write_pynvml_shim(str(tmp_path / "shim"))
    code = "import pynvml; pynvml.nvmlInit(); print(pynvml.nvmlDeviceGetCount(), type(pynvml.fake).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=shim, **{SHIM_ROOT_ENV: driver.root}))
    assert (out.stdout, out.stderr) == ("2 FakeNvml\n", "")
