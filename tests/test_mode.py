"""``slurm-mig mode on|off`` without Slurm: an in-memory SlurmClient, the simulator, a fake clock.

What docs/mig-mode.md promises, per generation: Ampere (A100) keeps the change pending until
a GPU reset, Hopper (H100) applies it at once; processes refuse a GPU; MIG off destroys idle
instances first; --reset resets only an idle GPU; the node is drained and resumed as sync does.
"""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from typing import List, Optional, Sequence

import pytest

from slurm_mig.app.commands import apply_layout
from slurm_mig.change.mode import STEPS, decide, set_mode
from slurm_mig.core.errors import EXIT_REFUSED, ModeRefused, NotSupported
from slurm_mig.core.gputypes import GpuInfo, MigInstance
from slurm_mig.core.gresconf import parse_gres_conf
from slurm_mig.host.config import load_config, sim_config_text
from slurm_mig.node.gresfiles import gres_conf, node_conf
from slurm_mig.gpu.nvml import NvmlBackend
from slurm_mig.sim.backend import SimBackend
from slurm_mig.sim.fakenvml import fake_pynvml
from slurm_mig.sim.driver import SimDriver
from slurm_mig.slurm.scontrol import parse_gres

from test_sync import FAKE_SCONTROL, NODE, Clock, FakeSlurm

A100, H100 = "A100-40GB", "H100-80GB"


class ModeNode:
    """Node n1 with simulated GPUs, its Slurm files written, an in-memory Slurm."""

    def __init__(self, tmp_path, models: Sequence[str], *, mig: bool = False, layout: Optional[str] = None,
                 kind: str = "sim"):
        self.config_path = str(tmp_path / "config.toml")
        with open(self.config_path, "w") as f:
            f.write(sim_config_text(str(tmp_path), [m for m in models if not m.startswith("nomig:")],
                                    "[slurm]\nregister_timeout = 30\n"))
        self.config = load_config(self.config_path)
        self.driver = SimDriver.create(self.config.sim.root, list(models), mig_enabled=mig)
        self.backend = (SimBackend(self.config.sim.root) if kind == "sim"
                        else NvmlBackend(fake_pynvml(self.config.sim.root)))
        if layout is not None:
            apply_layout(self.config, self.backend, layout)
        gres_conf(self.config, self.backend, NODE, write=True)
        gres = node_conf(self.config, self.backend, NODE, write=True)["gres"]
        self.slurm = FakeSlurm(self.config.paths.node_gres_include, parse_gres(gres))
        self.clock = Clock()

    def mode(self, want: str, **kw) -> dict:
        kw.setdefault("wait", 60)
        return set_mode(self.config, self.backend, self.slurm, NODE, want == "on", clock=self.clock,
                        sleep=self.clock.sleep, poll=1.0, **kw).as_dict()

    def modes(self) -> List[tuple]:
        return [(g.mig_current, g.mig_pending) for g in self.backend.gpus()]

    def gres_types(self) -> List[str]:
        with open(self.config.paths.gres_conf) as f:
            return [r.type or "gpu" for r in parse_gres_conf(f.read(), NODE)]


@pytest.fixture(params=["sim", "nvml"])
def kind(request):
    """The simulator's backend, or the production NVML backend over the pynvml look-alike."""
    return request.param


def steps(result: dict) -> List[tuple]:
    return [(s["step"], s["status"]) for s in result["steps"]]


# ----------------------------------------------------------------------------- Ampere


def test_ampere_on_stays_pending_says_a_reset_is_needed_and_resumes_the_node(tmp_path, kind):
    n = ModeNode(tmp_path, [A100], kind=kind)
    result = n.mode("on")
    assert n.modes() == [(False, True)]
    gpu = result["gpus"][0]
    assert gpu["before"] == {"current": False, "pending": False}
    assert gpu["after"] == {"current": False, "pending": True}
    assert gpu["set"] and not gpu["reset"] and gpu["reset_needed_by_generation"]
    assert gpu["needed"].startswith("a GPU reset: `slurm-mig mode on --gpu 0 --reset`")
    # Nothing the jobs see changed: no new files, no reconfigure; drained and resumed.
    assert n.slurm.mutations() == [("drain", NODE, "slurm-mig mode: MIG on on gpu 0"), ("resume", NODE)]
    assert dict(steps(result))["write"] == "skipped" and n.gres_types() == ["gpu"]


