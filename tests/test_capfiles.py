"""The MIG capability files (/dev/nvidia-caps/nvidia-cap<N>) after an apply and in the
prolog's repair, over the pynvml look-alike: the NVML backend on the simulated driver, whose
``<root>/proc`` has the driver's capability entries (DeviceFileMinor/DeviceFileMode) and
``devices``; ``/dev`` is a fresh temp tree holding only what a real H200 on driver 580
showed (nvidia-cap1 0400, nvidia-cap2 0444)."""

from __future__ import annotations

import os
import stat

import pytest

from slurm_mig.core.capfiles import parse_cap_entry, parse_proc_devices
from slurm_mig.core.devices import DeviceFilesError, instance_devices, read_mig_minors
from slurm_mig.core.errors import EXIT_GPU
from slurm_mig.core.layout import parse_layout
from slurm_mig.gpu.nvml import NvmlBackend
from slurm_mig.host.devnodes import HostDeviceNodes
from slurm_mig.node.apply import apply_node
from slurm_mig.node.capfiles import CapFileKeeper, ensure_cap_files
from slurm_mig.node.inventory import gpu_model
from slurm_mig.sim.driver import CAPS_MAJOR, SimDriver
from slurm_mig.sim.fakenvml import fake_pynvml

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of character devices needs root")


class Node:
    def __init__(self, tmp_path, modprobe=None):
        self.sim = str(tmp_path / "sim")
        self.driver = SimDriver.create(self.sim, ["A100-40GB"], device_nodes=False)
        self.backend = NvmlBackend(fake_pynvml(self.sim))
        self.state = str(tmp_path / "state")
        self.dev = str(tmp_path / "dev")
        os.makedirs(os.path.join(self.dev, "nvidia-caps"))
        for minor, mode in ((1, 0o400), (2, 0o444)):  # what the lent H200 had, MIG off
            path = self.cap(minor)
            os.mknod(path, stat.S_IFCHR | mode, os.makedev(CAPS_MAJOR, minor))
            os.chmod(path, mode)
        self.nodes = HostDeviceNodes(self.dev, os.path.join(self.sim, "proc"), modprobe=modprobe)

    def cap(self, minor: int) -> str:
        return os.path.join(self.dev, "nvidia-caps", f"nvidia-cap{minor}")

    def apply(self, text: str, **kw):
        info = self.backend.gpus()[0]
        wanted = parse_layout(text, gpu_model(self.backend, info))
        return apply_node(self.backend, {0: wanted}, state_dir=self.state,
                          devices=self.nodes, **kw)[0]

    def gres_files(self):
        """The cap files gres.conf names for each instance (mig-minors, as the generator does)."""
        minors = read_mig_minors(os.path.join(self.sim, "proc"))
        return {i.gi_id: instance_devices(minors, 0, i.gi_id, i.ci_id, self.dev)
                for i in self.backend.instances(0)}


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def rdev(path):
    st = os.lstat(path)
    assert stat.S_ISCHR(st.st_mode), path
    return os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode), st.st_uid


def test_apply_makes_each_fresh_instances_cap_files_with_the_drivers_major_minor_and_mode(node):
    result = node.apply("1g.5gb@0,3g.20gb@4")
    files = node.gres_files()
    assert len(files) == 2
    for devs in files.values():
        for path in (devs.gi_cap, devs.ci_cap):
            minor = int(path.rsplit("nvidia-cap", 1)[1])
            assert rdev(path) == (CAPS_MAJOR, minor, 0o444, 0)
    assert result.cap_files["checked"] == 4 and len(result.cap_files["made"]) == 4
    assert all(m.endswith("(mknod)") for m in result.cap_files["made"])


def test_a_correct_cap_file_is_left_alone(node):
    node.apply("1g.5gb@0")
    gi_cap = node.gres_files()[node.backend.instances(0)[0].gi_id].gi_cap
    before = os.lstat(gi_cap)
    result = node.apply("1g.5gb@0,1g.5gb@1")
    after = os.lstat(gi_cap)
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino, before.st_mtime_ns, before.st_ctime_ns)
    assert result.cap_files["checked"] == 4 and len(result.cap_files["made"]) == 2


def test_a_cap_file_with_the_wrong_minor_is_replaced(node):
    node.apply("1g.5gb@0")
    path = node.gres_files()[node.backend.instances(0)[0].gi_id].ci_cap
    minor = int(path.rsplit("nvidia-cap", 1)[1])
    os.unlink(path)
    os.mknod(path, stat.S_IFCHR | 0o444, os.makedev(CAPS_MAJOR, minor + 1))
    report = ensure_cap_files(node.nodes, node.backend)
    assert rdev(path) == (CAPS_MAJOR, minor, 0o444, 0)
    assert report.fixed == (f"{path} (mknod): was char {CAPS_MAJOR}:{minor + 1}, not "
                            f"{CAPS_MAJOR}:{minor}",)
    assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")] == []


