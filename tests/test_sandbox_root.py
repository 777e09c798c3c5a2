"""The sandbox's root directory is its own (issue 8, item 1, and the sandbox's share of item 8).

``up`` (and the demo) make a missing root themselves, 0755 with a marker file; an existing
root is used only if it is a real directory of root's that nobody else can write and that
holds our marker.  Anything else is refused with one line, and nothing in it changes.
Every file, directory and device node ``up`` writes has an explicit mode, whatever the umask.

The attacks run as root in temp trees under /var/tmp (munged needs o+x on every parent, so
not pytest's tmp_path), as another local user (``nobody``) would set them up.  No cluster is
started here: ``up`` runs until it would build (``_build`` raises :class:`Built`), which is
past every check; the one real ``up`` under umask 0 is in tests/test_sandbox_cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from slurm_mig.sandbox import mig
from slurm_mig.sandbox.files import SandboxFiles, read_seen, sim_job_text

NOBODY = 65534
MARKER = ".slurm-mig-sandbox"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to nobody, mknod)")


class Built(Exception):
    """``up`` got past every check of the root and would build the sandbox now."""


@pytest.fixture
def parent():
    """Where the roots go: a fresh directory under /var/tmp, 0755."""
    d = tempfile.mkdtemp(prefix="smig-root-", dir="/var/tmp")
    os.chmod(d, 0o755)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d)


@pytest.fixture
def no_build(monkeypatch):
    """``up`` on any machine (the host check passes) and never a real cluster."""
    def build(spec, files):
        raise Built(files.root)

    monkeypatch.setattr(mig, "missing_requirements", lambda: [])
    monkeypatch.setattr(mig, "_build", build)


@pytest.fixture
def umask0():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def tree(root: Path) -> dict:
    """Every path under ``root`` (links not followed) -> (type, mode, owner, bytes of a file)."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            data = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    data = f.read()
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                st.st_uid, data)
    return out


def _refused(cli, args, code: int, *words: str) -> str:
    got, out, err = cli(*args)
    assert got == code, (out, err)
    assert err.startswith("slurm-mig: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err


# ----------------------------------------------------------------------------- another user's root


@root_only
@pytest.mark.parametrize("command", [["sandbox", "up"], ["demo"]])
def test_a_root_another_user_made_first_is_refused_and_left_as_it_was(cli, parent, no_build,
                                                                       command):
    root = parent / "sbx"
    root.mkdir()
    os.chmod(root, 0o755)  # as careful an attacker as can be: not even writable by others
    os.chown(root, NOBODY, NOBODY)
    _refused(cli, [*command, "--root", root], 3, f"owned by uid {NOBODY}", "pick another --root")
    st = root.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode), os.listdir(root)) == (NOBODY, 0o755, [])


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_root_others_can_write_is_refused_and_left_as_it_was(cli, parent, no_build, mode):
    root = parent / "sbx"
    root.mkdir()
    os.chmod(root, mode)
    _refused(cli, ["sandbox", "up", "--root", root], 3, f"mode {mode:04o}", "pick another --root")
    assert (stat.S_IMODE(root.stat().st_mode), os.listdir(root)) == (mode, [])


def test_a_root_that_is_a_symbolic_link_is_refused(cli, parent, no_build):
    real = parent / "real"
    real.mkdir()
    os.chmod(real, 0o755)  # root's, empty: a directory up would take if it followed the link
    (parent / "sbx").symlink_to(real)
    _refused(cli, ["sandbox", "up", "--root", parent / "sbx"], 3, "symbolic link")
    assert (stat.S_IMODE(real.stat().st_mode), os.listdir(real)) == (0o755, [])


def test_a_directory_of_roots_without_the_marker_is_refused_and_left_as_it_was(cli, parent,
                                                                               no_build):
    root = parent / "sbx"
    root.mkdir()
    os.chmod(root, 0o700)
    err = _refused(cli, ["sandbox", "up", "--root", root], 2, MARKER, "pick another --root")
    assert "does not exist yet" in err  # the fix: let up make one
    assert (stat.S_IMODE(root.stat().st_mode), os.listdir(root)) == (0o700, [])


@pytest.mark.parametrize("plant", ["symlink", "fifo", "directory",
                                   pytest.param("nobody's", marks=root_only)])
def test_a_marker_up_did_not_make_is_refused_and_nothing_changes(cli, parent, no_build, plant):
    root = parent / "sbx"
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "sandbox-spec.json").write_text('{"nodes": ["n1"]}\n')  # looks like a sandbox
    victim = parent / "victim"
    victim.write_text("root's\n")
    marker = root / MARKER
    if plant == "symlink":
        marker.symlink_to(victim)
    elif plant == "fifo":
        os.mkfifo(marker)
    elif plant == "directory":
        marker.mkdir()
    else:
        marker.write_text("")
        os.chown(marker, NOBODY, NOBODY)
    before = tree(root)
    _refused(cli, ["sandbox", "up", "--root", root], 3, MARKER, "pick another --root")
    assert tree(root) == before and victim.read_text() == "root's\n"