def test_ampere_reset_is_refused_while_a_process_uses_the_gpu(tmp_path, kind):
    n = ModeNode(tmp_path, [A100], kind=kind)
    n.mode("on")  # pending on
    n.driver.attach_gpu_process(0, 4242)
    n.slurm.calls.clear()
    with pytest.raises(ModeRefused) as excinfo:
        n.mode("on", reset=True)
    assert excinfo.value.exit_code == EXIT_REFUSED == 5
    assert "gpu 0 (NVIDIA A100-SXM4-40GB): processes 4242 run on it" in str(excinfo.value)
    assert n.modes() == [(False, True)]
    # The node was idle, so the process is not a job's: refused before Slurm was touched.
    assert n.slurm.mutations() == []


def test_ampere_idle_reset_makes_mig_current_and_slurm_follows(tmp_path):
    n = ModeNode(tmp_path, [A100])
    result = n.mode("on", reset=True)
    assert n.modes() == [(True, True)]
    assert result["gpus"][0]["reset"] and result["gpus"][0]["needed"] == "nothing"
    assert steps(result) == [(s, "done") for s in STEPS]
    assert n.slurm.mutations() == [
        ("drain", NODE, "slurm-mig mode: MIG on on gpu 0 with a GPU reset"), ("reconfigure",),
        ("resume", NODE)]
    # MIG on with no instances: the GPU has no gres.conf record until a layout is applied.
    assert n.gres_types() == [] and result["gres"] == {"before": "gpu:1", "after": ""}


def test_ampere_off_destroys_idle_instances_and_waits_for_a_reset(tmp_path, kind):
    n = ModeNode(tmp_path, [A100], mig=True, layout="3g.20gb:2", kind=kind)
    result = n.mode("off")
    assert n.modes() == [(True, False)]
    assert n.backend.instances(0) == []
    assert [a["action"] for a in result["gpus"][0]["destroyed"]] == ["destroy", "destroy"]
    assert "--reset" in result["gpus"][0]["needed"]


def test_a_pending_change_taken_back_needs_no_reset(tmp_path, kind):
    n = ModeNode(tmp_path, [A100], kind=kind)
    n.mode("on")
    result = n.mode("off")
    assert n.modes() == [(False, False)] and result["gpus"][0]["needed"] == "nothing"


# ----------------------------------------------------------------------------- Hopper


def test_hopper_on_is_current_at_once_without_a_reset(tmp_path, kind):
    n = ModeNode(tmp_path, [H100], kind=kind)
    result = n.mode("on")
    assert n.modes() == [(True, True)]
    gpu = result["gpus"][0]
    assert gpu["set"] and not gpu["reset"] and not gpu["reset_needed_by_generation"]
    assert gpu["needed"] == "nothing"
    assert dict(steps(result))["reset"] == "skipped"
    assert ("reconfigure",) in n.slurm.mutations() and n.slurm.gres == {}


def test_hopper_off_with_idle_instances_destroys_them_then_turns_off(tmp_path, kind):
    n = ModeNode(tmp_path, [H100], mig=True, layout="1g.10gb:3", kind=kind)
    result = n.mode("off")
    assert n.modes() == [(False, False)]
    assert len(result["gpus"][0]["destroyed"]) == 3
    # MIG off: the whole GPU is one plain gres record again.
    assert n.gres_types() == ["gpu"] and n.slurm.gres == {"": 1}  # gpu:1, no type
    assert result["gres"]["after"] == "gpu:1" and "DRAIN" not in n.slurm.flags


