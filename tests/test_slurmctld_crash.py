"""What a slurmctld crash (SIGKILL, no shutdown) does to a node's Extra and drain, measured
on the real sandbox (slurm_mig.sandbox; docs/rebalance.md relies on it).

rebalance's channel is the node's ``Extra`` field and its "in progress" mark a drain with a
reason starting ``slurm-mig rebalance``.  A stop (SIGTERM) makes slurmctld save its state
(tests/test_rebalance_slurm.py: Extra survives the restart).  A crash does not: slurmctld
comes back (same StateSaveLocation, no ``-c``: :meth:`SandboxCluster.crash_slurmctld`) with
what its state-save thread last wrote.  Slurm 22.05's thread saves a change at once when it
saved nothing in the last 5 s (``SAVE_MAX_WAIT``), and otherwise up to 5 s after that
save, looking once a second.  A save writes every node as it is then, so what comes back is
the cluster as it was at some earlier moment: later updates lost, none reordered.

The tests run in order on one cluster (two nodes, no GPUs); each crash restarts slurmctld,
whose new process starts with no save behind it.  Whether an update is on disk is read
from the ``node_state`` file itself (Slurm packs Extra and the reason as plain strings).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, Tuple

import pytest

from slurm_mig.sandbox import SandboxCluster, missing_requirements
from slurm_mig.slurm.scontrol import parse_pairs

MISSING = missing_requirements()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]

TAG = "slurm-mig rebalance"
OLD = "slurm-mig;have:0/A100-40GB/1g.5gb@0+1g.5gb@1"
NEW = "slurm-mig;have:0/A100-40GB/3g.20gb@0"
APPLIED = f"{NEW};applied:3"  # the node's hand-back after applying cycle 3's want
APPLIED_REASON = (f"{TAG}: cycle 3: layout 3g.20gb:1 on gpu 0 applied on the node; the next "
                  f"slurm-mig rebalance run reconfigures Slurm and resumes the node")


def extra(cycle: int) -> str:
    """A want as rebalance's record step writes it (one token: no blanks, no '=')."""
    return f"{OLD};want:0/3g.20gb@0;cycle:{cycle}"


def reason(cycle: int) -> str:
    return f"{TAG}: cycle {cycle}: new layout 3g.20gb:1 on gpu 0; test"


class Ctl:
    def __init__(self, cluster: SandboxCluster):
        self.cluster = cluster
        self.node_state = os.path.join(cluster.paths.state, "slurmctld", "node_state")
        self.measured: Dict[str, float] = {}

    def update(self, *args: str) -> None:
        self.cluster.command(["scontrol", "update", *args])

    def write(self, node: str, text: str) -> None:
        self.update(f"nodename={node}", f"extra={text}")

    def drain(self, node: str, why: str) -> None:
        self.update(f"nodename={node}", "state=drain", f"reason={why}")

    def node(self, node: str) -> Tuple[str, bool, str]:
        """(Extra, drained, reason without scontrol's " [user@time]")."""
        out = self.cluster.command(["scontrol", "show", "node", "-o", node]).stdout
        pairs = parse_pairs(out.strip())
        state = pairs.get("State", "")
        why = pairs.get("Reason", "").rsplit(" [", 1)[0]
        return pairs.get("Extra", ""), "DRAIN" in state.split("+"), why

    def on_disk(self, text: str) -> bool:
        """Whether the saved node state holds ``text`` as one whole string (Slurm packs a
        string as its length + 1, 32 bits big-endian, then its bytes and a NUL)."""
        data = text.encode() + b"\0"
        try:
            with open(self.node_state, "rb") as f:
                return struct.pack(">I", len(data)) + data in f.read()
        except FileNotFoundError:
            return False

    def wait_saved(self, *texts: str, timeout: float = 8.0) -> float:
        """Seconds until every text is in the saved node state; fails after ``timeout``."""
        t0 = time.monotonic()
        while not all(self.on_disk(t) for t in texts):
            assert time.monotonic() - t0 < timeout, f"{texts} not saved after {timeout}s"
            time.sleep(0.02)
        return time.monotonic() - t0

    def fresh_save(self, cycle: int) -> float:
        """Make slurmctld save now (an update of n2, waited for): for the next 5 s, any
        further update waits for the next periodic save."""
        return self.wait_saved(self.write("n2", extra(cycle)) or extra(cycle))

    def crash(self, name: str) -> None:
        t0 = time.monotonic()
        self.cluster.crash_slurmctld()
        self.measured[f"crash+start {name}"] = round(time.monotonic() - t0, 2)


