"""Faults at every step of an apply: crashes in-process and in killed processes, NVML errors.

The promise under test: a run that dies or fails part-way is finished by the next
one (roll forward to the journaled layout), and a busy instance is never destroyed,
neither by the run that failed nor by the one that finishes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest

from slurm_mig.core import errors
from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.errors import ApplyRefused, SimulatedCrash
from slurm_mig.core.gputypes import MigInstance
from slurm_mig.core.layout import parse_layout
from slurm_mig.gpu import nvmlcodes
from slurm_mig.gpu.nvml import NvmlBackend
from slurm_mig.node import journal
from slurm_mig.node.apply import Step, apply_gpu, plan_gpu
from slurm_mig.node.inventory import current_layout
from slurm_mig.sim.backend import SimBackend
from slurm_mig.sim.driver import SimDriver
from slurm_mig.sim.fakenvml import fake_pynvml

A100 = load_catalog().model("A100-40GB")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUSY_PID = 4242


@dataclass(frozen=True)
class Scenario:
    """A transition with several destroys and creates, one instance busy throughout."""

    name: str
    before: str
    wanted: str
    busy: Tuple[int, int]  #: (profile id, start) of the busy instance
    partial: bool
    expected: str  #: what the GPU carries at the end

    def mutations(self) -> int:
        """Driver mutation calls of the transition, from the (pure) plan: 2 per destroy/create."""
        present = [
            MigInstance(0, n, i.profile_id, i.start, i.size, ci_id=0,
                        pids=(BUSY_PID,) if (i.profile_id, i.start) == self.busy else ())
            for n, i in enumerate(parse_layout(self.before, A100))
        ]
        plan = plan_gpu(A100, present, parse_layout(self.wanted, A100))
        return 2 * (len(plan.destroy) + len(plan.create)) + len(plan.complete)


KEPT = Scenario(  # the busy instance is wanted: a full apply around it
    "kept",
    before="4g.20gb@0,1g.5gb@4,1g.5gb@5,1g.5gb@6",
    wanted="1g.5gb@0,1g.5gb@1,2g.10gb@2,2g.10gb@4,1g.5gb@6",
    busy=(19, 6),
    partial=False,
    expected="1g.5gb@0,1g.5gb@1,2g.10gb@2,2g.10gb@4,1g.5gb@6",
)
BLOCKED = Scenario(  # the busy instance is not wanted: partial apply, 2g.10gb@4 cannot be made
    "blocked",
    before="4g.20gb@0,1g.5gb@4,1g.5gb@5,1g.5gb@6",
    wanted="1g.5gb@0,1g.5gb@1,2g.10gb@2,2g.10gb@4,1g.5gb@6",
    busy=(19, 5),
    partial=True,
    expected="1g.5gb@0,1g.5gb@1,2g.10gb@2,1g.5gb@5,1g.5gb@6",
)
SCENARIOS = (KEPT, BLOCKED)


def every_step(*scenarios):
    return [
        pytest.param(sc, n, when, id=f"{sc.name}-{n}-{when}")
        for sc in scenarios
        for n in range(1, sc.mutations() + 1)
        for when in ("before", "after")
    ]


class Node:
    def __init__(self, root, scenario: Scenario, backend: str = "sim"):
        self.sim = str(root / "sim")
        self.state_dir = str(root / "state")
        self.driver = SimDriver.create(self.sim, ["A100-40GB"], device_nodes=False)
        if backend == "nvml":  # the production backend, through the pynvml-compatible fake
            self.backend = NvmlBackend(fake_pynvml(self.sim))
        else:
            self.backend = SimBackend(self.sim)
        self.scenario = scenario
        self.wanted = parse_layout(scenario.wanted, A100)
        self.apply(parse_layout(scenario.before, A100), partial=False)
        m = self.by_key()[scenario.busy]
        self.driver.attach_process(0, m.gi_id, m.ci_id, BUSY_PID)
        self.busy = self.by_key()[scenario.busy]
        self.uuid = self.backend.gpus()[0].uuid

    def apply(self, wanted=None, partial: Optional[bool] = None):
        return apply_gpu(
            self.backend, 0, self.wanted if wanted is None else wanted, state_dir=self.state_dir,
            partial=self.scenario.partial if partial is None else partial,
        )

    def by_key(self):
        return {(m.profile_id, m.start): m for m in self.backend.instances(0)}

    def calls(self) -> int:
        return self.driver.snapshot()["calls"].get("any", 0)

    def assert_busy_instance_untouched(self):
        m = self.by_key().get(self.scenario.busy)
        assert m == self.busy, "the busy instance was destroyed or changed"

    def assert_half_made_handled(self, half_made, result):
        """A GPU instance left without its compute instance: completed when wanted (same
        driver id, not destroyed and made again), destroyed when not."""
        for m in half_made:
            wanted = (m.profile_id, m.start) in self.wanted.keys()
            action = "complete" if wanted else "destroy"
            step = Step(action, A100.profile(m.profile_id).name, m.start, m.gi_id, True)
            assert step in result.steps
            if wanted:
                assert self.by_key()[(m.profile_id, m.start)].gi_id == m.gi_id

    def assert_converged(self, result):
        assert result.after == self.scenario.expected
        assert str(current_layout(A100, self.backend.instances(0))) == self.scenario.expected
        assert all(m.complete for m in self.backend.instances(0))
        self.assert_busy_instance_untouched()
        assert journal.pending(self.state_dir) == ()
        again = self.apply()
        assert again.steps == () and not again.resumed


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_transition_makes_as_many_driver_calls_as_planned(workdir, sc):
    node = Node(workdir, sc)
    start = node.calls()
    result = node.apply()
    assert node.calls() - start == sc.mutations() >= 10
    assert {s.action for s in result.steps} == {"destroy", "create"}
    node.assert_converged(result)


# ----------------------------------------------------------------------------- in-process crashes


@pytest.mark.parametrize("backend", ["sim", "nvml"])
@pytest.mark.parametrize("sc, n, when", every_step(KEPT, BLOCKED))
def test_crash_at_every_step_is_finished_by_the_next_run(workdir, sc, n, when, backend):
    node = Node(workdir, sc, backend)
    node.driver.inject_fault("any", n, crash="raise", when=when)
    with pytest.raises(SimulatedCrash):
        node.apply()
    assert journal.pending(node.state_dir) == (node.uuid,)
    node.assert_busy_instance_untouched()
    half_made = [m for m in node.backend.instances(0) if not m.complete]

    result = node.apply()
    assert result.resumed and all(s.recovery for s in result.steps)
    node.assert_half_made_handled(half_made, result)
    node.assert_converged(result)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_crash_while_finishing_a_crashed_run_is_finished_too(workdir, n):
    node = Node(workdir, KEPT)
    node.driver.inject_fault("any", n, crash="raise", when="after")
    with pytest.raises(SimulatedCrash):
        node.apply()
    node.driver.inject_fault("any", 2, crash="raise", when="before")  # inside the recovery
    with pytest.raises(SimulatedCrash):
        node.apply()
    assert journal.pending(node.state_dir) == (node.uuid,)
    result = node.apply()
    assert result.resumed
    node.assert_converged(result)


def test_interrupted_run_is_finished_before_a_new_request(workdir):
    node = Node(workdir, KEPT)
    node.driver.inject_fault("any", 5, crash="raise", when="after")
    with pytest.raises(SimulatedCrash):
        node.apply()
    newer = parse_layout("4g.20gb@0,2g.10gb@4,1g.5gb@6", A100)
    result = node.apply(newer)
    assert result.resumed and result.after == "4g.20gb@0,2g.10gb@4,1g.5gb@6"
    recovery = [s for s in result.steps if s.recovery]
    assert recovery and result.steps[: len(recovery)] == tuple(recovery)  # recovery first
    assert str(Step("create", "2g.10gb", 2)) in [str(s).split(" (gi")[0] for s in recovery]
    assert not journal.pending(node.state_dir)
    node.assert_busy_instance_untouched()


def test_job_started_after_a_crash_blocks_the_recovery_too(workdir):
    node = Node(workdir, KEPT)
    node.driver.inject_fault("any", 1, crash="raise", when="before")  # journal written, nothing done
    with pytest.raises(SimulatedCrash):
        node.apply()
    big = node.by_key()[(5, 0)]  # 4g.20gb@0, which the journaled layout drops
    node.driver.attach_process(0, big.gi_id, big.ci_id, 99)
    big = node.by_key()[(5, 0)]
    state = open(os.path.join(node.sim, "state.json"), "rb").read()
    with pytest.raises(ApplyRefused) as info:
        node.apply(partial=False)
    assert "4g.20gb@0" in str(info.value) and "nothing was changed" in str(info.value)
    assert open(os.path.join(node.sim, "state.json"), "rb").read() == state
    assert journal.pending(node.state_dir) == (node.uuid,)  # kept for a later run

    result = node.apply(partial=True)
    assert result.resumed and result.partial
    assert node.by_key()[(5, 0)] == big  # never destroyed
    assert [b.gi_id for b in result.blocked] == [big.gi_id]
    assert result.after == "4g.20gb@0,2g.10gb@4,1g.5gb@6"
    assert not journal.pending(node.state_dir)


# ----------------------------------------------------------------------------- killed processes

CHILD = """
import sys
from slurm_mig.node.apply import apply_gpu
from slurm_mig.core.catalog import load_catalog
from slurm_mig.sim.backend import SimBackend
from slurm_mig.core.layout import parse_layout
sim, state, text, partial = sys.argv[1:]
model = load_catalog().model("A100-40GB")
apply_gpu(SimBackend(sim), 0, parse_layout(text, model), state_dir=state, partial=partial == "1")
print("the apply finished: the fault did not fire")
"""


def run_child(node: Node) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-c", CHILD, node.sim, node.state_dir, node.scenario.wanted,
            "1" if node.scenario.partial else "0"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("sc, n, when", every_step(KEPT, BLOCKED))
def test_killed_process_at_every_step_is_finished_by_the_next_run(workdir, sc, n, when):
    node = Node(workdir, sc)
    node.driver.inject_fault("any", n, crash="exit", when=when)
    child = run_child(node)
    assert child.returncode == 137, child.stdout + child.stderr
    assert journal.pending(node.state_dir) == (node.uuid,)
    node.assert_busy_instance_untouched()

    result = node.apply()
    assert result.resumed
    in_the_way = [] if sc.busy in node.wanted.keys() else [(node.busy.start, node.busy.gi_id)]
    assert [(b.start, b.gi_id) for b in result.blocked] == in_the_way
    node.assert_converged(result)


def test_child_without_a_fault_converges(workdir):
    """The subprocess path itself works: same sim root and state dir, no journal left."""
    node = Node(workdir, BLOCKED)
    child = run_child(node)
    assert child.returncode == 0, child.stderr
    assert "the apply finished" in child.stdout
    result = node.apply()
    assert result.steps == () and not result.resumed and result.after == BLOCKED.expected


# ----------------------------------------------------------------------------- driver errors


@pytest.mark.parametrize(
    "op, nth, code, kind",
    [
        ("create_gi", 2, nvmlcodes.INSUFFICIENT_RESOURCES, errors.InsufficientResources),
        ("destroy_ci", 2, nvmlcodes.NO_PERMISSION, errors.NoPermission),
        ("create_ci", 1, nvmlcodes.NOT_SUPPORTED, errors.NotSupported),
        ("destroy_gi", 1, nvmlcodes.IN_USE, errors.InstanceInUse),
        ("create_gi", 4, nvmlcodes.GPU_IS_LOST, errors.GpuError),
        ("any", 7, nvmlcodes.UNKNOWN, errors.GpuError),
    ],
)
def test_driver_error_on_a_step_is_the_right_error_and_the_next_run_converges(
    workdir, op, nth, code, kind
):
    node = Node(workdir, KEPT)
    node.driver.inject_fault(op, nth, code=code)
    with pytest.raises(kind) as info:
        node.apply()
    err = info.value
    assert type(err) is kind
    message = str(err)
    assert nvmlcodes.name_of(code) in message and "\n" not in message
    assert "while applying 1g.5gb@0,1g.5gb@1,2g.10gb@2,2g.10gb@4,1g.5gb@6 to gpu 0" in message
    assert "the next apply finishes it" in message
    assert isinstance(err.__cause__, kind)  # the backend's error, chained
    assert isinstance(err.__cause__.__cause__, errors.GpuError)  # and the driver's code below it
    node.assert_busy_instance_untouched()
    assert journal.pending(node.state_dir) == (node.uuid,)
    half_made = [m for m in node.backend.instances(0) if not m.complete]

    result = node.apply()
    assert result.resumed
    node.assert_half_made_handled(half_made, result)
    node.assert_converged(result)


def test_exit_codes_of_driver_errors():
    assert errors.InsufficientResources.exit_code == errors.NoPermission.exit_code == errors.EXIT_GPU
    assert errors.InstanceInUse.exit_code == errors.EXIT_REFUSED


# ----------------------------------------------------------------------------- a job starts mid-apply


class JobStartsMidApply(SimBackend):
    """The driver as seen while a job lands on an instance between planning and its destroy."""

    def __init__(self, root, target, pid=31337, at_read=2):
        super().__init__(root)
        self.target, self.pid, self.at_read, self.reads = target, pid, at_read, 0

    def instances(self, gpu):
        self.reads += 1
        if self.reads == self.at_read:  # 2: the re-read right before the first destroy
            m = {(m.profile_id, m.start): m for m in super().instances(gpu)}[self.target]
            self.driver.attach_process(gpu, m.gi_id, m.ci_id, self.pid)
        return super().instances(gpu)


def test_instance_that_became_busy_before_any_change_refuses_and_leaves_no_intent(workdir):
    node = Node(workdir, KEPT)
    before = str(current_layout(A100, node.backend.instances(0)))
    racing = JobStartsMidApply(node.sim, (5, 0))  # 4g.20gb@0, first in line to go
    with pytest.raises(ApplyRefused) as info:
        apply_gpu(racing, 0, node.wanted, state_dir=node.state_dir)
    message = str(info.value)
    assert "became busy during the apply" in message and "pid 31337" in message
    assert "nothing was changed" in message
    assert str(current_layout(A100, node.backend.instances(0))) == before
    assert journal.pending(node.state_dir) == ()  # a refused request never comes back later


def test_instance_that_became_busy_mid_way_refuses_the_rest_and_keeps_the_intent(workdir):
    node = Node(workdir, KEPT)
    racing = JobStartsMidApply(node.sim, (19, 5), at_read=4)  # 1g.5gb@5, third to go
    with pytest.raises(ApplyRefused) as info:
        apply_gpu(racing, 0, node.wanted, state_dir=node.state_dir)
    assert "2 changes were made first" in str(info.value)
    assert (19, 5) in node.by_key() and (5, 0) not in node.by_key()
    assert journal.pending(node.state_dir) == (node.uuid,)  # the next run finishes what it can
    result = node.apply(partial=True)
    assert result.resumed and [b.start for b in result.blocked] == [5]


def test_instance_that_became_busy_is_blocked_in_a_partial_apply(workdir):
    node = Node(workdir, KEPT)
    racing = JobStartsMidApply(node.sim, (5, 0))
    result = apply_gpu(racing, 0, node.wanted, state_dir=node.state_dir, partial=True)
    assert (5, 0) in node.by_key()
    assert [b.profile for b in result.blocked] == ["4g.20gb"]
    assert result.after == "4g.20gb@0,2g.10gb@4,1g.5gb@6"
    assert sorted(result.blocked_creates) == ["1g.5gb@0", "1g.5gb@1", "2g.10gb@2"]
    assert not journal.pending(node.state_dir)


def test_dry_run_after_a_crash_reports_the_pending_intent_and_changes_nothing(workdir):
    node = Node(workdir, KEPT)
    node.driver.inject_fault("any", 3, crash="raise", when="after")
    with pytest.raises(SimulatedCrash):
        node.apply()
    state = open(os.path.join(node.sim, "state.json"), "rb").read()
    dry = apply_gpu(node.backend, 0, node.wanted, state_dir=node.state_dir, dry_run=True)
    assert "interrupted apply" in dry.warnings[0] and not dry.resumed
    assert open(os.path.join(node.sim, "state.json"), "rb").read() == state
    assert journal.pending(node.state_dir) == (node.uuid,)
