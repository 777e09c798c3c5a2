"""A real Slurm cluster on this machine (slurm_mig.sandbox): GRES, prolog, isolation, relayout.

The cluster tests need root, munge and Slurm (apt-get install -y munge slurmctld slurmd
slurm-client) and are skipped with the reason otherwise.  One cluster (two nodes, one fake GPU
each) serves the whole module; the last two cluster tests change its layout, so they come
last in the file.
Set SLURM_MIG_KEEP_SANDBOX=1 to keep the cluster's directory (logs, confs) after the run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Tuple

import pytest

from slurm_mig.sandbox import (DeviceNodes, Isolation, JobInfo, SandboxCluster, make_device_nodes,
                               missing_requirements)
from slurm_mig.sandbox.cgroups import choose_isolation
from slurm_mig.sandbox.config import (NodeSpec, SandboxPaths, render_cgroup_conf, render_nodes_conf,
                                      render_slurm_conf)
from slurm_mig.sandbox.parse import parse_scontrol_job
from slurm_mig.slurm.scontrol import parse_gres, parse_scontrol_nodes, parse_state

MISSING = missing_requirements()
needs_slurm = pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))

Record = Tuple[str, List[str]]  # (profile, device files) = one gres.conf line

GPU_OF = {"n1": 0, "n2": 1}
CAPS_OF = {"n1": [30, 31, 32, 33, 34, 35, 36, 37], "n2": [40, 41, 42, 43, 44, 45]}


# -- helpers: the layout as gres.conf records and slurm.conf Gres= --------------------------

def make_records(dev, node: str, profiles: List[str], caps: List[int]) -> List[Record]:
    """One gres.conf record per instance: the GPU file plus two nvidia-cap files (gi, ci)."""
    gpu = dev.gpu(GPU_OF[node])
    return [(p, [gpu, dev.cap(caps[2 * i]), dev.cap(caps[2 * i + 1])])
            for i, p in enumerate(profiles)]


def gres_conf(records: Dict[str, List[Record]]) -> str:
    return "".join(f"NodeName={node} Name=gpu Type={p} MultipleFiles={','.join(files)}\n"
                   for node, recs in records.items() for p, files in recs)


def node_gres(recs: List[Record]) -> str:
    counts = Counter(p for p, _ in recs)
    return ",".join(f"gpu:{p}:{n}" for p, n in counts.items())


PROLOG = textwrap.dedent("""\
    #!/bin/bash
    # Records what a slurm-mig prolog hook would see.
    {{ echo "SLURM_JOB_ID=$SLURM_JOB_ID"; echo "SLURMD_NODENAME=$SLURMD_NODENAME";
       echo "SLURM_JOB_GPUS=$SLURM_JOB_GPUS"; }} > {dir}/$SLURM_JOB_ID.env
    exit 0
    """)

# The job opens every cap file of its node's records and prints errno names as JSON.
PROBE = textwrap.dedent("""\
    #!/bin/bash
    exec {python} - {records} <<'PY'
    import errno, json, os, sys
    records = json.load(open(sys.argv[1]))[os.environ["SLURMD_NODENAME"]]
    mine = {{int(i) for i in os.environ.get("SLURM_JOB_GPUS", "").split(",") if i}}
    result = {{"mine": sorted(mine), "own": {{}}, "other": {{}}}}
    for idx, (_profile, files) in enumerate(records):
        for path in files[1:]:  # files[0] is the GPU, shared by every record
            try:
                os.close(os.open(path, os.O_RDONLY))
                name = "OPENED"
            except OSError as err:
                name = errno.errorcode.get(err.errno, str(err.errno))
            result["own" if idx in mine else "other"][path] = name
    print(json.dumps(result))
    PY
    """)


@dataclass
class Sandbox:
    """The module's cluster and what the tests know about its fake GPUs."""

    cluster: SandboxCluster
    dev: DeviceNodes
    records: Dict[str, List[Record]]  # node -> its gres.conf records, in file order
    prolog_dir: str

    def save_records(self) -> str:
        path = os.path.join(self.cluster.root, "records.json")
        with open(path, "w") as f:
            json.dump(self.records, f)
        return path

    def prolog_env(self, job_id: int) -> Dict[str, str]:
        with open(os.path.join(self.prolog_dir, f"{job_id}.env")) as f:
            return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)

    def run_job(self, args: List[str], script: str = "#!/bin/sh\ntrue\n") -> Tuple[int, JobInfo]:
        job_id = self.cluster.submit(args, script)
        info = self.cluster.wait_job(job_id, timeout=30)
        assert info.state == "COMPLETED", (info, self.cluster.job_output(job_id))
        return job_id, info


