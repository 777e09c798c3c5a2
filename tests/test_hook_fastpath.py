"""The hooks' fast path (:mod:`slurm_mig.hooks.fast`): taken in the common case, and every
doubt sends the hook to the full path, which gives the same result as without a fast path.

The node is the one of ``test_hooks.py`` (three simulated A100-40GB, seven 1g.5gb each),
**once with the simulator backend and once with the NVML backend** over the pynvml
look-alike on the same simulated driver (``paths.dev``/``paths.proc`` at the simulator's
``dev`` and ``proc``): the fast path is the same for every backend, so every test here runs
on both.  ``SLURM_MIG_HOOK_REPORT=1`` makes a hook name the path it took on stderr; these
tests read that line, then check the outcome itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from slurm_mig.core import devices
from slurm_mig.hooks import fast as hookfast, jobenv, run as hooks
from slurm_mig.host import config as config_mod
from slurm_mig.host.config import load_config
from slurm_mig.node import jobs
from slurm_mig.sim import driver as simdriver, fakenvml
from slurm_mig.sim.backend import SimBackend

import test_hooks
from test_hooks import NO_JOB, NODE, Node, one_error_line, run_sub, v1

sim_node = test_hooks.node  # the fixture, shared with test_hooks.py
FAST = "fast path"


class Recorder:
    """pynvml stand-in that passes everything to the look-alike and notes each nvml* call."""

    def __init__(self, module):
        self._module = module
        self.called: list = []

    def __getattr__(self, name):
        value = getattr(self._module, name)
        if not (name.startswith("nvml") and callable(value)):
            return value

        def call(*args, **kwargs):
            self.called.append(name)
            return value(*args, **kwargs)
        return call


@dataclass
class NvmlNode(Node):
    """A node whose config says ``backend = "nvml"``; subprocess hooks get the look-alike
    through :func:`slurm_mig.sim.fakenvml.write_pynvml_shim`."""

    shim_env: dict = field(default_factory=dict)
    nvml: Recorder = None

    def env(self, job, gpus=None, **extra):
        return super().env(job, gpus, **dict(self.shim_env, **extra))


@pytest.fixture
def nvml_node(cli, tmp_path, monkeypatch):
    """test_hooks.py's node, driven through the NVML backend over the look-alike."""
    sim = tmp_path / "host" / "sim"
    driver = simdriver.SimDriver.create(str(sim), ["A100-40GB"] * 3)
    path = tmp_path / "config.toml"
    path.write_text(f'version = 1\nbackend = "nvml"\n[paths]\nroot = "{tmp_path}/host"\n'
                    f'dev = "/sim/dev"\nproc = "/sim/proc"\n[sim]\nroot = "/sim"\n')
    recorder = Recorder(fakenvml.fake_pynvml(str(sim)))
    monkeypatch.setitem(sys.modules, "pynvml", recorder)
    assert cli("apply", "1g.5gb:7", config=str(path))[0] == 0
    for cmd in ("gres-conf", "node-conf"):
        code, _, err = cli(cmd, "--node", NODE, "--write", config=str(path))
        assert code == 0, err
    proc = tmp_path / "fakeproc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text(jobs.boot_id() or "")
    shim = fakenvml.write_pynvml_shim(str(tmp_path / "shim"))
    n = NvmlNode(str(path), load_config(str(path)), driver, [], str(proc),
                 shim_env={"PYTHONPATH": shim, fakenvml.SHIM_ROOT_ENV: str(sim)}, nvml=recorder)
    yield n
    for p in n.procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture(params=["sim", "nvml"])
def node(request):
    """The node, with each backend: the fast path must be the same for both."""
    return request.getfixturevalue(f"{request.param}_node")


def hook(node: Node, which: str, env: dict, capsys) -> tuple:
    """Run a hook in-process with the report on: (exit code, path taken, other stderr)."""
    env = dict(env, **{hookfast.REPORT_ENV: "1"})
    code = hooks.run_hook(which, env, proc_root=node.proc)
    out, err = capsys.readouterr()
    assert out == ""
    report = f"slurm-mig {which}: job {env.get('SLURM_JOB_ID')}: "
    lines = err.splitlines(keepends=True)
    assert lines and lines[0].startswith(report), err
    return code, lines[0][len(report):].strip(), "".join(lines[1:])


def full_only(node: Node, which: str, env: dict, capsys) -> tuple:
    """The same hook with the fast path switched off: (exit code, stderr)."""
    code = hooks.run_hook(which, dict(env, **{hookfast.FAST_ENV: "0"}), proc_root=node.proc)
    out, err = capsys.readouterr()
    return code, err


@pytest.fixture
def warm(node, capsys):
    """The node after one full prolog and epilog: config cache and snapshot written, and an
    idle fact for every instance (the full prolog reads one instance of each GPU, so it
    vouches for every idle instance of the three GPUs)."""
    code, path, err = hook(node, "prolog", node.env("1", "6,13,20"), capsys)
    assert code == 0 and path.startswith("full path (no config cache"), (path, err)
    assert hook(node, "epilog", node.env("1"), capsys)[:2] == (0, FAST)
    assert os.path.exists(hookfast.snapshot_path(node.config.paths.state_dir))
    assert os.path.exists(hookfast.cache_path(node.config_path))
    return node


def _expect_full(node, which, env, capsys, reason: str) -> tuple:
    code, path, err = hook(node, which, env, capsys)
    assert path.startswith("full path (") and reason in path, path
    return code, err


# ----------------------------------------------------------------------------- common case


