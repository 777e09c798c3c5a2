"""``slurm-mig sandbox up|status|reconfigure|down`` and ``slurm-mig demo`` against a real Slurm.

Every command runs as its own process (``python -m slurm_mig``), as a person would run it: the
cluster ``up`` starts must outlive ``up`` and be stopped by a later ``down``.  The cluster tests
need root, munge and Slurm and are skipped with the reason otherwise; the bad-input tests run
anywhere.  Set SLURM_MIG_KEEP_SANDBOX=1 to keep the sandbox directory.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
from typing import Dict, List

import pytest

from slurm_mig.sandbox import missing_requirements
from slurm_mig.slurm.scontrol import parse_scontrol_nodes

MISSING = missing_requirements()
needs_slurm = [pytest.mark.slurm,
               pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]

LAYOUT = {"1g.10gb": 4, "3g.40gb": 1}  # the default layout, 1g.10gb:4,3g.40gb:1
UP_KEYS = {"root", "already_up", "seconds", "nodes", "gpus", "layout", "gres", "isolation", "env",
           "sim_job", "node_configs", "controller_config", "timers"}
STATUS_KEYS = {"root", "running", "spec", "daemons", "isolation", "env", "controller_config",
               "nodes", "queue"}
NODE_KEYS = {"name", "config", "state", "flags", "gres", "gres_used", "reason", "extra", "gpus",
             "jobs"}
DAEMONS = {"munged", "slurmctld", "slurmd-n1", "slurmd-n2", "timer-n1", "timer-n2"}
GPU_KEYS = {"index", "model", "layout", "instances"}
INSTANCE_KEYS = {"profile", "start", "gi_id", "ci_id", "uuid", "jobs", "pids", "busy"}
DOWN_KEYS = {"root", "was_running", "stopped", "cancelled", "purged"}


def _env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "SBATCH"))}


def slurm_mig(*args: str, timeout: float = 120, umask: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slurm_mig", *args], capture_output=True,
                          text=True, env=_env(), timeout=timeout, umask=umask)


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _new_root(tag: str) -> str:
    """A path under /var/tmp that does not exist yet: `up` makes its root itself (it refuses
    an existing directory it did not make, tests/test_sandbox_root.py)."""
    return f"/var/tmp/smig-{tag}-{secrets.token_hex(4)}"


class Sandbox:
    def __init__(self, root: str, up_text: str):
        self.root = root
        self.up_text = up_text
        found = re.search(r"^export SLURM_CONF=(\S+)$", up_text, re.M)
        assert found, up_text
        self.slurm_conf = found.group(1)

    def slurm(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command with only the SLURM_CONF that `up` printed."""
        env = dict(_env(), SLURM_CONF=self.slurm_conf)
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=30,
                              cwd=os.path.join(self.root, "jobs"))  # job output files go there
        assert not check or proc.returncode == 0, (argv, proc.stderr)
        return proc

    def nodes(self):
        return parse_scontrol_nodes(self.slurm("scontrol", "show", "node", "-o").stdout)

    def sbatch(self, *args: str) -> int:
        return int(self.slurm("sbatch", "--parsable", *args).stdout.strip().split(";")[0])

    def sim_job(self, gres: str, *command: str, node: str = "") -> int:
        where = ["-w", node] if node else []
        return self.sbatch(f"--gres=gpu:{gres}", *where, f"{self.root}/bin/sim-job", *command)

    def job_state(self, job: int) -> str:
        out = self.slurm("scontrol", "show", "job", "-o", str(job)).stdout
        return re.search(r"JobState=(\S+)", out).group(1)

    def job_node(self, job: int) -> str:
        out = self.slurm("scontrol", "show", "job", "-o", str(job)).stdout
        return re.search(r" NodeList=(\S+)", out).group(1)

    def wait_jobs(self, jobs: List[int], timeout: float = 30) -> Dict[int, str]:
        deadline = time.monotonic() + timeout
        states = {}
        for j in jobs:
            while True:
                states[j] = self.job_state(j)
                if states[j] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                    break
                assert time.monotonic() < deadline, states
                time.sleep(0.2)
        return states

    def seen(self, job: int, timeout: float = 0.0) -> dict:
        path = os.path.join(self.root, "seen", f"{job}.json")
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        with open(path) as f:
            return json.load(f)

    def status(self) -> dict:
        proc = slurm_mig("sandbox", "status", "--root", self.root, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def wait_idle(self, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            if all(n.state == "idle" and n.responding for n in nodes.values()):
                return nodes
            assert time.monotonic() < deadline, nodes
            time.sleep(0.2)


def _up(root: str, *options: str, umask: int = -1) -> Sandbox:
    t0 = time.monotonic()
    proc = slurm_mig("sandbox", "up", "--root", root, *options, umask=umask)
    assert proc.returncode == 0, proc.stderr
    print(f"\nsandbox up {' '.join(options)}: {time.monotonic() - t0:.1f}s")
    return Sandbox(root, proc.stdout)


def _purge(root: str) -> None:
    proc = slurm_mig("sandbox", "down", "--root", root, "--purge")
    if os.environ.get("SLURM_MIG_KEEP_SANDBOX"):
        return
    shutil.rmtree(root, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def sbx():
    if MISSING:
        pytest.skip("needs " + "; ".join(MISSING))
    root = _new_root("cli")
    try:
        yield _up(root, umask=0)  # whatever the umask, modes are exact (the first test)
    finally:
        _purge(root)


# ----------------------------------------------------------------------------- a running sandbox


def _writable_by_others(root: str) -> Dict[str, str]:
    """Files and directories under ``root`` that group or others can write (sockets aside:
    munged makes its own 0777 by design), and device nodes: path -> mode."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            loose = kind in (stat.S_IFREG, stat.S_IFDIR) and st.st_mode & 0o022
            if loose or kind == stat.S_IFCHR:
                out[os.path.relpath(path, root)] = f"{stat.S_IMODE(st.st_mode):04o}"
    return out


class TestRunningSandbox:
    pytestmark = needs_slurm

    def test_up_under_umask_0_leaves_nothing_others_can_write_but_seen(self, sbx):
        """`up` ran with umask 0 (the fixture): its files, the daemons' and the node timers'."""
        found = _writable_by_others(sbx.root)
        devices = {p: m for p, m in found.items() if "/dev/" in p}
        assert {p: m for p, m in found.items() if p not in devices} == {"seen": "1777"}
        assert {m for p, m in devices.items() if p.endswith("/nvidia-caps/nvidia-cap1")} == {"0400"}
        assert {m for p, m in devices.items() if "/nvidia-caps/" in p
                and not p.endswith("/nvidia-cap1")} == {"0444"}
        assert {m for p, m in devices.items() if "/nvidia-caps/" not in p} == {"0666"}

    def test_up_prints_shell_lines_and_every_node_is_idle_with_the_layout_gres(self, sbx):
        nodes = sbx.nodes()
        assert sorted(nodes) == ["n1", "n2"]
        assert {n: (s.state, dict(s.gres)) for n, s in nodes.items()} == {
            "n1": ("idle", LAYOUT), "n2": ("idle", LAYOUT)}
        shell = subprocess.run(["bash", "-c", 'eval "$1"; echo "$SLURM_CONF $SLURM_MIG_CONFIG"',
                                "-", sbx.up_text], capture_output=True, text=True, check=True)
        assert shell.stdout.split() == [sbx.slurm_conf, f"{sbx.root}/nodes/n1/config.toml"]

    def test_a_job_per_profile_reaches_the_instance_slurm_gave_it(self, sbx):
        jobs = {sbx.sim_job(f"{p}:1", "sleep", "0.5"): p for p in ("3g.40gb", "1g.10gb")}
        assert set(sbx.wait_jobs(list(jobs)).values()) == {"COMPLETED"}
        status = sbx.status()
        fenced = status["isolation"]["devices"]
        for job, profile in jobs.items():
            seen = sbx.seen(job)
            [inst] = seen["instances"]
            assert inst["type"] == profile
            node = next(n for n in status["nodes"] if n["name"] == seen["node"])
            [match] = [i for g in node["gpus"] for i in g["instances"]
                       if (i["gi_id"], i["ci_id"]) == (inst["gi_id"], inst["ci_id"])]
            assert (match["profile"], match["uuid"]) == (profile, inst["uuid"])
            if fenced:  # ENXIO: the cgroup let the job open its own fake device files
                assert set(inst["access"].values()) == {"ENXIO"}, inst

    def test_status_json_has_stable_keys_layouts_and_the_job_holding_an_instance(self, sbx):
        job = sbx.sim_job("3g.40gb:1", "sleep", "30", node="n1")
        try:
            sbx.seen(job, timeout=20)
            status = sbx.status()
        finally:
            sbx.slurm("scancel", str(job))
        assert set(status) == STATUS_KEYS and status["running"] is True
        assert set(status["daemons"]) == DAEMONS
        n1 = next(n for n in status["nodes"] if n["name"] == "n1")
        assert set(n1) == NODE_KEYS and n1["gres"] == LAYOUT
        [gpu] = n1["gpus"]
        assert set(gpu) == GPU_KEYS and set(gpu["instances"][0]) == INSTANCE_KEYS
        assert (gpu["model"], gpu["layout"]) == (
            "A100-80GB", "1g.10gb@0,1g.10gb@1,1g.10gb@2,1g.10gb@3,3g.40gb@4")
        [held] = [i for i in gpu["instances"] if i["jobs"]]
        assert (held["profile"], held["jobs"], held["busy"]) == ("3g.40gb", [str(job)], True)
        assert [r["job_id"] for r in n1["jobs"]] == [job]
        assert [(q["job_id"], q["state"], q["node"]) for q in status["queue"]] == [
            (job, "RUNNING", "n1")]

    def test_up_starts_a_node_timer_per_node_that_publishes_its_layout_in_extra(self, sbx):
        status = sbx.status()
        timers = {k: v for k, v in status["daemons"].items() if k.startswith("timer-")}
        assert sorted(timers) == ["timer-n1", "timer-n2"]
        assert all(len(pids) == 1 and _comm(pids[0]) == "slurm-mig-timer" for pids in timers.values())
        for node in status["nodes"]:  # the timer's first `sync --pending` published it
            assert node["extra"].startswith("slurm-mig;have:0/A100-80GB/1g.10gb@0+"), node["extra"]
        with open(f"{sbx.root}/log/timer-n1.log") as f:
            log = f.read()
        assert f"--config {sbx.root}/nodes/n1/config.toml sync --pending" in log
        assert "nothing wanted (layout published)" in log

    def test_controller_config_is_valid_and_rebalance_dry_run_reads_the_sandbox(self, sbx):
        from slurm_mig.host.config import load_config

        path = f"{sbx.root}/controller/config.toml"
        assert f"slurm-mig --config {path} rebalance --explain" in sbx.up_text
        config = load_config(path)
        r = config.rebalance
        assert r.enabled and dict(r.floor) == {"1g.10gb": 1, "3g.40gb": 1} and 0 < r.apply_wait <= 30
        assert r.lock.startswith(f"{sbx.root}/") and r.state_file.startswith(f"{sbx.root}/")
        assert config.paths.node_gres_include == f"{sbx.root}/etc/nodes.conf"
        assert config.slurm.reconfigure_command[-4:] == ("sandbox", "reconfigure", "--root", sbx.root)
        # Without SLURM_CONF (slurm_mig() drops it): the config's bin/ wrappers reach the sandbox.
        proc = slurm_mig("--config", path, "--json", "rebalance", "--dry-run")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert (result["dry_run"], result["changed"], result["reconfigured"]) == (True, [], False)
        assert [n for n in result["notes"] if "left out" in n] == []  # both layouts published
        assert {line.split(":")[0] for line in result["explain"]} >= {"n1", "n2"}

    def test_up_again_is_a_no_op_and_other_options_are_refused_while_it_runs(self, sbx):
        before = sbx.status()["daemons"]
        proc = slurm_mig("--json", "sandbox", "up", "--root", sbx.root)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert set(result) == UP_KEYS and result["already_up"] is True
        proc = slurm_mig("sandbox", "up", "--root", sbx.root, "--nodes", "3")
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.startswith("slurm-mig: error: a sandbox with 2 node(s)")
        assert proc.stderr.count("\n") == 1 and "sandbox down" in proc.stderr
        assert sbx.status()["daemons"] == before

    def test_sandbox_reconfigure_brings_a_new_layout_to_slurm(self, sbx):
        config = f"{sbx.root}/nodes/n2/config.toml"
        sbx.slurm("scontrol", "update", "nodename=n2", "state=drain", "reason=relayout")
        for args in (["apply", "3g.40gb:2"], ["gres-conf", "--write"], ["node-conf", "--write"]):
            proc = slurm_mig("--config", config, *args)
            assert proc.returncode == 0, proc.stderr
        proc = slurm_mig("sandbox", "reconfigure", "--root", sbx.root)
        assert proc.returncode == 0, proc.stderr
        print(proc.stdout.strip())
        sbx.slurm("scontrol", "update", "nodename=n2", "state=resume")
        assert dict(sbx.wait_idle()["n2"].gres) == {"3g.40gb": 2}
        # Long enough to overlap: a `true` job may end before the next is scheduled, which
        # then gets the same record (seen once on 24.11).
        jobs = [sbx.sim_job("3g.40gb:1", "sleep", "3", node="n2") for _ in range(2)]
        assert set(sbx.wait_jobs(jobs).values()) == {"COMPLETED"}
        assert sorted(sbx.seen(j)["instances"][0]["gi_id"] for j in jobs) == [1, 2]
        # `slurm-mig sync` reaches Slurm through the node's reconfigure_command (the sandbox's).
        proc = slurm_mig("--config", config, "sync")  # back to [layout] default
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert dict(sbx.wait_idle()["n2"].gres) == LAYOUT


# ----------------------------------------------------------------------------- lifecycle


@pytest.mark.slurm
@pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))
def test_down_from_another_process_stops_every_daemon_and_up_rebuilds_a_stopped_sandbox():
    root = _new_root("down")
    try:
        sbx = _up(root, "--nodes", "2", "--gpus", "H100-80GB,A100-80GB", "--layout", "3g.40gb:2")
        assert {n: dict(s.gres) for n, s in sbx.wait_idle().items()} == {
            "n1": {"3g.40gb": 4}, "n2": {"3g.40gb": 4}}
        job = sbx.sim_job("3g.40gb:1", "sleep", "60")
        sbx.seen(job, timeout=20)
        daemons = sbx.status()["daemons"]
        assert set(daemons) == DAEMONS  # the node timers too
        pids = [p for ps in daemons.values() for p in ps]
        assert len(pids) == 6 and all(_alive(p) for p in pids)
        t0 = time.monotonic()
        proc = slurm_mig("--json", "sandbox", "down", "--root", root)
        print(f"\nsandbox down: {time.monotonic() - t0:.1f}s")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert set(result) == DOWN_KEYS
        assert (result["was_running"], result["cancelled"], result["purged"]) == (True, [job], False)
        assert {k: sorted(v) for k, v in result["stopped"].items()} == \
            {k: sorted(v) for k, v in daemons.items()}  # every daemon it stopped, by name
        assert [p for p in pids if _alive(p)] == []
        again = slurm_mig("sandbox", "down", "--root", root)
        assert again.returncode == 0 and "nothing was running" in again.stdout
        sbx = _up(root)  # a stopped sandbox, other options: rebuilt from scratch
        assert {n: dict(s.gres) for n, s in sbx.wait_idle().items()} == {"n1": LAYOUT, "n2": LAYOUT}
        assert not os.listdir(os.path.join(root, "seen"))
    finally:
        _purge(root)
    assert not os.path.exists(root)


@pytest.mark.slurm
@pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))
def test_demo_runs_jobs_on_instances_rebalances_n1_for_the_queue_and_leaves_the_cluster_up():
    root = _new_root("demo")
    try:
        t0 = time.monotonic()
        proc = slurm_mig("demo", "--root", root, timeout=120)
        elapsed = time.monotonic() - t0
        print(f"\ndemo: {elapsed:.1f}s")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
        out = proc.stdout
        table = out[out.index("MIG UUID"):].split("\n\n")[0].splitlines()[1:]
        rows = [r.split() for r in table]
        assert sorted(r[2] for r in rows) == ["1g.10gb"] * 4 + ["3g.40gb"] * 2  # 5 jobs
        assert all(r[6].startswith("MIG-") for r in rows)
        assert f"export SLURM_CONF={root}/etc/slurm.conf" in out
        assert f"slurm-mig sandbox down --root {root}" in out
        assert slurm_mig("sandbox", "status", "--root", root).returncode == 0  # still up
        assert elapsed < 60

        # The rebalance part: the 1g jobs that waited while n1 held only 3g.40gb instances
        # ran on n1 after one rebalance run, which changed n1's Gres= with one reconfigure.
        queue = out[out.index("\n== 8."):out.index("\n== 9.")]
        waited = [int(line.split()[0]) for line in queue.splitlines() if " PENDING " in line]
        assert waited, queue
        sbx = Sandbox(root, out)
        assert {j: (sbx.job_state(j), sbx.job_node(j)) for j in waited} == {
            j: ("COMPLETED", "n1") for j in waited}
        assert all(sbx.seen(j)["instances"][0]["type"] == "1g.10gb" for j in waited)
        n1 = dict(sbx.nodes()["n1"].gres)
        assert n1.get("1g.10gb", 0) >= len(waited) and "3g.40gb" not in n1, n1
        run = out[out.index("\n== 9."):out.index("\n== 10.")]
        assert "changed n1; finished n1; reconfigured once" in run
        with open(f"{root}/log/reconfigure.log") as f:
            asked = [line.split("asked by: ")[1] for line in f.read().splitlines()]
        assert len(asked) == 2, asked  # the admin's sync, then the one of rebalance
        assert "sync --layout 3g.40gb:2" in asked[0] and asked[1].endswith("rebalance --explain")
    finally:
        _purge(root)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("options, message", [
    (["--gpus", "X100"], "unknown GPU model 'X100'"),
    (["--gpus", "A100-40GB", "--layout", "3g.40gb:1"], "--layout '3g.40gb:1' on A100-40GB"),
    (["--layout", "7g.80gb:2"], "does not fit"),
    (["--nodes", "0"], "Invalid value for '--nodes': '0' is not a node count (1 to 32)"),
])
def test_bad_input_to_up_exits_2_with_one_line_and_creates_nothing(cli, tmp_path, options,
                                                                    message):
    root = tmp_path / "sbx"
    code, out, err = cli("sandbox", "up", "--root", root, *options)
    assert (code, out) == (2, "")
    assert err.startswith("slurm-mig: error: ") and err.count("\n") == 1 and message in err
    assert not root.exists()


def test_without_root_or_slurm_up_and_demo_say_to_run_setup(cli, tmp_path, monkeypatch):
    from slurm_mig.sandbox import mig

    monkeypatch.setattr(mig, "missing_requirements", lambda: ["root (slurmd needs it)"])
    for args in (["sandbox", "up", "--root", tmp_path / "sbx"], ["demo", "--root", tmp_path / "d"]):
        code, out, err = cli(*args)
        assert code == 3 and err.count("\n") == 1, err
        assert "needs root" in err and "bash .ci/setup` as root" in err
    assert "--no-slurm" in err  # the demo's line also names the way without Slurm
    assert not (tmp_path / "sbx").exists() and not (tmp_path / "d").exists()


def test_down_without_a_sandbox_stops_nothing_and_never_touches_a_foreign_directory(cli, tmp_path):
    code, out, _ = cli("sandbox", "down", "--root", tmp_path / "none")
    assert code == 0 and "nothing was running" in out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("data")
    code, out, err = cli("sandbox", "down", "--root", tmp_path / "mine", "--purge")
    assert code == 2 and "holds no sandbox" in err
    assert (tmp_path / "mine" / "keep.txt").read_text() == "data"


def test_controller_config_keeps_every_type_of_the_layout_submittable(tmp_path):
    from slurm_mig.host.config import parse_config
    from slurm_mig.sandbox.config import SandboxPaths
    from slurm_mig.sandbox.controller import controller_config_text, layout_floors
    from slurm_mig.sandbox.files import SandboxFiles

    floors = layout_floors(("H100-80GB", "A100-80GB"), "1g.10gb:2,3g.40gb:1")
    assert floors == {"1g.10gb": 1, "3g.40gb": 1}
    files = SandboxFiles(str(tmp_path))
    config = parse_config(controller_config_text(files, SandboxPaths(str(tmp_path)), floors),
                          files.controller_config)
    assert config.rebalance.enabled and dict(config.rebalance.floor) == floors
    assert config.slurm.scontrol == f"{tmp_path}/bin/scontrol"  # squeue, sinfo: beside it


def test_no_slurm_demo_still_walks_through_the_simulator(cli, tmp_path):
    code, out, _ = cli("demo", "--no-slurm", "--root", tmp_path / "d")
    assert code == 0 and "(exit code 5: refused)" in out
