"""Root-safe file access (issue 8, items 2 and 8): no planted path steers root, modes are exact.

The attacks run as root in a temp tree, as the hooks run: a directory owned by ``nobody``,
symlinks planted where slurm-mig opens its locks, records and journal.  Each asserts that
the victim is untouched and the refusal is one line with exit 3.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from slurm_mig.core.errors import EXIT_CONFIG
from slurm_mig.host import safefs
from slurm_mig.host.atomic import update_file, write_atomic, write_json_atomic
from slurm_mig.host.locking import node_lock
from slurm_mig.host.safefs import UnsafePath
from slurm_mig.node import jobs, journal

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to nobody)")


@pytest.fixture
def victim(tmp_path):
    """A file root must never truncate, chmod or write through a planted link."""
    p = tmp_path / "victim"
    p.write_text("precious\n")
    os.chmod(p, 0o640)
    return p


def _untouched(victim) -> None:
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640


def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- planted symlinks


def test_lock_refuses_a_planted_symlink_and_leaves_its_target_alone(tmp_path, victim):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "node.lock").symlink_to(victim)
    with pytest.raises(UnsafePath) as err:
        with node_lock(str(state / "node.lock"), 0):
            pass
    assert err.value.exit_code == EXIT_CONFIG
    assert "symbolic link" in _one_line(err.value)
    _untouched(victim)


def test_job_records_refuse_a_jobs_symlink_to_another_directory(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir(mode=0o755)
    (state / "jobs").symlink_to(elsewhere)
    with pytest.raises(UnsafePath):
        jobs.write_job(str(state), {"job_id": "42", "instances": []})
    assert os.listdir(elsewhere) == []
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755


def test_journal_refuses_a_journal_symlink(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (state / "journal").symlink_to(elsewhere)
    intent = journal.new_intent(0, "GPU-1", "empty", [])
    with pytest.raises(UnsafePath):
        journal.write_intent(str(state), intent)
    assert os.listdir(elsewhere) == []


def test_shared_file_lock_refuses_a_planted_lock_symlink(tmp_path, victim):
    conf = tmp_path / "slurm"
    conf.mkdir(mode=0o755)
    (conf / ".gres.conf.lock").symlink_to(victim)
    with pytest.raises(UnsafePath):
        update_file(str(conf / "gres.conf"), lambda text: text + "NodeName=n1 Name=gpu\n")
    _untouched(victim)
    assert not (conf / "gres.conf").exists()


def test_a_state_file_symlink_is_replaced_never_written_through(tmp_path, victim):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "rebalance.json").symlink_to(victim)
    write_json_atomic(str(state / "rebalance.json"), {"cycle": 1})
    _untouched(victim)
    assert not (state / "rebalance.json").is_symlink()
    assert json.loads((state / "rebalance.json").read_text()) == {"cycle": 1}


def test_a_lock_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / "node.lock")
    with pytest.raises(UnsafePath, match="not a regular file"):
        with node_lock(str(state / "node.lock"), 0):
            pass


# ----------------------------------------------------------------------------- owners and modes


@root_only
def test_a_state_directory_owned_by_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(UnsafePath) as err:
        with node_lock(str(state / "node.lock"), 0):
            pass
    text = _one_line(err.value)
    assert f"uid {NOBODY}" in text and "chown root" in text
    assert not (state / "node.lock").exists()


@root_only
def test_a_lock_file_owned_by_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "node.lock").write_text("")
    os.chown(state / "node.lock", NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=f"uid {NOBODY}"):
        with node_lock(str(state / "node.lock"), 0):
            pass


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_group_or_world_writable_state_directory_is_refused(tmp_path, mode):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    with pytest.raises(UnsafePath, match="go-w"):
        safefs.ensure_dir(str(state), 0o700, "state directory")


def test_a_world_writable_parent_without_sticky_bit_is_refused(tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(UnsafePath, match="open"):
        safefs.ensure_dir(str(parent / "state"), 0o700, "state directory")
    assert not (parent / "state").exists()


def test_a_sticky_world_writable_parent_is_fine(tmp_path):
    parent = tmp_path / "vartmp"
    parent.mkdir()
    os.chmod(parent, 0o1777)
    made = safefs.ensure_dir(str(parent / "state"), 0o700, "state directory")
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700


@root_only
def test_a_symlink_on_the_way_owned_by_another_user_is_not_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    link = tmp_path / "link"
    link.symlink_to(real)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match="symbolic link owned by uid"):
        safefs.ensure_dir(str(link / "state"), 0o700, "state directory")
    assert not (real / "state").exists()


def test_a_symlink_on_the_way_owned_by_root_is_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(real)
    safefs.ensure_dir(str(tmp_path / "link" / "state"), 0o700, "state directory")
    assert (real / "state").is_dir()


def test_modes_are_exact_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        state = tmp_path / "a" / "b" / "state"
        safefs.ensure_dir(str(state), 0o700, "state directory")
        with node_lock(str(state / "node.lock"), 0):
            pass
        jobs.write_job(str(state), {"job_id": "7", "instances": []})
        write_atomic(str(tmp_path / "conf" / "gres.conf"), "x\n", mode=0o644)
    finally:
        os.umask(old)
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in (
        tmp_path / "a", tmp_path / "a" / "b", state, state / "node.lock", state / "jobs",
        state / "jobs" / "7.json", tmp_path / "conf", tmp_path / "conf" / "gres.conf")}
    assert modes == {tmp_path / "a": 0o755, tmp_path / "a" / "b": 0o755, state: 0o700,
                     state / "node.lock": 0o600, state / "jobs": 0o700,
                     state / "jobs" / "7.json": 0o600, tmp_path / "conf": 0o755,
                     tmp_path / "conf" / "gres.conf": 0o644}


def test_a_loose_jobs_directory_is_tightened(tmp_path):
    state = tmp_path / "state"
    (state / "jobs").mkdir(parents=True)
    os.chmod(state, 0o700)
    os.chmod(state / "jobs", 0o755)
    jobs.write_job(str(state), {"job_id": "7", "instances": []})
    assert stat.S_IMODE((state / "jobs").stat().st_mode) == 0o700


# ----------------------------------------------------------------------------- odd paths


def test_a_path_through_a_file_is_a_clear_error(tmp_path):
    with pytest.raises(UnsafePath, match="/dev/null is not a directory"):
        safefs.ensure_dir("/dev/null/var/lib/slurm-mig", 0o700, "state directory")


def test_a_very_deep_path_is_an_error_not_a_recursion(tmp_path):
    deep = str(tmp_path) + "/d" * 3000
    with pytest.raises(UnsafePath, match="path"):
        safefs.ensure_dir(deep, 0o700, "state directory")


# ----------------------------------------------------------------------------- gres.conf behind a link


def test_a_root_owned_gres_conf_symlink_is_written_through(tmp_path):
    """Decision (docs/security.md): a gres.conf that root made a link (to a file shared by the
    nodes) stays a link; the write lands atomically on its target, .prev beside the target."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    (shared / "gres.conf").write_text("old\n")
    conf = tmp_path / "slurm"
    conf.mkdir(mode=0o755)
    (conf / "gres.conf").symlink_to(shared / "gres.conf")
    result = write_atomic(str(conf / "gres.conf"), "new\n")
    assert (conf / "gres.conf").is_symlink()
    assert (shared / "gres.conf").read_text() == "new\n"
    assert result.path == str(shared / "gres.conf")
    assert (shared / "gres.conf.prev").read_text() == "old\n"
    assert not (conf / "gres.conf.prev").exists()