def test_prolog_and_epilog_take_the_fast_path_once_warm(warm, capsys):
    recs = warm.records()
    code, path, err = hook(warm, "prolog", warm.env("10", "0,8"), capsys)
    assert (code, path, err) == (0, FAST, "")
    record = warm.record_of("10")
    for got, rec in zip(record["instances"], [recs[0], recs[8]]):
        assert (got["gpu"], got["gi_id"], got["ci_id"], got["start"]) == (rec.gpu, rec.gi_id, rec.ci_id, rec.start)
        assert got["uuid"] == warm.instance(rec.gpu, rec.gi_id).uuid and got["created"] is False
    path_ = jobs.job_path(warm.config.paths.state_dir, "10")
    assert oct(os.stat(path_).st_mode & 0o777) == "0o600"
    assert hook(warm, "epilog", warm.env("10"), capsys) == (0, FAST, "")
    assert warm.record_of("10") is None


def test_the_fast_prolog_writes_the_bytes_the_full_prolog_writes(warm, capsys):
    path = jobs.job_path(warm.config.paths.state_dir, "11")
    assert full_only(warm, "prolog", warm.env("11", "3,4"), capsys) == (0, "")
    full = open(path, "rb").read()
    os.unlink(path)
    assert hook(warm, "prolog", warm.env("11", "3,4"), capsys) == (0, FAST, "")
    assert open(path, "rb").read() == full


def test_the_fast_path_imports_no_engine(warm):
    heavy = ("slurm_mig.core.catalog", "slurm_mig.host.config", "slurm_mig.core.gresconf",
             "slurm_mig.gpu", "slurm_mig.gpu.backend", "slurm_mig.hooks.full", "slurm_mig.node.apply",
             "typing", "dataclasses", "tomllib", "tempfile", "pynvml", "ctypes")
    # What this interpreter loads before any of our code (an editable install's .pth
    # finder loads typing on some Pythons) does not count against the hook.
    probe = f"import sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    before = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60).stdout
    code = ("import sys; from slurm_mig.hooks.run import main; rc = main(['prolog']); "
            f"print(rc, sorted(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=warm.env("12", "5"),
                          capture_output=True, text=True, timeout=60)
    assert (proc.stdout, proc.stderr) == (f"0 {before.strip()}\n", "")
    assert warm.record_of("12") is not None


def test_a_subprocess_hook_reports_its_path(warm):
    proc = run_sub("prolog", warm.env("13", "6", **{hookfast.REPORT_ENV: "1"}))
    assert (proc.returncode, proc.stderr) == (0, "slurm-mig prolog: job 13: fast path\n")
    proc = run_sub("epilog", warm.env("13", **{hookfast.REPORT_ENV: "1"}))
    assert (proc.returncode, proc.stderr) == (0, "slurm-mig epilog: job 13: fast path\n")


def test_the_same_jobs_prolog_again_is_fast(warm, capsys):
    assert hook(warm, "prolog", warm.env("14", "7"), capsys)[:2] == (0, FAST)
    assert hook(warm, "prolog", warm.env("14", "7"), capsys)[:2] == (0, FAST)


def test_fast_epilog_without_a_record_says_so(warm, capsys):
    code, path, err = hook(warm, "epilog", warm.env("15"), capsys)
    assert (code, path) == (0, FAST)
    assert err == ("slurm-mig epilog: job 15: no job record (already cleaned up, or the job had "
                   "no gpu); nothing to do\n")


def test_fast_epilog_cannot_see_other_jobs_processes_and_leaves_them(warm, capsys):
    # Was: the fast epilog named them (it read the simulator's state).  Without the
    # driver's API no fast path can list processes on MIG instances (docs/hooks.md): it
    # leaves them alone as the full epilog does, and only the full epilog names them.
    rec = warm.records()[2]
    assert hook(warm, "prolog", warm.env("16", "1"), capsys)[:2] == (0, FAST)
    theirs = warm.spawn(v1("99"))
    warm.driver.attach_process(rec.gpu, rec.gi_id, rec.ci_id, theirs.pid, track=True)
    assert hook(warm, "epilog", warm.env("16"), capsys) == (0, FAST, "")
    assert theirs.poll() is None and warm.record_of("16") is None
    assert full_only(warm, "epilog", warm.env("16"), capsys) == (0, (
        "slurm-mig epilog: job 16: no job record (already cleaned up, or the job had no gpu); "
        f"nothing to do\nslurm-mig epilog: job 16: left pids {theirs.pid} alone (other jobs')\n"))


def test_switched_off_it_is_the_full_path(warm, capsys):
    env = warm.env("17", "2", **{hookfast.FAST_ENV: "0", hookfast.REPORT_ENV: "1"})
    assert hooks.run_hook("prolog", env) == 0
    assert capsys.readouterr().err == ""  # no report: the fast path was not even tried
    assert warm.record_of("17") is not None


# ----------------------------------------------------------------------------- doubts: prolog


def test_no_snapshot_then_full_path_writes_it(warm, capsys):
    os.unlink(hookfast.snapshot_path(warm.config.paths.state_dir))
    assert _expect_full(warm, "prolog", warm.env("20", "2"), capsys, "no readable snapshot") == (0, "")
    assert warm.record_of("20") is not None
    assert hook(warm, "prolog", warm.env("21", "3"), capsys)[:2] == (0, FAST)