def test_off_with_an_instance_in_use_is_refused_after_the_wait_and_the_drain_undone(tmp_path, kind):
    n = ModeNode(tmp_path, [H100], mig=True, layout="1g.10gb:2", kind=kind)
    gi = n.backend.instances(0)[0]
    n.driver.attach_process(0, gi.gi_id, gi.ci_id, 777)
    n.slurm.busy_polls = 2  # a job runs: drain and wait; its process stays past the job
    with pytest.raises(ModeRefused) as excinfo:
        n.mode("off")
    assert "gpu 0 (NVIDIA H100 80GB HBM3): processes 777 run on it; MIG mode not changed" in str(excinfo.value)
    assert n.modes() == [(True, True)] and len(n.backend.instances(0)) == 2
    assert n.slurm.mutations() == [("drain", NODE, "slurm-mig mode: MIG off on gpu 0"), ("resume", NODE)]


def test_hopper_on_with_a_process_on_the_whole_gpu_is_refused_before_slurm(tmp_path, kind):
    n = ModeNode(tmp_path, [H100], kind=kind)
    n.driver.attach_gpu_process(0, 31337)
    with pytest.raises(ModeRefused, match="processes 31337 run on it.*the node was not drained"):
        n.mode("on")
    assert n.modes() == [(False, False)] and n.slurm.mutations() == []


# ----------------------------------------------------------------------------- several GPUs


def test_gpu_all_changes_every_mig_capable_gpu_each_by_its_generation(tmp_path, kind):
    n = ModeNode(tmp_path, [A100, H100, "nomig:Tesla T4"], kind=kind)
    result = n.mode("on", gpu="all")
    assert n.modes() == [(False, True), (True, True), (False, False)]
    assert [g["gpu"] for g in result["gpus"]] == [0, 1]
    assert [g["needed"] == "nothing" for g in result["gpus"]] == [False, True]
    assert n.slurm.mutations()[0] == ("drain", NODE, "slurm-mig mode: MIG on on gpu 0,1")
    with pytest.raises(NotSupported, match="gpu 2 .Tesla T4. does not support MIG"):
        n.mode("on", gpu="2")


def test_gpu_n_changes_only_that_gpu(tmp_path):
    n = ModeNode(tmp_path, [A100, H100])
    n.mode("on", gpu="1")
    assert n.modes() == [(False, False), (True, True)]


def test_a_gpu_already_in_the_mode_is_left_alone_and_slurm_untouched(tmp_path):
    n = ModeNode(tmp_path, [H100], mig=True, layout="1g.10gb:1")
    result = n.mode("on")
    assert result["nothing_to_do"] and n.slurm.mutations() == []
    assert len(n.backend.instances(0)) == 1


def test_dry_run_plans_every_step_and_changes_nothing(tmp_path):
    n = ModeNode(tmp_path, [A100], mig=True, layout="3g.20gb:1")
    result = n.mode("off", reset=True, dry_run=True)
    assert steps(result) == [("check", "done")] + [(s, "planned") for s in STEPS[1:]]
    detail = dict((s["step"], s["detail"]) for s in result["steps"])
    assert "destroy gi" in detail["mode"] and "pending until a reset" in detail["mode"]
    assert detail["reset"] == "gpu 0"
    assert n.modes() == [(True, True)] and n.slurm.mutations() == []


def test_reset_on_nvml_says_to_run_nvidia_smi_and_leaves_the_node_drained_until_rerun(tmp_path):
    n = ModeNode(tmp_path, [A100], kind="nvml")
    with pytest.raises(NotSupported, match=r"NVML has no GPU reset call.*`nvidia-smi -r -i 0`"):
        n.mode("on", reset=True)
    assert n.modes() == [(False, True)]
    assert n.slurm.reason.startswith("slurm-mig mode failed at reset: gpu 0: NVML has no GPU reset")
    n.driver.reset_gpu(0)  # the admin ran nvidia-smi -r -i 0
    result = n.mode("on")
    assert n.modes() == [(True, True)] and "DRAIN" not in n.slurm.flags
    assert ("reconfigure",) in n.slurm.mutations() and result["gres"]["after"] == ""


