"""The apply engine against the simulated driver: every layout, busy instances, idempotence."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import threading

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.errors import (EXIT_LOCKED, EXIT_REFUSED, ApplyRefused, GpuError, InputError,
                                   LayoutError, LockBusy)
from slurm_mig.core.gputypes import MigInstance
from slurm_mig.core.layout import (Instance, Layout, _candidates, enumerate_layouts, is_valid,
                                   parse_layout)
from slurm_mig.gpu.nvml import NvmlBackend
from slurm_mig.host.locking import node_lock
from slurm_mig.node import journal
from slurm_mig.node.apply import ApplyResult, Blocked, Step, apply_gpu, apply_node, plan_gpu
from slurm_mig.node.inventory import current_layout
from slurm_mig.sim.backend import SimBackend
from slurm_mig.sim.driver import SimDriver
from slurm_mig.sim.fakenvml import fake_pynvml

CATALOG = load_catalog()
MODELS = CATALOG.models
A100 = CATALOG.model("A100-40GB")
BUSY_PID = 4242


class Node:
    """A simulated node under a test directory: driver, backend, state directory."""

    def __init__(self, root, models, backend="sim"):
        self.driver = SimDriver.create(str(root / "sim"), list(models), device_nodes=False)
        if backend == "nvml":  # the production backend, through the pynvml-compatible fake
            self.backend = NvmlBackend(fake_pynvml(str(root / "sim")))
        else:
            self.backend = SimBackend(str(root / "sim"))
        self.state_dir = str(root / "state")
        self.state_file = os.path.join(str(root / "sim"), "state.json")

    def apply(self, gpu, wanted, **kw) -> ApplyResult:
        return apply_gpu(self.backend, gpu, wanted, state_dir=self.state_dir, **kw)

    def layout(self, gpu, model) -> Layout:
        instances = self.backend.instances(gpu)
        assert all(m.complete for m in instances), instances
        return current_layout(model, instances)

    def state_bytes(self) -> bytes:
        with open(self.state_file, "rb") as f:
            return f.read()

    def calls(self) -> dict:
        return dict(self.driver.snapshot()["calls"])

    def by_key(self, gpu):
        return {(m.profile_id, m.start): m for m in self.backend.instances(gpu)}

    def make_busy(self, gpu, keys, pid=BUSY_PID):
        """Attach a process to the instances at ``keys``; return their driver records."""
        present = self.by_key(gpu)
        for key in keys:
            m = present[key]
            self.driver.attach_process(gpu, m.gi_id, m.ci_id, pid)
        return {key: self.by_key(gpu)[key] for key in keys}


@pytest.fixture
def node(workdir):
    return Node(workdir, ["A100-40GB"])


def L(text, model=A100) -> Layout:
    return parse_layout(text, model)


# ----------------------------------------------------------------------------- every layout


def neighbour_walk(model):
    """All layouts of ``model``, ordered so that most steps add or remove one instance.

    Warnsdorff's rule on the add/remove-one-instance graph: go to the unvisited
    neighbour with the fewest unvisited neighbours; when stuck, jump to the nearest
    unvisited layout (breadth-first).  About 1.01 changes per layout instead of the
    ~1.8 of canonical order: this keeps the every-layout sweep within its budget.
    """
    layouts = {l.keys(): l for l in enumerate_layouts(model)}
    cands = [(p.id, s) for p, s in _candidates(model, True)]

    def neighbours(keys):
        for k in sorted(keys):
            yield keys - {k}
        for c in cands:
            if c not in keys and keys | {c} in layouts:
                yield keys | {c}

    unvisited = set(layouts)
    order = []
    cur = frozenset()
    while True:
        unvisited.discard(cur)
        order.append(layouts[cur])
        if not unvisited:
            return order
        near = [n for n in neighbours(cur) if n in unvisited]
        if near:
            cur = min(near, key=lambda n: (sum(1 for x in neighbours(n) if x in unvisited), sorted(n)))
            continue
        seen, frontier, found = {cur}, [cur], None
        while found is None:
            step = []
            for k in frontier:
                for n in neighbours(k):
                    if n not in seen:
                        seen.add(n)
                        step.append(n)
                        if n in unvisited and found is None:
                            found = n
            frontier = step
        cur = found


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.key)
def test_every_layout_applies_and_reads_back(workdir, model):
    """Walk all layouts on one GPU: each apply changes only the difference and reads back."""
    node = Node(workdir, [model.key])
    prev = Layout()
    for layout in neighbour_walk(model):
        result = node.apply(0, layout)
        assert result.after == str(layout)
        assert len(result.steps) == len(prev.keys() ^ layout.keys()), (prev, layout, result.steps)
        assert node.layout(0, model) == layout
        prev = layout
    assert os.listdir(os.path.join(node.state_dir, "journal")) == []


@pytest.mark.parametrize("backend", ["sim", "nvml"])
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.key)
def test_sampled_layouts_apply_from_empty_and_between_each_other(workdir, model, backend):
    node = Node(workdir, [model.key], backend)
    layouts = enumerate_layouts(model)
    rng = random.Random(f"from-empty-{model.key}")
    for layout in rng.sample(layouts, 8):
        node.apply(0, Layout())
        assert node.layout(0, model) == Layout()
        result = node.apply(0, layout)
        assert [s.action for s in result.steps] == ["create"] * len(layout)
        assert node.layout(0, model) == layout
    for _ in range(12):
        a, b = rng.sample(layouts, 2)
        node.apply(0, a)
        result = node.apply(0, b)
        assert node.layout(0, model) == b
        assert len(result.steps) == len(a.keys() ^ b.keys())


# ----------------------------------------------------------------------------- busy instances


def busy_cases(model, n, seed):
    """Seeded (before, after, busy keys) triples where at least one instance is busy."""
    rng = random.Random(seed)
    layouts = [l for l in enumerate_layouts(model) if len(l)]
    out = []
    while len(out) < n:
        a, b = rng.sample(layouts, 2)
        busy = rng.sample(sorted(a.keys()), rng.randint(1, len(a)))
        out.append((a, b, busy))
    return out


@pytest.mark.parametrize("backend", ["sim", "nvml"])
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.key)
def test_busy_instances_are_never_destroyed(workdir, model, backend):
    node = Node(workdir, [model.key], backend)
    for before, wanted, busy in busy_cases(model, 6, f"busy-{model.key}"):
        node.driver.clear_faults()
        for m in node.backend.instances(0):  # start clean
            if m.busy:
                node.driver.detach_process(0, m.gi_id, m.ci_id)
        node.apply(0, before)
        held = node.make_busy(0, busy)
        in_the_way = {k for k in busy if k not in wanted.keys()}

        snapshot = node.state_bytes()
        if in_the_way:
            with pytest.raises(ApplyRefused) as info:
                node.apply(0, wanted)
            assert node.state_bytes() == snapshot  # nothing at all changed
            assert not journal.pending(node.state_dir)
            for key in in_the_way:
                m = held[key]
                assert f"{model.profile(m.profile_id).name}@{m.start} (gi {m.gi_id})" in str(info.value)

        result = node.apply(0, wanted, partial=True)
        after = node.by_key(0)
        for key, m in held.items():  # still there, same driver ids, same processes
            assert after[key].gi_id == m.gi_id and after[key].pids == (BUSY_PID,)
        assert {(b.start, b.gi_id) for b in result.blocked} == {(held[k].start, held[k].gi_id) for k in in_the_way}
        assert result.partial == bool(in_the_way)
        got = node.layout(0, model)
        assert str(got) == result.after
        missing = [i for i in wanted if i not in got]
        assert sorted(str(i) for i in missing) == sorted(result.blocked_creates)
        for inst in missing:  # each one really is impossible next to the busy instances
            assert not is_valid(model, list(got) + [inst])
        for inst in got:  # nothing else is left over
            assert inst in wanted or (inst.profile_id, inst.start) in held
        assert not journal.pending(node.state_dir)


def test_refusal_names_gpu_instance_pids_and_the_way_out(node):
    node.apply(0, L("3g.20gb@0,2g.10gb@4,1g.5gb@6"))
    m = node.make_busy(0, [(14, 4)], pid=777)[(14, 4)]
    with pytest.raises(ApplyRefused) as info:
        node.apply(0, L("7g.40gb@0"))
    message = str(info.value)
    assert info.value.exit_code == EXIT_REFUSED
    assert message.startswith("gpu 0 (GPU-")
    assert f"2g.10gb@4 (gi {m.gi_id}) is in use by pid 777" in message
    assert "nothing was changed" in message
    assert "wait for the jobs, drain the node, or pass --partial" in message
    assert "\n" not in message


def test_partial_apply_keeps_the_busy_instance_and_reports_it(node):
    node.apply(0, L("3g.20gb@0,2g.10gb@4,1g.5gb@6"))
    m = node.make_busy(0, [(19, 6)])[(19, 6)]
    result = node.apply(0, L("1g.10gb@0,1g.10gb@2,3g.20gb@4"), partial=True)
    assert result.blocked == (Blocked("1g.5gb", 6, m.gi_id, (BUSY_PID,)),)
    assert result.blocked_creates == ("3g.20gb@4",)
    assert result.after == "1g.10gb@0,1g.10gb@2,1g.5gb@6"  # 2g.10gb@4: idle, not wanted, gone
    assert result.partial and result.changed


def test_partial_apply_again_changes_nothing_more(node):
    node.apply(0, L("3g.20gb@0,2g.10gb@4,1g.5gb@6"))
    node.make_busy(0, [(19, 6)])
    node.apply(0, L("7g.40gb@0"), partial=True)
    state = node.state_bytes()
    again = node.apply(0, L("7g.40gb@0"), partial=True)
    assert again.steps == () and not again.changed and again.partial
    assert node.state_bytes() == state


def test_busy_instance_that_is_wanted_is_kept_with_its_processes(node):
    node.apply(0, L("3g.20gb@0,2g.10gb@4,1g.5gb@6"))
    m = node.make_busy(0, [(9, 0)])[(9, 0)]
    result = node.apply(0, L("3g.20gb@0,3g.20gb@4"))
    assert not result.partial
    assert node.by_key(0)[(9, 0)] == m


def test_apply_node_refuses_the_whole_node_before_changing_any_gpu(workdir):
    node = Node(workdir, ["A100-40GB", "A100-40GB"])
    node.apply(1, L("3g.20gb@0,3g.20gb@4"))
    node.make_busy(1, [(9, 4)])
    state = node.state_bytes()
    with pytest.raises(ApplyRefused) as info:
        apply_node(node.backend, {0: L("7g.40gb@0"), 1: L("7g.40gb@0")}, state_dir=node.state_dir)
    assert node.state_bytes() == state
    assert "gpu 1 (" in str(info.value) and "gpu 0" not in str(info.value)
    results = apply_node(node.backend, {0: L("7g.40gb@0"), 1: L("7g.40gb@0")},
                         state_dir=node.state_dir, partial=True)
    assert [r.gpu for r in results] == [0, 1]
    assert results[0].after == "7g.40gb@0" and not results[0].partial
    assert results[1].after == "3g.20gb@4" and results[1].partial


# ----------------------------------------------------------------------------- idempotence


@pytest.mark.parametrize("model", [A100, CATALOG.model("RTX-PRO-6000"), CATALOG.model("A30")],
                         ids=lambda m: m.key)
def test_second_apply_does_nothing(workdir, model):
    node = Node(workdir, [model.key])
    rng = random.Random(f"idem-{model.key}")
    for layout in rng.sample(enumerate_layouts(model), 10):
        first = node.apply(0, layout)
        calls, state = node.calls(), node.state_bytes()
        second = node.apply(0, layout)
        assert second.steps == () and not second.changed and not second.resumed
        assert second.before == second.after == first.after == str(layout)
        assert node.calls() == calls
        assert node.state_bytes() == state


def test_matching_gpu_gets_no_driver_change_and_no_journal(node):
    for pid, start in [(9, 0), (19, 6)]:  # made by hand, not by the engine
        node.backend.create_instance(0, pid, start)
    calls, state = node.calls(), node.state_bytes()
    result = node.apply(0, L("1g.5gb@6,3g.20gb@0"))
    assert result.steps == () and not result.changed
    assert node.calls() == calls and node.state_bytes() == state
    assert not os.path.exists(os.path.join(node.state_dir, "journal"))


def test_dry_run_changes_nothing_and_lists_the_steps(node):
    node.apply(0, L("3g.20gb@0,2g.10gb@4,1g.5gb@6"))
    state = node.state_bytes()
    wanted = L("3g.20gb@0,3g.20gb@4")
    dry = node.apply(0, wanted, dry_run=True)
    assert node.state_bytes() == state
    assert not journal.pending(node.state_dir)
    assert dry.dry_run and dry.changed and dry.after == "3g.20gb@0,3g.20gb@4"
    assert [str(s) for s in dry.steps][-1] == "create 3g.20gb@4"
    real = node.apply(0, wanted)
    assert [(s.action, s.profile, s.start) for s in real.steps] == [
        (s.action, s.profile, s.start) for s in dry.steps
    ]


def test_dry_run_of_a_blocked_change_reports_without_refusing(node):
    node.apply(0, L("7g.40gb@0"))
    node.make_busy(0, [(0, 0)])
    state = node.state_bytes()
    dry = node.apply(0, L("1g.5gb:7"), dry_run=True)
    assert dry.partial and len(dry.blocked) == 1 and len(dry.blocked_creates) == 7
    assert "a real run refuses" in dry.warnings[0] and "--partial" in dry.warnings[0]
    assert node.state_bytes() == state
    assert node.apply(0, L("1g.5gb:7"), dry_run=True, partial=True).warnings == ()


def test_dry_run_of_apply_node_takes_no_lock(node):
    with node_lock(os.path.join(node.state_dir, "node.lock"), 1):
        results = apply_node(node.backend, {0: L("7g.40gb@0")}, state_dir=node.state_dir, dry_run=True)
    assert results[0].steps == (Step("create", "7g.40gb", 0),)


# ----------------------------------------------------------------------------- half-made instances


def test_half_made_instance_that_is_wanted_is_completed_not_rebuilt(node):
    gi = node.driver.create_gpu_instance(0, 9, 4)  # a GPU instance with no compute instance
    result = node.apply(0, L("3g.20gb@0,3g.20gb@4"))
    assert Step("complete", "3g.20gb", 4, gi["id"]) in result.steps
    assert node.by_key(0)[(9, 4)].gi_id == gi["id"]
    assert node.layout(0, A100) == L("3g.20gb@0,3g.20gb@4")


def test_half_made_instance_that_is_not_wanted_is_destroyed(node):
    gi = node.driver.create_gpu_instance(0, 9, 4)
    result = node.apply(0, L("4g.20gb@0,2g.10gb@4"))
    assert result.steps[0] == Step("destroy", "3g.20gb", 4, gi["id"])
    assert node.layout(0, A100) == L("4g.20gb@0,2g.10gb@4")


# ----------------------------------------------------------------------------- ordering, checks


def test_destroys_come_first_then_creates_by_start(node):
    node.apply(0, L("1g.5gb@0,1g.5gb@1,2g.10gb@2,1g.10gb@4,1g.5gb@6"))
    result = node.apply(0, L("4g.20gb@0,1g.5gb@4,1g.5gb@5,1g.5gb@6"))
    actions = [s.action for s in result.steps]
    assert actions == ["destroy"] * 4 + ["create"] * 3
    assert [s.start for s in result.steps if s.action == "create"] == [0, 4, 5]
    assert all(s.gi_id is not None for s in result.steps)


def test_wanted_layout_must_fit_the_gpu(workdir):
    node = Node(workdir, ["A30"])
    with pytest.raises(LayoutError) as info:
        node.apply(0, L("3g.20gb@0"))
    assert str(info.value).startswith("gpu 0 (NVIDIA A30): ")


def test_unknown_gpu_index_is_an_input_error(node):
    with pytest.raises(InputError) as info:
        node.apply(3, Layout())
    assert "gpu 3 not found" in str(info.value) and "gpu 0" in str(info.value)


class MisplacingBackend(SimBackend):
    """A driver bug: instances land one placement further than asked (where free)."""

    def create_instance(self, gpu, profile_id, start):
        profile = self.driver.profile_by_id(gpu, profile_id)[1]
        later = [s for s in profile.placements if s > start]
        return super().create_instance(gpu, profile_id, later[0] if later else start)


def test_read_back_mismatch_is_a_gpu_error_naming_both_layouts(workdir):
    node = Node(workdir, ["A100-40GB"])
    node.backend = MisplacingBackend(str(workdir / "sim"))
    with pytest.raises(GpuError) as info:
        node.apply(0, L("1g.5gb@0"))
    assert "reports 1g.5gb@1 but 1g.5gb@0 was wanted" in str(info.value)
    assert journal.pending(node.state_dir)  # the next run tries again


# ----------------------------------------------------------------------------- planning (pure)


def mig(gi, pid, start, size, ci=0, pids=()):
    return MigInstance(gpu=0, gi_id=gi, profile_id=pid, start=start, size=size, ci_id=ci, pids=tuple(pids))


def test_plan_sorts_instances_into_keep_destroy_blocked_create_complete():
    present = [
        mig(2, 9, 0, 4),                    # 3g.20gb@0: wanted, complete -> keep
        mig(4, 14, 4, 2, pids=[5]),         # 2g.10gb@4: not wanted, busy -> blocked
        mig(10, 19, 6, 1),                  # 1g.5gb@6: not wanted, idle -> destroy
    ]
    plan = plan_gpu(A100, present, L("3g.20gb@0,3g.20gb@4"))
    assert [m.gi_id for m in plan.keep] == [2]
    assert [m.gi_id for m in plan.blocked] == [4]
    assert [m.gi_id for m in plan.destroy] == [10]
    assert plan.create == () and [str(i) for i in plan.blocked_creates] == ["3g.20gb@4"]
    assert str(plan.target) == "3g.20gb@0,2g.10gb@4"
    assert not plan.is_noop and plan.actions == 1


def test_plan_completes_half_made_wanted_instances():
    plan = plan_gpu(A100, [mig(2, 9, 0, 4, ci=None)], L("3g.20gb@0,3g.20gb@4"))
    assert [m.gi_id for m in plan.complete] == [2]
    assert [str(i) for i in plan.create] == ["3g.20gb@4"]
    assert [str(s) for s in plan.steps()] == ["complete 3g.20gb@0 (gi 2)", "create 3g.20gb@4"]


def test_plan_of_a_matching_gpu_is_a_noop():
    present = [mig(2, 9, 0, 4, pids=[1]), mig(10, 19, 6, 1)]
    plan = plan_gpu(A100, present, L("3g.20gb@0,1g.5gb@6"))
    assert plan.is_noop and plan.steps() == ()


def test_plan_blocks_creations_beyond_a_busy_instances_count():
    """A second +me instance cannot join a busy +me instance, even without overlap."""
    rtx = CATALOG.model("RTX-PRO-6000")
    busy = mig(3, 21, 0, 3, pids=[9])  # 1g.24gb+me@0
    plan = plan_gpu(rtx, [busy], L("1g.24gb@0,1g.24gb+me.all@3", rtx))
    assert [str(i) for i in plan.blocked_creates] == ["1g.24gb@0", "1g.24gb+me.all@3"]
    assert plan.create == ()


def test_plan_creations_are_ordered_by_start():
    plan = plan_gpu(A100, [], L("1g.5gb@6,3g.20gb@0,2g.10gb@4"))
    assert [i.start for i in plan.create] == [0, 4, 6]


# ----------------------------------------------------------------------------- journal


def test_journal_round_trip_and_permissions(tmp_path):
    state = str(tmp_path / "state")
    intent = journal.new_intent(0, "GPU-abc", "3g.20gb@0", {(9, 0)}, now=12.5)
    path = journal.write_intent(state, intent)
    assert path == os.path.join(state, "journal", "GPU-abc.json")
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert journal.read_intent(state, "GPU-abc") == intent
    assert journal.pending(state) == ("GPU-abc",)
    assert journal.clear_intent(state, "GPU-abc") and not journal.clear_intent(state, "GPU-abc")
    assert journal.read_intent(state, "GPU-abc") is None
    assert os.listdir(os.path.dirname(path)) == []  # no temp files left


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 1}', '{"version": 9}', ""])
def test_corrupt_journal_is_moved_aside_and_reported(tmp_path, content):
    state = str(tmp_path / "state")
    path = journal.journal_path(state, "GPU-abc")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(content)
    with pytest.raises(journal.JournalCorrupt) as info:
        journal.read_intent(state, "GPU-abc")
    assert path in str(info.value) and "moved to" in str(info.value) and "\n" not in str(info.value)
    assert os.path.exists(path + ".corrupt") and not os.path.exists(path)
    assert journal.read_intent(state, "GPU-abc") is None


def test_journal_for_another_gpu_is_corrupt(tmp_path):
    state = str(tmp_path / "state")
    intent = journal.new_intent(0, "GPU-abc", "empty", ())
    journal.write_intent(state, intent)
    os.rename(journal.journal_path(state, "GPU-abc"), journal.journal_path(state, "GPU-def"))
    with pytest.raises(journal.JournalCorrupt, match="for GPU GPU-abc"):
        journal.read_intent(state, "GPU-def")


def test_apply_with_a_corrupt_journal_warns_and_converges(node):
    uuid = node.backend.gpus()[0].uuid
    path = journal.journal_path(node.state_dir, uuid)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("garbage")
    result = node.apply(0, L("7g.40gb@0"))
    assert result.after == "7g.40gb@0" and not result.resumed
    assert len(result.warnings) == 1 and "unreadable" in result.warnings[0]
    assert os.path.exists(path + ".corrupt")


def test_dry_run_leaves_a_corrupt_journal_in_place(node):
    uuid = node.backend.gpus()[0].uuid
    path = journal.journal_path(node.state_dir, uuid)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("garbage")
    result = node.apply(0, L("7g.40gb@0"), dry_run=True)
    assert "unreadable" in result.warnings[0]
    assert os.path.exists(path) and not os.path.exists(path + ".corrupt")


def test_journal_that_does_not_fit_the_gpu_is_set_aside(node):
    uuid = node.backend.gpus()[0].uuid
    journal.write_intent(node.state_dir, journal.new_intent(0, uuid, "bogus", [(99, 0)]))
    result = node.apply(0, L("7g.40gb@0"))
    assert result.after == "7g.40gb@0" and not result.resumed
    assert "does not fit" in result.warnings[0]
    assert os.path.exists(journal.journal_path(node.state_dir, uuid) + ".corrupt")


# ----------------------------------------------------------------------------- node lock


def test_node_lock_creates_private_files(tmp_path):
    path = tmp_path / "state" / "node.lock"
    with node_lock(str(path), 1):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_busy_lock_times_out_naming_the_file_and_fuser(tmp_path):
    path = str(tmp_path / "node.lock")
    with node_lock(path, 1):
        with pytest.raises(LockBusy) as info:
            with node_lock(path, 0.1):
                pass
    message = str(info.value)
    assert info.value.exit_code == EXIT_LOCKED
    assert path in message and f"`fuser {path}`" in message and f"pid {os.getpid()}" in message
    with node_lock(path, 0):  # released
        pass


def test_apply_node_waits_for_the_lock_then_gives_up(node):
    with node_lock(os.path.join(node.state_dir, "node.lock"), 1):
        with pytest.raises(LockBusy):
            apply_node(node.backend, {0: L("7g.40gb@0")}, state_dir=node.state_dir, lock_timeout=0.1)
    assert node.layout(0, A100) == Layout()


def test_concurrent_read_modify_apply_loses_no_update(node):
    """Seven hooks at once, each adding one 1g.5gb to what it reads: all seven land."""
    lock = os.path.join(node.state_dir, "node.lock")
    errors = []

    def hook(start):
        try:
            with node_lock(lock, 30):
                have = node.layout(0, A100)
                wanted = Layout(have.instances + (Instance.of(A100.profile("1g.5gb"), start),))
                apply_gpu(node.backend, 0, wanted, state_dir=node.state_dir)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=hook, args=(s,)) for s in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert str(node.layout(0, A100)) == ",".join(f"1g.5gb@{s}" for s in range(7))


HOOK = """
import sys
from slurm_mig.node.apply import apply_gpu
from slurm_mig.core.catalog import load_catalog
from slurm_mig.sim.backend import SimBackend
from slurm_mig.node.inventory import current_layout
from slurm_mig.core.layout import Instance, Layout
from slurm_mig.host.locking import node_lock
sim, state, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
model, backend = load_catalog().model("A100-40GB"), SimBackend(sim)
with node_lock(state + "/node.lock", 60):
    have = current_layout(model, backend.instances(0))
    extra = Instance.of(model.profile("1g.5gb"), start)
    apply_gpu(backend, 0, Layout(have.instances + (extra,)), state_dir=state)