def _scratch_root(prefix: str) -> str:
    # Not pytest's tmp_path: munged wants o+x on every directory above its socket.
    return tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")


def _remove(cluster: SandboxCluster) -> None:
    cluster.stop()
    print(f"\n{cluster.root}: timings {cluster.timings}; isolation {cluster.isolation}")
    if not os.environ.get("SLURM_MIG_KEEP_SANDBOX"):
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox():
    cluster = SandboxCluster(_scratch_root("sbx-"), ["n1", "n2"], cpus_per_node=2)
    root = cluster.root
    try:
        dev = make_device_nodes(os.path.join(root, "dev"), GPU_OF.values(),
                                CAPS_OF["n1"] + CAPS_OF["n2"])
        profiles = ["1g.10gb", "1g.10gb", "3g.40gb"]
        records = {n: make_records(dev, n, profiles, CAPS_OF[n]) for n in ("n1", "n2")}
        prolog_dir = os.path.join(root, "prolog")
        os.makedirs(prolog_dir)
        prolog = os.path.join(root, "prolog.sh")
        with open(prolog, "w") as f:
            f.write(PROLOG.format(dir=prolog_dir))
        os.chmod(prolog, 0o755)
        cluster.write_config({n: node_gres(r) for n, r in records.items()}, gres_conf(records),
                             {"Prolog": prolog})
        cluster.start()
        yield Sandbox(cluster, dev, records, prolog_dir)
    finally:
        _remove(cluster)


# -- the real cluster -------------------------------------------------------------------------

@pytest.mark.slurm
@needs_slurm
def test_two_nodes_come_up_idle_with_their_gres(sandbox):
    cluster = sandbox.cluster
    nodes = cluster.status()
    assert sorted(nodes) == ["n1", "n2"]
    for node in nodes.values():
        assert node.state == "idle" and node.responding, node
        assert node.gres == {"1g.10gb": 2, "3g.40gb": 1}
    assert cluster.env()["SLURM_CONF"] == cluster.paths.slurm_conf
    assert cluster.export_lines() == f"export SLURM_CONF={cluster.paths.slurm_conf}\n"


@pytest.mark.slurm
@needs_slurm
def test_prolog_sees_node_and_index_of_the_allocated_record(sandbox):
    job_id, info = sandbox.run_job(["--gres=gpu:1g.10gb:1", "-w", "n1"])
    env = sandbox.prolog_env(job_id)
    assert env["SLURM_JOB_ID"] == str(job_id)
    assert env["SLURMD_NODENAME"] == "n1" and info.nodes == "n1"
    assert sandbox.records["n1"][int(env["SLURM_JOB_GPUS"])][0] == "1g.10gb"

    job_id, _ = sandbox.run_job(["--gres=gpu:3g.40gb:1", "-w", "n2"])
    env = sandbox.prolog_env(job_id)
    assert env["SLURMD_NODENAME"] == "n2"
    assert env["SLURM_JOB_GPUS"] == "2"  # the third gres.conf record of n2, in file order