def test_a_failed_reset_leaves_the_node_drained_with_a_reason_that_says_what_to_do(tmp_path):
    n = ModeNode(tmp_path, [A100])
    n.driver.inject_fault("reset_gpu", code=999)
    with pytest.raises(Exception) as excinfo:
        n.mode("on", reset=True)
    assert "mode stopped at reset: node n1 left drained" in str(excinfo.value)
    assert n.slurm.reason.startswith("slurm-mig mode failed at reset: ")
    assert n.slurm.reason.endswith("; fix and rerun slurm-mig mode")
    # The rerun finds the change pending, resets, and resumes the node.
    n.mode("on", reset=True)
    assert n.modes() == [(True, True)] and "DRAIN" not in n.slurm.flags


# ----------------------------------------------------------------------------- pure decisions


def info(current: bool, pending: bool, name: str = "NVIDIA A100-SXM4-40GB") -> GpuInfo:
    return GpuInfo(0, 0, "GPU-x", name, "0x20B010DE", current, pending)


def test_decide_sets_the_mode_and_resets_only_when_asked_and_pending():
    d = decide(info(False, False), True, [], [], reset=False)
    assert (d.set_mode, d.reset, d.refusal) == (True, False, None)
    assert decide(info(False, False), True, [], [], reset=True).reset
    hopper = decide(info(False, False, "NVIDIA H100 80GB HBM3"), True, [], [], reset=True)
    assert (hopper.set_mode, hopper.reset) == (True, False)
    assert not decide(info(True, True), True, [], [7], reset=True).acts  # nothing to do: no refusal


def test_decide_refuses_a_gpu_whose_instances_a_job_holds():
    held = MigInstance(0, 3, 9, 0, 4, ci_id=0, jobs=("812",))
    d = decide(info(True, True), False, [held], [], reset=False)
    assert d.refusal and "jobs 812 hold its instances" in d.refusal and not d.acts


# ----------------------------------------------------------------------------- the CLI


def cli_node(tmp_path, models) -> ModeNode:
    n = ModeNode(tmp_path, models)
    n.state = tmp_path / "slurm.json"
    n.state.write_text(json.dumps({NODE: {"state": "IDLE", "gres": "gpu:1", "reason": ""}}))
    script = tmp_path / "scontrol"
    script.write_text(FAKE_SCONTROL.format(python=sys.executable, state=str(n.state),
                                           include=n.config.paths.node_gres_include))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    with open(n.config_path, "a") as f:
        f.write(f'scontrol = "{script}"\nreconfigure_command = ["{script}", "reconfigure"]\n'
                f'node_name = "{NODE}"\n')
    return n


def test_cli_mode_json_keys_are_stable(cli, tmp_path):
    n = cli_node(tmp_path, [H100])
    code, out, err = cli("--json", "mode", "on", "--gpu", "all", "--wait", "5", config=n.config_path)
    assert code == 0, err
    data = json.loads(out)
    assert sorted(data) == sorted(["node", "mode", "reset", "dry_run", "nothing_to_do", "gpus", "gres",
                                   "drained_by_us", "drained_before", "resumed", "files", "steps",
                                   "seconds"])
    assert sorted(data["gpus"][0]) == sorted(["gpu", "name", "want", "before", "after",
                                              "reset_needed_by_generation", "refused", "destroyed",
                                              "set", "reset", "plan", "needed"])
    assert data["gpus"][0]["after"] == {"current": True, "pending": True}
    assert [s["step"] for s in data["steps"]] == list(STEPS)
    assert json.loads(n.state.read_text())[NODE] == {"state": "IDLE", "gres": "(null)", "reason": ""}
    code, out, err = cli("mode", "on", config=n.config_path)
    assert (code, err) == (0, "")
    assert out.splitlines()[:2] == ["node n1: MIG on: nothing to do",
                                    "  gpu 0 (NVIDIA H100 80GB HBM3): on -> on"]