@pytest.mark.parametrize("garbage", ["", "{not json", "[]", '{"version": 99}'])
def test_a_corrupt_snapshot_is_a_doubt_and_gets_rewritten(warm, capsys, garbage):
    with open(hookfast.snapshot_path(warm.config.paths.state_dir), "w") as f:
        f.write(garbage)
    assert _expect_full(warm, "prolog", warm.env("22", "2"), capsys, "snapshot")[0] == 0
    assert hook(warm, "prolog", warm.env("23", "3"), capsys)[:2] == (0, FAST)


def test_a_snapshot_with_broken_records_is_a_doubt(warm, capsys):
    path = hookfast.snapshot_path(warm.config.paths.state_dir)
    snap = json.load(open(path))
    snap["records"][2] = {"gpu": 0}
    json.dump(snap, open(path, "w"))
    code, _ = _expect_full(warm, "prolog", warm.env("24", "2"), capsys, "KeyError")
    assert code == 0 and warm.record_of("24")["instances"][0]["gi_id"] == warm.records()[2].gi_id
    assert hook(warm, "epilog", warm.env("24"), capsys)[:2] == (0, FAST)
    assert hook(warm, "prolog", warm.env("25", "2"), capsys)[:2] == (0, FAST)  # repaired


def test_missing_instance_falls_back_and_is_created(warm, capsys):
    rec = warm.records()[3]
    SimBackend(warm.config.sim.root).destroy_instance(rec.gpu, rec.gi_id)
    code, err = _expect_full(warm, "prolog", warm.env("25", "3"), capsys, f"has no gi {rec.gi_id}")
    assert (code, err) == (0, "")
    assert warm.record_of("25")["instances"][0]["created"] is True
    assert warm.instance(rec.gpu, rec.gi_id).ci_id == rec.ci_id


def test_instance_without_its_compute_instance_falls_back_and_is_completed(warm, capsys):
    rec = warm.records()[4]
    warm.driver.destroy_compute_instance(rec.gpu, rec.gi_id, rec.ci_id)
    code, err = _expect_full(warm, "prolog", warm.env("26", "4"), capsys, "no compute instance")
    assert (code, err) == (0, "")
    assert warm.instance(rec.gpu, rec.gi_id).ci_id == rec.ci_id


def _edit_sim_state(node: Node, edit) -> None:
    """Change the simulated driver's state by hand; its /proc then shows that state, as the
    kernel module's would (the fast path reads only that, never the state file)."""
    path = os.path.join(node.config.sim.root, "state.json")
    state = json.load(open(path))
    edit(state)
    json.dump(state, open(path, "w"))
    node.driver.refresh_proc()


def test_other_ids_in_the_driver_fall_back_to_the_full_paths_error(warm, capsys):
    rec = warm.records()[0]
    used = {m.gi_id for m in SimBackend(warm.config.sim.root).instances(rec.gpu)}
    free = next(g for g in range(7, 15) if g not in used)

    def renumber(state):
        gpu = next(g for g in state["gpus"] if g["index"] == rec.gpu)
        next(gi for gi in gpu["gis"] if gi["id"] == rec.gi_id)["id"] = free

    _edit_sim_state(warm, renumber)
    env = warm.env("27", "0")
    code, err = _expect_full(warm, "prolog", env, capsys, f"has no gi {rec.gi_id}")
    assert code == 4 and "the instance is missing and creating it failed" in one_error_line(err, "27")
    assert full_only(warm, "prolog", env, capsys) == (code, err)
    assert warm.record_of("27") is None


def test_a_compute_instance_with_another_id_falls_back(warm, capsys):
    rec = warm.records()[5]

    def renumber(state):
        gpu = next(g for g in state["gpus"] if g["index"] == rec.gpu)
        next(gi for gi in gpu["gis"] if gi["id"] == rec.gi_id)["cis"][0]["id"] = 3

    _edit_sim_state(warm, renumber)
    env = warm.env("28", "5")
    code, err = _expect_full(warm, "prolog", env, capsys, "compute instance is ci 3")
    assert code == 3 and "compute instance is ci 3, gres.conf names ci 0" in one_error_line(err, "28")
    assert full_only(warm, "prolog", env, capsys) == (code, err)


def test_a_replaced_gpu_falls_back(warm, capsys):
    def new_uuid(state):
        state["gpus"][0]["uuid"] = "GPU-00000000-0000-0000-0000-000000000000"

    _edit_sim_state(warm, new_uuid)
    assert _expect_full(warm, "prolog", warm.env("29", "0"), capsys, "not the GPU of the snapshot")[0] == 0
    assert hook(warm, "prolog", warm.env("30", "1"), capsys)[:2] == (0, FAST)  # snapshot renewed


def test_gres_conf_changed_after_the_snapshot_falls_back(warm, capsys):
    with open(warm.config.paths.gres_conf, "a") as f:
        f.write("# a comment the admin added\n")
    code, err = _expect_full(warm, "prolog", warm.env("31", "2"), capsys, "changed since the snapshot")
    assert (code, err) == (0, "")
    assert hook(warm, "prolog", warm.env("32", "3"), capsys)[:2] == (0, FAST)


def test_a_rewritten_record_in_gres_conf_gets_the_full_paths_error(warm, capsys):
    from test_hooks import _rewrite_record

    rec = warm.records()[0]
    used = {m.gi_id for m in SimBackend(warm.config.sim.root).instances(rec.gpu)}
    _rewrite_record(warm, 0, next(g for g in range(15) if g not in used))
    env = warm.env("33", "0")
    code, err = _expect_full(warm, "prolog", env, capsys, "changed since the snapshot")
    assert code == 4 and "the instance is missing and creating it failed" in one_error_line(err, "33")
    assert full_only(warm, "prolog", env, capsys) == (code, err)