@pytest.mark.slurm
@needs_slurm
def test_job_reaches_its_own_cap_files_and_no_others(sandbox):
    isolation = sandbox.cluster.isolation
    if not isolation.devices:
        if os.environ.get("SLURM_MIG_REQUIRE_FENCING"):  # .ci/run and .ci/matrix
            pytest.fail(f"device isolation unavailable: {isolation.reason}")
        pytest.skip(f"device isolation unavailable: {isolation.reason}")
    script = PROBE.format(python=sys.executable, records=sandbox.save_records())
    job_id, _ = sandbox.run_job(["--gres=gpu:1g.10gb:1", "-w", "n2"], script)
    result = json.loads(sandbox.cluster.job_output(job_id).strip().splitlines()[-1])
    assert len(result["mine"]) == 1
    assert len(result["own"]) == 2 and len(result["other"]) == 4
    # ENXIO: the cgroup let open() through to a device with no driver; EPERM: fenced off.
    assert set(result["own"].values()) == {"ENXIO"}, result
    assert set(result["other"].values()) == {"EPERM"}, result


@pytest.mark.slurm
@needs_slurm
def test_cluster_comes_up_without_cgroups_when_the_cgroup_plugin_fails(sandbox):
    # A second, small cluster next to the module's one: its own munged, ports and node names.
    root = _scratch_root("sbx-nocg-")
    broken = Isolation("v2", True, "forced by the test", os.path.join(root, "no-cgroup-here"))
    cluster = SandboxCluster(root, ["f1"], isolation=broken)
    cluster.write_config({"f1": ""}, "")
    try:
        cluster.start()
        assert cluster.isolation.mode == "none" and not cluster.isolation.devices
        assert "cgroup/v2 kept the nodes from starting" in cluster.isolation.reason
        assert cluster.status()["f1"].state == "idle"
        job_id = cluster.submit([], "#!/bin/sh\necho ran on $SLURMD_NODENAME\n")
        assert cluster.wait_job(job_id).state == "COMPLETED"
        assert cluster.job_output(job_id).strip() == "ran on f1"
    finally:
        _remove(cluster)
    assert not cluster.running


@pytest.mark.slurm
@needs_slurm
def test_reordered_records_give_each_type_its_new_files_after_reconfigure(sandbox):
    # Same counts, new order: Slurm 22.05's plain reconfigure keeps the old type of each record
    # (a 3g.40gb job would get record 2, now a 1g.10gb); reconfigure() restarts slurmctld.
    cluster = sandbox.cluster
    cluster.drain("n2", "slurm-mig relayout")
    sandbox.records["n2"] = make_records(sandbox.dev, "n2", ["3g.40gb", "1g.10gb", "1g.10gb"],
                                         CAPS_OF["n2"])
    cluster.write_layout({"n2": node_gres(sandbox.records["n2"])}, gres_conf(sandbox.records))
    print(f"\nreconfigure, same counts, new order on n2: {cluster.reconfigure()}")
    cluster.resume("n2")

    script = PROBE.format(python=sys.executable, records=sandbox.save_records())
    job_id, _ = sandbox.run_job(["--gres=gpu:3g.40gb:1", "-w", "n2"], script)
    assert sandbox.prolog_env(job_id)["SLURM_JOB_GPUS"] == "0"
    result = json.loads(sandbox.cluster.job_output(job_id).strip().splitlines()[-1])
    assert result["mine"] == [0]
    if cluster.isolation.devices:
        assert set(result["own"].values()) == {"ENXIO"}, result
        assert set(result["other"].values()) == {"EPERM"}, result


