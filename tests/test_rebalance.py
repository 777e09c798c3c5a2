"""rebalance's cycle with an in-memory Slurm and the real planner (docs/rebalance.md)."""

from __future__ import annotations

import json
import os
import types
from dataclasses import replace

import pytest

from slurm_mig.app.render import rebalance_text
from slurm_mig.change.channel import (Channel, ChannelError, MemoryExtra, format_channel,
                                      have_counts, parse_channel)
from slurm_mig.change.reasons import applied as applied_reason, new_layout, node_failed as node_failure_reason
from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.errors import ApplyRefused, ConfigError, LockBusy, SlurmError, SlurmUnreadable
from slurm_mig.host.config import parse_config
from slurm_mig.host.locking import node_lock
from slurm_mig.rebalance.cycle import rebalance
from slurm_mig.sim.driver import SimDriver
from slurm_mig.slurm.model import GresRequest, NodeInfo, PendingJob, RunningJob
from slurm_mig.slurm.reader import SlurmJsonClient
from slurm_mig.slurm.scontrol import NodeStatus, parse_gres, parse_pairs

ONE_G = ",".join(f"1g.5gb@{i}" for i in range(7))
TWO_3G = "3g.20gb@0,3g.20gb@4"
OLD_HAVE = ((0, "A100-40GB", ONE_G),)
NEW_HAVE = ((0, "A100-40GB", TWO_3G),)


class Crash(BaseException):
    """The process dies here (kill -9, power): nothing after it runs."""


class FakeSlurm:
    """An in-memory Slurm: nodes, pending jobs, Extra (``channel``) and the calls made.

    Read as the rebalance reader (``nodes()`` -> NodeInfo with Extra); ``client`` is the
    SlurmClient view (NodeStatus, drain, resume, reconfigure).  As slurmctld does, a node's
    gres change only on ``reconfigure``, from its ``Gres=`` in the node ``include`` file;
    nodes in ``stale`` keep their old gres then (not registering).  ``fail``/``crash``: op ->
    call numbers (1-based) that raise SlurmError / :class:`Crash`.

    ``gresconf`` (None: not modelled): node -> the gres counts its gres.conf says, which its
    slurmd reports on ``reconfigure``; one that disagrees with the node's ``Gres=`` is set
    ``INVALID_REG`` as slurmctld does (drained with a ``gres/`` reason if it was not).
    ``hooks``: (when, op, call number) -> function, ``when`` "before" or "after" the call;
    the reader's ``nodes()`` is op "read": what another host does at that exact step.
    ``includes``: the ``Gres=`` of each node in the include at each ``reconfigure``.
    """

    def __init__(self, channel: MemoryExtra, nodes, jobs=(), include=None):
        self.channel = channel
        self.infos = {n.name: n for n in nodes}
        self.jobs = list(jobs)
        self.include = include
        self.calls = []
        self.count = {}
        self.fail = {}
        self.crash = {}
        self.stale = set()
        self.gresconf = None
        self.hooks = {}
        self.includes = []
        self.unknown_looks = {}  #: node -> looks after a reconfigure that show it UNKNOWN
        self.unknown_left = {}
        self.client = FakeClient(self)

    def _hook(self, when, op):
        fn = self.hooks.get((when, op, self.count.get(op, 0)))
        if fn is not None:
            fn()

    def _call(self, op, *args):
        self.calls.append((op, *args))
        self.count[op] = self.count.get(op, 0) + 1
        self._hook("before", op)
        if self.count[op] in self.crash.get(op, ()):
            raise Crash(op)
        if self.count[op] in self.fail.get(op, ()):
            raise SlurmError(f"{op}: `scontrol {op}` failed: Unable to contact slurm controller")

    def pending_jobs(self):
        return list(self.jobs)

    def nodes(self, names=None):
        return {n: replace(i, extra=self.channel.read(n)) for n, i in self.infos.items()
                if names is None or n in names}

    def read(self, names=None):
        """The rebalance reader's ``nodes()`` (op "read", hooks after it returned)."""
        self.count["read"] = self.count.get("read", 0) + 1
        out = self.nodes(names)
        self._hook("after", "read")
        return out

    def drain(self, node, reason):
        self._call("drain", node, reason)
        i = self.infos[node]
        self.infos[node] = replace(i, state="drained", flags=tuple(set(i.flags) | {"DRAIN"}), reason=reason)

    def drain_nodes(self, nodes, reason):
        """One call for several nodes (``scontrol update nodename=n1,n2``)."""
        self._call("drain_nodes", tuple(nodes), reason)
        for node in nodes:
            i = self.infos[node]
            self.infos[node] = replace(i, state="drained" if i.state == "idle" else "draining",
                                       flags=tuple(set(i.flags) | {"DRAIN"}), reason=reason)

    def resume(self, node):
        self._call("resume", node)
        i = self.infos[node]
        if self.unknown_left.get(node):  # 24.11, measured: refused, and the DRAIN flag is lost
            self.infos[node] = replace(i, flags=tuple(f for f in i.flags if f != "DRAIN"))
            raise SlurmError(f"resume {node}: slurm_update error: Invalid node state specified")
        self.infos[node] = replace(i, state="idle", flags=tuple(f for f in i.flags if f != "DRAIN"), reason="")

    def reconfigure(self):
        self._call("reconfigure")
        self.unknown_left = dict(self.unknown_looks)
        with open(self.include) as f:
            for line in f:
                pairs = parse_pairs(line.partition("#")[0])
                name = pairs.get("NodeName")
                if name in self.infos and name not in self.stale:
                    self.infos[name] = replace(self.infos[name], gres=parse_gres(pairs.get("Gres", "")))
        self.includes.append(_gres_in_include(self))
        for name, counts in sorted((self.gresconf or {}).items()):
            i = self.infos[name]
            flags = set(i.flags) - {"INVALID_REG"}
            reason = i.reason
            if counts != i.gres:  # slurmd reports its gres.conf; slurmctld keeps Gres=
                flags |= {"INVALID_REG"}
                if "DRAIN" not in flags:
                    flags |= {"DRAIN"}
                    reason = (f"gres/gpu count reported lower than configured "
                              f"({sum(counts.values())} < {sum(i.gres.values())})")
            self.infos[name] = replace(i, flags=tuple(sorted(flags)), reason=reason,
                                       state="drained" if "DRAIN" in flags else i.state)
        self._hook("after", "reconfigure")

    def reasons(self):
        return {n: i.reason for n, i in self.infos.items()}


class FakeClient:
    def __init__(self, cluster: FakeSlurm):
        self.cluster = cluster

    def nodes(self, names=None):
        out = {}
        for n, i in self.cluster.nodes(names).items():
            base = {"drained": "idle", "draining": "mixed"}.get(i.state, i.state)
            if self.cluster.unknown_left.get(n):  # not registered since the reconfigure
                self.cluster.unknown_left[n] -= 1
                base = "unknown"
            text = ",".join(f"gpu:{t}:{k}" for t, k in sorted(i.gres.items()))
            out[n] = NodeStatus(n, base, frozenset(i.flags), dict(i.gres), text, i.reason)
        return out

    def drain(self, node, reason):
        self.cluster.drain(node, reason)

    def drain_nodes(self, nodes, reason):
        self.cluster.drain_nodes(nodes, reason)

    def resume(self, node):
        self.cluster.resume(node)

    def reconfigure(self):
        self.cluster.reconfigure()