def test_node_include_changed_after_the_snapshot_falls_back(warm, capsys):
    with open(warm.config.paths.node_gres_include, "a") as f:
        f.write("# edited\n")
    assert _expect_full(warm, "prolog", warm.env("34", "2"), capsys, "changed since the snapshot")[0] == 0


def test_mig_minors_changed_after_the_snapshot_falls_back(warm, capsys):
    path = os.path.join(warm.config.sim.root, "proc", devices.MIG_MINORS_RELPATH)
    with open(path, "a") as f:
        f.write("\n")
    assert _expect_full(warm, "prolog", warm.env("35", "2"), capsys, "changed since the snapshot")[0] == 0


def test_config_changed_after_its_cache_falls_back(warm, capsys):
    with open(warm.config_path, "a") as f:
        f.write("[hooks]\nkill_grace = 1\n")
    assert _expect_full(warm, "prolog", warm.env("36", "2"), capsys, "config changed")[0] == 0
    assert hook(warm, "prolog", warm.env("37", "3"), capsys)[:2] == (0, FAST)  # cache renewed


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the cache another owner")
def test_a_config_cache_of_another_owner_is_not_trusted(warm, capsys):
    os.chown(hookfast.cache_path(warm.config_path), 12345, -1)
    assert _expect_full(warm, "prolog", warm.env("38", "2"), capsys, "another owner")[0] == 0


def test_missing_device_file_falls_back_to_exit_4(warm, capsys):
    rec = warm.records()[2]
    os.unlink(rec.files[0])  # /dev/nvidia<N>: the driver's; the full path cannot make it
    env = warm.env("39", "2")
    code, err = _expect_full(warm, "prolog", env, capsys, f"{rec.files[0]} is missing")
    assert code == 4 and f"device file(s) {rec.files[0]} missing" in one_error_line(err, "39")
    assert full_only(warm, "prolog", env, capsys) == (code, err)


def test_missing_cap_file_falls_back_to_the_full_path_which_makes_it(warm, capsys):
    rec = warm.records()[2]
    os.unlink(rec.files[2])
    code, _ = _expect_full(warm, "prolog", warm.env("39", "2"), capsys, f"{rec.files[2]} is missing")
    assert code == 0 and os.path.exists(rec.files[2])


def test_instance_held_by_another_job_falls_back_to_exit_5(warm, capsys):
    assert hook(warm, "prolog", warm.env("40", "5"), capsys)[:2] == (0, FAST)
    env = warm.env("41", "5")
    code, err = _expect_full(warm, "prolog", env, capsys, "held by job 40")
    assert code == 5 and "is held by job 40" in one_error_line(err, "41")
    assert full_only(warm, "prolog", env, capsys) == (code, err)


def test_instance_with_processes_falls_back(warm, capsys):
    # Job 77 had the instance; its record was removed by hand while its process still runs
    # there.  The fast path has no idle fact for it (job 77's prolog used it up), so the full
    # prolog runs and refuses, exactly as without a fast path.
    rec = warm.records()[6]
    assert hook(warm, "prolog", warm.env("77", "6"), capsys)[:2] == (0, FAST)
    other = warm.spawn(v1("77"))
    warm.driver.attach_process(rec.gpu, rec.gi_id, rec.ci_id, other.pid, track=True)
    os.unlink(jobs.job_path(warm.config.paths.state_dir, "77"))
    env = warm.env("42", "6")
    code, err = _expect_full(warm, "prolog", env, capsys, f"no fact that gpu {rec.gpu} gi {rec.gi_id} is idle")
    assert code == 5 and f"pid {other.pid} (uid 1000) belongs to job 77" in one_error_line(err, "42")
    assert full_only(warm, "prolog", env, capsys) == (code, err)
    other.kill()
    other.wait()
    # Was: the next prolog was fast at once.  Now the first one checks through the driver
    # and records the fact that the next ones trust.
    assert hook(warm, "prolog", warm.env("43", "6"), capsys)[:2] == (0, f"full path (gres record 6: no fact that gpu {rec.gpu} gi {rec.gi_id} is idle (a full hook writes one when the driver shows it idle))")
    assert hook(warm, "epilog", warm.env("43"), capsys)[:2] == (0, FAST)
    assert hook(warm, "prolog", warm.env("44", "6"), capsys)[:2] == (0, FAST)


def test_a_process_on_a_free_instance_the_fast_prolog_vouched_for_is_not_seen(warm, capsys):
    # The residual risk docs/hooks.md names: a process that reached a free instance without
    # Slurm (root, or a node without ConstrainDevices) after the last check through the
    # driver.  The fast prolog cannot see it; the full prolog refuses it and forgets the
    # instance's idle fact, so the prologs after it check through the driver again.
    rec = warm.records()[5]
    stray = warm.spawn(NO_JOB)
    warm.attach(stray, 5)
    assert hook(warm, "prolog", warm.env("45", "5"), capsys)[:2] == (0, FAST)
    os.unlink(jobs.job_path(warm.config.paths.state_dir, "45"))
    code, err = full_only(warm, "prolog", warm.env("46", "5"), capsys)
    assert code == 5 and f"pid {stray.pid} (uid 1000) belongs to no Slurm job" in one_error_line(err, "46")
    assert not os.path.exists(hookfast.fact_path(warm.config.paths.state_dir, rec.gpu, rec.gi_id))
    code, path, _ = hook(warm, "prolog", warm.env("47", "5"), capsys)
    assert code == 5 and path.startswith("full path (") and "is idle" in path