@pytest.mark.slurm
@needs_slurm
def test_relayout_of_a_drained_node_shows_new_counts_and_runs_the_new_type(sandbox):
    cluster = sandbox.cluster
    new = make_records(sandbox.dev, "n1", ["1g.10gb", "2g.20gb"], [30, 31, 36, 37])
    cluster.drain("n1", "slurm-mig relayout")
    sandbox.records["n1"] = new
    cluster.write_layout({"n1": node_gres(new)}, gres_conf(sandbox.records))
    result = cluster.reconfigure()
    print(f"\nreconfigure 3 -> 2 records on n1: {result}")

    nodes = cluster.status()
    assert nodes["n1"].gres == {"1g.10gb": 1, "2g.20gb": 1}
    assert nodes["n1"].state == "drain"  # the layout change kept the drain
    assert nodes["n2"].gres == {"1g.10gb": 2, "3g.40gb": 1}
    cluster.resume("n1")

    job_id, info = sandbox.run_job(["--gres=gpu:2g.20gb:1"])
    assert info.nodes == "n1"
    assert sandbox.prolog_env(job_id)["SLURM_JOB_GPUS"] == "1"  # the new record order


# -- pure parts, no cluster -----------------------------------------------------------------

def test_scontrol_node_lines_parse_into_node_status():
    # As Slurm 22.05 prints them (OS= and Reason= hold blanks).
    nodes = parse_scontrol_nodes(
        "NodeName=n1 Arch=x86_64 CoresPerSocket=1 Gres=gpu:1g.10gb:2,gpu:3g.40gb:1 "
        "NodeAddr=127.0.0.2 OS=Linux 6.1.0 #1 SMP State=IDLE ThreadsPerCore=1\n"
        "NodeName=n2 Gres=gpu:1g.10gb:2(S:0) State=UNKNOWN+DRAIN Weight=1 "
        "Reason=slurm-mig relayout [root@2026-11-28T18:21:19]\n"
        "NodeName=n3 Gres=(null) State=IDLE+DRAIN+NOT_RESPONDING Weight=1\n")
    assert nodes["n1"].gres == {"1g.10gb": 2, "3g.40gb": 1} and nodes["n1"].registered
    assert nodes["n1"].state == "idle"
    n2 = nodes["n2"]
    assert (n2.state, n2.registered, n2.gres) == ("drain", False, {"1g.10gb": 2})
    assert n2.reason == "slurm-mig relayout [root@2026-11-28T18:21:19]"
    assert not nodes["n3"].responding and nodes["n3"].gres == {}
    assert parse_state("MIXED*+DRAIN") == ("mixed", frozenset({"DRAIN", "NOT_RESPONDING"}))
    assert parse_gres("gpu:2") == {"": 2}


def test_scontrol_job_line_parses_state_and_nodes():
    info = parse_scontrol_job("JobId=4711 JobName=sbatch JobState=COMPLETED Reason=None "
                              "ExitCode=0:0 NodeList=n1 BatchHost=n1")
    assert (info.job_id, info.state, info.nodes, info.finished) == (4711, "COMPLETED", "n1", True)


def test_slurm_conf_includes_node_file_and_sets_prolog_only_when_given():
    paths = SandboxPaths("/var/tmp/sbx")
    nodes = [NodeSpec("n1", "127.0.0.2", 17001, 2, 1000, "gpu:1g.10gb:2")]
    plain = render_slurm_conf(paths, nodes, ctld_host="vm", ctld_port=17000, cgroup_mode="v1")
    assert "Include /var/tmp/sbx/etc/nodes.conf\n" in plain and "Prolog=" not in plain
    assert "SlurmctldHost=vm(127.0.0.1)\n" in plain
    assert "AuthInfo=socket=/var/tmp/sbx/munge/run/munge.socket\n" in plain
    with_prolog = render_slurm_conf(paths, nodes, ctld_host="vm", ctld_port=17000,
                                    cgroup_mode="none",
                                    extra={"Prolog": "/p.sh", "slurmddebug": "debug",
                                           "MailProg": None})
    assert "Prolog=/p.sh\n" in with_prolog and "slurmddebug=debug\n" in with_prolog
    assert "MailProg" not in with_prolog and "SlurmdDebug=info" not in with_prolog
    assert "ProctrackType=proctrack/linuxproc\n" in with_prolog
    assert render_nodes_conf(nodes).splitlines()[1] == (
        "NodeName=n1 NodeAddr=127.0.0.2 Port=17001 CPUs=2 RealMemory=1000 "
        "Gres=gpu:1g.10gb:2 State=UNKNOWN")


