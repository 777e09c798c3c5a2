"""The drain reasons slurm-mig writes: each text pinned (admins grep for them, and the other
side of the node/controller protocol reads them), each read back to what it says."""

from __future__ import annotations

import pathlib
import re

import pytest

from slurm_mig.change import reasons
from slurm_mig.change.reasons import Reason, parse_reason
from slurm_mig.core.errors import GpuError, SlurmError
from slurm_mig.slurm.model import NodeInfo, drain_flagged
from slurm_mig.slurm.scontrol import parse_pairs, parse_scontrol_nodes

SUMMARY = "3g.20gb:2 on gpu 0,1; 1g.10gb:7 on gpu 2"

# (built, the exact text, what it reads back as)
BUILT = [
    (reasons.sync_applying(SUMMARY),
     "slurm-mig sync: applying 3g.20gb:2 on gpu 0,1; 1g.10gb:7 on gpu 2",
     Reason(reasons.SYNC_APPLYING, detail=SUMMARY)),
    (reasons.sync_failed("apply", GpuError("gpu 0: busy")),
     "slurm-mig sync failed at apply: gpu 0: busy; fix and rerun slurm-mig sync",
     Reason(reasons.SYNC_FAILED, step="apply", detail="gpu 0: busy")),
    (reasons.new_layout(7, SUMMARY),
     "slurm-mig rebalance: cycle 7: new layout 3g.20gb:2 on gpu 0,1; 1g.10gb:7 on gpu 2; "
     "slurm-mig sync --pending on the node applies it, then slurm-mig rebalance reconfigures "
     "Slurm and resumes the node",
     Reason(reasons.NEW_LAYOUT, 7, detail=SUMMARY)),
    (reasons.node_waiting(7),
     "slurm-mig rebalance: cycle 7: new layout waits for running jobs; slurm-mig sync "
     "--pending on the node applies it",
     Reason(reasons.NODE_WAITING, 7)),
    (reasons.node_applying(7, SUMMARY),
     "slurm-mig rebalance: cycle 7: applying 3g.20gb:2 on gpu 0,1; 1g.10gb:7 on gpu 2 on the "
     "node (slurm-mig sync --pending)",
     Reason(reasons.NODE_APPLYING, 7, detail=SUMMARY)),
    (reasons.applied(7, SUMMARY),
     "slurm-mig rebalance: cycle 7: layout 3g.20gb:2 on gpu 0,1; 1g.10gb:7 on gpu 2 applied on "
     "the node; the next slurm-mig rebalance run reconfigures Slurm and resumes the node",
     Reason(reasons.APPLIED, 7, detail=SUMMARY)),
    (reasons.node_failed(7, "apply", RuntimeError("gpu 0: no permission")),
     "slurm-mig rebalance: cycle 7: node-side apply failed: gpu 0: no permission; fix it, then "
     "slurm-mig sync --pending on the node retries",
     Reason(reasons.NODE_FAILED, 7, "apply", "gpu 0: no permission")),
    (reasons.finish_failed(7, "writing the node include", OSError("disk full")),
     "slurm-mig rebalance: cycle 7: writing the node include failed: disk full; fix and rerun "
     "slurm-mig rebalance",
     Reason(reasons.FINISH_FAILED, 7, "writing the node include", "disk full")),
    (reasons.drift("the GPUs hold 3g.20gb:2 but Slurm has 1g.5gb:7"),
     "slurm-mig sync --pending: layout not in Slurm: the GPUs hold 3g.20gb:2 but Slurm has "
     "1g.5gb:7; waits for running jobs, then hands the node to slurm-mig rebalance",
     Reason(reasons.DRIFTED, detail="the GPUs hold 3g.20gb:2 but Slurm has 1g.5gb:7")),
    (reasons.prolog_no_gpus("812", "tres-per-node gres/gpu:1g.10gb:1"),
     "slurm-mig prolog: job 812 asked for gpus (tres-per-node gres/gpu:1g.10gb:1) but Slurm "
     "gave it none; resume the node once scontrol show node lists its Gres (or slurm-mig sync "
     "on the node)",
     Reason(reasons.NO_GPUS, detail="job 812 asked for gpus (tres-per-node gres/gpu:1g.10gb:1) "
                                    "but Slurm gave it none")),
    (reasons.mode_changing("MIG on on gpu 0,1"),
     "slurm-mig mode: MIG on on gpu 0,1",
     Reason(reasons.MODE_CHANGING, detail="MIG on on gpu 0,1")),
    (reasons.mode_failed("reset", GpuError("gpu 0: in use")),
     "slurm-mig mode failed at reset: gpu 0: in use; fix and rerun slurm-mig mode",
     Reason(reasons.MODE_FAILED, step="reset", detail="gpu 0: in use")),
]


@pytest.mark.parametrize("built, text, read", BUILT, ids=[r.kind for _, _, r in BUILT])
def test_each_reason_is_the_documented_text_and_reads_back_as_what_it_says(built, text, read):
    assert built == text
    assert parse_reason(built) == read