def test_index_past_the_records_falls_back_to_exit_3(warm, capsys):
    env = warm.env("44", "21")
    code, err = _expect_full(warm, "prolog", env, capsys, "not in the snapshot")
    assert code == 3 and "SLURM_JOB_GPUS index 21 but" in one_error_line(err, "44")


@pytest.mark.parametrize("job, gpus", [("4x", "0"), ("44", "0,zero")])
def test_garbled_input_falls_back_to_exit_2(warm, capsys, job, gpus):
    code, path, err = hook(warm, "prolog", warm.env(job, gpus), capsys)
    assert path.startswith("full path (") and code == 2
    one_error_line(err, job)


def test_no_node_name_falls_back(warm, capsys):
    env = warm.env("45", "2")
    del env["SLURMD_NODENAME"]
    code, path, _ = hook(warm, "prolog", env, capsys)
    assert path == "full path (SLURMD_NODENAME is not set)"


def test_a_snapshot_of_another_node_is_not_used(warm, capsys):
    env = warm.env("46", "2", SLURMD_NODENAME="n2")
    code, path, err = hook(warm, "prolog", env, capsys)
    assert path == "full path (snapshot is for node n1)" and code == 3  # n2 has no records


# ----------------------------------------------------------------------------- doubts: driver and facts


def _fact(node: Node, index: int, job: str | None = None) -> str:
    rec = node.records()[index]
    return hookfast.fact_path(node.config.paths.state_dir, rec.gpu, rec.gi_id, job)


def _proc(node: Node, *parts: str) -> str:
    return os.path.join(node.config.sim.root, "proc", *parts)


def test_the_fast_path_asks_the_driver_nothing(warm, capsys):
    state = os.path.join(warm.config.sim.root, "state.json")
    os.rename(state, state + ".away")  # any read of the simulator's state would fail
    try:
        if isinstance(warm, NvmlNode):
            warm.nvml.called.clear()
        assert hook(warm, "prolog", warm.env("60", "0,9,15"), capsys) == (0, FAST, "")
        assert hook(warm, "epilog", warm.env("60"), capsys) == (0, FAST, "")
        if isinstance(warm, NvmlNode):
            assert warm.nvml.called == []
    finally:
        os.rename(state + ".away", state)


def test_a_subprocess_full_prolog_then_fast_hooks(warm):
    # As slurmd runs them; the NVML node's full path gets the look-alike through the shim.
    env = warm.env("61", "2", **{hookfast.REPORT_ENV: "1"})
    proc = run_sub("prolog", dict(env, **{hookfast.FAST_ENV: "0"}))
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = run_sub("epilog", env)
    assert (proc.returncode, proc.stderr) == (0, "slurm-mig epilog: job 61: fast path\n")
    proc = run_sub("prolog", dict(env, SLURM_JOB_ID="62"))
    assert (proc.returncode, proc.stderr) == (0, "slurm-mig prolog: job 62: fast path\n")


def test_a_reboot_sends_the_prolog_to_the_full_path(warm, capsys):
    boot = os.path.join(warm.proc, "sys", "kernel", "random", "boot_id")
    with open(boot, "w") as f:
        f.write("00000000-0000-4000-8000-000000000000\n")
    assert _expect_full(warm, "prolog", warm.env("63", "2"), capsys, "booted again") == (0, "")
    assert hook(warm, "epilog", warm.env("63"), capsys)[:2] == (0, FAST)
    assert hook(warm, "prolog", warm.env("64", "2"), capsys)[:2] == (0, FAST)


def test_a_fact_from_another_boot_is_not_trusted(warm, capsys):
    path = _fact(warm, 2)
    fact = json.load(open(path))
    json.dump(dict(fact, boot_id="another"), open(path, "w"))
    assert _expect_full(warm, "prolog", warm.env("65", "2"), capsys, "from another boot") == (0, "")


def test_a_driver_loaded_again_sends_the_prolog_to_the_full_path(warm, capsys):
    path = _proc(warm, hookfast.DRIVER_VERSION_RELPATH)
    text = open(path).read()
    os.unlink(path)
    with open(path, "w") as f:  # a new entry, as after `modprobe -r nvidia; modprobe nvidia`
        f.write(text)
    assert _expect_full(warm, "prolog", warm.env("66", "2"), capsys,
                        "changed since the snapshot (the driver was loaded again?)") == (0, "")
    assert hook(warm, "prolog", warm.env("67", "3"), capsys)[:2] == (0, FAST)


def test_no_driver_version_file_means_no_fast_path(warm, capsys):
    os.unlink(_proc(warm, hookfast.DRIVER_VERSION_RELPATH))
    code, _ = _expect_full(warm, "prolog", warm.env("68", "2"), capsys, "version is missing")
    assert code == 0
    assert _expect_full(warm, "prolog", warm.env("69", "3"), capsys, "version is missing")[0] == 0


def test_an_apply_since_the_fact_sends_the_prolog_to_the_full_path(warm, cli, capsys):
    assert cli("apply", "3g.20gb:2", "--gpu", "2", config=warm.config_path)[0] == 0
    code, err = _expect_full(warm, "prolog", warm.env("70", "2"), capsys, "an apply ran since")
    assert (code, err) == (0, "")
    assert hook(warm, "prolog", warm.env("71", "3"), capsys)[:2] == (0, FAST)  # GPU 0 vouched again