@pytest.fixture(scope="module")
def ctl():
    root = tempfile.mkdtemp(prefix="sbx-crash-", dir="/var/tmp")  # munged: o+x above its socket
    cluster = SandboxCluster(root, ["n1", "n2"])
    c = Ctl(cluster)
    try:
        cluster.write_config({"n1": "", "n2": ""}, "")
        cluster.start()
        yield c
    finally:
        cluster.stop()
        print(f"\n{root}: measured {c.measured}; timings {cluster.timings}")
        if not os.environ.get("SLURM_MIG_KEEP_SANDBOX"):
            shutil.rmtree(root, ignore_errors=True)


def test_quiet_slurmctld_saves_the_want_at_once_but_not_the_drain_right_after_it(ctl):
    """rebalance's record step (want, then drain, milliseconds apart) on a slurmctld that
    saved nothing in the last 5 s (here: none since it started), killed 0.1 s later: the
    want was saved at once and survives; the drain waited for the next save and is lost."""
    ctl.write("n1", extra(1))
    ctl.drain("n1", reason(1))
    time.sleep(0.1)
    before_kill = (ctl.on_disk(extra(1)), ctl.on_disk(reason(1)))
    ctl.crash("quiet")
    after = ctl.node("n1")
    ctl.measured["quiet: (want, drain) on disk at the kill"] = before_kill
    print(f"\nquiet: on disk at the kill (want, drain) {before_kill}; after the crash {after}")
    # Measured here every time: (True, False).  The save thread runs asynchronously, so on a
    # loaded machine it may pick the drain up too; what must hold is that the want was saved
    # at once and that exactly what was on disk survives.
    assert before_kill[0]
    assert after == ((extra(1), False, "") if not before_kill[1] else (extra(1), True, reason(1)))


def test_updates_within_5s_of_a_save_are_lost_when_killed_0_1s_later(ctl):
    """Case (a): want and drain 0.1 s before the kill, just after another save: both lost;
    Extra comes back as its older saved value (not empty), the node not drained."""
    ctl.measured["a: saving n2 took"] = round(ctl.fresh_save(91), 2)
    ctl.write("n1", extra(2))
    ctl.drain("n1", reason(2))
    time.sleep(0.1)
    before_kill = (ctl.on_disk(extra(2)), ctl.on_disk(reason(2)))
    ctl.crash("a")
    after = ctl.node("n1")
    print(f"\n(a): on disk at the kill (want, drain) {before_kill}; after the crash {after}")
    assert before_kill == (False, False)
    assert after == (extra(1), False, "")
    assert ctl.node("n2")[0] == extra(91)  # the save before them is all there


def test_a_few_seconds_after_the_updates_a_kill_loses_nothing(ctl):
    """Case (b): the node side's hand-back (``applied`` in Extra, then its drain reason),
    just after another save (the slowest case), then 6 s before the kill: the periodic save
    wrote both (~5 s after the updates)."""
    ctl.fresh_save(92)
    t0 = time.monotonic()
    ctl.write("n1", APPLIED)
    ctl.drain("n1", APPLIED_REASON)
    saved = ctl.wait_saved(APPLIED, APPLIED_REASON)
    ctl.measured["b: updates saved after"] = round(saved, 2)
    time.sleep(max(0.0, 6.0 - (time.monotonic() - t0)))
    ctl.crash("b")
    after = ctl.node("n1")
    print(f"\n(b): saved {saved:.2f}s after the updates; after the crash {after}")
    assert 3.0 < saved < 8.0  # deferred (not at once), ~SAVE_MAX_WAIT (5 s; measured 4.97-5.0)
    assert after == (APPLIED, True, APPLIED_REASON)


def test_a_lost_resume_brings_the_node_back_drained_with_its_applied_marker(ctl):
    """The finish step's end (marker dropped from Extra, then resume) 0.1 s before a kill,
    just after another save: the node comes back drained, reason and marker as before."""
    ctl.fresh_save(93)
    ctl.write("n1", NEW)
    ctl.update("nodename=n1", "state=resume")
    time.sleep(0.1)
    before_kill = (ctl.on_disk(NEW), ctl.node("n1")[1])
    ctl.crash("resume")
    after = ctl.node("n1")
    print(f"\nresume lost: (NEW on disk, drained) at the kill {before_kill}; after the crash {after}")
    assert before_kill == (False, False)
    assert after == (APPLIED, True, APPLIED_REASON)