def test_a_parent_others_can_write_is_refused_and_nothing_is_made(cli, parent, no_build):
    os.chmod(parent, 0o777)  # not sticky: another user could swap what up makes there
    _refused(cli, ["sandbox", "up", "--root", parent / "sbx"], 3, "go-w")
    assert os.listdir(parent) == []


@root_only
def test_status_and_down_refuse_another_users_root_before_reading_it(cli, parent):
    root = parent / "sbx"
    root.mkdir()
    (root / MARKER).write_text("")
    (root / "sandbox-spec.json").write_text('{"nodes": ["n1"]}\n')
    os.chown(root, NOBODY, NOBODY)
    before = tree(root)
    for args in (["sandbox", "status"], ["sandbox", "reconfigure"], ["sandbox", "down", "--purge"]):
        _refused(cli, [*args, "--root", root], 3, f"owned by uid {NOBODY}", "not touching it")
    assert tree(root) == before


def test_down_purge_removes_only_a_root_up_made(cli, parent):
    root = parent / "sbx"
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "sandbox-spec.json").write_text('{"nodes": ["n1"]}\n')  # a spec is not enough
    (root / "data").write_text("keep\n")
    _refused(cli, ["sandbox", "down", "--root", root, "--purge"], 2, MARKER, "not touching it")
    assert (root / "data").read_text() == "keep\n"


# ----------------------------------------------------------------------------- our own root


@pytest.mark.parametrize("parent_mode", [0o755, 0o1777])
def test_up_makes_a_missing_root_0755_and_its_marker_0600_whatever_the_umask(parent, no_build,
                                                                             umask0, parent_mode):
    os.chmod(parent, parent_mode)  # /var/lib, or a sticky /var/tmp
    root = parent / "a" / "sbx"
    with pytest.raises(Built):
        mig.up(mig.SandboxSpec(str(root)))
    marker = os.lstat(root / MARKER)
    assert stat.S_ISREG(marker.st_mode) and marker.st_uid == os.geteuid()
    assert {p: stat.S_IMODE(os.lstat(p).st_mode) for p in (parent / "a", root, root / MARKER)} == {
        parent / "a": 0o755, root: 0o755, root / MARKER: 0o600}


def test_our_own_stopped_sandbox_is_rebuilt_in_place_and_stays_marked(parent, no_build):
    from slurm_mig.sandbox.rootdir import make_root

    root = parent / "sbx"
    make_root(str(root))
    (root / "sandbox-spec.json").write_text('{"nodes": ["n1"]}\n')
    (root / "log").mkdir()
    (root / "log" / "slurmctld.log").write_text("old\n")
    with pytest.raises(Built):
        mig.up(mig.SandboxSpec(str(root)))
    assert sorted(os.listdir(root)) == sorted([MARKER, ".sandbox.lock", "sandbox-spec.json"])
    assert json.loads((root / "sandbox-spec.json").read_text())["nodes"] == ["n1", "n2"]


def test_down_purge_takes_nothing_outside_the_root_through_links_planted_in_seen(parent):
    """seen/ is any user's to write: shutil.rmtree must remove links there, not follow them."""
    from slurm_mig.sandbox.rootdir import make_root

    root = parent / "sbx"
    make_root(str(root))
    (root / "sandbox-spec.json").write_text('{"nodes": ["n1"]}\n')
    victims = parent / "victims"
    (victims / "dir").mkdir(parents=True)
    (victims / "dir" / "file").write_text("root's\n")
    (victims / "file").write_text("root's\n")
    seen = root / "seen"
    seen.mkdir()
    os.chmod(seen, 0o1777)
    (seen / "1.json").symlink_to(victims / "file")
    (seen / "2.json").symlink_to(victims / "dir")
    (seen / "deeper").mkdir()
    (seen / "deeper" / "x").symlink_to(victims / "dir")
    before = tree(victims)
    result = mig.down(str(root), purge=True)
    assert result["purged"] is True and not os.path.lexists(root)
    assert tree(victims) == before


def test_the_default_root_is_in_a_directory_no_other_user_can_create_in():
    from slurm_mig.host.safefs import check_dir

    where = os.path.dirname(mig.DEFAULT_ROOT)
    st = os.stat(where)
    assert st.st_uid == 0 and not st.st_mode & 0o022, f"{where}: {stat.S_IMODE(st.st_mode):04o}"
    check_dir(where)  # trusted all the way up
    parents = [where]
    while parents[-1] != "/":
        parents.append(os.path.dirname(parents[-1]))
    assert all(os.stat(p).st_mode & 0o001 for p in parents)  # munged: o+x above its socket