def test_an_instance_made_again_with_the_same_ids_is_not_trusted(warm, capsys):
    # Another tool (or a reset) destroyed and made the instance again: same ids, a new MIG
    # UUID, new capability entries.  The fast path must not write the old UUID.
    rec = warm.records()[2]
    backend = SimBackend(warm.config.sim.root)
    old = warm.instance(rec.gpu, rec.gi_id)
    backend.destroy_instance(rec.gpu, rec.gi_id)
    new = backend.create_instance(rec.gpu, old.profile_id, old.start)
    assert (new.gi_id, new.ci_id) == (old.gi_id, old.ci_id) and new.uuid != old.uuid
    code, err = _expect_full(warm, "prolog", warm.env("72", "2"), capsys, "made again since")
    assert (code, err) == (0, "") and warm.record_of("72")["instances"][0]["uuid"] == new.uuid


def test_a_capability_of_another_minor_is_a_doubt(warm, capsys):
    rec = warm.records()[2]
    minor = warm.driver.gpus()[rec.gpu]["minor"]
    path = hookfast.cap_path(os.path.join(warm.config.sim.root, "proc"), minor, rec.gi_id)
    with open(path, "w") as f:
        f.write("DeviceFileMinor: 9999\nDeviceFileMode: 292\nDeviceFileModify: 1\n")
    code, _ = _expect_full(warm, "prolog", warm.env("73", "2"), capsys, "capability is minor 9999")
    assert code == 0


def test_no_gpu_information_file_is_a_doubt(warm, capsys):
    rec = warm.records()[2]
    info = json.load(open(hookfast.snapshot_path(warm.config.paths.state_dir)))["gpus"][str(rec.gpu)]["info"]
    os.unlink(info)
    assert _expect_full(warm, "prolog", warm.env("74", "2"), capsys, "not the GPU of the snapshot")[0] == 0


def test_no_idle_fact_then_the_full_prolog_vouches_again(warm, capsys):
    os.unlink(_fact(warm, 2))
    code, err = _expect_full(warm, "prolog", warm.env("75", "2"), capsys, "no fact that")
    assert (code, err) == (0, "")
    assert hook(warm, "epilog", warm.env("75"), capsys)[:2] == (0, FAST)
    assert hook(warm, "prolog", warm.env("76", "2"), capsys)[:2] == (0, FAST)


@pytest.mark.parametrize("garbage", ["", "{not json", "[]", '{"version": 1}'])
def test_a_damaged_fact_is_a_doubt(warm, capsys, garbage):
    with open(_fact(warm, 2), "w") as f:
        f.write(garbage)
    assert _expect_full(warm, "prolog", warm.env("77", "2"), capsys, _fact(warm, 2))[0] == 0


def test_a_fact_for_another_profile_is_a_doubt(warm, capsys):
    fact = json.load(open(_fact(warm, 2)))
    json.dump(dict(fact, profile_id=14), open(_fact(warm, 2), "w"))
    assert _expect_full(warm, "prolog", warm.env("78", "2"), capsys, "its fact names profile_id 14")[0] == 0


def test_a_fact_behind_a_symlink_is_never_followed(warm, capsys):
    path = _fact(warm, 2)
    os.rename(path, path + ".real")
    os.symlink(path + ".real", path)
    code, _ = _expect_full(warm, "prolog", warm.env("79", "2"), capsys, "cannot be read")
    assert code == 0


def test_a_prolog_takes_an_idle_fact_and_its_epilog_gives_it_back(warm, capsys):
    idle, held = _fact(warm, 2), _fact(warm, 2, "80")
    assert json.load(open(idle))["fast_epilogs"] == 0
    assert hook(warm, "prolog", warm.env("80", "2"), capsys)[:2] == (0, FAST)
    assert (os.path.exists(idle), os.path.exists(held)) == (False, True)
    # Another job given the same instance meanwhile: held by job 80 (its record), full path.
    assert _expect_full(warm, "prolog", warm.env("81", "2"), capsys, "held by job 80")[0] == 5
    assert hook(warm, "epilog", warm.env("80"), capsys)[:2] == (0, FAST)
    assert (os.path.exists(idle), os.path.exists(held)) == (True, False)
    assert json.load(open(idle))["fast_epilogs"] == 1


# ----------------------------------------------------------------------------- doubts: epilog


def test_epilog_with_the_jobs_process_takes_the_full_path_and_ends_it(warm, capsys):
    rec = warm.records()[2]
    assert hook(warm, "prolog", warm.env("50", "2"), capsys)[:2] == (0, FAST)
    mine = warm.spawn(v1("50"))
    warm.driver.attach_process(rec.gpu, rec.gi_id, rec.ci_id, mine.pid, track=True)
    code, err = _expect_full(warm, "epilog", warm.env("50"), capsys, f"pid {mine.pid} of the job")
    assert (code, err) == (0, "")
    mine.wait(timeout=10)
    assert warm.record_of("50") is None


def test_a_stray_on_the_jobs_instance_is_ended_by_the_epilog_that_asks_the_driver(warm, capsys):
    # Was: the first fast epilog saw the stray (it read the simulator's state) and took the
    # full path.  Without the driver's API it cannot see it; after FAST_EPILOGS_IN_A_ROW
    # fast epilogs on the instance the next one asks the driver, finds it, and takes the
    # full path, which ends it.
    stray = warm.spawn(NO_JOB, environ=b"SLURM_JOB_ID=99\0")
    warm.attach(stray, 3)
    # The warm node's fact for record 3 comes from a full prolog: no fast epilog yet.
    for n in range(hookfast.FAST_EPILOGS_IN_A_ROW):
        job = str(530 + n)
        assert hook(warm, "prolog", warm.env(job, "3"), capsys)[:2] == (0, FAST)
        assert hook(warm, "epilog", warm.env(job), capsys) == (0, FAST, "")
        assert stray.poll() is None
    assert hook(warm, "prolog", warm.env("53", "3"), capsys)[:2] == (0, FAST)
    code, err = _expect_full(warm, "epilog", warm.env("53"), capsys,
                             f"fast epilogs in a row the driver shows pids {stray.pid} on")
    assert code == 0 and err.startswith(f"slurm-mig epilog: job 53: ended stray processes on its "
                                        f"instances: pid {stray.pid} (uid 1000) belongs to no Slurm job")
    stray.wait(timeout=10)
    assert warm.record_of("53") is None
    # The full epilog saw the instance idle: the count starts again.
    assert hook(warm, "prolog", warm.env("54", "3"), capsys)[:2] == (0, FAST)
    assert hook(warm, "epilog", warm.env("54"), capsys) == (0, FAST, "")