@root_only
def test_a_gres_conf_symlink_owned_by_another_user_is_refused(tmp_path, victim):
    conf = tmp_path / "slurm"
    conf.mkdir(mode=0o755)
    (conf / "gres.conf").symlink_to(victim)
    os.lchown(conf / "gres.conf", NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match="symbolic link owned by uid"):
        write_atomic(str(conf / "gres.conf"), "new\n")
    _untouched(victim)


# ----------------------------------------------------------------------------- the config file


def _config(tmp_path, directory="etc"):
    from slurm_mig.host.config import sim_config_text

    d = tmp_path / directory
    d.mkdir(mode=0o755)
    path = d / "config.toml"
    path.write_text(sim_config_text(str(tmp_path), ["A100-40GB"]))
    os.chmod(path, 0o644)
    return path


def _hook_env(config) -> dict:
    return {"PATH": "/usr/bin:/bin", "SLURM_MIG_CONFIG": str(config), "SLURMD_NODENAME": "n1",
            "SLURM_JOB_ID": "5", "SLURM_JOB_GPUS": "0", "SLURM_JOB_UID": "1000"}


@pytest.mark.parametrize("mode", [0o666, 0o664])
def test_a_config_others_can_write_is_refused_by_the_cli_and_the_hooks(tmp_path, cli, capsys, mode):
    from slurm_mig.hooks import run as hooks

    config = _config(tmp_path)
    os.chmod(config, mode)
    code, out, err = cli("status", config=str(config))
    assert code == EXIT_CONFIG and "chmod 0644" in err and err.count("\n") == 1
    assert hooks.run_hook("prolog", _hook_env(config)) == EXIT_CONFIG
    assert "root runs what it says" in capsys.readouterr().err


