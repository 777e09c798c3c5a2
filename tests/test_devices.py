"""MIG device files: the driver's mig-minors list wins, the formula is only a fallback."""

from __future__ import annotations

import pytest

from slurm_mig.core.devices import (FORMULA, DeviceFilesError, InstanceDevices, common_device_files,
                                    formula_minors, instance_devices, missing_device_files,
                                    parse_mig_minors, read_mig_minors, render_mig_minors)
from slurm_mig.core.errors import EXIT_GPU, GpuError

HAND_WRITTEN = """\
config 11
monitor 12
gpu0/gi1/access 500
gpu0/gi1/ci0/access 501
gpu2/gi3/access 900
gpu2/gi3/ci1/access 902
"""


def write_proc(tmp_path, text):
    d = tmp_path / "proc" / "driver" / "nvidia-caps"
    d.mkdir(parents=True)
    (d / "mig-minors").write_text(text)
    return str(tmp_path / "proc")


def test_rendered_file_parses_back_to_the_formula():
    for gpus in ([0], [0, 1, 2, 3], [5, 31], range(32)):
        parsed = parse_mig_minors(render_mig_minors(gpus))
        assert parsed == formula_minors(gpus)


def test_rendered_file_has_the_drivers_shape():
    lines = render_mig_minors(range(32)).splitlines()
    assert lines[:5] == [
        "config 1",
        "monitor 2",
        "gpu0/gi0/access 3",
        "gpu0/gi0/ci0/access 4",
        "gpu0/gi0/ci1/access 5",
    ]
    assert lines[11] == "gpu0/gi1/access 12"
    assert lines[-1] == "gpu31/gi14/ci7/access 4322"
    assert len(lines) == 2 + 32 * 15 * 9


def test_formula_matches_known_minors():
    m = formula_minors()
    assert (m.config, m.monitor) == (1, 2)
    assert m.gi_minor(0, 0) == 3
    assert m.ci_minor(0, 0, 0) == 4
    assert m.gi_minor(1, 2) == 3 + 135 + 18
    assert m.ci_minor(31, 14, 7) == 4322
    assert m.source == FORMULA and m.from_formula


def test_file_minors_win_over_the_formula(tmp_path):
    m = read_mig_minors(write_proc(tmp_path, HAND_WRITTEN))
    assert (m.config, m.monitor) == (11, 12)
    assert m.gi_minor(0, 1) == 500
    assert m.ci_minor(0, 1, 0) == 501
    assert m.gi_minor(2, 3) == 900
    assert m.ci_minor(2, 3, 1) == 902
    assert m.source.endswith("proc/driver/nvidia-caps/mig-minors")
    assert not m.from_formula


def test_missing_file_falls_back_to_the_formula(tmp_path):
    m = read_mig_minors(str(tmp_path / "proc"))
    assert m.source == "formula"
    assert m == formula_minors()


def test_unreadable_file_is_a_chained_device_error(tmp_path):
    proc = write_proc(tmp_path, "")
    (tmp_path / "proc/driver/nvidia-caps/mig-minors").unlink()
    (tmp_path / "proc/driver/nvidia-caps/mig-minors").mkdir()  # open() fails, but not "missing"
    with pytest.raises(DeviceFilesError) as info:
        read_mig_minors(proc)
    assert isinstance(info.value.__cause__, OSError)
    assert "mig-minors" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "bad",
    ["gpu0/gi0/access", "gpu0/gi0/access three", "gpu0/gi0/access 3 4", "gpu0/gix/access 3"],
)
def test_malformed_line_names_file_and_line(tmp_path, bad):
    proc = write_proc(tmp_path, f"config 1\nmonitor 2\n{bad}\n")
    with pytest.raises(DeviceFilesError) as info:
        read_mig_minors(proc)
    message = str(info.value)
    assert "mig-minors:3:" in message
    assert "nvidia driver is loaded" in message
    assert "\n" not in message
    assert info.value.exit_code == EXIT_GPU
    assert isinstance(info.value, GpuError)


def test_unknown_future_entries_are_skipped():
    m = parse_mig_minors("config 1\nmonitor 2\nfabric-thing 99\ngpu0/gi0/access 3\n")
    assert m.gi_minor(0, 0) == 3


def test_missing_config_entry_is_an_error():
    with pytest.raises(DeviceFilesError, match="no 'config' entry"):
        parse_mig_minors("monitor 2\n", source="x/mig-minors")


def test_lookup_of_absent_entry_names_gpu_gi_ci():
    m = parse_mig_minors(HAND_WRITTEN, source="mig-minors")
    with pytest.raises(DeviceFilesError, match=r"gpu0/gi2/access"):
        m.gi_minor(0, 2)
    with pytest.raises(DeviceFilesError, match=r"gpu2/gi3/ci5/access"):
        m.ci_minor(2, 3, 5)


def test_minors_value_is_read_only():
    m = formula_minors([0])
    with pytest.raises(TypeError):
        m.gis[(0, 0)] = 7


def test_instance_devices_use_the_dev_root():
    devices = instance_devices(formula_minors(), 1, 2, 1, dev_root="/tmp/x/dev")
    assert devices == InstanceDevices(
        gpu_device="/tmp/x/dev/nvidia1",
        gi_cap=f"/tmp/x/dev/nvidia-caps/nvidia-cap{3 + 135 + 18}",
        ci_cap=f"/tmp/x/dev/nvidia-caps/nvidia-cap{4 + 135 + 18 + 1}",
    )
    assert devices.files() == (devices.gpu_device, devices.gi_cap, devices.ci_cap)
    assert devices.multiple_files() == ",".join(devices.files())


def test_instance_devices_take_minors_from_the_file():
    m = parse_mig_minors(HAND_WRITTEN)
    devices = instance_devices(m, 0, 1, 0)
    assert devices.files() == (
        "/dev/nvidia0",
        "/dev/nvidia-caps/nvidia-cap500",
        "/dev/nvidia-caps/nvidia-cap501",
    )


def test_missing_device_files_lists_only_the_absent(tmp_path):
    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    devices = instance_devices(formula_minors(), 0, 1, 0, dev_root=str(dev))
    (dev / "nvidia0").touch()
    (dev / "nvidia-caps" / "nvidia-cap12").touch()
    assert missing_device_files(devices) == [str(dev / "nvidia-caps" / "nvidia-cap13")]
    (dev / "nvidia-caps" / "nvidia-cap13").touch()
    assert missing_device_files(devices) == []


def test_common_device_files_name_config_and_monitor_caps():
    assert common_device_files("/d") == (
        "/d/nvidiactl",
        "/d/nvidia-uvm",
        "/d/nvidia-uvm-tools",
        "/d/nvidia-caps/nvidia-cap1",
        "/d/nvidia-caps/nvidia-cap2",
    )
    m = parse_mig_minors(HAND_WRITTEN)
    assert common_device_files(minors=m)[-2:] == (
        "/dev/nvidia-caps/nvidia-cap11",
        "/dev/nvidia-caps/nvidia-cap12",
    )
