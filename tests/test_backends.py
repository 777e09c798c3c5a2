"""Every GPU backend behaves the same: the scenarios run on the simulator backend and on
the NVML backend over the pynvml look-alike, both on a fresh simulated node."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pynvml
import pytest

from slurm_mig.core import errors
from slurm_mig.core.catalog import load_catalog
from slurm_mig.gpu import nvmlcodes as rc
from slurm_mig.gpu.backend import make_backend
from slurm_mig.gpu.nvml import NvmlBackend
from slurm_mig.sim.backend import SimBackend
from slurm_mig.sim.driver import ID_RANGES, SimDriver
from slurm_mig.sim.fakenvml import fake_pynvml

REPO = Path(__file__).resolve().parents[1]
MODELS = load_catalog().models
A100 = "A100-40GB"
H100 = "H100-80GB"
# A100-40GB profile ids
P_1G5, P_1G5_ME, P_1G10, P_2G10, P_3G20, P_4G20, P_7G40 = 19, 20, 15, 14, 9, 5, 0


def open_backend(kind: str, root: str):
    if kind == "sim":
        return SimBackend(root)
    return NvmlBackend(fake_pynvml(root))


class Node(NamedTuple):
    root: str
    kind: str
    driver: SimDriver
    backend: object
    opened: list

    def open(self):
        """Another backend of the same kind on the same node, as another process would have."""
        backend = open_backend(self.kind, self.root)
        self.opened.append(backend)
        return backend


@pytest.fixture(params=["sim", "nvml"])
def node(request, tmp_path):
    """``node(*models, **options)``: a fresh simulated node and a backend of each kind on it."""
    opened = []

    def make(*models, **options) -> Node:
        root = str(tmp_path / "node")
        driver = SimDriver.create(root, list(models), **options)
        n = Node(root, request.param, driver, None, opened)
        return n._replace(backend=n.open())

    yield make
    for backend in opened:
        backend.close()


def key(instance):
    return (instance.profile_id, instance.start, instance.size)


# ---------------------------------------------------------------------- discovery


def test_lists_gpus_with_name_pci_id_and_mig_mode(node):
    n = node(A100, H100, "nomig:Tesla T4", minors=[4, 5, 7])
    gpus = n.backend.gpus()
    assert [g.index for g in gpus] == [0, 1, 2]
    assert [g.minor for g in gpus] == [4, 5, 7]
    assert [g.name for g in gpus] == ["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "Tesla T4"]
    assert [g.pci_device_id for g in gpus] == ["0x20B010DE", "0x233010DE", "0x00000000"]
    assert all(g.uuid.startswith("GPU-") for g in gpus) and len({g.uuid for g in gpus}) == 3
    assert [(g.mig_current, g.mig_pending) for g in gpus] == [(True, True), (True, True), (False, False)]


@pytest.fixture(scope="module", params=["sim", "nvml"])
def catalog_node(request, tmp_path_factory):
    """One read-only node with a GPU of every catalog model, in catalog order."""
    root = str(tmp_path_factory.mktemp("catalog"))
    SimDriver.create(root, [m.key for m in MODELS])
    backend = open_backend(request.param, root)
    yield backend
    backend.close()


@pytest.mark.parametrize("gpu, model", list(enumerate(MODELS)), ids=[m.key for m in MODELS])
def test_profiles_are_the_catalog_models(catalog_node, gpu, model):
    assert catalog_node.gpus()[gpu].name == model.name
    got = {p.id: p for p in catalog_node.profiles(gpu)}
    assert set(got) == {p.id for p in model.profiles}
    for p in model.profiles:
        o = got[p.id]
        assert (o.name, o.compute_slices, o.max_count) == (p.name, p.compute_slices, p.max_count)
        assert (o.placements, o.placement_size) == (p.placements, p.placement_size)
        assert o.memory_mib == (p.memory_mib or 0)


# ---------------------------------------------------------------------- create, read back


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.key)
def test_every_legal_placement_creates_and_reads_back(node, model):
    n = node(model.key)
    b = n.backend
    for p in model.profiles:
        for start in p.placements:
            made = b.create_instance(0, p.id, start)
            assert key(made) == (p.id, start, p.placement_size)
            assert made.complete and made.uuid.startswith("MIG-") and not made.busy
            assert b.instances(0) == [made]
            b.destroy_instance(0, made.gi_id)
            assert b.instances(0) == []


def test_ids_are_read_back_from_the_driver_not_computed(node):
    n = node(A100)
    model = load_catalog().model(A100)
    naive_misses = 0
    for p in model.profiles:
        ids = ID_RANGES[model.size_class(p)]
        for start in p.placements:
            made = n.backend.create_instance(0, p.id, start)
            assert made.gi_id in ids
            assert made.gi_id == n.driver.gpu_instances(0)[0]["id"]
            naive_misses += made.gi_id != ids[0] + start // p.placement_size
            n.backend.destroy_instance(0, made.gi_id)
    assert naive_misses > 0


def test_full_layout_reads_back_in_gi_id_order(node):
    n = node(A100)
    for start in range(7):
        n.backend.create_instance(0, P_1G5, start)
    got = n.backend.instances(0)
    assert sorted(i.start for i in got) == list(range(7))
    assert [i.gi_id for i in got] == sorted(i.gi_id for i in got)
    assert len({i.uuid for i in got}) == 7


# ---------------------------------------------------------------------- refusals


def test_overlapping_placement_is_insufficient_resources(node):
    n = node(A100)
    n.backend.create_instance(0, P_3G20, 0)
    with pytest.raises(errors.InsufficientResources):
        n.backend.create_instance(0, P_4G20, 0)
    with pytest.raises(errors.InsufficientResources):
        n.backend.create_instance(0, P_1G5, 2)
    assert [key(i) for i in n.backend.instances(0)] == [(P_3G20, 0, 4)]


def test_exhausted_profile_count_is_insufficient_resources(node):
    n = node(A100)
    n.backend.create_instance(0, P_1G5_ME, 0)  # at most one 1g.5gb+me
    with pytest.raises(errors.InsufficientResources):
        n.backend.create_instance(0, P_1G5_ME, 3)
    assert len(n.backend.instances(0)) == 1


@pytest.mark.parametrize("profile_id, start", [(P_3G20, 2), (P_2G10, 6), (P_7G40, 1), (99, 0)])
def test_placement_not_offered_is_invalid_placement(node, profile_id, start):
    n = node(A100)
    with pytest.raises(errors.InvalidPlacement):
        n.backend.create_instance(0, profile_id, start)
    assert n.backend.instances(0) == []


def test_mig_off_refuses_with_not_supported(node):
    n = node(A100, mig_enabled=False)
    for call in (lambda: n.backend.create_instance(0, P_1G5, 0), lambda: n.backend.instances(0)):
        with pytest.raises(errors.NotSupported):
            call()


def test_mig_off_still_answers_profiles(node):
    # A real H200 on driver 580.159.04 did (tests/test_nvml_recorded.py).
    n = node(A100, mig_enabled=False)
    assert sorted(p.id for p in n.backend.profiles(0)) == sorted(p.id for p in load_catalog().model(A100).profiles)


def test_gpu_without_mig_refuses_with_not_supported(node):
    n = node("nomig:Tesla T4")
    with pytest.raises(errors.NotSupported):
        n.backend.instances(0)
    with pytest.raises(errors.NotSupported):
        n.backend.set_mig_mode(0, True)


# ---------------------------------------------------------------------- destroy, processes


def test_destroying_a_busy_instance_is_refused_and_keeps_it(node):
    n = node(A100)
    made = n.backend.create_instance(0, P_3G20, 4)
    n.driver.attach_process(0, made.gi_id, made.ci_id, 4242)
    with pytest.raises(errors.InstanceInUse) as excinfo:
        n.backend.destroy_instance(0, made.gi_id)
    assert excinfo.value.exit_code == errors.EXIT_REFUSED
    assert n.backend.instances(0) == [replace(made, pids=(4242,))]


def test_destroying_an_idle_instance_removes_it(node):
    n = node(A100)
    keep = n.backend.create_instance(0, P_3G20, 0)
    gone = n.backend.create_instance(0, P_2G10, 4)
    n.backend.destroy_instance(0, gone.gi_id)
    assert n.backend.instances(0) == [keep]
    assert n.driver.gpu_instances(0)[0]["id"] == keep.gi_id


def test_destroying_a_missing_instance_is_not_found(node):
    n = node(A100)
    with pytest.raises(errors.NotFound):
        n.backend.destroy_instance(0, 3)


def test_processes_are_listed_on_their_own_instance(node):
    n = node(A100)
    a = n.backend.create_instance(0, P_3G20, 0)
    b = n.backend.create_instance(0, P_3G20, 4)
    n.driver.attach_process(0, b.gi_id, b.ci_id, 1111)
    n.driver.attach_process(0, b.gi_id, b.ci_id, 2222)
    got = {i.gi_id: i.pids for i in n.backend.instances(0)}
    assert got == {a.gi_id: (), b.gi_id: (1111, 2222)}


# ---------------------------------------------------------------------- half-made instances


def test_gpu_instance_without_compute_instance_is_incomplete_until_completed(node):
    n = node(A100)
    gi = n.driver.create_gpu_instance(0, P_2G10, 2)
    (half,) = n.backend.instances(0)
    assert (half.gi_id, half.complete, half.uuid, half.ci_id) == (gi["id"], False, None, None)
    done = n.backend.create_compute_instance(0, gi["id"])
    assert done.complete and done.uuid.startswith("MIG-") and key(done) == (P_2G10, 2, 2)
    assert n.backend.instances(0) == [done]


def test_failed_compute_instance_leaves_the_gpu_instance_for_repair(node):
    n = node(A100)
    n.driver.inject_fault("create_ci", code=rc.NO_PERMISSION)
    with pytest.raises(errors.NoPermission):
        n.backend.create_instance(0, P_4G20, 0)
    (left,) = n.backend.instances(0)
    assert key(left) == (P_4G20, 0, 4) and not left.complete
    assert n.backend.create_compute_instance(0, left.gi_id).complete


def test_crash_between_gpu_and_compute_instance_leaves_a_half_made_instance(node):
    n = node(A100)
    n.driver.inject_fault("create_gi", crash="raise", when="after")
    with pytest.raises(errors.SimulatedCrash):
        n.backend.create_instance(0, P_3G20, 4)
    (left,) = n.open().instances(0)  # as the next run of slurm-mig sees it
    assert key(left) == (P_3G20, 4, 4) and not left.complete


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize("op, code, error", [
    ("create_gi", rc.NO_PERMISSION, errors.NoPermission),
    ("create_gi", rc.GPU_IS_LOST, errors.GpuError),
    ("destroy_ci", rc.NO_PERMISSION, errors.NoPermission),
    ("destroy_gi", rc.IN_USE, errors.InstanceInUse),
])
def test_injected_driver_errors_surface_as_project_errors(node, op, code, error):
    n = node(A100)
    made = n.backend.create_instance(0, P_3G20, 0) if op.startswith("destroy") else None
    n.driver.inject_fault(op, code=code)
    with pytest.raises(error) as excinfo:
        if made:
            n.backend.destroy_instance(0, made.gi_id)
        else:
            n.backend.create_instance(0, P_3G20, 0)
    assert "gpu 0" in str(excinfo.value)
    assert excinfo.value.__cause__ is not None  # the driver's error is kept


def test_nvml_errors_are_chained_to_the_pynvml_exception(tmp_path):
    SimDriver.create(str(tmp_path), [A100])
    backend = NvmlBackend(fake_pynvml(str(tmp_path)))
    backend.create_instance(0, P_7G40, 0)
    with pytest.raises(errors.InsufficientResources) as excinfo:
        backend.create_instance(0, P_1G5, 0)
    assert isinstance(excinfo.value.__cause__, pynvml.NVMLError_InsufficientResources)
    assert "1g.5gb@0" in str(excinfo.value)


# ---------------------------------------------------------------------- MIG mode


def test_set_mig_mode_on_a100_is_pending_until_gpu_reset(node):
    n = node(A100, mig_enabled=False)
    result = n.backend.set_mig_mode(0, True)
    assert (result.current, result.pending, result.reset_required) == (False, True, True)
    assert n.backend.gpus()[0].mig_reset_pending
    n.driver.reset_gpu(0)
    assert not n.backend.gpus()[0].mig_reset_pending
    assert n.backend.create_instance(0, P_7G40, 0).complete


def test_set_mig_mode_on_h100_is_immediate(node):
    n = node(H100, mig_enabled=False)
    result = n.backend.set_mig_mode(0, True)
    assert (result.current, result.pending, result.reset_required) == (True, True, False)
    assert n.backend.instances(0) == []
    result = n.backend.set_mig_mode(0, False)
    assert (result.current, result.pending, result.reset_required) == (False, False, False)


def test_processes_on_the_whole_gpu_with_mig_off_and_on_instances_with_mig_on(node):
    n = node(H100, A100, mig_enabled=False)
    n.driver.attach_gpu_process(0, 4242)
    assert n.backend.processes(0) == (4242,) and n.backend.processes(1) == ()
    n.backend.set_mig_mode(1, True)
    n.driver.reset_gpu(1)
    made = n.backend.create_instance(1, P_7G40, 0)
    n.driver.attach_process(1, made.gi_id, made.ci_id, 99)
    assert n.backend.processes(1) == (99,)


def test_a_hopper_mode_change_under_a_process_stays_pending(node):
    n = node(H100, mig_enabled=False)
    n.driver.attach_gpu_process(0, 4242)
    result = n.backend.set_mig_mode(0, True)
    assert (result.current, result.pending, result.reset_required) == (False, True, True)


def test_reset_makes_a_pending_mode_current_on_the_simulator_and_nvml_says_what_to_run(node):
    n = node(A100, mig_enabled=False)
    n.backend.set_mig_mode(0, True)
    if n.kind == "sim":
        result = n.backend.reset_gpu(0)
        assert (result.current, result.pending, result.reset_required) == (True, True, False)
        return
    with pytest.raises(errors.NotSupported) as excinfo:
        n.backend.reset_gpu(0)
    assert "NVML has no GPU reset call" in str(excinfo.value)
    assert "`nvidia-smi -r -i 0`" in str(excinfo.value)
    assert n.backend.gpus()[0].mig_reset_pending


def test_disabling_mig_with_instances_is_refused(node):
    n = node(H100)
    n.backend.create_instance(0, P_1G5, 3)
    with pytest.raises(errors.InstanceInUse):
        n.backend.set_mig_mode(0, False)
    assert n.backend.gpus()[0].mig_current


# ---------------------------------------------------------------------- sharing the node


def test_two_backends_on_one_node_see_each_others_changes(node):
    n = node(A100)
    other = n.open()
    made = n.backend.create_instance(0, P_3G20, 4)
    assert other.instances(0) == [made]
    other.destroy_instance(0, made.gi_id)
    assert n.backend.instances(0) == []


def test_instance_made_by_a_subprocess_is_seen(node):
    n = node(A100)
    child = (
        "import sys\n"
        "from slurm_mig.gpu.backend import make_backend\n"
        "from slurm_mig.sim.fakenvml import fake_pynvml\n"
        "kind, root = sys.argv[1:]\n"
        "b = make_backend(kind, sim_root=root, nvml_module=fake_pynvml(root) if kind == 'nvml' else None)\n"
        "print(b.create_instance(0, 9, 4).gi_id)\n"
        "b.close()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", child, n.kind, n.root], cwd=str(REPO), env=env,
                         check=True, capture_output=True, text=True).stdout
    (seen,) = n.backend.instances(0)
    assert (seen.gi_id, key(seen), seen.complete) == (int(out), (P_3G20, 4, 4), True)


def test_both_backends_report_the_same_node(tmp_path):
    root = str(tmp_path)
    driver = SimDriver.create(root, [A100, "A30", "nomig:Tesla T4"])
    sim, nvml = SimBackend(root), NvmlBackend(fake_pynvml(root))
    nvml.create_instance(0, P_3G20, 0)
    sim.create_instance(0, P_1G10, 6)
    made = nvml.create_instance(1, 5, 2)  # A30 2g.12gb@2
    driver.attach_process(1, made.gi_id, made.ci_id, 77)
    driver.create_gpu_instance(0, P_1G5, 4)
    assert nvml.gpus() == sim.gpus()
    for gpu in (0, 1):
        assert nvml.instances(gpu) == sim.instances(gpu)
        assert sorted(nvml.profiles(gpu), key=lambda p: p.id) == sorted(sim.profiles(gpu), key=lambda p: p.id)


# ---------------------------------------------------------------------- NVML backend specifics


def test_nvml_backend_reads_profiles_with_v1_calls_on_old_drivers(tmp_path):
    SimDriver.create(str(tmp_path), [A100])
    old = NvmlBackend(fake_pynvml(str(tmp_path), profile_info_v2=False))
    new = NvmlBackend(fake_pynvml(str(tmp_path)))
    assert old.profiles(0) == new.profiles(0)
    assert old.create_instance(0, P_2G10, 2) == new.instances(0)[0]


def test_nvml_backend_shuts_nvml_down_on_close(tmp_path):
    SimDriver.create(str(tmp_path), [A100])
    module = fake_pynvml(str(tmp_path))
    backend = NvmlBackend(module)
    assert len(backend.gpus()) == 1
    backend.close()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        module.nvmlDeviceGetCount()
    assert len(backend.gpus()) == 1  # initialized again on use
    backend.close()


def test_nvml_backend_without_driver_says_so(tmp_path):
    backend = NvmlBackend(fake_pynvml(str(tmp_path / "absent")))
    with pytest.raises(errors.GpuError, match="initialize NVML"):
        backend.gpus()


def test_nvml_backend_names_an_unknown_gpu_index(tmp_path):
    SimDriver.create(str(tmp_path), [A100])
    with pytest.raises(errors.NotFound, match="no GPU with NVML index 3"):
        NvmlBackend(fake_pynvml(str(tmp_path))).instances(3)


def test_factory_builds_the_nvml_backend_over_a_given_module(tmp_path):
    SimDriver.create(str(tmp_path), [H100])
    backend = make_backend("nvml", nvml_module=fake_pynvml(str(tmp_path)))
    assert isinstance(backend, NvmlBackend)
    assert backend.gpus()[0].name == "NVIDIA H100 80GB HBM3"


def test_importing_the_nvml_backend_does_not_import_pynvml():
    code = "import sys, slurm_mig.gpu.nvml; print('pynvml' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "False"