def _fast_epilogs(node: Node, index: int, job: str, count: int) -> None:
    """Set the count of fast epilogs in job ``job``'s held fact (as after that many)."""
    path = _fact(node, index, job)
    json.dump(dict(json.load(open(path)), fast_epilogs=count), open(path, "w"))


def test_the_epilog_that_asks_the_driver_and_finds_nothing_stays_fast(warm, capsys):
    rec = warm.records()[3]
    assert hook(warm, "prolog", warm.env("55", "3"), capsys)[:2] == (0, FAST)
    _fast_epilogs(warm, 3, "55", hookfast.FAST_EPILOGS_IN_A_ROW)
    if isinstance(warm, NvmlNode):
        warm.nvml.called.clear()
    assert hook(warm, "epilog", warm.env("55"), capsys) == (0, FAST, "")
    fact = json.load(open(_fact(warm, 3)))
    assert (fact["fast_epilogs"], fact["by"]) == (0, "epilog of job 55, checked with the driver")
    if isinstance(warm, NvmlNode):  # the smallest query NVML has, nothing more
        assert set(warm.nvml.called) == {
            "nvmlInit", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMaxMigDeviceCount",
            "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetGpuInstanceId",
            "nvmlDeviceGetComputeInstanceId", "nvmlDeviceGetComputeRunningProcesses",
            "nvmlShutdown"}
        assert warm.nvml.called.count("nvmlDeviceGetComputeRunningProcesses") == 1
    assert warm.instance(rec.gpu, rec.gi_id).pids == ()


def test_the_epilog_that_asks_the_driver_and_finds_no_instance_takes_the_full_path(warm, capsys):
    rec = warm.records()[3]
    assert hook(warm, "prolog", warm.env("56", "3"), capsys)[:2] == (0, FAST)
    _fast_epilogs(warm, 3, "56", hookfast.FAST_EPILOGS_IN_A_ROW)
    state = os.path.join(warm.config.sim.root, "state.json")
    data = json.load(open(state))
    gpu = next(g for g in data["gpus"] if g["index"] == rec.gpu)
    next(gi for gi in gpu["gis"] if gi["id"] == rec.gi_id)["cis"][0]["id"] = 5  # not in /proc
    json.dump(data, open(state, "w"))
    code, _ = _expect_full(warm, "epilog", warm.env("56"), capsys, f"the driver lists no gpu {rec.gpu}")
    assert code == 0 and warm.record_of("56") is None


def test_fast_epilog_leaves_a_stray_on_another_instance_alone(warm, capsys):
    # Was: the fast epilog also named it.  It cannot see it; the full epilog names it.
    assert hook(warm, "prolog", warm.env("54", "3"), capsys)[:2] == (0, FAST)
    stray = warm.spawn(NO_JOB, environ=b"SLURM_JOB_ID=54\0")
    warm.attach(stray, 4)
    assert hook(warm, "epilog", warm.env("54"), capsys) == (0, FAST, "")
    assert stray.poll() is None and warm.record_of("54") is None
    assert full_only(warm, "epilog", warm.env("54"), capsys) == (0, (
        "slurm-mig epilog: job 54: no job record (already cleaned up, or the job had no gpu); "
        f"nothing to do\nslurm-mig epilog: job 54: left pids {stray.pid} alone (no job's, on "
        "instances this job did not hold; a prolog there refuses them)\n"))


def test_epilog_without_its_held_fact_takes_the_full_path(warm, capsys):
    assert hook(warm, "prolog", warm.env("82", "2"), capsys)[:2] == (0, FAST)
    os.unlink(_fact(warm, 2, "82"))
    assert _expect_full(warm, "epilog", warm.env("82"), capsys, "has no fact held by the job") == (0, "")
    assert warm.record_of("82") is None
    assert hook(warm, "prolog", warm.env("83", "2"), capsys)[:2] == (0, FAST)  # the full epilog vouched


def test_epilog_after_the_prolog_made_the_instance_takes_the_full_path(warm, capsys):
    rec = warm.records()[3]
    SimBackend(warm.config.sim.root).destroy_instance(rec.gpu, rec.gi_id)
    assert hook(warm, "prolog", warm.env("84", "3"), capsys)[:2] == (0, f"full path (gres record 3: gpu {rec.gpu} has no gi {rec.gi_id} ({hookfast.cap_path(os.path.join(warm.config.sim.root, 'proc'), warm.driver.gpus()[rec.gpu]['minor'], rec.gi_id)} is missing))")
    assert _expect_full(warm, "epilog", warm.env("84"), capsys, "has no fact held by the job") == (0, "")
    assert hook(warm, "prolog", warm.env("85", "3"), capsys)[:2] == (0, FAST)