def test_cli_mode_text_says_what_a_pending_change_needs(cli, tmp_path):
    n = cli_node(tmp_path, [A100])
    code, out, err = cli("mode", "on", config=n.config_path)
    assert (code, err) == (0, "")
    assert out.splitlines()[1] == (
        "  gpu 0 (NVIDIA A100-SXM4-40GB): off -> off (pending on); needs a GPU reset: "
        "`slurm-mig mode on --gpu 0 --reset` (no process may use it), or `nvidia-smi -r -i 0`, "
        "or a reboot")


def test_cli_mode_refusal_exits_5_in_one_line(cli, tmp_path):
    n = cli_node(tmp_path, [A100])
    n.driver.attach_gpu_process(0, 4242)
    code, out, err = cli("mode", "on", "--reset", config=n.config_path)
    assert (code, out) == (5, "")
    assert err == ("slurm-mig: error: gpu 0 (NVIDIA A100-SXM4-40GB): processes 4242 run on it; MIG "
                   "mode not changed; end them (or let them finish), then rerun slurm-mig mode on; "
                   "the node was not drained\n")
    assert n.modes() == [(False, False)]


# ----------------------------------------------------------------------------- sync and the config


def test_config_reads_mig_mode_for_the_node_and_per_gpu(tmp_path):
    from slurm_mig.host.config import parse_config

    config = parse_config('version = 1\n[layout]\nmig_mode = "on"\n[layout.mig_modes]\n2 = "off"\n',
                          "c.toml")
    assert [config.layout.mig_mode_for(i) for i in (0, 1, 2)] == [True, True, False]
    assert parse_config("version = 1\n", "c.toml").layout.mig_mode_for(0) is None


@pytest.mark.parametrize("text, message", [
    ('[layout]\nmig_mode = "yes"\n', 'c.toml: layout.mig_mode: expected "on" or "off", got \'yes\''),
    ('[layout.mig_modes]\nx = "on"\n', "c.toml: layout.mig_modes: key 'x' is"),
    ('[layout.gpus]\n1 = "1g.10gb:7"\n[layout.mig_modes]\n1 = "off"\n',
     'c.toml: layout.gpus.1: a layout needs MIG mode on, but layout.mig_modes.1 is "off"'),
    ('[layout]\ndefault = "1g.10gb:7"\nmig_mode = "off"\n',
     'c.toml: layout.default: a layout needs MIG mode on, but layout.mig_mode is "off" for every GPU'),
])
def test_config_refuses_a_bad_or_contradictory_mig_mode(text, message):
    from slurm_mig.core.errors import ConfigError
    from slurm_mig.host.config import parse_config

    with pytest.raises(ConfigError) as excinfo:
        parse_config("version = 1\n" + text, "c.toml")
    assert str(excinfo.value).startswith(message)


def test_sync_refuses_a_gpu_not_in_the_mig_mode_the_config_requires(tmp_path):
    from slurm_mig.change.sync import sync_node
    from slurm_mig.core.errors import EXIT_GPU, GpuError

    n = ModeNode(tmp_path, [A100, H100])
    n.mode("on", gpu="0")  # Ampere: pending until a reset
    n.mode("on", gpu="1")
    with open(n.config_path, "a") as f:
        f.write('[layout]\ndefault = "1g.10gb:1"\nmig_mode = "on"\n')
    n.slurm.calls.clear()
    config = load_config(n.config_path)
    with pytest.raises(GpuError) as excinfo:
        sync_node(config, n.backend, n.slurm, NODE, clock=n.clock, sleep=n.clock.sleep)
    assert excinfo.value.exit_code == EXIT_GPU
    assert str(excinfo.value).startswith(
        "gpu 0 (NVIDIA A100-SXM4-40GB) has MIG mode off, pending on (waits for a GPU reset), but "
        f"layout.mig_mode in {n.config_path} wants it on; nothing was changed; run "
        "`slurm-mig mode on --gpu 0 --reset` (docs/mig-mode.md)")
    assert n.slurm.mutations() == []
    n.driver.reset_gpu(0)
    result = sync_node(config, n.backend, n.slurm, NODE, clock=n.clock, sleep=n.clock.sleep, poll=1.0)
    assert [w["wanted"] for w in result.as_dict()["wanted"]] == ["1g.10gb@6", "1g.10gb@6"]