@pytest.mark.parametrize("built, text, read", BUILT, ids=[r.kind for _, _, r in BUILT])
def test_each_reason_survives_scontrol_show_node(built, text, read):
    """No ``=`` and one line: ``scontrol show node -o`` gives the whole reason back."""
    line = f"NodeName=n1 State=IDLE+DRAIN Reason={built} [root@2026-11-28T03:00:00] Gres=gpu:1"
    assert parse_pairs(line)["Reason"].startswith(built)


@pytest.mark.parametrize("built, text, read", BUILT, ids=[r.kind for _, _, r in BUILT])
def test_who_a_reason_belongs_to(built, text, read):
    assert reasons.is_ours(built)
    assert reasons.is_rebalance(built) == built.startswith("slurm-mig rebalance")
    assert reasons.is_drift(built) == (read.kind == reasons.DRIFTED)
    assert reasons.is_node_failure(built) == (read.kind == reasons.NODE_FAILED)
    assert reasons.is_failure(built) == read.kind.endswith("failed")


def test_a_want_without_a_cycle_still_reads_back():
    built = reasons.node_failed(None, "check", RuntimeError("bad layout"))
    assert built.startswith("slurm-mig rebalance: cycle None: node-side check failed: ")
    assert parse_reason(built) == Reason(reasons.NODE_FAILED, None, "check", "bad layout")


def test_an_error_message_that_says_failed_does_not_hide_the_step():
    err = SlurmError("reconfigure Slurm: `scontrol reconfigure` failed: Unable to contact slurm "
                     "controller")
    assert parse_reason(reasons.finish_failed(3, "reconfigure", err)).step == "reconfigure"


def test_a_long_error_is_cut_but_what_to_do_is_kept_and_still_reads_back():
    built = reasons.node_failed(12, "apply", GpuError("x " * 400 + "\nmore"))
    assert "\n" not in built and len(built) <= reasons.REASON_MAX
    assert built.endswith("...; fix it, then slurm-mig sync --pending on the node retries")
    read = parse_reason(built)
    assert (read.kind, read.cycle, read.step) == (reasons.NODE_FAILED, 12, "apply")


def test_admin_and_slurmctld_reasons_are_not_ours():
    for reason in ("", "maintenance by bob", "gres/gpu count reported lower than configured (0 < 7)",
                   "Kill task failed", "slurm mig"):
        assert parse_reason(reason) is None and not reasons.is_ours(reason)
        assert not reasons.is_failure(reason)


def test_a_reason_with_the_tag_but_no_known_shape_is_ours_but_nothing_more():
    read = parse_reason("slurm-mig rebalance: cycle 4: something new")
    assert read == Reason(reasons.OTHER, 4)
    assert reasons.is_rebalance("slurm-mig rebalance: cycle 4: something new")
    assert not reasons.is_failure("slurm-mig rebalance: cycle 4: something new")


def test_slurmctld_own_gres_drain_needs_both_the_flag_and_its_reason():
    why = "gres/gpu count reported lower than configured (0 < 7)"
    assert reasons.slurmctld_gres_drain({"DRAIN", "INVALID_REG"}, why)
    assert not reasons.slurmctld_gres_drain({"DRAIN"}, why)
    assert not reasons.slurmctld_gres_drain(("DRAIN", "INVALID_REG"), "maintenance")


def test_summary_groups_gpus_with_the_same_counts():
    assert reasons.summary({2: "1g.10gb:7", 0: "3g.20gb:2", 1: "3g.20gb:2"}) == SUMMARY


@pytest.mark.parametrize("state, drained", [
    ("IDLE+DRAIN", True), ("MIXED+DRAIN", True), ("ALLOCATED+DRAIN+COMPLETING", True),
    ("IDLE", False), ("DOWN+NOT_RESPONDING", False), ("IDLE+INVALID_REG", False),
])
def test_drained_or_draining_is_the_drain_flag_on_both_views_of_a_node(state, drained):
    st = parse_scontrol_nodes(f"NodeName=n1 State={state} Gres=gpu:1")["n1"]
    assert st.drain_flagged is drained
    assert NodeInfo("n1", flags=tuple(sorted(st.flags))).drain_flagged is drained
    assert drain_flagged(st.flags) is drained


def test_no_module_tests_the_drain_flag_or_defines_the_tag_on_its_own():
    """The protocol lives in one place: slurm_mig.change.reasons (and the flag in slurm.model)."""
    root = pathlib.Path(reasons.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(root).as_posix()
        if rel not in ("slurm/model.py",) and re.search(r'"DRAIN"\s+(not\s+)?in\b', text):
            offenders.append(f"{rel}: tests the DRAIN flag itself")
        if rel != "reasons.py" and re.search(r'^\s*TAG\s*=\s*"slurm-mig', text, re.M):
            offenders.append(f"{rel}: defines the tag")
    assert offenders == []
