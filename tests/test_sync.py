"""sync without Slurm: an in-memory SlurmClient, the simulator, a fake clock.

The node is ``n1`` with one A100-40GB cut into seven 1g.5gb; gres.conf and the node include
are generated under the test's tree first, as an admin would have them.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from dataclasses import replace
from typing import Dict, List, Optional

import pytest

from slurm_mig.app.commands import apply_layout
from slurm_mig.change.reasons import sync_failed as failure_reason
from slurm_mig.change.sync import STEPS, sync_node
from slurm_mig.core.errors import (ApplyRefused, GpuError, InputError, LayoutError, LockBusy,
                                   SlurmError)
from slurm_mig.core.gresconf import parse_gres_conf
from slurm_mig.gpu import nvmlcodes
from slurm_mig.host.config import load_config, sim_config_text
from slurm_mig.host.locking import node_lock
from slurm_mig.node import jobs
from slurm_mig.node.gresfiles import gres_conf, node_conf
from slurm_mig.sim.backend import SimBackend
from slurm_mig.sim.driver import SimDriver
from slurm_mig.slurm.scontrol import NodeStatus, parse_gres, parse_pairs

from conftest import tree_snapshot

NODE = "n1"
MUTATIONS = ("drain", "drain_nodes", "resume", "reconfigure")


class FakeSlurm:
    """A SlurmClient in memory: one node's state, the calls made, failures on demand.

    ``busy_polls``: how many looks at the node still show jobs running (then idle).
    ``reconfigure`` reads the node's Gres= from the include file, as slurmctld would; with
    ``applies=False`` it keeps the old gres (Slurm 22.05 refusing a new count).
    ``unregistered_after_reconfigure``: looks after a reconfigure that show the node UNKNOWN.
    ``fail``: op -> set of call numbers (1-based) that raise SlurmError.
    """

    def __init__(self, include: str, gres: Dict[str, int], node: str = NODE):
        self.include = include
        self.node = node
        self.base = "idle"
        self.flags = set()
        self.gres = dict(gres)
        self.reason = ""
        self.calls: List[tuple] = []
        self.count: Dict[str, int] = {}
        self.busy_polls = 0
        self.unregistered_after_reconfigure = 0
        self.unregistered_polls = 0
        self.applies = True
        self.fail: Dict[str, set] = {}

    def _call(self, op: str, *args) -> None:
        self.calls.append((op, *args))
        self.count[op] = self.count.get(op, 0) + 1
        if self.count[op] in self.fail.get(op, ()):
            raise SlurmError(f"{op}: `scontrol {op}` failed: slurm_update error: Unexpected message received")

    def status(self) -> NodeStatus:
        gres_text = ",".join(f"gpu:{t}:{n}" for t, n in sorted(self.gres.items()))
        return NodeStatus(self.node, self.base, frozenset(self.flags), dict(self.gres), gres_text,
                          self.reason)

    def nodes(self, names=None):
        self._call("nodes", tuple(names or ()))
        if self.unregistered_polls > 0:
            self.unregistered_polls -= 1
            return {self.node: NodeStatus(self.node, "unknown", frozenset(self.flags), dict(self.gres),
                                          "", self.reason)}
        self.base = "mixed" if self.busy_polls > 0 else "idle"
        self.busy_polls = max(0, self.busy_polls - 1)
        return {self.node: self.status()}

    def drain(self, node, reason):
        self._call("drain", node, reason)
        self.flags.add("DRAIN")
        self.reason = reason

    def drain_nodes(self, nodes, reason):
        self._call("drain_nodes", tuple(nodes), reason)
        for node in nodes:
            assert node == self.node, node
            self.flags.add("DRAIN")
            self.reason = reason

    def resume(self, node):
        self._call("resume", node)
        self.flags.discard("DRAIN")
        self.reason = ""

    def reconfigure(self):
        self._call("reconfigure")
        self.unregistered_polls = self.unregistered_after_reconfigure
        if not self.applies:
            return
        with open(self.include) as f:
            for line in f:
                pairs = parse_pairs(line.partition("#")[0])
                if pairs.get("NodeName") == self.node:
                    self.gres = parse_gres(pairs.get("Gres", ""))

    def mutations(self) -> List[tuple]:
        return [c for c in self.calls if c[0] in MUTATIONS]


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.slept: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Node:
    """A simulated node n1 with its config, GPU backend, Slurm files and fake Slurm."""

    def __init__(self, tmp_path, layout: str = "1g.5gb:7", config_extra: str = ""):
        self.root = tmp_path
        self.config_path = str(tmp_path / "config.toml")
        with open(self.config_path, "w") as f:
            f.write(sim_config_text(str(tmp_path), ["A100-40GB"],
                                    "[slurm]\nregister_timeout = 30\n" + textwrap.dedent(config_extra)))
        self.config = load_config(self.config_path)
        SimDriver.create(self.config.sim.root, ["A100-40GB"])
        self.backend = SimBackend(self.config.sim.root)
        apply_layout(self.config, self.backend, layout)
        gres_conf(self.config, self.backend, NODE, write=True)
        gres = node_conf(self.config, self.backend, NODE, write=True)["gres"]
        self.slurm = FakeSlurm(self.config.paths.node_gres_include, parse_gres(gres))
        self.clock = Clock()

    def sync(self, layout: Optional[str] = "3g.20gb:2", **kw) -> dict:
        kw.setdefault("wait", 60)
        return sync_node(self.config, self.backend, self.slurm, NODE, layout=layout,
                         clock=self.clock, sleep=self.clock.sleep, poll=1.0, **kw).as_dict()

    def layout(self) -> str:
        from slurm_mig.app.commands import status

        return status(self.config, self.backend)["gpus"][0]["layout"]

    def gres_lines(self) -> List[str]:
        with open(self.config.paths.gres_conf) as f:
            return [r.type for r in parse_gres_conf(f.read(), NODE)]

    def include(self) -> str:
        with open(self.config.paths.node_gres_include) as f:
            return f.read()

    def files(self) -> dict:
        return tree_snapshot(os.path.join(str(self.root), "host"))


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def steps(result: dict) -> List[tuple]:
    return [(s["step"], s["status"]) for s in result["steps"]]


# ----------------------------------------------------------------------------- the happy path


def test_sync_drains_waits_applies_writes_reconfigures_checks_and_resumes_in_order(node):
    node.slurm.busy_polls = 3  # jobs still run for three looks: the check's and two in the wait
    result = node.sync()
    assert steps(result) == [(s, "done") for s in STEPS]
    ops = [c[0] for c in node.slurm.calls]
    # drain, then looks until idle, then reconfigure, then looks until registered, then resume
    assert ops[:2] == ["nodes", "drain"]
    assert ops.index("reconfigure") > ops.index("drain") + 3
    assert ops[-2:] == ["nodes", "resume"]
    assert node.slurm.mutations() == [
        ("drain", NODE, "slurm-mig sync: applying 3g.20gb:2 on gpu 0"),
        ("reconfigure",), ("resume", NODE)]
    assert node.clock.slept == [1.0, 1.0]  # one poll interval each time the jobs still ran
    assert node.layout() == "3g.20gb@0,3g.20gb@4"
    assert node.gres_lines() == ["3g.20gb", "3g.20gb"]
    assert "NodeName=n1 Gres=gpu:3g.20gb:2" in node.include()
    assert node.slurm.gres == {"3g.20gb": 2} and "DRAIN" not in node.slurm.flags
    assert result["drained_by_us"] and result["resumed"] and not result["already_in_sync"]
    assert result["gres"] == {"before": "gpu:1g.5gb:7", "after": "gpu:3g.20gb:2"}
    assert result["files"]["gres_conf"]["changed"] and result["files"]["node_include"]["changed"]
    assert [s["action"] for s in result["apply"][0]["steps"]] == ["destroy"] * 7 + ["create"] * 2


def test_sync_logs_each_step_with_the_node_name(node, caplog):
    caplog.set_level("INFO", logger="slurm_mig.change.sync")
    node.sync()
    lines = [r.getMessage() for r in caplog.records if r.name == "slurm_mig.change.sync"]
    assert [l.split(": ")[2].split(" ")[0] for l in lines] == list(STEPS)
    assert all(l.startswith("slurm-mig sync: node n1: ") for l in lines)


def test_node_already_in_sync_is_not_drained(node):
    node.sync()
    node.slurm.calls.clear()
    before = node.files()
    result = node.sync()
    assert result["already_in_sync"] and not result["drained_by_us"] and not result["resumed"]
    assert steps(result) == [("check", "done")]
    assert node.slurm.mutations() == []
    assert node.files() == before


def test_count_form_that_the_gpu_already_has_is_in_sync(node):
    result = node.sync("1g.5gb:7")
    assert result["already_in_sync"] and node.slurm.mutations() == []


def test_layout_comes_from_the_config_when_not_given(tmp_path):
    node = Node(tmp_path, config_extra='[layout]\ndefault = "3g.20gb:1,1g.5gb:3"\n')
    result = node.sync(layout=None)
    assert result["wanted"][0]["text"] == "3g.20gb:1,1g.5gb:3"
    assert node.slurm.gres == {"1g.5gb": 3, "3g.20gb": 1}
    assert node.layout().count("1g.5gb") == 3


def test_gpus_in_sync_but_slurm_not_still_reconfigures(node):
    node.sync()
    node.slurm.gres = {"1g.5gb": 7}  # slurmctld still has the old counts
    node.slurm.calls.clear()
    result = node.sync()
    assert not result["already_in_sync"]
    assert [m[0] for m in node.slurm.mutations()] == ["drain", "reconfigure", "resume"]
    assert result["files"]["gres_conf"]["changed"] is False
    assert node.slurm.gres == {"3g.20gb": 2}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("layout", ["9g.99gb:1", "3g.20gb:3", "3g.20gb@1", ""])
def test_bad_layout_is_exit_2_before_any_slurm_call(node, layout):
    before = node.files()
    with pytest.raises(LayoutError) as err:
        node.sync(layout)
    assert err.value.exit_code == 2 and "gpu 0" in str(err.value)
    assert node.slurm.calls == [] and node.files() == before


def test_no_layout_anywhere_says_how_to_configure_one(node):
    with pytest.raises(InputError, match=r"give one with --layout .* \[layout\] default") as err:
        node.sync(layout=None)
    assert err.value.exit_code == 2 and node.slurm.calls == []


def test_config_layout_for_a_gpu_the_node_lacks_is_a_config_error(tmp_path):
    node = Node(tmp_path, config_extra='[layout.gpus]\n3 = "3g.20gb:2"\n')
    with pytest.raises(Exception, match="layout.gpus.3: this node has no gpu 3") as err:
        node.sync(layout=None)
    assert err.value.exit_code == 3 and node.slurm.calls == []


def test_second_sync_on_the_node_is_refused_at_once(node):
    with node_lock(os.path.join(node.config.paths.state_dir, "sync.lock")):
        with pytest.raises(LockBusy, match="another slurm-mig sync is running") as err:
            node.sync()
    assert err.value.exit_code == 7 and node.slurm.calls == []


# ----------------------------------------------------------------------------- waiting


def test_wait_timeout_resumes_the_node_changes_nothing_and_says_to_wait_longer(node):
    gi = SimBackend(node.config.sim.root).instances(0)[2].gi_id
    jobs.write_job(node.config.paths.state_dir, {"job_id": "812", "boot_id": jobs.boot_id(),
                                                 "instances": [{"gpu": 0, "gi_id": gi}]})
    node.slurm.busy_polls = 10_000
    before, layout = node.files(), node.layout()
    with pytest.raises(SlurmError) as err:
        node.sync(wait=5)
    text = str(err.value)
    assert err.value.exit_code == 8
    assert "node n1: 1 job still runs on its MIG instances (812), node MIXED+DRAIN after waiting 5s" in text
    assert "nothing was changed on its GPUs; rerun slurm-mig sync with a longer --wait" in text
    assert [m[0] for m in node.slurm.mutations()] == ["drain", "resume"]
    assert "DRAIN" not in node.slurm.flags
    assert node.layout() == layout and node.files() == before
    assert sum(node.clock.slept) == pytest.approx(5)


def test_wait_zero_fails_at_once_when_busy(node):
    node.slurm.busy_polls = 2  # the check's look and the wait's
    with pytest.raises(SlurmError, match="after waiting 0s"):
        node.sync(wait=0)
    assert node.clock.slept == []
    assert [m[0] for m in node.slurm.mutations()] == ["drain", "resume"]


def test_interrupt_during_the_wait_undoes_the_drain(node):
    node.slurm.busy_polls = 10

    def interrupted(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sync_node(node.config, node.backend, node.slurm, NODE, layout="3g.20gb:2", wait=60,
                  clock=node.clock, sleep=interrupted)
    assert [m[0] for m in node.slurm.mutations()] == ["drain", "resume"]


def test_node_resumed_by_someone_else_during_the_wait_is_not_changed(node):
    node.slurm.busy_polls = 3
    real_sleep = node.clock.sleep

    def admin_resumes(seconds):
        real_sleep(seconds)
        node.slurm.flags.discard("DRAIN")

    layout = node.layout()
    with pytest.raises(SlurmError, match="no longer drained .* someone resumed it during the wait"):
        sync_node(node.config, node.backend, node.slurm, NODE, layout="3g.20gb:2", wait=60,
                  clock=node.clock, sleep=admin_resumes)
    assert node.layout() == layout and ("reconfigure",) not in node.slurm.calls


def test_node_drained_by_an_admin_keeps_their_drain_and_reason(node):
    node.slurm.flags.add("DRAIN")
    node.slurm.reason = "bad fan [admin@2026-11-28T02:00:00]"
    result = node.sync()
    assert node.slurm.mutations() == [("reconfigure",)]
    assert "DRAIN" in node.slurm.flags and node.slurm.reason.startswith("bad fan")
    assert not result["drained_by_us"] and not result["resumed"]
    assert result["drained_before"].startswith("bad fan")
    assert ("drain", "skipped") in steps(result) and ("resume", "skipped") in steps(result)
    assert node.slurm.gres == {"3g.20gb": 2}


def test_wait_timeout_on_an_admin_drained_node_leaves_it_drained(node):
    node.slurm.flags.add("DRAIN")
    node.slurm.reason = "maintenance"
    node.slurm.busy_polls = 10_000
    with pytest.raises(SlurmError, match="longer --wait"):
        node.sync(wait=2)
    assert node.slurm.mutations() == [] and node.slurm.reason == "maintenance"


# ----------------------------------------------------------------------------- failures


def assert_left_drained(node, step: str, fix_in_reason: str = ""):
    assert "DRAIN" in node.slurm.flags
    reason = node.slurm.reason
    assert reason.startswith(f"slurm-mig sync failed at {step}: ") and reason.endswith(
        "; fix and rerun slurm-mig sync"), reason
    assert fix_in_reason in reason and "\n" not in reason and len(reason) <= 300
    assert ("resume", NODE) not in node.slurm.calls


def test_driver_failure_in_apply_leaves_the_node_drained_with_step_and_fix(node):
    SimDriver(node.config.sim.root).inject_fault("create_gi", code=nvmlcodes.NO_PERMISSION)
    before_gres = open(node.config.paths.gres_conf).read()
    with pytest.raises(GpuError) as err:
        node.sync()
    assert err.value.exit_code == 4
    assert "sync stopped at apply: node n1 left drained; fix and rerun slurm-mig sync" in str(err.value)
    assert_left_drained(node, "apply", "ermission")
    assert ("reconfigure",) not in node.slurm.calls
    assert open(node.config.paths.gres_conf).read() == before_gres  # not rewritten


def test_stray_process_on_an_idle_node_refuses_apply_exit_5_and_stays_drained(node):
    gi = SimBackend(node.config.sim.root).instances(0)[0].gi_id
    SimDriver(node.config.sim.root).attach_process(0, gi, 0, 4242)
    with pytest.raises(ApplyRefused) as err:
        node.sync()
    assert err.value.exit_code == 5 and "pid 4242" in str(err.value)
    assert_left_drained(node, "apply", "pid 4242")


def test_reconfigure_failure_leaves_the_node_drained_exit_8(node):
    node.slurm.fail["reconfigure"] = {1}
    with pytest.raises(SlurmError) as err:
        node.sync()
    assert err.value.exit_code == 8
    assert_left_drained(node, "reconfigure", "Unexpected message")
    assert node.gres_lines() == ["3g.20gb", "3g.20gb"]  # the files were written


def test_node_not_registering_new_gres_stays_drained_then_a_rerun_resumes_it(node):
    node.slurm.applies = False  # 22.05: plain reconfigure refuses a new gres count
    with pytest.raises(SlurmError) as err:
        node.sync()
    text = str(err.value)
    assert "did not register with gres gpu:3g.20gb:2 within 30s" in text
    assert "before Slurm 23.11 a new gres count or type needs a slurmctld restart" in text
    assert "slurmctld restart" in node.slurm.reason  # the hint fits in the drain reason
    assert_left_drained(node, "register")
    # The admin restarts slurmctld (it now reads the new files) and reruns sync.
    node.slurm.applies = True
    node.slurm.reconfigure()
    node.slurm.calls.clear()
    result = node.sync()
    assert result["already_in_sync"] and result["resumed"]
    assert node.slurm.mutations() == [("resume", NODE)] and "DRAIN" not in node.slurm.flags


def test_registration_waits_while_the_node_is_unknown(node):
    node.slurm.unregistered_after_reconfigure = 4  # slurmctld restarted by the reconfigure command
    result = node.sync()
    assert ("register", "done") in steps(result) and node.clock.slept == [1.0] * 4


def test_failure_to_set_the_failure_reason_is_said_too(node):
    SimDriver(node.config.sim.root).inject_fault("create_gi", code=nvmlcodes.NO_PERMISSION)
    node.slurm.fail["drain"] = {2}
    with pytest.raises(GpuError, match="setting its drain reason failed too: drain: "):
        node.sync()
    assert node.slurm.reason.startswith("slurm-mig sync: applying")  # still drained
    assert ("resume", NODE) not in node.slurm.calls


def test_failed_drain_changes_nothing(node):
    node.slurm.fail["drain"] = {1}
    with pytest.raises(SlurmError):
        node.sync()
    assert node.layout().count("1g.5gb") == 7 and [m[0] for m in node.slurm.mutations()] == ["drain"]


def test_failure_reason_is_one_short_line():
    reason = failure_reason("apply", GpuError("x " * 400 + "\nmore"))
    assert "\n" not in reason and len(reason) <= 300 and reason.endswith("...; fix and rerun slurm-mig sync")


def test_failure_reason_has_no_equals_sign_that_would_cut_it_when_read_back():
    reason = failure_reason("register", SlurmError("slurmctld reports IDLE+DRAIN gres=gpu:3g.20gb:2"))
    assert reason == ("slurm-mig sync failed at register: slurmctld reports IDLE+DRAIN "
                      "gres:gpu:3g.20gb:2; fix and rerun slurm-mig sync")
    line = f"NodeName=n1 State=IDLE+DRAIN Reason={reason} [root@2026-11-28T03:00:00]"
    assert parse_pairs(line)["Reason"].startswith(reason)


# ----------------------------------------------------------------------------- dry run


def test_dry_run_changes_nothing_and_lists_every_step(node):
    node.slurm.busy_polls = 5
    before, layout = node.files(), node.layout()
    result = node.sync(dry_run=True)
    assert node.slurm.mutations() == [] and node.files() == before and node.layout() == layout
    assert steps(result) == [("check", "done")] + [(s, "planned") for s in STEPS[1:]]
    detail = {s["step"]: s["detail"] for s in result["steps"]}
    assert detail["drain"] == "reason 'slurm-mig sync: applying 3g.20gb:2 on gpu 0'"
    assert "Gres=gpu:3g.20gb:2" in detail["write"]
    assert detail["reconfigure"] == "scontrol reconfigure"
    assert [s["action"] for s in result["apply"][0]["steps"]] == ["destroy"] * 7 + ["create"] * 2
    assert result["dry_run"] and not result["drained_by_us"] and not result["resumed"]


# ----------------------------------------------------------------------------- the CLI


FAKE_SCONTROL = textwrap.dedent("""\
    #!{python}
    # A stand-in scontrol over a JSON file: show node -o, update, reconfigure.
    import json, sys
    state_path, include = {state!r}, {include!r}
    state = json.load(open(state_path))
    args = sys.argv[1:]
    if args[:3] == ["show", "node", "-o"]:
        for name, n in state.items():
            print(f"NodeName={{name}} Gres={{n['gres']}} State={{n['state']}} Reason={{n['reason'] or '(null)'}}")
        sys.exit(0)
    if args[0] == "update":
        kv = dict(a.split("=", 1) for a in args[1:])
        n = state[kv["nodename"]]
        if kv["state"] == "drain":
            n["state"], n["reason"] = "IDLE+DRAIN", kv["reason"]
        else:
            n["state"], n["reason"] = "IDLE", ""
    elif args[0] == "reconfigure":
        for line in open(include):
            words = dict(w.split("=", 1) for w in line.split("#")[0].split() if "=" in w)
            if words.get("NodeName") in state:
                state[words["NodeName"]]["gres"] = words.get("Gres", "(null)")
    json.dump(state, open(state_path, "w"))
    """)


def cli_node(tmp_path) -> Node:
    node = Node(tmp_path)
    state = tmp_path / "slurm.json"
    state.write_text(json.dumps({NODE: {"state": "IDLE", "gres": "gpu:1g.5gb:7(S:0)", "reason": ""}}))
    script = tmp_path / "scontrol"
    script.write_text(FAKE_SCONTROL.format(python=sys.executable, state=str(state),
                                           include=node.config.paths.node_gres_include))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    with open(node.config_path, "a") as f:
        f.write(f'scontrol = "{script}"\nreconfigure_command = ["{script}", "reconfigure"]\n'
                f'node_name = "{NODE}"\n')
    node.state = state
    return node


def test_cli_sync_json_keys_are_stable(cli, tmp_path):
    node = cli_node(tmp_path)
    code, out, err = cli("--json", "sync", "--layout", "3g.20gb:2", "--wait", "5", config=node.config_path)
    assert code == 0, err
    data = json.loads(out)
    assert sorted(data) == sorted([
        "node", "dry_run", "already_in_sync", "layout", "wanted", "gres", "drained_by_us",
        "drained_before", "resumed", "apply", "files", "steps", "seconds", "hold"])
    assert sorted(data["wanted"][0]) == ["before", "gpu", "text", "wanted"]
    assert sorted(data["gres"]) == ["after", "before"]
    assert sorted(data["steps"][0]) == ["detail", "seconds", "status", "step"]
    assert sorted(data["files"]) == ["gres_conf", "node_include"]
    assert sorted(data["files"]["gres_conf"]) == ["changed", "path", "prev", "records"]
    assert sorted(data["files"]["node_include"]) == ["changed", "gres", "path", "prev"]
    assert [s["step"] for s in data["steps"]] == list(STEPS)
    assert data["node"] == NODE and data["resumed"]
    assert json.loads(node.state.read_text())[NODE] == {"state": "IDLE", "gres": "gpu:3g.20gb:2",
                                                        "reason": ""}


def test_cli_sync_text_prints_a_line_per_step(cli, tmp_path):
    node = cli_node(tmp_path)
    code, out, err = cli("sync", "--layout", "3g.20gb:2", "--dry-run", config=node.config_path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "node n1: would sync Gres=gpu:1g.5gb:7 -> gpu:3g.20gb:2"
    assert [l.split(":")[0].split()[-1] for l in lines if l.strip().startswith("planned")] == list(STEPS[1:])
    assert sum("gpu 0: destroy 1g.5gb@" in l for l in lines) == 7
    assert json.loads(node.state.read_text())[NODE]["state"] == "IDLE"


def test_cli_bad_layout_exits_2_in_one_line_without_slurm(cli, tmp_path):
    node = Node(tmp_path, config_extra='scontrol = "/nonexistent/scontrol"\n')
    code, out, err = cli("sync", "--layout", "3g.20gb:9", "--node", "n1", config=node.config_path)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("slurm-mig: error: gpu 0 (") and "--layout" in err


def test_cli_failure_exit_code_and_one_line(cli, tmp_path):
    node = cli_node(tmp_path)
    SimDriver(node.config.sim.root).inject_fault("create_gi", code=nvmlcodes.NO_PERMISSION)
    code, out, err = cli("sync", "--layout", "3g.20gb:2", config=node.config_path)
    assert code == 4 and out == "" and err.count("\n") == 1
    assert "node n1 left drained; fix and rerun slurm-mig sync" in err
    n = json.loads(node.state.read_text())[NODE]
    assert n["state"] == "IDLE+DRAIN" and n["reason"].startswith("slurm-mig sync failed at apply: ")


# ----------------------------------------------------------------------------- the hold


class WithN9:
    """The node's FakeSlurm plus another GPU node, n9, idle and schedulable; after a
    reconfigure n9 shows UNKNOWN for ``unknown_looks`` looks (its slurmd not registered yet),
    and a resume then is refused, as on 24.11."""

    def __init__(self, slurm: FakeSlurm, unknown_looks: int = 2):
        self.slurm = slurm
        self.n9 = NodeStatus("n9", "idle", frozenset(), {"1g.5gb": 7}, "gpu:1g.5gb:7", "")
        self.unknown_looks = unknown_looks
        self.unknown_left = 0
        self.calls = slurm.calls
        self.on_reconfigure = None

    def nodes(self, names=None):
        out = dict(self.slurm.nodes(names))
        if names is None or "n9" in names:
            if self.unknown_left:
                self.unknown_left -= 1
                out["n9"] = replace(self.n9, base="unknown")
            else:
                out["n9"] = self.n9
        return out

    def drain(self, node, reason):
        self.slurm.drain(node, reason)

    def drain_nodes(self, nodes, reason):
        self.calls.append(("drain_nodes", tuple(nodes), reason))
        assert nodes == ["n9"], nodes
        self.n9 = replace(self.n9, flags=frozenset({"DRAIN"}), reason=reason)

    def resume(self, node):
        if node != "n9":
            return self.slurm.resume(node)
        self.calls.append(("resume", "n9"))
        if self.unknown_left:
            raise SlurmError("resume n9: slurm_update error: Invalid node state specified")
        self.n9 = replace(self.n9, flags=frozenset(), reason="")

    def reconfigure(self):
        self.slurm.reconfigure()
        self.unknown_left = self.unknown_looks
        if self.on_reconfigure is not None:
            self.on_reconfigure()


def test_sync_holds_the_other_gpu_nodes_across_its_reconfigure_and_resumes_them_once_registered(node):
    two = node.slurm = WithN9(node.slurm)
    result = node.sync()
    assert steps(result) == [(s, "done") for s in STEPS]
    mutations = [c[:2] for c in two.calls if c[0] != "nodes"]
    assert mutations == [("drain", NODE), ("drain_nodes", ("n9",)), ("reconfigure",),
                         ("resume", "n9"), ("resume", NODE)]
    assert ("drain_nodes", ("n9",), "slurm-mig hold: reconfigure by slurm-mig sync on n1; resumed "
            "when the node has registered") in two.calls
    assert two.n9.flags == frozenset() and result["hold"]["resumed"] == ["n9"]
    assert result["hold"]["held"] == ["n9"] and result["hold"]["failed"] == {}


def test_sync_leaves_an_admins_drain_of_a_held_node_alone(node):
    two = node.slurm = WithN9(node.slurm)
    two.on_reconfigure = lambda: setattr(two, "n9", replace(two.n9, reason="admin: bad psu"))
    result = node.sync()
    assert ("resume", "n9") not in two.calls and result["hold"]["kept"] == {"n9": "admin: bad psu"}
    assert two.n9.reason == "admin: bad psu" and "DRAIN" in two.n9.flags and result["resumed"]


def test_sync_resumes_the_held_nodes_after_a_failed_reconfigure(node):
    two = node.slurm = WithN9(node.slurm, unknown_looks=0)
    node.slurm.slurm.fail = {"reconfigure": {1}}
    with pytest.raises(SlurmError):
        node.sync()
    assert ("resume", "n9") in two.calls and two.n9.flags == frozenset()
    assert "DRAIN" in node.slurm.slurm.flags  # the node itself: left drained, sync failed