class Clock:
    """A fake clock; ``on_sleep(now)`` runs at every sleep (what other hosts do meanwhile)."""

    def __init__(self):
        self.now = 1000.0
        self.slept = []
        self.on_sleep = None

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.now)


def _node(name, state="idle", gres=None, used=None):
    return NodeInfo(name, state=state, partitions=("gpu",), gres=gres or {"1g.5gb": 7},
                    gres_used=used or {})


def _job(jid, gtype="3g.20gb", count=1, priority=100):
    return PendingJob(jid, priority=priority, partition=("gpu",), reason="Resources",
                      requests=(GresRequest(gtype, count),))


def node_applies(cluster: FakeSlurm, node: str) -> None:
    """What ``slurm-mig sync --pending`` on ``node`` leaves behind: the want as ``have``, the
    applied marker, the hand-over reason; Slurm's gres unchanged (no reconfigure)."""
    ch = parse_channel(cluster.channel.read(node))
    have = tuple((g, "A100-40GB", layout) for g, layout in ch.want)
    cluster.channel.write(node, format_channel(ch.applied_as(have)))
    if cluster.gresconf is not None:
        cluster.gresconf[node] = have_counts(ch.applied_as(have), load_catalog())
    cluster.drain(node, applied_reason(ch.cycle, "..."))


@pytest.fixture
def config(tmp_path):
    def make(extra=""):
        return parse_config(f'version = 1\n[paths]\nstate_dir = "{tmp_path}/state"\n'
                            f'node_gres_include = "{tmp_path}/nodes.conf"\n'
                            f'[slurm]\nregister_timeout = 10\n'
                            f'[rebalance]\nenabled = true\n{extra}', "test.toml")
    return make


@pytest.fixture
def cluster(tmp_path):
    include = tmp_path / "nodes.conf"
    include.write_text("NodeName=n1 CPUs=8 Gres=gpu:1g.5gb:7\nNodeName=n2 CPUs=8 Gres=gpu:1g.5gb:7\n")
    channel = MemoryExtra({n: format_channel(Channel(have=OLD_HAVE)) for n in ("n1", "n2")})
    return FakeSlurm(channel, [_node("n1"), _node("n2")], [_job(10)], str(include))


@pytest.fixture
def clock():
    return Clock()


class Reader:
    """The rebalance reader's view of a FakeSlurm (reads counted, hooks run)."""

    def __init__(self, cluster):
        self.cluster = cluster

    def pending_jobs(self):
        return self.cluster.pending_jobs()

    def nodes(self, names=None):
        return self.cluster.read(names)


def _run(config, cluster, clock=None, **kw):
    clock = clock or Clock()
    return rebalance(config, Reader(cluster), cluster.client, cluster.channel, clock=clock,
                     sleep=clock.sleep, poll=1.0, **kw).as_dict()


def _applied(cluster, *nodes, cycle=1):
    """``nodes`` as ``sync --pending`` leaves them after applying cycle ``cycle``'s 3g.20gb:2."""
    for n in nodes:
        cluster.channel.write(n, format_channel(Channel(have=OLD_HAVE, want=((0, TWO_3G),),
                                                        cycle=cycle)))
        node_applies(cluster, n)
    cluster.calls.clear()
    cluster.channel.writes.clear()


def _gres_in_include(cluster):
    with open(cluster.include) as f:
        return {parse_pairs(l)["NodeName"]: parse_pairs(l).get("Gres", "") for l in f
                if l.startswith("NodeName=")}


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
        state = json.load(f)
    assert (state["cycle"], state["last_changed"]) == (1, {"n1": 1})
    assert sorted(state) == ["cycle", "last", "last_action", "last_changed"]


def test_last_shows_the_latest_decision_after_quiet_cycles(config, cluster, cli, monkeypatch, tmp_path):
    import slurm_mig.rebalance.cycle as mod

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'version = 1\n[paths]\nstate_dir = "{tmp_path}/state"\n'
                   f'node_gres_include = "{tmp_path}/nodes.conf"\n[rebalance]\nenabled = true\n'
                   f'apply_wait = 0\n')
    code, out, err = cli("rebalance", "--last", config=str(cfg))
    assert code == 0 and out.startswith("no rebalance cycle has run yet")
    monkeypatch.setattr(mod, "default_collaborators",
                        lambda config, environ=None: (cluster, cluster.client, cluster.channel))
    assert cli("rebalance", config=str(cfg))[0] == 0          # cycle 1 drains n1
    cluster.jobs = []
    assert cli("rebalance", config=str(cfg))[0] == 0          # cycle 2: nothing to do
    code, out, err = cli("rebalance", "--last", config=str(cfg))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("cycle 1 at 20") and lines[0].endswith("the latest that did something:")
    assert lines[1].startswith("slurm-mig rebalance: cycle 1: node n1: drain for gpu 0 ")
    assert any(l.startswith("explain: n1: 3g.20gb x1 wanted by 1 pending job") for l in lines)
    assert lines[-1].startswith("(the latest cycle, 2, ran at 20") and "changed nothing" in lines[-1]
    code, out, _ = cli("--json", "rebalance", "--last", config=str(cfg))
    data = json.loads(out)
    assert sorted(data) == ["last", "last_action", "state_file"]
    assert (data["last"]["cycle"], data["last_action"]["cycle"]) == (2, 1)
    assert cli("rebalance", "--last", "--dry-run", config=str(cfg))[0] == 2


@pytest.mark.parametrize("damage", [b"{", b"[]", b'{"cycle": true}', b'{"cycle": 1e400}',
                                    b'{"cycle": -1}', b'{"cycle": 3, "last_changed": [1]}',
                                    b'{"cycle": 3, "last_changed": {"n1": "x"}}',
                                    b'{"cycle": 3, "last": 5}', b"[" * 5000, b"\xff"])
