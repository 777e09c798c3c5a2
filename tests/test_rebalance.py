"""rebalance's cycle with an in-memory Slurm and the real planner (docs/rebalance.md)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from slurm_mig.channel import Channel, MemoryExtra, format_channel, parse_channel
from slurm_mig.config import parse_config
from slurm_mig.errors import ConfigError, LockBusy
from slurm_mig.locking import node_lock
from slurm_mig.rebalance import rebalance
from slurm_mig.render import rebalance_text
from slurm_mig.slurm.model import GresRequest, NodeInfo, PendingJob

ONE_G = ",".join(f"1g.5gb@{i}" for i in range(7))


class FakeSlurm:
    """Reader and client at once: nodes, pending jobs, drains and resumes in memory."""

    def __init__(self, channel: MemoryExtra, nodes, jobs=()):
        self.channel = channel
        self.infos = {n.name: n for n in nodes}
        self.jobs = list(jobs)
        self.calls = []

    def pending_jobs(self):
        return list(self.jobs)

    def nodes(self, names=None):
        return {n: replace(i, extra=self.channel.read(n)) for n, i in self.infos.items()
                if names is None or n in names}

    def drain(self, node, reason):
        self.calls.append(("drain", node, reason))
        i = self.infos[node]
        self.infos[node] = replace(i, state="drained", flags=tuple(set(i.flags) | {"DRAIN"}), reason=reason)

    def resume(self, node):
        self.calls.append(("resume", node))
        i = self.infos[node]
        self.infos[node] = replace(i, state="idle", flags=tuple(f for f in i.flags if f != "DRAIN"), reason="")


def _node(name, state="idle", gres=None, used=None):
    return NodeInfo(name, state=state, partitions=("gpu",), gres=gres or {"1g.5gb": 7},
                    gres_used=used or {})


def _job(jid, gtype="3g.20gb", count=1, priority=100):
    return PendingJob(jid, priority=priority, partition=("gpu",), reason="Resources",
                      requests=(GresRequest(gtype, count),))


@pytest.fixture
def config(tmp_path):
    def make(extra=""):
        return parse_config(f'version = 1\n[paths]\nstate_dir = "{tmp_path}/state"\n'
                            f'[rebalance]\nenabled = true\n{extra}', "test.toml")
    return make


@pytest.fixture
def cluster():
    channel = MemoryExtra({n: format_channel(Channel(have=((0, "A100-40GB", ONE_G),)))
                           for n in ("n1", "n2")})
    return FakeSlurm(channel, [_node("n1"), _node("n2")], [_job(10)])


def _run(config, cluster, **kw):
    return rebalance(config, cluster, cluster, cluster.channel, **kw)


def test_pending_3g_job_drains_one_all_1g_node_with_the_layout_in_its_reason_and_extra(config, cluster):
    result = _run(config(), cluster)
    assert [c["node"] for c in result["changed"]] == ["n1"]
    [(what, node, reason)] = cluster.calls
    assert (what, node) == ("drain", "n1")
    assert reason.startswith("slurm-mig rebalance: cycle 1: new layout ") and "3g.20gb:" in reason
    assert "=" not in reason and "slurm-mig sync --pending" in reason
    ch = parse_channel(cluster.channel.read("n1"))
    assert ch.cycle == 1 and [g for g, _ in ch.want] == [0] and "3g.20gb@" in ch.want[0][1]
    assert ch.have == ((0, "A100-40GB", ONE_G),)  # the node's published layout is kept
    assert cluster.channel.read("n2") == format_channel(Channel(have=((0, "A100-40GB", ONE_G),)))
    assert result["actions"][0].startswith("slurm-mig rebalance: cycle 1: node n1: drain for gpu 0 ")
    # the want was written before the drain (a crash between them leaves no idle drain)
    assert cluster.channel.writes[0][0] == "n1"


def test_running_again_with_the_same_queue_changes_nothing(config, cluster):
    cfg = config()
    _run(cfg, cluster)
    calls, writes = list(cluster.calls), list(cluster.channel.writes)
    again = _run(cfg, cluster)
    assert again["cycle"] == 2 and again["changed"] == [] and again["resumed"] == []
    assert cluster.calls == calls and cluster.channel.writes == writes
    assert any("n1: layout change from cycle 1 in progress" in n for n in again["notes"])


def test_drained_by_rebalance_without_a_want_is_resumed(config, cluster):
    cluster.drain("n2", "slurm-mig rebalance: cycle 1: new layout ...")
    cluster.jobs = []
    result = _run(config(), cluster)
    assert result["resumed"] == ["n2"] and ("resume", "n2") in cluster.calls
    assert "DRAIN" not in cluster.infos["n2"].flags


def test_a_node_drained_by_an_admin_is_left_alone(config, cluster):
    cluster.drain("n1", "admin: bad fan")
    cluster.drain("n2", "admin: bad fan")
    cluster.calls.clear()
    result = _run(config(), cluster)
    assert result["changed"] == [] and cluster.calls == []


def test_floor_keeps_a_profile_the_queue_does_not_want(config, cluster):
    # Only a 3g job pends; a floor of 7 x 1g.5gb keeps one node all-1g, so one node changes.
    cluster.jobs = [_job(10, count=1), _job(11, count=1), _job(12, count=1), _job(13, count=1)]
    result = _run(config('floor = { "1g.5gb" = 7 }\n'), cluster)
    assert len(result["changed"]) == 1
    kept = {"n1", "n2"} - {c["node"] for c in result["changed"]}
    assert parse_channel(cluster.channel.read(kept.pop())).want == ()


def test_lock_held_by_another_run_exits_7_at_once(config, cluster):
    cfg = config()
    with node_lock(cfg.rebalance.lock, 0):
        with pytest.raises(LockBusy) as err:
            _run(cfg, cluster)
    assert err.value.exit_code == 7 and "another slurm-mig rebalance is running" in str(err.value)
    assert cluster.calls == []


def test_dry_run_changes_nothing_but_says_what_it_would_do(config, cluster):
    cfg = config()
    result = _run(cfg, cluster, dry_run=True)
    assert [c["node"] for c in result["changed"]] == ["n1"]
    assert result["actions"][0].endswith("(dry run)")
    assert cluster.calls == [] and cluster.channel.writes == []
    assert not (cfg.rebalance.state_file and __import__("os").path.exists(cfg.rebalance.state_file))


def test_disabled_rebalance_refuses_to_change_anything(tmp_path, cluster):
    cfg = parse_config(f'version = 1\n[paths]\nstate_dir = "{tmp_path}"\n', "t.toml")
    with pytest.raises(ConfigError, match=r"rebalance.enabled: rebalance is off; set \[rebalance\] enabled = true"):
        _run(cfg, cluster)
    assert _run(cfg, cluster, dry_run=True)["changed"]  # a dry run still plans


def test_explain_says_why_each_node_got_its_layout(config, cluster):
    result = _run(config(), cluster, dry_run=True)
    text = rebalance_text(result, explain=True)
    assert "explain: " in text
    assert any(line.startswith("explain: ") and "n1" in line for line in text.splitlines())
    assert any(line.startswith("explain: ") and "n2" in line for line in text.splitlines())


def test_node_without_a_published_layout_is_left_out_with_the_fix(config, cluster):
    cluster.channel.fields["n1"] = ""
    result = _run(config(), cluster)
    assert [c["node"] for c in result["changed"]] == ["n2"]
    assert any("node n1: left out: no layout published" in n and "sync --pending" in n
               for n in result["notes"])


def test_published_layout_that_disagrees_with_slurm_is_not_trusted(config, cluster):
    cluster.infos["n1"] = _node("n1", gres={"3g.20gb": 2})
    result = _run(config(), cluster)
    assert any("n1: left out: its published layout" in n for n in result["notes"])


def test_hysteresis_state_is_saved_per_node(config, cluster):
    cfg = config()
    _run(cfg, cluster)
    with open(cfg.rebalance.state_file) as f:
        assert json.load(f) == {"cycle": 1, "last_changed": {"n1": 1}}


def test_channel_text_round_trips_and_has_no_blank_or_equals():
    ch = Channel(have=((0, "A100-40GB", ONE_G), (1, "A100-40GB", "empty")),
                 want=((0, "3g.20gb@0,3g.20gb@4"),), cycle=3)
    text = format_channel(ch)
    assert " " not in text and "=" not in text and "," not in text
    assert parse_channel(text) == ch


def test_foreign_extra_field_is_not_overwritten(config, cluster):
    cluster.channel.fields["n1"] = "rack 7"
    result = _run(config(), cluster)
    assert cluster.channel.read("n1") == "rack 7"
    assert any("not slurm-mig's" in n for n in result["notes"])


# ----------------------------------------------------------------------------- node side


@pytest.fixture
def sim_node(tmp_path):
    from test_sync import Node

    return Node(tmp_path)


def _pending(n, channel):
    from slurm_mig.pending import sync_pending

    return sync_pending(n.config, n.backend, n.slurm, channel, "n1", wait=60, clock=n.clock,
                        sleep=n.clock.sleep, poll=1.0)


def test_sync_pending_without_a_want_publishes_the_layout_once_and_touches_nothing(sim_node):
    channel = MemoryExtra()
    first = _pending(sim_node, channel)
    assert first["published"] and first["sync"] is None
    assert parse_channel(channel.read("n1")).have == ((0, "A100-40GB", ONE_G),)
    assert _pending(sim_node, channel)["published"] is False and len(channel.writes) == 1
    assert not [c for c in sim_node.slurm.calls if c[0] != "nodes"]


def test_sync_pending_applies_the_want_resumes_the_node_and_clears_the_want(sim_node):
    channel = MemoryExtra({"n1": format_channel(Channel(have=((0, "A100-40GB", ONE_G),),
                                                        want=((0, "3g.20gb@0,3g.20gb@4"),), cycle=2))})
    sim_node.slurm.drain("n1", "slurm-mig rebalance: cycle 2: new layout 3g.20gb:2 on gpu 0")
    result = _pending(sim_node, channel)
    assert result["sync"]["resumed"] and "DRAIN" not in sim_node.slurm.flags
    assert sim_node.layout() == "3g.20gb@0,3g.20gb@4"
    assert parse_channel(channel.read("n1")) == Channel(have=((0, "A100-40GB", "3g.20gb@0,3g.20gb@4"),))
    assert sim_node.slurm.gres == {"3g.20gb": 2}


def test_sync_pending_on_a_busy_node_drains_it_and_returns_at_once(sim_node):
    channel = MemoryExtra({"n1": format_channel(Channel(have=((0, "A100-40GB", ONE_G),),
                                                        want=((0, "3g.20gb@0,3g.20gb@4"),), cycle=2))})
    sim_node.slurm.busy_polls = 5
    result = _pending(sim_node, channel)
    assert result["action"].startswith("waiting: node MIXED") and result["sync"] is None
    assert "DRAIN" in sim_node.slurm.flags and "=" not in sim_node.slurm.reason
    assert parse_channel(channel.read("n1")).want  # kept for the next run