# ----------------------------------------------------------------------------- modes


def _loose(root: Path) -> dict:
    """What under ``root`` group or others can write (sockets aside: munged makes its own
    world-writable by design), by path relative to root."""
    out = {}
    for rel, (kind, mode, _uid, _data) in tree(root).items():
        if kind in (stat.S_IFREG, stat.S_IFDIR) and mode & 0o022:
            out[rel] = mode
    return out


def _device_kind(name: str) -> str:
    if name == "nvidia-cap1":
        return name  # the config capability
    if name.startswith("nvidia-cap"):
        return "nvidia-cap<k>"
    if name.startswith("nvidia-uvm"):
        return "nvidia-uvm*"
    return "nvidia<N>" if name[len("nvidia"):].isdigit() else name


def _device_modes(root: Path) -> dict:
    """Each kind of device node under ``root`` -> its modes."""
    out: dict = {}
    for rel, (kind, mode, _uid, _data) in tree(root).items():
        if kind == stat.S_IFCHR:
            out.setdefault(_device_kind(os.path.basename(rel)), set()).add(mode)
    return out


@root_only
def test_under_umask_0_what_up_builds_is_writable_by_no_one_else_but_seen(parent, umask0):
    """The builder of ``up`` (files, configs, simulated GPUs cut into the layout, gres.conf),
    everything but starting the daemons (that part: tests/test_sandbox_cli.py)."""
    root = parent / "sbx"
    root.mkdir()
    os.chmod(root, 0o755)
    mig._build(mig.SandboxSpec(str(root)), SandboxFiles(str(root)))
    assert _loose(root) == {"seen": 0o1777}
    assert _device_modes(root) == {"nvidia<N>": {0o666}, "nvidiactl": {0o666},
                                   "nvidia-uvm*": {0o666}, "nvidia-cap1": {0o400},
                                   "nvidia-cap<k>": {0o444}}


@root_only
def test_bare_cluster_device_nodes_get_the_driver_modes_whatever_the_umask(parent, umask0):
    from slurm_mig.sandbox import make_device_nodes

    make_device_nodes(str(parent / "dev"), [0, 1], [1, 2, 21], cap_major=511)
    assert _loose(parent) == {}
    assert _device_modes(parent) == {"nvidia<N>": {0o666}, "nvidiactl": {0o666},
                                     "nvidia-cap1": {0o400}, "nvidia-cap<k>": {0o444}}


# ----------------------------------------------------------------------------- seen/


def test_read_seen_never_follows_a_link_planted_in_seen(tmp_path):
    files = SandboxFiles(str(tmp_path))
    os.mkdir(files.seen)
    secret = tmp_path / "secret.json"
    secret.write_text('{"node": "root only", "instances": []}\n')
    os.chmod(secret, 0o600)
    os.symlink(secret, files.seen_file(42))
    with open(files.seen_file(43), "w") as f:
        f.write('{"node": "n1", "instances": []}\n')
    with open(files.seen_file(44), "w") as f:
        f.write('["not", "a", "report"]\n')
    assert [read_seen(files, j) for j in (42, 43, 44)] == [
        None, {"node": "n1", "instances": []}, None]


def test_sim_job_replaces_a_link_planted_under_its_report_name_never_writes_through_it(tmp_path):
    files = SandboxFiles(str(tmp_path))
    os.mkdir(files.seen)
    os.chmod(files.seen, 0o1777)
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    os.symlink(victim, files.seen_file(42))
    # Stands in for `python -m slurm_mig.hooks sim-run --out FILE -- CMD...`: writes FILE as
    # hooks.sim_run does (open(FILE, "w") follows a link), then runs CMD.
    python = tmp_path / "python"
    python.write_text('#!/bin/bash\nout=$5; shift 6\necho \'{"node": "n1", "instances": []}\' '
                      '> "$out"\nexec "$@"\n')
    os.chmod(python, 0o755)
    job = tmp_path / "sim-job"
    job.write_text(sim_job_text(files, str(python)))
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "42", "SLURMD_NODENAME": "n1"}
    proc = subprocess.run(["bash", str(job), "echo", "ran"], capture_output=True, text=True,
                          env=env, timeout=30)
    assert (proc.returncode, proc.stdout) == (0, "ran\n"), proc.stderr
    assert victim.read_text() == "root's\n"
    assert not os.path.islink(files.seen_file(42))
    assert read_seen(files, 42) == {"node": "n1", "instances": []}
    assert os.listdir(files.seen) == ["42.json"]  # no temp file left