def test_rebalance_with_slurmctld_stopped_exits_9_on_one_line(ctl, tmp_path):
    """slurmctld stopped: 22.05's squeue exits 0 with only an ``errors`` list (recorded in
    tests/data/slurm/22.05/squeue-ctld-down.json); `slurm-mig rebalance` exits 9 with one
    line, no traceback, and records no cycle.  Started again afterwards for the tests below."""
    from slurm_mig.sandbox.daemons import stop_daemons
    from slurm_mig.sandbox.host import which

    config = tmp_path / "config.toml"
    config.write_text(f'version = 1\n[paths]\nstate_dir = "{tmp_path}/state"\n'
                      f'[slurm]\nscontrol = "{which("scontrol") or "scontrol"}"\n'
                      f'[rebalance]\nenabled = true\n')
    stop_daemons([ctl.cluster._ctld])  # as `systemctl stop slurmctld`
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "slurm_mig", "--config", str(config),
                               "rebalance"], capture_output=True, text=True, timeout=180,
                              env=ctl.cluster.env())
        ctl.measured["rebalance with slurmctld stopped"] = round(time.monotonic() - t0, 2)
    finally:
        ctl.cluster._start_ctld_again()
    print(f"\nrebalance, slurmctld stopped: exit {proc.returncode}; {proc.stderr!r}")
    assert (proc.returncode, proc.stdout) == (9, ""), proc.stderr
    # 22.05.8: "... squeue --json --states=PENDING: Slurm 22.05.8 answered with an error: ..."
    # With pyslurm installed (24.11 matrix), auto reads through it: "pyslurm Jobs.load() failed"
    assert re.fullmatch(r"slurm-mig: error: cannot read Slurm: [^\n]*(squeue|pyslurm)[^\n]*; check "
                        r"slurmctld \(`scontrol ping`\) and rerun; rebalance planned and changed "
                        r"nothing\n", proc.stderr), proc.stderr
    assert not (tmp_path / "state" / "rebalance.json").exists()


# -- the crash that loses a node's applied layout: sync --pending catches up ----------------

GNODE = "g1"  # not n1/n2: the cluster above may still run (cgroup names are per node name)
OLD_LAYOUT, NEW_LAYOUT = "1g.5gb:7", "3g.20gb:2"