@root_only
def test_a_config_in_a_directory_of_another_user_is_refused(tmp_path, cli):
    config = _config(tmp_path)
    os.chown(config.parent, NOBODY, NOBODY)
    code, _, err = cli("status", config=str(config))
    assert code == EXIT_CONFIG and f"uid {NOBODY}" in err


@root_only
def test_a_config_symlink_of_another_user_is_refused(tmp_path, cli):
    config = _config(tmp_path)
    link = tmp_path / "etc" / "link.toml"
    link.symlink_to(config)
    os.lchown(link, NOBODY, NOBODY)
    code, _, err = cli("status", config=str(link))
    assert code == EXIT_CONFIG and "symbolic link owned by uid" in err


def test_a_root_config_behind_a_root_link_is_read(tmp_path, cli):
    config = _config(tmp_path)
    link = tmp_path / "etc" / "link.toml"
    link.symlink_to(config)
    assert cli("status", config=str(link))[0] == 0


# ----------------------------------------------------------------------------- write_file
# The hooks' small writer (fast path state files, the TaskProlog env file, dcgm mapping files).


def test_write_file_sets_the_exact_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        assert safefs.write_file(str(tmp_path / "f"), b"x\n", 0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_bytes() == b"x\n"
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["f"]  # no temp file left


def test_write_file_leaves_a_file_holding_the_same_bytes_alone(tmp_path):
    p = tmp_path / "f"
    assert safefs.write_file(str(p), b"1\n", 0o600)
    before = p.stat()
    assert not safefs.write_file(str(p), b"1\n", 0o600)
    assert p.stat().st_ino == before.st_ino
    assert safefs.write_file(str(p), b"1\n", 0o600, keep_same=False)
    assert p.stat().st_ino != before.st_ino
    assert safefs.write_file(str(p), b"1\n2\n", 0o600)
    assert p.read_bytes() == b"1\n2\n"


def test_write_file_replaces_a_planted_link_and_never_writes_through_it(tmp_path, victim):
    link = tmp_path / "f"
    link.symlink_to(victim)
    assert safefs.write_file(str(link), b"precious\n", 0o600)  # same bytes behind the link
    assert not link.is_symlink() and link.read_bytes() == b"precious\n"
    _untouched(victim)


def test_write_file_replaces_a_temp_file_left_by_a_killed_run(tmp_path, victim):
    tmp = tmp_path / f".f.{os.getpid()}.tmp"
    tmp.symlink_to(victim)
    assert safefs.write_file(str(tmp_path / "f"), b"new\n", 0o600, durable=True)
    assert (tmp_path / "f").read_bytes() == b"new\n"
    assert not os.path.lexists(tmp)
    _untouched(victim)


def test_a_failed_write_file_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    p = tmp_path / "f"
    p.write_bytes(b"old\n")

    def full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space"):
        safefs.write_file(str(p), b"new\n", 0o600, durable=True)
    assert p.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["f"]


@root_only
def test_write_file_gives_the_file_to_the_uid(tmp_path):
    assert safefs.write_file(str(tmp_path / "f"), b"x\n", 0o400, uid=NOBODY)
    st = (tmp_path / "f").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o400)