"""


def test_concurrent_hook_processes_lose_no_update(node, workdir):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen([sys.executable, "-c", HOOK, str(workdir / "sim"), node.state_dir, str(s)],
                         env=env, stderr=subprocess.PIPE, text=True)
        for s in range(7)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert str(node.layout(0, A100)) == ",".join(f"1g.5gb@{s}" for s in range(7))


def test_node_lock_without_timeout_waits(tmp_path):
    with node_lock(str(tmp_path / "node.lock"), None) as path:
        assert path == str(tmp_path / "node.lock")


def test_result_as_dict_has_stable_keys(node):
    result = node.apply(0, L("7g.40gb@0"))
    assert list(result.as_dict()) == [
        "gpu", "uuid", "model", "wanted", "before", "after", "steps", "blocked",
        "blocked_creates", "changed", "resumed", "partial", "dry_run", "warnings", "cap_files",
    ]
    assert result.as_dict()["steps"] == [
        {"action": "create", "profile": "7g.40gb", "start": 0, "gi_id": 0, "recovery": False}
    ]


def test_instance_a_job_holds_is_busy_before_its_processes_start(node):
    """The prolog records the job before any process runs; apply must not take it away."""
    from slurm_mig.node import jobs

    node.apply(0, L("1g.5gb:7"))
    target = node.by_key(0)[(A100.profile("1g.5gb").id, 3)]
    jobs.write_job(node.state_dir, {"job_id": "812", "boot_id": jobs.boot_id(),
                                    "instances": [{"gpu": 0, "gi_id": target.gi_id}]})
    with pytest.raises(ApplyRefused, match=rf"1g.5gb@3 \(gi {target.gi_id}\) is in use by job 812"):
        node.apply(0, L("7g.40gb:1"))
    result = node.apply(0, L("3g.20gb:2"), partial=True)
    assert [(b.start, b.jobs) for b in result.blocked] == [(3, ("812",))]
    assert node.by_key(0)[(target.profile_id, 3)].gi_id == target.gi_id
    jobs.remove_job(node.state_dir, "812")
    assert node.apply(0, L("3g.20gb:2")).after == "3g.20gb@0,3g.20gb@4"