def test_a_crash_that_loses_the_want_and_drain_after_the_node_applied_converges(tmp_path):
    """The case docs/rebalance.md's crash table left open, reproduced by a real crash: a
    want + rebalance's drain, the node's ``sync --pending`` applies it (GPU at 3g.20gb:2,
    gres.conf written, applied marker + hand-over reason), all within 5 s of a save (here a
    node Comment, waited for), then slurmctld is killed: it comes back with the node's old
    Extra (no want, no marker), not drained, Gres= still 1g.5gb:7; its restart's reconfigure
    then makes slurmd reread gres.conf (3g.20gb) and slurmctld drains the node itself,
    INVALID_REG, "gres/gpu count reported lower than configured (0 < 7)" (a reason that is
    not slurm-mig's; ``scontrol update state=resume`` is refused).  Then the node's
    ``sync --pending`` once (it sees its GPUs ahead of Slurm and hands itself to rebalance)
    and ``slurm-mig rebalance`` once (finish: include, ONE reconfigure, registration,
    resume): the node is back in service with the new gres and runs a 3g.20gb job."""
    from slurm_mig.app.commands import status
    from slurm_mig.change.channel import parse_channel
    from slurm_mig.core.gresconf import parse_gres_conf
    from slurm_mig.sim.backend import SimBackend

    from sbx import RECONFIGURE, REPO, ReconfigureServer, sandbox, until  # the rebalance tests' reconfigure bridge

    script = tmp_path / "reconfigure.py"
    script.write_text(RECONFIGURE)
    sock, count = str(tmp_path / "reconf.sock"), str(tmp_path / "reconfigures.log")
    reconf = lambda who: json.dumps([sys.executable, str(script), sock, count, who])  # noqa: E731
    t_start = time.monotonic()
    with sandbox("sbx-crash-gpu-", {GNODE: ["A100-40GB"]}, {GNODE: [("0", OLD_LAYOUT)]},
                 config_extra=f"[slurm]\nreconfigure_command = {reconf('node')}\n") as sbx:
        cluster, c = sbx.cluster, Ctl(sbx.cluster)
        ctl_cfg = sbx.write_controller_config(
            [sys.executable, str(script), sock, count, "controller"], "apply_wait = 5\n")
        server = ReconfigureServer(sbx, sock)
        timings = {"cluster up": round(time.monotonic() - t_start, 1)}

        def run(*args: str, config: str) -> dict:
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "slurm_mig", "--config", config, "--json",
                                   *args], capture_output=True, text=True, timeout=180,
                                  env=cluster.env(), cwd=REPO)
            timings[args[0] + (" --pending" if "--pending" in args else "")] = \
                round(time.monotonic() - t0, 2)
            assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
            return json.loads(proc.stdout)

        def gres() -> Dict[str, int]:
            return {t: n for t, n in cluster.status()[GNODE].gres.items() if n}

        def sync_pending() -> dict:
            return run("sync", "--pending", "--node", GNODE, config=sbx.config_path(GNODE))

        try:
            assert sync_pending()["published"]  # its timer's first run: have published
            old_extra = c.node(GNODE)[0]
            assert parse_channel(old_extra, GNODE).have and gres() == {"1g.5gb": 7}
            want = f"{old_extra};want:0/3g.20gb@0+3g.20gb@4;cycle:1"
            why = f"{TAG}: cycle 1: new layout 3g.20gb:2 on gpu 0; test"

            # A save now (a Comment, waited for): what follows waits ~5 s for the next one.
            c.wait_saved(c.update(f"nodename={GNODE}", "comment=crash-test-save") or
                         "crash-test-save")
            t0 = time.monotonic()
            c.write(GNODE, want)
            c.drain(GNODE, why)
            applied = sync_pending()
            assert applied["applied"], applied
            handed = c.node(GNODE)
            at_kill = (c.on_disk(want), c.on_disk(why), c.on_disk(handed[0]), c.on_disk(handed[2]))
            timings["want..kill"] = round(time.monotonic() - t0, 2)
            c.crash("gpu")
            after = c.node(GNODE)
            print(f"\nhanded over {handed}; on disk at the kill (want, drain, applied, reason) "
                  f"{at_kill}; after the crash {after}")
            assert handed[1] and handed[2].startswith(TAG) and ";applied:1" in handed[0]
            assert at_kill == (False, False, False, False), "a save came before the kill"
            # The loss: the old Extra back, our drain gone (slurmctld may already have drained
            # it again for the gres slurmd now reports: a race with the restart's reconfigure),
            # Slurm's Gres= the old layout ...
            assert after[0] == old_extra and gres() == {"1g.5gb": 7}
            assert (after[1], after[2]) == (False, "") or after[2].startswith("gres/gpu count"), after
            # ... while the GPU and gres.conf hold the new one.
            gpu = SimBackend(sbx.config(GNODE).sim.root)
            new = {i["gi_id"] for i in status(sbx.config(GNODE), gpu)["gpus"][0]["instances"]
                   if i["profile"] == "3g.20gb"}
            assert len(new) == 2 and len(gpu.instances(0)) == 2
            with open(cluster.paths.gres_conf) as f:
                assert [r.type for r in parse_gres_conf(f.read(), GNODE)] == ["3g.20gb"] * 2

            if cluster.version < (23, 11):
                # The crash's restart reconfigures (SandboxCluster.crash_slurmctld, as the
                # 22.05 stand-in does): slurmd rereads gres.conf and registers 3g.20gb against
                # Gres=gpu:1g.5gb:7; slurmctld drains it.
                reg = until("g1's registration refused", lambda: (lambda s: s if "INVALID_REG"
                            in s.flags else None)(cluster.status()[GNODE]), timeout=10)
            else:
                # 23.11+: nothing rereads gres.conf on a restart (slurmd re-registers what it
                # read at its start), so Slurm keeps the node in service with the old gres
                # until the node's own sync --pending hands it over (next step).
                reg = cluster.status()[GNODE]
                assert reg.registered and not reg.drain_flagged, (reg.flags, reg.reason)
            print(f"\nafter the registration: {sorted(reg.flags)} {reg.reason!r}")
            caught = sync_pending()
            print(f"\nsync --pending after the crash: {caught['action']}")
            assert caught["applied"] and c.node(GNODE)[1], (caught["action"], reg)
            result = run("rebalance", config=ctl_cfg)
            print("\nrebalance:\n" + "\n".join(result["actions"]))
            assert result["finished"] == [GNODE] and result["reconfigured"], result
            assert result["changed"] == [] and result["failed"] == []
            with open(count) as f:
                assert [line.split()[0] for line in f] == ["controller"]  # ONE reconfigure
            assert len(server.done) == 1

            extra_now, drained, reason_now = c.node(GNODE)
            # 24.11 keeps the Reason of a resumed node (measured): only the drain flag counts.
            assert not drained, (drained, reason_now)
            assert reason_now == "" or cluster.version >= (23, 11), reason_now
            assert gres() == {"3g.20gb": 2}
            ch = parse_channel(extra_now, GNODE)
            assert ch.want == () and ch.applied is None and ch.have

            sbx.write_records()
            job = sbx.submit(["--gres=gpu:3g.20gb:1", "-w", GNODE])
            done = cluster.wait_job(job, 30)
            assert (done.state, done.nodes) == ("COMPLETED", GNODE), done
            assert sbx.seen(job)["instances"][0]["gi_id"] in new
        finally:
            server.close()
            timings["total"] = round(time.monotonic() - t_start, 1)
            print(f"\ntimings {timings}; measured {c.measured}")