def test_cgroup_conf_enables_v2_controllers_the_way_the_slurm_version_knows():
    assert "CgroupAutomount=yes" in render_cgroup_conf("v2", version=(22, 5, 8))
    v2_new = render_cgroup_conf("v2", version=(24, 11, 5))
    assert "EnableControllers=yes" in v2_new and "CgroupAutomount" not in v2_new
    v1 = render_cgroup_conf("v1", version=(22, 5, 8))
    assert "CgroupPlugin=cgroup/v1\n" in v1 and "ConstrainDevices=yes\n" in v1
    assert render_cgroup_conf("none") is None


def test_isolation_follows_the_mounted_cgroup_version():
    hybrid = ("tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
              "cgroup /sys/fs/cgroup/devices cgroup rw,relatime,devices 0 0\n"
              "cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0\n"
              "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert choose_isolation(hybrid).mode == "v1"
    assert choose_isolation("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n").mode == "v2"
    none = choose_isolation("cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert (none.mode, none.devices) == ("none", False) and "devices" in none.reason
    assert choose_isolation(hybrid, want="none").devices is False


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_nodes_are_char_devices_with_nvidia_numbers():
    import stat
    root = _scratch_root("sbx-dev-")  # /tmp may be mounted nodev
    try:
        dev = make_device_nodes(os.path.join(root, "dev"), [0, 1], [21, 22], cap_major=511)
        st = os.stat(dev.gpu(1))
        assert stat.S_ISCHR(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (195, 1)
        assert os.minor(os.stat(dev.ctl).st_rdev) == 255
        cap = os.stat(dev.cap(22)).st_rdev
        assert (os.major(cap), os.minor(cap)) == (511, 22)
        again = make_device_nodes(os.path.join(root, "dev"), [0, 1], [21, 22], cap_major=511)
        assert again == dev
    finally:
        shutil.rmtree(root)


def test_reconfigure_wait_leaves_out_a_late_applied_node_slurmctld_refused():
    """Issue 10: one node whose gres.conf went new before its Gres= (INVALID_REG) must not
    fail the reconfigure of the others; a node merely not registered yet is waited for."""
    from slurm_mig.sandbox.cluster import late_applied
    from slurm_mig.slurm.scontrol import NodeStatus

    configured = {"n1": {"1g.5gb": 7}, "n2": {"1g.5gb": 7}, "n3": {"1g.5gb": 7}}
    in_gres_conf = {"n1": {"3g.20gb": 2}, "n2": {"1g.5gb": 7}, "n3": {"3g.20gb": 2}}
    nodes = {
        "n1": NodeStatus("n1", "idle", frozenset({"DRAIN", "INVALID_REG"}), {"1g.5gb": 7}, "",
                         "gres/gpu count reported lower than configured (2 < 7)"),
        "n2": NodeStatus("n2", "idle", frozenset({"DRAIN", "INVALID_REG"}), {"1g.5gb": 7}, "",
                         "gres/gpu count reported lower than configured (2 < 7)"),
        "n3": NodeStatus("n3", "unknown", frozenset({"DRAIN"}), {"1g.5gb": 7}, "", "admin"),
    }
    # n2's files agree with its Gres= (a restart can fix it); n3 is not refused, only late
    assert late_applied(nodes, configured, in_gres_conf) == {"n1"}
    drained = {"n1": NodeStatus("n1", "idle", frozenset({"DRAIN"}), {"1g.5gb": 7}, "",
                                "gres/gpu count reported lower than configured (2 < 7)")}
    assert late_applied(drained, configured, in_gres_conf) == {"n1"}  # 24.11: no INVALID_REG left