def test_a_wrong_cap_file_of_an_instance_in_use_is_kept_and_reported(node):
    node.apply("1g.5gb@0")
    inst = node.backend.instances(0)[0]
    path = node.gres_files()[inst.gi_id].gi_cap
    os.unlink(path)
    os.mknod(path, stat.S_IFCHR | 0o444, os.makedev(CAPS_MAJOR, 7))
    node.driver.attach_process(0, inst.gi_id, inst.ci_id, 4242)
    result = node.apply("1g.5gb@0")
    assert rdev(path)[:2] == (CAPS_MAJOR, 7)
    assert len(result.cap_files["kept"]) == 1 and "in use by pid 4242" in result.cap_files["kept"][0]
    assert any(w.startswith(f"cap file {path}") for w in result.warnings)


def test_no_cap_file_is_removed_when_instances_go(node):
    node.apply("1g.5gb@0,1g.5gb@1")
    first = node.gres_files()
    kept_gi = next(i.gi_id for i in node.backend.instances(0) if i.start == 1)
    inodes = {p: os.lstat(p).st_ino for d in first.values() for p in (d.gi_cap, d.ci_cap)}
    node.apply("1g.5gb@1,3g.20gb@4")  # 1g.5gb@0 destroyed; its files are still the right ones
    assert {p: os.lstat(p).st_ino for p in inodes} == inodes
    assert kept_gi in node.gres_files()


def test_nvidia_modprobe_is_called_with_f_and_the_access_file_only(tmp_path):
    log = tmp_path / "argv.log"
    fake = tmp_path / "nvidia-modprobe"
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    node = Node(tmp_path, modprobe=str(fake))
    node.apply("3g.20gb@4")
    inst = node.backend.instances(0)[0]
    access = [node.nodes.access_path(0, inst.gi_id), node.nodes.access_path(0, inst.gi_id, inst.ci_id)]
    assert log.read_text().splitlines() == [f"-f|{a}|" for a in access]
    # It made nothing here (its /dev is compiled in), so mknod finished the job.
    devs = node.gres_files()[inst.gi_id]
    assert rdev(devs.gi_cap)[:2] == (CAPS_MAJOR, int(devs.gi_cap.rsplit("cap", 1)[1]))


def test_proc_devices_without_nvidia_caps_is_a_one_line_error_naming_the_fix(node):
    devices = os.path.join(node.sim, "proc", "devices")
    info = node.backend.gpus()[0]
    node.backend.create_instance(0, gpu_model(node.backend, info).profile("1g.5gb").id, 0)
    with open(devices, "w") as f:
        f.write("Character devices:\n  1 mem\n195 nvidia\n\nBlock devices:\n  7 loop\n")
    with pytest.raises(DeviceFilesError) as err:
        node.apply("1g.5gb@0")
    text = str(err.value)
    assert "\n" not in text and "lists no 'nvidia-caps' character device" in text
    assert "nvidia-modprobe -c 0" in text and "modprobe nvidia" in text and devices in text
    assert err.value.exit_code == EXIT_GPU


def test_the_prolog_keeper_makes_the_files_of_what_it_lists_and_creates(node):
    keeper = CapFileKeeper(node.backend, node.nodes, node.state)
    info = node.backend.gpus()[0]
    new = keeper.create_instance(0, gpu_model(node.backend, info).profile("3g.20gb").id, 4)
    devs = node.gres_files()[new.gi_id]
    assert os.path.exists(devs.gi_cap) and os.path.exists(devs.ci_cap)
    os.unlink(devs.ci_cap)
    keeper.instances(0)
    assert rdev(devs.ci_cap)[:2] == (CAPS_MAJOR, int(devs.ci_cap.rsplit("cap", 1)[1]))


def test_parsers_read_what_the_driver_and_the_kernel_print():
    e = parse_cap_entry("DeviceFileMinor: 84\nDeviceFileMode: 292\nDeviceFileModify: 1\n", "x")
    assert (e.minor, e.mode, e.uid, e.gid, e.modify) == (84, 0o444, 0, 0, True)
    assert parse_proc_devices("Character devices:\n511 nvidia-caps-imex-channels\n234 nvidia-caps\n"
                              "\nBlock devices:\n 9 nvidia-caps\n") == 234
    assert parse_proc_devices("Character devices:\n195 nvidia\n") is None
    with pytest.raises(DeviceFilesError):
        parse_cap_entry("DeviceFileMode: 292\n", "x")