def test_a_damaged_state_file_stops_rebalance_in_one_line(cli, tmp_path, damage):
    """Exit 3 naming the file and the fix, for the cycle and for --last; never exit 1."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'version = 1\n[paths]\nstate_dir = "{tmp_path}/state"\n'
                   f'node_gres_include = "{tmp_path}/nodes.conf"\n[rebalance]\nenabled = true\n')
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "rebalance.json").write_bytes(damage)
    code, out, err = cli("rebalance", "--last", config=str(cfg))
    assert code == 3 and out == "" and err.count("\n") == 1, err
    assert "rebalance.json" in err and "move it aside" in err


def test_a_state_file_symlink_is_not_read(cli, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'version = 1\n[paths]\nstate_dir = "{tmp_path}/state"\n')
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "secret").write_text('{"cycle": 4, "last_changed": {}}')
    (tmp_path / "state" / "rebalance.json").symlink_to(tmp_path / "secret")
    code, _, err = cli("rebalance", "--last", config=str(cfg))
    assert code == 3 and "symbolic link" in err


def test_channel_text_round_trips_and_has_no_blank_or_equals():
    ch = Channel(have=((0, "A100-40GB", ONE_G), (1, "A100-40GB", "empty")),
                 want=((0, "3g.20gb@0,3g.20gb@4"),), cycle=3)
    text = format_channel(ch)
    assert " " not in text and "=" not in text and "," not in text
    assert parse_channel(text) == ch


def test_channel_applied_marker_round_trips_and_finished_drops_it():
    ch = Channel(have=NEW_HAVE, applied=4)
    text = format_channel(ch)
    assert text.endswith(";applied:4") and " " not in text and "=" not in text and "," not in text
    assert parse_channel(text) == ch
    assert Channel(have=OLD_HAVE, want=((0, TWO_3G),), cycle=4).applied_as(NEW_HAVE) == ch
    assert ch.finished() == Channel(have=NEW_HAVE)
    assert ch.with_want({0: ONE_G}, 5).applied == 4  # that change still needs finishing


def test_channel_refuses_text_that_scontrol_would_cut():
    with pytest.raises(ChannelError, match="blank, '=' or ','"):
        format_channel(Channel(have=((0, "A100 40GB", ONE_G),)))


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
    from slurm_mig.change.pending import sync_pending

    return sync_pending(n.config, n.backend, n.slurm, channel, "n1", clock=n.clock).as_dict()


def test_sync_pending_without_a_want_publishes_the_layout_once_and_touches_nothing(sim_node):
    channel = MemoryExtra()
    first = _pending(sim_node, channel)
    assert first["published"] and first["steps"] == []
    assert parse_channel(channel.read("n1")).have == ((0, "A100-40GB", ONE_G),)
    assert _pending(sim_node, channel)["published"] is False and len(channel.writes) == 1
    assert not [c for c in sim_node.slurm.calls if c[0] != "nodes"]


def _wanting(cycle=2):
    return MemoryExtra({"n1": format_channel(Channel(have=OLD_HAVE, want=((0, TWO_3G),), cycle=cycle))})


def test_sync_pending_applies_the_want_and_hands_over_without_reconfiguring_or_resuming(sim_node):
    channel = _wanting()
    sim_node.slurm.drain("n1", "slurm-mig rebalance: cycle 2: new layout 3g.20gb:2 on gpu 0")
    include = sim_node.include()
    result = _pending(sim_node, channel)
    assert result["applied"] and result["published"]
    assert [(s["step"], s["status"]) for s in result["steps"]] == [
        ("apply", "done"), ("write", "done"), ("publish", "done"), ("reason", "done")]
    assert sim_node.layout() == TWO_3G
    assert sim_node.gres_lines() == ["3g.20gb", "3g.20gb"]  # the node-local gres.conf
    assert sim_node.include() == include  # the node include is the controller's to write
    assert parse_channel(channel.read("n1")) == Channel(have=NEW_HAVE, applied=2)
    ops = [c[0] for c in sim_node.slurm.calls if c[0] != "nodes"]
    assert "reconfigure" not in ops and "resume" not in ops
    assert "DRAIN" in sim_node.slurm.flags and sim_node.slurm.gres == {"1g.5gb": 7}
    assert sim_node.slurm.reason == ("slurm-mig rebalance: cycle 2: layout 3g.20gb:2 on gpu 0 applied "
                                     "on the node; the next slurm-mig rebalance run reconfigures "
                                     "Slurm and resumes the node")
    # Its next run (the timer) finds nothing to do until the controller has finished.
    calls = list(sim_node.slurm.calls)
    again = _pending(sim_node, channel)
    assert again["action"] == "nothing wanted" and not again["published"]
    assert [c for c in sim_node.slurm.calls[len(calls):] if c[0] != "nodes"] == []


def test_sync_pending_drains_a_node_the_controller_did_not_drain_before_applying(sim_node):
    channel = _wanting()  # the controller died between writing the want and the drain
    result = _pending(sim_node, channel)
    drains = [c for c in sim_node.slurm.calls if c[0] == "drain"]
    assert drains[0][2].startswith("slurm-mig rebalance: cycle 2: applying 3g.20gb:2 on gpu 0")
    assert result["applied"] and sim_node.layout() == TWO_3G
    assert "DRAIN" in sim_node.slurm.flags


def test_sync_pending_leaves_a_node_drained_by_an_admin_alone(sim_node):
    channel = _wanting()
    sim_node.slurm.drain("n1", "admin: bad fan")
    result = _pending(sim_node, channel)
    assert result["action"].startswith("waiting: drained by someone else (admin: bad fan)")
    assert sim_node.layout() == ONE_G and sim_node.slurm.reason == "admin: bad fan"
    assert parse_channel(channel.read("n1")).want


def test_sync_pending_apply_failure_keeps_the_want_and_says_what_to_do(sim_node):
    from slurm_mig.sim.backend import SimBackend

    channel = _wanting()
    sim_node.slurm.drain("n1", "slurm-mig rebalance: cycle 2: new layout 3g.20gb:2 on gpu 0")
    gi = SimBackend(sim_node.config.sim.root).instances(0)[0].gi_id
    SimDriver(sim_node.config.sim.root).attach_process(0, gi, 0, 4242)
    with pytest.raises(ApplyRefused) as err:
        _pending(sim_node, channel)
    assert "sync --pending stopped at apply: node n1 left drained, the want kept" in str(err.value)
    assert sim_node.slurm.reason.startswith("slurm-mig rebalance: cycle 2: node-side apply failed: ")
    assert sim_node.slurm.reason.endswith("; fix it, then slurm-mig sync --pending on the node retries")
    assert "pid 4242" in sim_node.slurm.reason and "=" not in sim_node.slurm.reason
    assert parse_channel(channel.read("n1")).want == ((0, TWO_3G),)


def test_sync_pending_on_a_busy_node_drains_it_and_returns_at_once(sim_node):
    channel = MemoryExtra({"n1": format_channel(Channel(have=((0, "A100-40GB", ONE_G),),
                                                        want=((0, "3g.20gb@0,3g.20gb@4"),), cycle=2))})
    sim_node.slurm.busy_polls = 5
    result = _pending(sim_node, channel)
    assert result["action"].startswith("waiting: node MIXED") and result["steps"] == []
    assert "DRAIN" in sim_node.slurm.flags and "=" not in sim_node.slurm.reason
    assert parse_channel(channel.read("n1")).want  # kept for the next run


# ----------------------------------------------------------------------------- finish step


def test_finish_step_reconfigures_once_for_several_nodes_then_resumes_them(config, cluster):
    _applied(cluster, "n1", "n2")
    cluster.jobs = []
    result = _run(config(), cluster)
    assert result["finished"] == ["n1", "n2"] and result["reconfigured"] and result["failed"] == []
    assert [c for c in cluster.calls if c[0] == "reconfigure"] == [("reconfigure",)]
    assert cluster.calls == [("reconfigure",), ("resume", "n1"), ("resume", "n2")]
    assert _gres_in_include(cluster) == {"n1": "gpu:3g.20gb:2", "n2": "gpu:3g.20gb:2"}
    assert "CPUs=8" in open(cluster.include).read()  # the rest of each line kept
    assert os.path.exists(cluster.include + ".prev")
    for n in ("n1", "n2"):
        assert cluster.infos[n].gres == {"3g.20gb": 2} and "DRAIN" not in cluster.infos[n].flags
        assert parse_channel(cluster.channel.read(n)) == Channel(have=NEW_HAVE)  # marker dropped
    text = rebalance_text(result)
    assert "slurm-mig rebalance: cycle 1: reconfigured Slurm once for n1, n2" in text
    assert ("slurm-mig rebalance: cycle 1: changed none; finished n1, n2; reconfigured once; "
            "resumed none; failed none") in text
    # Nothing left to do: the next cycle neither reconfigures nor touches a node.
    again = _run(config(), cluster)
    assert again["finished"] == [] and not again["reconfigured"]
    assert [c[0] for c in cluster.calls] == ["reconfigure", "resume", "resume"]


def test_crash_between_include_write_and_reconfigure_converges_on_the_next_cycle(config, cluster):
    _applied(cluster, "n1")
    cluster.jobs = []
    cluster.crash = {"reconfigure": {1}}
    cfg = config()
    with pytest.raises(Crash):
        _run(cfg, cluster)
    assert _gres_in_include(cluster)["n1"] == "gpu:3g.20gb:2"  # written before the crash
    assert "DRAIN" in cluster.infos["n1"].flags and cluster.infos["n1"].gres == {"1g.5gb": 7}
    assert cluster.infos["n1"].reason.startswith("slurm-mig rebalance: cycle 1: layout")
    # n2 was held for the reconfigure that never ran: still drained with the hold's reason
    assert cluster.infos["n2"].reason == "slurm-mig hold: reconfigure by rebalance (cycle 1); resumed when the node has registered"
    assert "DRAIN" in cluster.infos["n2"].flags
    result = _run(cfg, cluster)  # the lock was released with the dead process
    assert result["cycle"] == 2 and result["finished"] == ["n1"] and result["reconfigured"]
    assert [c[0] for c in cluster.calls] == ["drain_nodes", "reconfigure", "reconfigure", "resume",
                                             "resume"]
    assert result["hold"] == {"held": [], "adopted": ["n2"], "resumed": ["n2"], "kept": {},
                              "left": [], "failed": {}, "calls": 2, "seconds": 0.0}
    assert cluster.infos["n1"].gres == {"3g.20gb": 2} and "DRAIN" not in cluster.infos["n1"].flags
    assert "DRAIN" not in cluster.infos["n2"].flags


def test_reconfigure_failure_leaves_the_nodes_drained_with_what_to_do_then_the_next_cycle_retries(
        config, cluster):
    _applied(cluster, "n1", "n2")
    cluster.fail = {"reconfigure": {1}}
    result = _run(config(), cluster)
    assert result["finished"] == [] and not result["reconfigured"]
    assert [(f["node"], f["step"]) for f in result["failed"]] == [("n1", "reconfigure"), ("n2", "reconfigure")]
    for n in ("n1", "n2"):
        reason = cluster.infos[n].reason
        assert reason.startswith("slurm-mig rebalance: cycle 1: reconfigure failed: reconfigure: ")
        assert reason.endswith("; fix and rerun slurm-mig rebalance") and "=" not in reason
        assert "DRAIN" in cluster.infos[n].flags
        assert parse_channel(cluster.channel.read(n)).applied == 1  # still to finish
    assert "failed n1, n2" in rebalance_text(result)
    # The next cycle retries; while a finish failure stands it starts no new change.
    cluster.infos["n3"] = _node("n3")
    cluster.channel.write("n3", format_channel(Channel(have=OLD_HAVE)))
    cluster.jobs = [_job(j) for j in range(10, 16)]  # more 3g than n1 and n2 will offer
    again = _run(config(), cluster)
    assert again["finished"] == ["n1", "n2"] and again["changed"] == []
    assert any(n.startswith("no new layout in this cycle: finishing n1, n2 failed before")
               for n in again["notes"])
    assert "DRAIN" not in cluster.infos["n1"].flags and "DRAIN" not in cluster.infos["n2"].flags


def test_a_node_that_does_not_register_stays_drained_and_the_others_resume(config, cluster):
    _applied(cluster, "n1", "n2")
    cluster.jobs = []
    cluster.stale = {"n2"}
    result = _run(config(), cluster)
    assert result["finished"] == ["n1"] and result["reconfigured"]
    assert [(f["node"], f["step"]) for f in result["failed"]] == [("n2", "register")]
    assert cluster.infos["n2"].reason.startswith(
        "slurm-mig rebalance: cycle 1: register failed: node n2 did not register with gres "
        "gpu:3g.20gb:2 within 10s")
    assert "DRAIN" in cluster.infos["n2"].flags and "DRAIN" not in cluster.infos["n1"].flags


def test_cli_exits_8_when_finishing_a_node_failed(cli, tmp_path, monkeypatch, cluster):
    import slurm_mig.rebalance.cycle as mod

    _applied(cluster, "n1")
    cluster.fail = {"reconfigure": {1}}
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'version = 1\n[paths]\nstate_dir = "{tmp_path}/state"\n'
                   f'node_gres_include = "{cluster.include}"\n[slurm]\nregister_timeout = 1\n'
                   f'[rebalance]\nenabled = true\napply_wait = 0\n')
    monkeypatch.setattr(mod, "default_collaborators",
                        lambda config, environ=None: (cluster, cluster.client, cluster.channel))
    code, out, err = cli("rebalance", config=str(cfg))
    assert code == 8, (out, err)
    assert "slurm-mig rebalance: cycle 1: node n1: reconfigure failed: " in out


def test_apply_wait_finishes_the_change_in_the_same_run(config, cluster, clock):
    def node_timer(now):  # the node's sync --pending runs 3 s into the wait
        if now >= 1003 and parse_channel(cluster.channel.read("n1")).want:
            node_applies(cluster, "n1")

    clock.on_sleep = node_timer
    result = _run(config("apply_wait = 30\n"), cluster, clock)
    assert [c["node"] for c in result["changed"]] == ["n1"]
    assert result["wait"] == {"seconds": 3.0, "applied": ["n1"], "pending": [], "failed": []}
    assert result["finished"] == ["n1"] and result["reconfigured"]
    ops = [c[:2] for c in cluster.calls]
    assert ops == [("drain", "n1"), ("drain", "n1"), ("drain_nodes", ("n2",)), ("reconfigure",),
                   ("resume", "n1"), ("resume", "n2")]
    want = parse_channel(cluster.channel.read("n1")).have[0][2]
    assert cluster.infos["n1"].gres.get("3g.20gb", 0) >= 1 and "3g.20gb@" in want
    assert "DRAIN" not in cluster.infos["n1"].flags
    # The same queue again (the job has not started yet): nothing changes, no flapping.
    cluster.calls.clear()
    writes = list(cluster.channel.writes)
    again = _run(config("apply_wait = 30\n"), cluster, Clock())
    assert again["changed"] == [] and again["finished"] == [] and not again["reconfigured"]
    assert cluster.calls == [] and cluster.channel.writes == writes


def test_apply_wait_0_records_now_and_finishes_on_the_next_cycle(config, cluster, clock):
    cfg = config("apply_wait = 0\n")
    first = _run(cfg, cluster, clock)
    assert [c["node"] for c in first["changed"]] == ["n1"] and first["finished"] == []
    assert clock.slept == [] and ("reconfigure",) not in cluster.calls
    node_applies(cluster, "n1")
    second = _run(cfg, cluster, clock)
    assert second["finished"] == ["n1"] and second["changed"] == []
    assert [c[0] for c in cluster.calls].count("reconfigure") == 1


def test_a_node_not_applying_within_apply_wait_is_finished_by_a_later_cycle(config, cluster, clock):
    result = _run(config("apply_wait = 5\n"), cluster, clock)
    assert result["wait"]["pending"] == ["n1"] and result["finished"] == []
    assert sum(clock.slept) == 5
    assert any(n.startswith("not applied within [rebalance] apply_wait (5s): n1") for n in result["notes"])


def test_the_wait_ends_early_when_the_node_side_fails(config, cluster, clock):
    def node_timer(now):  # the node's sync --pending fails 2 s into the wait
        if now >= 1002 and "node-side" not in cluster.infos["n1"].reason:
            cluster.drain("n1", node_failure_reason(1, "apply", RuntimeError("gpu 0: no permission")))

    clock.on_sleep = node_timer
    result = _run(config("apply_wait = 60\n"), cluster, clock)
    assert result["wait"] == {"seconds": 2.0, "applied": [], "pending": [], "failed": ["n1"]}
    assert result["finished"] == [] and not result["reconfigured"]
    assert any(n.startswith("sync --pending failed on n1") for n in result["notes"])
    assert "failed on the node: n1" in rebalance_text(result)
    assert parse_channel(cluster.channel.read("n1")).want  # kept for the node's retry


def test_dry_run_says_which_nodes_it_would_finish(config, cluster):
    _applied(cluster, "n1")
    result = _run(config(), cluster, dry_run=True)
    assert result["finished"] == ["n1"] and not result["reconfigured"]
    assert cluster.calls == [] and not os.path.exists(cluster.include + ".prev")
    assert any(a.endswith("(dry run)") and "node n1: finish" in a for a in result["actions"])


def test_result_keys_are_stable(config, cluster):
    result = _run(config(), cluster)
    assert sorted(result) == ["actions", "changed", "cycle", "dry_run", "explain", "failed",
                              "finished", "hold", "notes", "plan", "reconfigured", "reconfigures",
                              "resumed", "wait"]
    assert sorted(result["hold"]) == ["adopted", "calls", "failed", "held", "kept", "left",
                                      "resumed", "seconds"]
    assert sorted(result["wait"]) == ["applied", "failed", "pending", "seconds"]
    assert sorted(result["changed"][0]) == ["node", "reason", "want"]


def test_sync_pending_result_keys_are_stable(sim_node):
    result = _pending(sim_node, _wanting())
    assert sorted(result) == ["action", "applied", "apply", "cycle", "dry_run", "gres_conf", "node",
                              "published", "steps", "want"]
    assert sorted(result["gres_conf"]) == ["changed", "gres", "path", "prev"]


@pytest.mark.parametrize("extra, words", [(("--layout", "1g.5gb:7"), "drop --layout"),
                                          (("--wait", "60"), "drop --wait")])
def test_sync_pending_refuses_options_it_would_not_honour(cli, node_config, extra, words):
    code, out, err = cli("sync", "--pending", *extra, config=node_config())
    assert code == 2 and words in err and out == ""


# ----------------------------------------------------------------------------- GPUs ahead of Slurm


def _gpus_ahead(n):
    """What a slurmctld crash can leave (docs/rebalance.md): the node applied a want and wrote
    gres.conf, then the want and the drain were lost; Slurm still has the old gres."""
    from slurm_mig.app.commands import apply_layout
    from slurm_mig.node.gresfiles import gres_conf

    apply_layout(n.config, n.backend, "3g.20gb:2")
    gres_conf(n.config, n.backend, "n1", write=True)
    return MemoryExtra({"n1": format_channel(Channel(have=OLD_HAVE))})


def test_sync_pending_hands_an_idle_node_whose_gpus_are_ahead_of_slurm_to_rebalance(sim_node):
    channel = _gpus_ahead(sim_node)
    include = sim_node.include()
    result = _pending(sim_node, channel)
    assert result["applied"] and result["action"].startswith(
        "catching up: the GPUs hold 3g.20gb:2 but Slurm has 1g.5gb:7")
    assert parse_channel(channel.read("n1")) == Channel(have=NEW_HAVE, applied=0)
    assert sim_node.slurm.reason.startswith("slurm-mig rebalance: cycle 0: layout 3g.20gb:2 applied on the node")
    assert "DRAIN" in sim_node.slurm.flags and sim_node.gres_lines() == ["3g.20gb", "3g.20gb"]
    assert sim_node.include() == include  # the controller writes Gres= and reconfigures
    assert ("reconfigure",) not in sim_node.slurm.calls
    # What the controller then sees: a node to finish.
    from slurm_mig.core.catalog import load_catalog
    from slurm_mig.rebalance.finish import verdict

    info = _node("n1", state="drained", gres={"1g.5gb": 7})
    assert verdict(info, parse_channel(channel.read("n1")), load_catalog())[0] == "finish"


def test_sync_pending_waits_for_jobs_before_handing_over_a_node_ahead_of_slurm(sim_node):
    channel = _gpus_ahead(sim_node)
    sim_node.slurm.busy_polls = 1
    first = _pending(sim_node, channel)
    assert first["action"].endswith("waits for running jobs (drained)") and not first["applied"]
    assert sim_node.slurm.reason.startswith("slurm-mig sync --pending: layout not in Slurm: ")
    assert not sim_node.slurm.reason.startswith("slurm-mig rebalance")  # not finished under jobs
    assert parse_channel(channel.read("n1")) == Channel(have=NEW_HAVE)
    second = _pending(sim_node, channel)  # the jobs ended
    assert second["applied"] and parse_channel(channel.read("n1")).applied == 0
    assert sim_node.slurm.reason.startswith("slurm-mig rebalance: cycle 0: layout 3g.20gb:2 applied")


def test_sync_pending_leaves_an_admin_drained_node_ahead_of_slurm_to_the_admin(sim_node):
    channel = _gpus_ahead(sim_node)
    sim_node.slurm.drain("n1", "admin: reflashing")
    result = _pending(sim_node, channel)
    assert result["action"] == "nothing wanted" and sim_node.slurm.reason == "admin: reflashing"
    assert parse_channel(channel.read("n1")) == Channel(have=NEW_HAVE)  # published, no marker


def test_sync_pending_does_nothing_more_when_slurm_agrees(sim_node):
    channel = MemoryExtra()
    _pending(sim_node, channel)
    assert _pending(sim_node, channel)["action"] == "nothing wanted"
    assert [c[0] for c in sim_node.slurm.calls] == ["nodes", "nodes"]


def test_sync_pending_catches_up_a_node_slurm_drained_for_its_gres(sim_node):
    # After a slurmctld crash, slurmd registering the new gres.conf gets the node drained by
    # slurmctld itself (measured: tests/test_slurmctld_crash.py).
    channel = _gpus_ahead(sim_node)
    sim_node.slurm.drain("n1", "gres/gpu count reported lower than configured (0 < 7)")
    sim_node.slurm.flags.add("INVALID_REG")
    result = _pending(sim_node, channel)
    assert result["applied"] and parse_channel(channel.read("n1")).applied == 0
    assert sim_node.slurm.reason.startswith("slurm-mig rebalance: cycle 0: layout 3g.20gb:2 applied")


def test_catch_up_leaves_a_node_to_an_admin_sync_in_progress(sim_node):
    # An admin's `slurm-mig sync` holds the node's sync lock from its drain to its resume;
    # slurmctld may drain the node for its gres meanwhile (INVALID_REG): not ours to take.
    from slurm_mig.change.steps import sync_lock

    channel = _gpus_ahead(sim_node)
    sim_node.slurm.drain("n1", "gres/gpu count reported lower than configured (0 < 7)")
    sim_node.slurm.flags.add("INVALID_REG")
    before = sim_node.files()
    with sync_lock(sim_node.config.paths.state_dir):
        result = _pending(sim_node, channel)
    assert result["action"].endswith("a slurm-mig sync is running on the node, the next run looks again")
    assert not result["applied"] and sim_node.slurm.reason.startswith("gres/gpu count")
    assert parse_channel(channel.read("n1")).applied is None
    assert sim_node.files() == before


# ----------------------------------------------------------------------------- Slurm unreadable

SLURM_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "slurm", "22.05")


def _printing(tmp_path, name, recorded):
    """A stand-in Slurm command that prints a recorded 22.05 file and exits 0."""
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\ncat {os.path.join(SLURM_DATA, recorded)}\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def ctl(tmp_path, monkeypatch, cluster, cli):
    """A controller config, and ``use(reader)``: what `slurm-mig rebalance` reads through
    (the in-memory ``cluster`` acts as the Slurm client and the Extra channel)."""
    import slurm_mig.rebalance.cycle as mod

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'version = 1\n[paths]\nstate_dir = "{tmp_path}/state"\n'
                   f'node_gres_include = "{cluster.include}"\n[rebalance]\nenabled = true\n'
                   f'apply_wait = 0\n')

    def use(reader):
        monkeypatch.setattr(mod, "default_collaborators",
                            lambda config, environ=None: (reader, cluster.client, cluster.channel))

    def run(*args):
        return cli(*args, config=str(cfg))

    return types.SimpleNamespace(use=use, run=run, state=tmp_path / "state" / "rebalance.json")


@pytest.mark.parametrize("squeue, sinfo, says", [
    ("squeue-ctld-down.json", "sinfo-N-ctld-down.json",
     "squeue --json --states=PENDING: Slurm 22.05.8 answered with an error: Failed while looking "
     "for jobs (slurm_load_jobs, Unspecified error, errno -1)"),
    ("squeue.json", "sinfo-N-ctld-down.json",  # slurmctld went down between the two reads
     "sinfo -N --json: Slurm 22.05.8 answered with an error: Unspecified error (errno -1)"),
])
def test_rebalance_with_slurmctld_down_exits_9_on_one_line_and_changes_nothing(
        ctl, cluster, tmp_path, squeue, sinfo, says):
    """Slurm 22.05's squeue/sinfo exit 0 with only an ``errors`` list while slurmctld is
    down (recorded): no plan, no drain, no Extra written, the state file (and --last) kept."""
    ctl.use(cluster)
    assert ctl.run("rebalance")[0] == 0  # cycle 1 drains n1 for the 3g job
    kept = ctl.state.read_bytes()
    cluster.calls.clear()
    cluster.channel.writes.clear()
    ctl.use(SlurmJsonClient(squeue=_printing(tmp_path, "squeue", squeue),
                            sinfo=_printing(tmp_path, "sinfo", sinfo)))
    for args in (("rebalance",), ("rebalance", "--dry-run"), ("--json", "rebalance")):
        code, out, err = ctl.run(*args)
        assert (code, out) == (9, ""), (args, err)
        assert err == (f"slurm-mig: error: cannot read Slurm: {says}; check slurmctld (`scontrol "
                       f"ping`) and rerun; rebalance planned and changed nothing\n")
    assert cluster.calls == [] and cluster.channel.writes == []
    assert ctl.state.read_bytes() == kept
    code, out, _ = ctl.run("--json", "rebalance", "--last")
    assert code == 0 and json.loads(out)["last"]["cycle"] == 1


def test_reading_the_nodes_again_after_the_wait_failing_is_a_note_not_exit_9(config, cluster, clock):
    """Once a cycle has recorded changes, Slurm going away is no longer "nothing done": the
    cycle ends normally (state saved) and a later cycle finishes the node."""
    def node_timer(now):
        if now >= 1002 and parse_channel(cluster.channel.read("n1")).want:
            node_applies(cluster, "n1")

    clock.on_sleep = node_timer
    reads = []

    class Reader:
        def pending_jobs(self):
            return cluster.pending_jobs()

        def nodes(self, names=None):
            reads.append(names)
            if len(reads) > 1:
                raise SlurmUnreadable("cannot read Slurm: sinfo -N --json: gone")
            return cluster.nodes(names)

    cfg = config("apply_wait = 30\n")
    result = rebalance(cfg, Reader(), cluster.client, cluster.channel, clock=clock,
                       sleep=clock.sleep, poll=1.0).as_dict()
    assert [c["node"] for c in result["changed"]] == ["n1"] and result["finished"] == []
    assert reads == [None, ["n1"]]
    assert any(n.startswith("applied n1, but reading the nodes again failed (cannot read Slurm: ")
               and n.endswith("a later cycle finishes them") for n in result["notes"])
    with open(cfg.rebalance.state_file) as f:
        assert json.load(f)["last"]["cycle"] == 1
    assert _run(cfg, cluster, Clock())["finished"] == ["n1"]  # the next cycle finishes it


# ----------------------------------------------------------------------------- a late apply
# Issue 10: n1's want is from cycle 1, whose wait ended before n1's timer ran; cycle 2
# finishes n2.  n1's `sync --pending` runs at one exact step of cycle 2 (a hook in the fake),
# and the fake models gres.conf: a reconfigure while n1's gres.conf is new and its Gres= old
# sets n1 INVALID_REG, as slurmctld did.


def _n1_late(cluster):
    """n1: cycle 1's want, drained by rebalance, not applied yet; n2: applied cycle 2's."""
    cluster.gresconf = {"n1": {"1g.5gb": 7}, "n2": {"1g.5gb": 7}}
    _applied(cluster, "n2", cycle=2)
    cluster.channel.write("n1", format_channel(Channel(have=OLD_HAVE, want=((0, TWO_3G),), cycle=1)))
    cluster.drain("n1", new_layout(1, "3g.20gb:2 on gpu 0"))
    cluster.jobs = []
    cluster.calls.clear()
    cluster.channel.writes.clear()


def _no_node_drained(cluster):
    return {n: i.flags for n, i in cluster.infos.items() if "DRAIN" in i.flags} == {}


NEW_BOTH = {"n1": "gpu:3g.20gb:2", "n2": "gpu:3g.20gb:2"}


def test_late_apply_before_the_cycle_reads_slurm_is_finished_in_its_one_reconfigure(config, cluster):
    """Interleaving (a) (already right before issue 10: kept as the reference)."""
    _n1_late(cluster)
    node_applies(cluster, "n1")
    result = _run(config(), cluster)
    assert result["finished"] == ["n1", "n2"] and cluster.count["reconfigure"] == 1
    assert cluster.includes == [NEW_BOTH] and _no_node_drained(cluster)


def test_late_apply_after_the_cycle_read_slurm_joins_the_include_before_the_reconfigure(
        config, cluster):
    """Interleaving (a'): n1 applies right after the cycle's first read of the nodes."""
    _n1_late(cluster)
    cluster.hooks[("after", "read", 1)] = lambda: node_applies(cluster, "n1")
    result = _run(config(), cluster)
    assert result["finished"] == ["n1", "n2"] and result["failed"] == []
    assert cluster.count["reconfigure"] == 1 and cluster.includes == [NEW_BOTH]
    assert _no_node_drained(cluster)
    assert any("node n1: applied after this cycle read Slurm (seen before the include); joins" in a
               for a in result["actions"])


def test_late_apply_between_the_include_write_and_the_reconfigure_costs_one_more_reconfigure(
        config, cluster):
    """Interleaving (b): n1's gres.conf goes new just before the reconfigure, which sets it
    INVALID; the cycle writes n1's Gres= and reconfigures once more before resuming anyone."""
    _n1_late(cluster)
    cluster.hooks[("before", "reconfigure", 1)] = lambda: node_applies(cluster, "n1")
    result = _run(config(), cluster)
    assert cluster.includes == [{"n1": "gpu:1g.5gb:7", "n2": "gpu:3g.20gb:2"}, NEW_BOTH]
    assert cluster.count["reconfigure"] == result["reconfigures"] == 2
    assert result["finished"] == ["n1", "n2"]
    assert result["failed"] == [] and _no_node_drained(cluster)
    assert [c[0] for c in cluster.calls if c[0] in ("reconfigure", "resume")] == [
        "reconfigure", "reconfigure", "resume", "resume"]  # nobody resumed between the two
    assert "reconfigured twice" in rebalance_text(result)


def test_late_apply_that_makes_the_reconfigure_command_fail_is_retried_once_with_it(config, cluster):
    """Issue 10 as seen: the 22.05 stand-in waits for every node, so n1 INVALID made the
    reconfigure fail; the cycle finds n1's late apply and reconfigures again with it."""
    _n1_late(cluster)
    cluster.hooks[("before", "reconfigure", 1)] = lambda: node_applies(cluster, "n1")
    cluster.fail = {"reconfigure": {1}}
    result = _run(config(), cluster)
    assert cluster.count["reconfigure"] == 2 and result["finished"] == ["n1", "n2"]
    assert result["failed"] == [] and _no_node_drained(cluster)
    assert cluster.includes[-1] == NEW_BOTH
    assert any(a.startswith("slurm-mig rebalance: cycle 1: reconfigure failed: reconfigure: ")
               and a.endswith("once more with n1, which applied meanwhile")
               for a in result["actions"])


def test_late_apply_right_after_the_reconfigure_is_finished_by_the_same_cycle(config, cluster):
    """Interleaving (c): n1 applies once slurmd has re-read (not INVALID, Slurm still old)."""
    _n1_late(cluster)
    cluster.hooks[("after", "reconfigure", 1)] = lambda: node_applies(cluster, "n1")
    result = _run(config(), cluster)
    assert cluster.count["reconfigure"] == 2 and result["finished"] == ["n1", "n2"]
    assert cluster.includes == [{"n1": "gpu:1g.5gb:7", "n2": "gpu:3g.20gb:2"}, NEW_BOTH]
    assert _no_node_drained(cluster)


def test_late_apply_during_registration_keeps_no_one_else_drained_and_the_next_cycle_finishes_it(
        config, cluster):
    """Later than the cycle's last look (n1 applies while n2 is being resumed): n2 resumes
    now, n1 is finished by the next cycle with one reconfigure."""
    _n1_late(cluster)
    cluster.hooks[("before", "resume", 1)] = lambda: node_applies(cluster, "n1")
    result = _run(config(), cluster)
    assert result["finished"] == ["n2"] and cluster.count["reconfigure"] == 1
    assert "DRAIN" not in cluster.infos["n2"].flags
    again = _run(config(), cluster)
    assert again["finished"] == ["n1"] and cluster.count["reconfigure"] == 2  # one each
    assert cluster.includes[-1] == NEW_BOTH and _no_node_drained(cluster)


def test_a_node_that_never_applies_is_left_out_of_the_include_and_stays_waiting(config, cluster):
    _n1_late(cluster)
    result = _run(config(), cluster)
    assert result["finished"] == ["n2"] and cluster.count["reconfigure"] == 1
    assert cluster.includes == [{"n1": "gpu:1g.5gb:7", "n2": "gpu:3g.20gb:2"}]
    assert "INVALID_REG" not in cluster.infos["n1"].flags
    assert parse_channel(cluster.channel.read("n1")).want  # still waits for its timer


def test_a_node_slurmctld_set_invalid_for_its_gres_after_applying_is_finished(config, cluster):
    """n1 applied late, a reconfigure saw its new gres.conf first, and slurmctld drained it
    with its own reason (``gres/gpu count ...``, INVALID_REG): its Extra says applied, so
    the next cycle finishes it rather than leaving it to an admin."""
    _n1_late(cluster)
    cluster.gresconf["n1"] = {"3g.20gb": 2}
    cluster.channel.write("n1", format_channel(Channel(have=NEW_HAVE, applied=1)))
    cluster.infos["n1"] = replace(cluster.infos["n1"], flags=("DRAIN", "INVALID_REG"),
                                  reason="gres/gpu count reported lower than configured (2 < 7)")
    result = _run(config(), cluster)
    assert result["finished"] == ["n1", "n2"] and cluster.count["reconfigure"] == 1
    assert cluster.includes == [NEW_BOTH] and _no_node_drained(cluster)
    assert "INVALID_REG" not in cluster.infos["n1"].flags


def test_a_healthy_node_is_resumed_as_soon_as_it_registers_while_another_stays_invalid(
        config, cluster):
    """Registration is per node: n2 resumes in the look that sees it registered, not after
    n1's register_timeout (n1's gres.conf disagrees with its published layout)."""
    _applied(cluster, "n1", "n2")
    cluster.jobs = []
    cluster.gresconf = {"n1": {"1g.5gb": 7}, "n2": {"3g.20gb": 2}}
    drained_at_first_sleep = []
    clock = Clock()
    clock.on_sleep = lambda now: drained_at_first_sleep.append(
        sorted(n for n, i in cluster.infos.items() if "DRAIN" in i.flags)) \
        if not drained_at_first_sleep else None
    result = _run(config(), cluster, clock)
    assert drained_at_first_sleep == [["n1"]]
    assert result["finished"] == ["n2"]
    assert [(f["node"], f["step"]) for f in result["failed"]] == [("n1", "register")]


# ----------------------------------------------------------------------------- the hold

HOLD_1 = "slurm-mig hold: reconfigure by rebalance (cycle 1); resumed when the node has registered"


def _hold_cluster(tmp_path):
    """n1 applied a layout; n2 idle, n3 running a job, n4 drained by an admin, n5 down, n6
    without gpus: of the others only n2 and n3 could take a GPU job during the reconfigure."""
    include = tmp_path / "nodes.conf"
    include.write_text("".join(f"NodeName=n{i} CPUs=8 Gres=gpu:1g.5gb:7\n" for i in range(1, 6))
                       + "NodeName=n6 CPUs=8\n")
    names = [f"n{i}" for i in range(1, 7)]
    channel = MemoryExtra({n: format_channel(Channel(have=OLD_HAVE)) for n in names[:5]})
    nodes = [_node("n1"), _node("n2"), _node("n3", state="mixed", used={"1g.5gb": 1}),
             replace(_node("n4", state="drained"), flags=("DRAIN",), reason="bad dimm"),
             replace(_node("n5", state="down"), flags=("NOT_RESPONDING",)),
             replace(_node("n6"), gres={})]
    cluster = FakeSlurm(channel, nodes, [], str(include))
    _applied(cluster, "n1")
    return cluster


def test_reconfigure_holds_every_schedulable_gpu_node_in_one_call_and_resumes_each_once_registered(
        config, tmp_path):
    cluster = _hold_cluster(tmp_path)
    cluster.unknown_looks = {"n1": 1, "n2": 3, "n3": 1}  # slurmds register after the restart
    result = _run(config(), cluster)
    assert result["finished"] == ["n1"] and result["reconfigured"]
    ops = [c for c in cluster.calls]
    assert ops[:2] == [("drain_nodes", ("n2", "n3"), HOLD_1), ("reconfigure",)]
    # every resume came after its node registered: a resume of an UNKNOWN node fails here
    assert sorted(ops[2:]) == [("resume", "n1"), ("resume", "n2"), ("resume", "n3")]
    assert result["hold"] == {"held": ["n2", "n3"], "adopted": [], "resumed": ["n3", "n2"],
                              "kept": {}, "left": [], "failed": {}, "calls": 4, "seconds": 0.0}
    assert "DRAIN" not in cluster.infos["n2"].flags and "DRAIN" not in cluster.infos["n3"].flags
    assert cluster.infos["n4"].reason == "bad dimm" and "DRAIN" in cluster.infos["n4"].flags
    assert "slurm-mig rebalance: cycle 1: held n2,n3 across the reconfigure" in result["actions"]


def test_an_admin_drain_during_the_reconfigure_wins_over_the_hold(config, tmp_path):
    cluster = _hold_cluster(tmp_path)
    cluster.hooks[("after", "reconfigure", 1)] = lambda: cluster.drain("n2", "admin: reseat gpu")
    result = _run(config(), cluster)
    assert ("resume", "n2") not in cluster.calls and ("resume", "n3") in cluster.calls
    assert cluster.infos["n2"].reason == "admin: reseat gpu" and "DRAIN" in cluster.infos["n2"].flags
    assert result["hold"]["kept"] == {"n2": "admin: reseat gpu"}


def test_a_held_node_that_does_not_register_stays_held_and_the_next_cycle_resumes_it(
        config, tmp_path):
    cluster = _hold_cluster(tmp_path)
    cluster.unknown_looks = {"n2": 10 ** 6}  # its slurmd is gone for now
    result = _run(config(), cluster)
    assert result["finished"] == ["n1"] and result["hold"]["left"] == ["n2"]
    assert cluster.infos["n2"].reason == HOLD_1 and "DRAIN" in cluster.infos["n2"].flags
    cluster.calls.clear()
    result = _run(config(), cluster)  # no reconfigure in cycle 2: n2 still not registered
    assert cluster.calls == [] and result["reconfigures"] == 0
    assert any("node n2: still held by a run that died, not registered yet" in a
               for a in result["actions"])
    cluster.unknown_left = {}  # its slurmd registered
    result = _run(config(), cluster)
    assert cluster.calls == [("resume", "n2")] and "DRAIN" not in cluster.infos["n2"].flags


def test_hold_during_reconfigure_false_holds_nothing(config, tmp_path):
    cluster = _hold_cluster(tmp_path)
    cfg = parse_config(f'version = 1\n[paths]\nstate_dir = "{tmp_path}/state"\n'
                       f'node_gres_include = "{tmp_path}/nodes.conf"\n'
                       f'[slurm]\nregister_timeout = 10\nhold_during_reconfigure = false\n'
                       f'[rebalance]\nenabled = true\n', "test.toml")
    result = _run(cfg, cluster)
    assert [c[0] for c in cluster.calls] == ["reconfigure", "resume"]
    assert result["finished"] == ["n1"] and result["hold"]["held"] == []


def test_a_failed_hold_runs_no_reconfigure_and_leaves_the_node_for_the_next_cycle(config, tmp_path):
    cluster = _hold_cluster(tmp_path)
    cluster.fail = {"drain_nodes": {1}}
    result = _run(config(), cluster)
    assert "reconfigure" not in [c[0] for c in cluster.calls] and not result["reconfigured"]
    assert [(f["node"], f["step"]) for f in result["failed"]] == [("n1", "holding the GPU nodes")]
    assert "DRAIN" not in cluster.infos["n2"].flags and "DRAIN" in cluster.infos["n1"].flags


# --------------------------------------------------------------------------- plan_demand (issue 12)


def test_plan_demand_groups_identical_jobs_into_one_item():
    from slurm_mig.rebalance.cycle import plan_demand

    jobs = [_job(1, "3g.20gb", 1, priority=1000), _job(2, "3g.20gb", 1, priority=1004), _job(3, "1g.5gb", 1)]
    items = plan_demand(jobs)
    big = [d for d in items if d.profile == "3g.20gb"]
    assert len(big) == 1 and big[0].count == 2 and big[0].priority_weight == 1000.0
    assert big[0].shape == ()  # one instance per job


def test_plan_demand_keeps_the_shape_of_a_job_asking_several_instances():
    from slurm_mig.rebalance.cycle import plan_demand

    job = PendingJob(7, priority=50, partition=("gpu",), reason="Resources",
                     requests=(GresRequest("3g.20gb", 2), GresRequest("1g.5gb", 1)))
    (item,) = plan_demand([job])
    assert item.shape == (("1g.5gb", 1), ("3g.20gb", 2)) and item.count == 1 and item.nodes == 1


def test_plan_demand_counts_array_tasks_that_may_run_at_once():
    from slurm_mig.rebalance.cycle import plan_demand

    job = PendingJob(8, array_job_id=8, array_task="0-9%2", array_tasks_pending=10, array_throttle=2,
                     priority=10, partition=("gpu",), reason="Resources", requests=(GresRequest("1g.5gb", 1),))
    (item,) = plan_demand([job])
    assert item.count == 2 and item.jobs == 10


def test_plan_demand_spreads_a_multi_node_job_per_node():
    from slurm_mig.rebalance.cycle import plan_demand

    job = PendingJob(9, priority=10, partition=("gpu",), reason="Resources", nodes_requested=2,
                     requests=(GresRequest("3g.20gb", 1),))
    (item,) = plan_demand([job])
    assert item.nodes == 2 and item.request == (("3g.20gb", 1),)


def test_plan_demand_takes_what_changes_in_progress_serve_off_the_heaviest_jobs():
    from slurm_mig.rebalance.cycle import plan_demand

    jobs = [_job(1, "3g.20gb", 1, priority=900), _job(2, "3g.20gb", 1, priority=100)]
    items = plan_demand(jobs, {"3g.20gb": 1})
    assert [(d.priority_weight, d.count) for d in items] == [(100.0, 1)]


# ----------------------------------------------------------------------------- busy clusters


class EndsReader(Reader):
    """The reader, with running jobs (a CPU-only job on each node: nothing of the GPUs busy)."""

    def __init__(self, cluster, running):
        super().__init__(cluster)
        self.running, self.reads = running, 0

    def running_jobs(self):
        self.reads += 1
        return self.running


NOW = 10_000.0
ENDS = [RunningJob(1, ("n1",), int(NOW) - 60, 120),  # ends in 7140 s: past the 1 h horizon
        RunningJob(2, ("n2",), int(NOW) - 1000, 20)]  # ends in 200 s


def _busy_run(config, cluster, drain_mixed):
    cluster.infos = {n: replace(i, state="mixed") for n, i in cluster.infos.items()}
    reader = EndsReader(cluster, ENDS)
    cfg = config(f"drain_mixed = {drain_mixed}\ndrain_horizon = 3600\n")
    result = rebalance(cfg, reader, cluster.client, cluster.channel, clock=Clock(),
                       sleep=Clock().sleep, poll=1.0, dry_run=True, wall=lambda: NOW).as_dict()
    return result, reader


def test_drain_mixed_auto_reads_when_running_jobs_end_and_drains_the_node_whose_jobs_end_first(
        config, cluster):
    result, reader = _busy_run(config, cluster, '"auto"')
    assert reader.reads == 1
    assert [c["node"] for c in result["changed"]] == ["n2"]
    explain = {line.split(":")[0]: line for line in result["explain"]}
    assert "drain_mixed = auto: its jobs end in 3 min by their time limits" in explain["n2"]
    assert "its jobs end in 119 min (by their time limits), not within the drain horizon of 60 min" \
        in explain["n1"]


def test_drain_mixed_true_and_false_do_not_read_running_jobs(config, cluster):
    result, reader = _busy_run(config, cluster, "true")
    assert reader.reads == 0 and [c["node"] for c in result["changed"]] == ["n1"]  # today's choice
    result, reader = _busy_run(config, cluster, "false")
    assert reader.reads == 0 and result["changed"] == []
