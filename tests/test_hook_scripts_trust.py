"""The shipped hook scripts run Python as root: nothing a user can write may steer them (issue 8).

slurmd starts ``prolog.d/50-slurm-mig`` as root, in whatever directory it runs from, and the
script sources a defaults file.  A module planted in the working directory, or a defaults
file another user can write, would be root's code.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534


def _run(which: str, defaults: str, cwd: str) -> subprocess.CompletedProcess:
    env = {"SLURM_JOB_ID": "5", "SLURM_JOB_GPUS": "0", "SLURMD_NODENAME": "n1",
           "SLURM_MIG_DEFAULTS": defaults}
    return subprocess.run([os.path.join(REPO, f"{which}.d", "50-slurm-mig")], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def defaults(tmp_path):
    path = tmp_path / "defaults"
    path.write_text(f"SLURM_MIG_PYTHON={sys.executable}\n"
                    f"SLURM_MIG_CONFIG={tmp_path}/missing-config.toml\n")
    os.chmod(path, 0o644)
    return path


@pytest.mark.parametrize("which", ["prolog", "epilog"])
def test_a_module_planted_in_the_working_directory_is_not_imported(which, tmp_path, defaults):
    plant = tmp_path / "jobdir"
    (plant / "slurm_mig").mkdir(parents=True)
    marker = tmp_path / "owned"
    code = f"open({str(marker)!r}, 'w').write('root ran me')\n"
    for name in ("json.py", "zlib.py", "fcntl.py", "slurm_mig/__init__.py", "slurm_mig/hooks.py"):
        (plant / name).write_text(code)
    result = _run(which, str(defaults), str(plant))
    assert not marker.exists(), result.stderr
    assert result.returncode == 3  # the missing config, found by the real slurm_mig
    assert "missing-config.toml" in result.stderr


@pytest.mark.parametrize("mode", [0o666, 0o664])
def test_a_defaults_file_others_can_write_is_not_sourced(tmp_path, defaults, mode):
    marker = tmp_path / "owned"
    defaults.write_text(f"touch {marker}\n")
    os.chmod(defaults, mode)
    result = _run("prolog", str(defaults), str(tmp_path))
    assert result.returncode == 3
    assert not marker.exists()
    assert result.stderr.count("\n") == 1 and "chmod 0644" in result.stderr


def test_a_defaults_file_that_is_a_symlink_is_not_sourced(tmp_path, defaults):
    marker = tmp_path / "owned"
    defaults.write_text(f"touch {marker}\n")
    link = tmp_path / "link"
    link.symlink_to(defaults)
    result = _run("epilog", str(link), str(tmp_path))
    assert result.returncode == 3 and "slurm-mig epilog: error:" in result.stderr
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to nobody)")
def test_a_defaults_file_owned_by_another_user_is_not_sourced(tmp_path, defaults):
    marker = tmp_path / "owned"
    defaults.write_text(f"touch {marker}\n")
    os.chown(defaults, NOBODY, NOBODY)
    result = _run("prolog", str(defaults), str(tmp_path))
    assert result.returncode == 3 and not marker.exists()