def test_epilog_after_the_instance_was_made_again_takes_the_full_path(warm, capsys):
    rec = warm.records()[2]
    assert hook(warm, "prolog", warm.env("86", "2"), capsys)[:2] == (0, FAST)
    backend = SimBackend(warm.config.sim.root)
    old = warm.instance(rec.gpu, rec.gi_id)
    backend.destroy_instance(rec.gpu, rec.gi_id)
    backend.create_instance(rec.gpu, old.profile_id, old.start)
    assert _expect_full(warm, "epilog", warm.env("86"), capsys, "made again since") == (0, "")
    assert hook(warm, "prolog", warm.env("87", "2"), capsys)[:2] == (0, FAST)


def test_epilog_after_an_apply_takes_the_full_path(warm, cli, capsys):
    assert hook(warm, "prolog", warm.env("88", "2"), capsys)[:2] == (0, FAST)
    assert cli("apply", "3g.20gb:2", "--gpu", "2", config=warm.config_path)[0] == 0
    assert _expect_full(warm, "epilog", warm.env("88"), capsys, "an apply ran since") == (0, "")


def test_a_stale_record_from_another_boot_is_removed_by_the_fast_epilog(warm, capsys):
    assert hook(warm, "prolog", warm.env("89", "2"), capsys)[:2] == (0, FAST)
    path = jobs.job_path(warm.config.paths.state_dir, "89")
    record = json.load(open(path))
    json.dump(dict(record, boot_id="another"), open(path, "w"))
    assert hook(warm, "epilog", warm.env("89"), capsys) == (0, FAST, "")
    assert warm.record_of("89") is None


def test_epilog_wipe_takes_the_full_path(warm, capsys):
    rec = warm.records()[9]
    assert hook(warm, "prolog", warm.env("51", "9"), capsys)[:2] == (0, FAST)
    before = warm.instance(rec.gpu, rec.gi_id).uuid
    env = warm.env("51", **{jobenv.WIPE_ENV: "1"})
    assert _expect_full(warm, "epilog", env, capsys, "wipes") == (0, "")
    assert warm.instance(rec.gpu, rec.gi_id).uuid != before


def test_epilog_with_an_unreadable_record_takes_the_full_path_which_moves_it_aside(warm, capsys):
    os.makedirs(jobs.jobs_dir(warm.config.paths.state_dir), exist_ok=True)
    path = jobs.job_path(warm.config.paths.state_dir, "52")
    with open(path, "w") as f:
        f.write("{")
    code, err = _expect_full(warm, "epilog", warm.env("52"), capsys, "unreadable")
    assert code == 0 and err.count("\n") == 1
    assert err.startswith(f"slurm-mig epilog: job 52: job record {path} is damaged (not JSON: ")
    assert f"moved to {path}.corrupt" in err and not os.path.exists(path)


def test_a_damaged_record_of_another_job_sends_the_prolog_to_the_full_path(warm, capsys):
    with open(jobs.job_path(warm.config.paths.state_dir, "53"), "w") as f:
        f.write('{"version": 1, "job_id": "53", "instances": [{"gpu": 0, "gi_id": "x"}]}')
    code, err = _expect_full(warm, "prolog", warm.env("54", "0"), capsys, "a job record is damaged")
    assert code == 5 and "may be held by job 53" in one_error_line(err, "54")


# ----------------------------------------------------------------------------- contracts


def test_the_fast_path_names_what_the_engine_names():
    from slurm_mig.gpu import instancepids, nvmlcodes
    from slurm_mig.node import journal

    assert instancepids.NOT_FOUND == nvmlcodes.NOT_FOUND
    assert hookfast.CONFIG_ENV == config_mod.ENV_VAR
    assert hookfast.DEFAULT_CONFIG == config_mod.DEFAULT_PATH
    assert hookfast.MIG_MINORS_RELPATH == devices.MIG_MINORS_RELPATH
    assert hookfast.JOURNAL_DIR == journal.JOURNAL_DIR


@pytest.mark.parametrize("backend", ["sim", "nvml"])
def test_the_fast_path_finds_the_drivers_files_where_the_engine_does(tmp_path, backend):
    from slurm_mig.host.config import host_paths

    path = tmp_path / "config.toml"
    path.write_text(f'version = 1\nbackend = "{backend}"\n[paths]\nroot = "{tmp_path}"\n')
    config = load_config(str(path))
    assert hookfast.settings(config)["proc"] == host_paths(config)[1]


def test_the_simulator_shows_the_files_the_fast_path_reads(tmp_path):
    driver = simdriver.SimDriver.create(str(tmp_path), ["A100-40GB"])
    made = SimBackend(str(tmp_path)).create_instance(0, 19, 0)
    proc = str(tmp_path / "proc")
    assert hookfast.identity(os.path.join(proc, hookfast.DRIVER_VERSION_RELPATH)) is not None
    (info_path, minor), = hookfast.gpu_information(proc).values()
    assert minor == "0" and list(hookfast.gpu_information(proc)) == [driver.gpus()[0]["uuid"]]
    fm = devices.formula_minors([0])
    assert hookfast.read_cap(hookfast.cap_path(proc, 0, made.gi_id))[0] == fm.gi_minor(0, made.gi_id)
    assert hookfast.read_cap(hookfast.cap_path(proc, 0, made.gi_id, 0))[0] == fm.ci_minor(0, made.gi_id, 0)


def test_an_unwritable_config_dir_only_means_no_cache(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text("version = 1\n")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(hookfast.os, "open", refuse)
    hookfast.write_config_cache(str(cfg))  # no exception
    monkeypatch.undo()
    assert not os.path.exists(hookfast.cache_path(str(cfg)))
