"""A real sandbox cluster whose nodes have simulated GPUs and slurm-mig's hooks (shared by tests).

Each node gets its own config, simulator and state under ``<root>/nodes/<node>``; its layout
is applied with ``slurm-mig apply``, then gres.conf and the node Gres= come from
``slurm-mig gres-conf/node-conf --write`` into the sandbox's files.  Prolog=/Epilog= are globs
over directories holding the shipped hook scripts (plus a marker script that proves the glob
runs every file).  Jobs run through ``sim-run`` (attach to their instances) and a probe that
opens every cap file of their node.

The root is under /var/tmp, not pytest's tmp_path: munged needs o+x on every parent of its
socket (docs/sandbox-notes.md).  Set SLURM_MIG_KEEP_SANDBOX=1 to keep it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pytest

from slurm_mig.app.cli import main as cli_main
from slurm_mig.core.gresconf import parse_gres_conf, parse_node_gres_types, slurm_order
from slurm_mig.host.config import load_config
from slurm_mig.sandbox import SandboxCluster, missing_requirements
from slurm_mig.sandbox.host import which
from slurm_mig.sim.driver import SimDriver
from slurm_mig.slurm.client import CommandSlurm
from slurm_mig.change.channel import parse_channel
from slurm_mig.slurm.scontrol import parse_pairs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The job: attach to its instance(s) through `sim run`, then probe every cap file of its node.
JOB = textwrap.dedent("""\
    #!/bin/bash
    export SLURM_MIG_CONFIG={root}/nodes/$SLURMD_NODENAME/config.toml
    exec {python} -m slurm_mig.hooks sim-run --out {root}/seen/$SLURM_JOB_ID.json -- \\
        {python} {root}/probe.py {root}/records.json {root}/seen/$SLURM_JOB_ID.probe.json {sleep}
    """)
PROBE = textwrap.dedent("""\
    import errno, json, os, sys, time
    records = json.load(open(sys.argv[1]))[os.environ["SLURMD_NODENAME"]]
    mine = {int(i) for i in os.environ.get("SLURM_JOB_GPUS", "").split(",") if i}
    out = {"mine": sorted(mine), "own": {}, "other": {}}
    for idx, files in enumerate(records):
        for path in files[1:]:
            try:
                os.close(os.open(path, os.O_RDONLY))
                name = "OPENED"
            except OSError as err:
                name = errno.errorcode.get(err.errno, str(err.errno))
            out["own" if idx in mine else "other"][path] = name
    json.dump(out, open(sys.argv[2], "w"))
    time.sleep(float(sys.argv[3]))
    """)


class Sbx:
    def __init__(self, cluster: SandboxCluster, nodes: Sequence[str]):
        self.cluster = cluster
        self.root = cluster.root
        self.nodes = list(nodes)

    def config_path(self, node: str) -> str:
        return os.path.join(self.root, "nodes", node, "config.toml")

    def config(self, node: str):
        return load_config(self.config_path(node))

    def records(self, node: str):
        etc = self.cluster.paths
        recs = parse_gres_conf(open(etc.gres_conf).read(), node)
        return slurm_order(recs, parse_node_gres_types(open(etc.nodes_conf).read(), node))

    def write_records(self) -> None:
        """``records.json``: each node's gres files in Slurm's order, for the probe."""
        records = {n: [list(r.files) for r in self.records(n)] for n in self.nodes}
        with open(os.path.join(self.root, "records.json"), "w") as f:
            json.dump(records, f)

    def node_gres(self) -> Dict[str, str]:
        """node -> the Gres= of its line in the node include, as slurm-mig wrote it."""
        out = {}
        with open(self.cluster.paths.nodes_conf) as f:
            for line in f:
                pairs = parse_pairs(line.partition("#")[0])
                if pairs.get("NodeName") in self.nodes:
                    out[pairs["NodeName"]] = pairs.get("Gres", "")
        return out

    def adopt_files(self) -> None:
        """Tell the sandbox the Gres= and gres.conf slurm-mig wrote (it renders the include
        the same way; checked), so that its reconfigure() knows what to wait for."""
        nodes_conf = open(self.cluster.paths.nodes_conf).read()
        self.cluster.write_layout(self.node_gres(), open(self.cluster.paths.gres_conf).read())
        assert open(self.cluster.paths.nodes_conf).read() == nodes_conf  # same text either way

    def submit(self, args: List[str], sleep: float = 0.0) -> int:
        script = JOB.format(root=self.root, python=sys.executable, sleep=sleep)
        return self.cluster.submit(args, script)

    def seen(self, job: int) -> dict:
        with open(os.path.join(self.root, "seen", f"{job}.json")) as f:
            return json.load(f)

    def write_controller_config(self, reconfigure_command: List[str], rebalance: str) -> str:
        """A controller config (``<root>/ctl/config.toml``) for ``slurm-mig rebalance`` on this
        sandbox: its node include, its scontrol, ``reconfigure_command``; ``rebalance``: the
        lines of ``[rebalance]`` after ``enabled = true``.  Returns its path."""
        path = os.path.join(self.root, "ctl", "config.toml")
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            f.write(f'version = 1\n[paths]\nstate_dir = "{self.root}/ctl/state"\n'
                    f'node_gres_include = "{self.cluster.paths.nodes_conf}"\n'
                    f'[slurm]\nscontrol = "{which("scontrol") or "scontrol"}"\n'
                    f"reconfigure_command = {json.dumps(list(reconfigure_command))}\n"
                    f"register_timeout = 30\n[rebalance]\nenabled = true\n{rebalance}")
        return path

    def seen_done(self, job: int) -> Optional[dict]:
        """What the job reached, once its file is complete; None before."""
        try:
            return self.seen(job)
        except (OSError, ValueError):
            return None

    def probe(self, job: int) -> dict:
        with open(os.path.join(self.root, "seen", f"{job}.probe.json")) as f:
            return json.load(f)

    def slurmd_log(self, node: str) -> str:
        with open(self.cluster.paths.slurmd_log(node)) as f:
            return f.read()

    def job_records(self, node: str) -> List[str]:
        d = os.path.join(self.config(node).paths.state_dir, "jobs")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def slurm_client(self) -> "SandboxSlurm":
        return SandboxSlurm(self)

    def extra(self, node: str) -> str:
        """The node's ``Extra`` field as slurmctld reports it (rebalance's channel)."""
        out = self.cluster.command(["scontrol", "show", "node", "-o", node]).stdout
        return parse_pairs(out.strip()).get("Extra", "")

    def slurm_mig(self, config: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``slurm-mig --config CONFIG --json ARGS`` as a process against this cluster, as a
        node's timer or the controller's service runs it."""
        argv = [sys.executable, "-m", "slurm_mig", "--config", config, "--json", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.cluster.env(), cwd=REPO)

    def sync_pending(self, node: str) -> dict:
        """One run of ``node``'s timer (``slurm-mig sync --pending``), which must succeed."""
        return json_result(self.slurm_mig(self.config_path(node), "sync", "--pending",
                                          "--node", node), node)

    def rebalance(self, ctl: str) -> dict:
        """One controller cycle (``slurm-mig rebalance`` with the config ``ctl``), which must
        succeed."""
        return json_result(self.slurm_mig(ctl, "rebalance", timeout=180), "rebalance")


class SandboxSlurm(CommandSlurm):
    """The real scontrol adapter against the sandbox; reconfigure() is the sandbox's, which
    restarts slurmctld on 22.05 when the layout changed (docs/sandbox-notes.md) and waits
    until every node registered with its gres."""

    def __init__(self, sbx: Sbx):
        super().__init__(which("scontrol") or "scontrol", env=sbx.cluster.env())
        self.sbx = sbx
        self.reconfigured: List[object] = []

    def reconfigure(self) -> None:
        self.sbx.adopt_files()
        self.reconfigured.append(self.sbx.cluster.reconfigure())


def until(what: str, check, timeout: float = 30.0):
    """``check()``'s first truthy answer, polled every 0.1 s; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(0.1)


def cli(*args: str) -> None:
    assert cli_main([str(a) for a in args]) == 0, args


def write_hooks(root: str) -> None:
    with open(os.path.join(root, "slurm-mig.env"), "w") as f:
        f.write(f"SLURM_MIG_PYTHON={sys.executable}\n"
                f"SLURM_MIG_CONFIG={root}/nodes/${{SLURMD_NODENAME}}/config.toml\n"
                f"SLURM_MIG_RUN_DIR={root}/nodes/${{SLURMD_NODENAME}}/run\n")
    # TaskProlog= is one program: the shipped script, given the sandbox's defaults file.
    with open(os.path.join(root, "taskprolog"), "w") as f:
        f.write(f"#!/bin/bash\nexec {REPO}/taskprolog.d/50-slurm-mig {root}/slurm-mig.env\n")
    os.chmod(os.path.join(root, "taskprolog"), 0o755)
    for which_hook in ("prolog", "epilog"):
        d = os.path.join(root, f"{which_hook}.d")
        os.makedirs(d)
        scripts = {
            # Proves the glob runs every file; both log their turn in <job>.<hook>.order.
            "10-mark": (f"#!/bin/bash\necho ran >> {root}/marks/$SLURM_JOB_ID.{which_hook}\n"
                        f"echo 10-mark >> {root}/marks/$SLURM_JOB_ID.{which_hook}.order\n"),
            "50-slurm-mig": (f"#!/bin/bash\nexport SLURM_MIG_DEFAULTS={root}/slurm-mig.env\n"
                             f"echo 50-slurm-mig >> {root}/marks/$SLURM_JOB_ID.{which_hook}.order\n"
                             f"exec {REPO}/{which_hook}.d/50-slurm-mig\n"),
        }
        for name, text in scripts.items():
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o755)


@contextlib.contextmanager
def sandbox(prefix: str, gpus: Mapping[str, List[str]],
            layouts: Mapping[str, List[Tuple[str, str]]], *, cpus_per_node: int = 8,
            config_extra: str = "") -> Iterator[Sbx]:
    """A started cluster with nodes ``gpus`` (node -> simulated models), each GPU cut as
    ``layouts`` says (node -> [(gpu index, layout)]).  ``config_extra`` goes at the end of
    every node's config.toml, ``@NODEROOT@`` in it replaced by that node's directory.  Stopped (and removed) on exit."""
    root = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    # 8 CPUs a node on a smaller machine (config_overrides): 7 jobs at once on n1's instances.
    cluster = SandboxCluster(root, list(gpus), cpus_per_node=cpus_per_node)
    try:
        for d in ("seen", "marks"):
            os.makedirs(os.path.join(root, d))
        with open(os.path.join(root, "probe.py"), "w") as f:
            f.write(PROBE)
        write_hooks(root)
        cluster.write_config({n: "" for n in gpus}, "", {
            "Prolog": f"{root}/prolog.d/*", "Epilog": f"{root}/epilog.d/*",
            "TaskProlog": f"{root}/taskprolog",
            "SlurmdParameters": "config_overrides"})
        for node, models in gpus.items():
            nroot = os.path.join(root, "nodes", node)
            os.makedirs(nroot)
            cfg = os.path.join(nroot, "config.toml")
            with open(cfg, "w") as f:
                f.write(textwrap.dedent(f"""\
                    version = 1
                    backend = "sim"
                    [paths]
                    state_dir = "{nroot}/state"
                    run_dir = "{nroot}/run"
                    gres_conf = "{cluster.paths.gres_conf}"
                    node_gres_include = "{cluster.paths.nodes_conf}"
                    [sim]
                    root = "{nroot}/sim"
                    gpus = {json.dumps(models)}
                    """) + textwrap.dedent(config_extra).replace("@NODEROOT@", nroot))
            SimDriver.create(os.path.join(nroot, "sim"), models)
            for gpu, layout in layouts[node]:
                cli("--config", cfg, "apply", layout, "--gpu", gpu)
            cli("--config", cfg, "gres-conf", "--node", node, "--write")
            cli("--config", cfg, "node-conf", "--node", node, "--write")
        sbx = Sbx(cluster, list(gpus))
        sbx.adopt_files()
        sbx.write_records()
        cluster.start()
        yield sbx
    finally:
        cluster.stop()
        print(f"\n{root}: timings {cluster.timings}; isolation {cluster.isolation}")
        if not os.environ.get("SLURM_MIG_KEEP_SANDBOX"):
            shutil.rmtree(root, ignore_errors=True)


def json_result(proc: subprocess.CompletedProcess, what: str) -> dict:
    """The ``--json`` output of a slurm-mig process that must have succeeded."""
    assert proc.returncode == 0, (what, proc.returncode, proc.stdout[-3000:], proc.stderr[-2000:])
    return json.loads(proc.stdout)


# ----------------------------------------------------------------------------- rebalance
# What tests/test_rebalance_slurm.py and tests/test_rebalance_late_slurm.py share.

MISSING = missing_requirements()
#: The marks of a module whose tests start a cluster: skipped with the reason without one.
NEEDS_SLURM = [pytest.mark.slurm,
               pytest.mark.skipif(bool(MISSING), reason="needs " + "; ".join(MISSING))]

#: Three nodes, one A100-40GB each: n1 and n2 all-1g, n3 the only 3g.20gb instances (the
#: tests drain it with ADMIN's reason, so that a 3g job pends).
REBALANCE_GPUS = {"n1": ["A100-40GB"], "n2": ["A100-40GB"], "n3": ["A100-40GB"]}
REBALANCE_LAYOUTS = {"n1": [("0", "1g.5gb:7")], "n2": [("0", "1g.5gb:7")], "n3": [("0", "3g.20gb:2")]}
ADMIN = "test: maintenance"

#: A ``[slurm] reconfigure_command``: ``python reconfigure.py SOCKET COUNT WHO`` appends
#: ``WHO <time>`` to the file COUNT, fails unless WHO is ``controller`` (the node side must
#: never reconfigure Slurm), else asks the test process (the owner of the sandbox's daemons)
#: through SOCKET to reconfigure (:class:`ReconfigureServer`) and fails unless it answers ok.
RECONFIGURE = textwrap.dedent("""\
    import socket, sys, time
    sock, count, who = sys.argv[1:4]
    with open(count, "a") as f:
        f.write(f"{who} {time.time():.3f}\\n")
    if who != "controller":
        sys.exit("the node side must not reconfigure Slurm")
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(b"reconfigure\\n")
    s.shutdown(socket.SHUT_WR)
    reply = s.makefile().read()
    print(reply)
    sys.exit(0 if reply.startswith("ok") else reply)
    """)


def reconfigure_command(directory: str, sock: str, count: str, who: str) -> List[str]:
    """RECONFIGURE as a command (written to ``<directory>/reconfigure.py`` once)."""
    script = os.path.join(directory, "reconfigure.py")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(RECONFIGURE)
    return [sys.executable, script, sock, count, who]


def error_reply(err: BaseException) -> str:
    """The line that makes RECONFIGURE (and so the controller's command) fail with ``err``."""
    return f"error: {type(err).__name__}: {err}"


class ReconfigureServer:
    """Answers RECONFIGURE's requests on a unix socket, in a thread: each with
    :meth:`answer`'s line (an exception escaping it: :func:`error_reply`).  By default it
    runs the sandbox's reconfigure and remembers what each one restarted (``done``).
    Subclasses set their own attributes before calling ``__init__``, which starts serving."""

    def __init__(self, sbx: Sbx, path: str):
        self.sbx = sbx
        self.done: List[tuple] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.makefile().read()
                try:
                    reply = self.answer()
                except BaseException as err:  # the controller's command fails with this line
                    reply = error_reply(err)
                conn.sendall(reply.encode())

    def answer(self) -> str:
        self.sbx.adopt_files()
        result = self.sbx.cluster.reconfigure()
        self.done.append(result.restarted)
        return f"ok {result.seconds:.1f}s restarted {','.join(result.restarted) or '-'}"

    def close(self) -> None:
        """Stop listening, and leave the thread as it is (blocked in accept(), a daemon
        thread): the sandbox's reconfigure may have restarted slurmctld from it, and a daemon
        gets its ``PR_SET_PDEATHSIG`` signal when the *thread* that started it ends.  Ending
        the thread here stopped the cluster before the test's last ``scontrol`` (measured:
        "Unable to contact slurm controller")."""
        self.sock.close()


class NodeTimers:
    """``slurm-mig sync --pending`` on every node, again and again, as their timers would."""

    def __init__(self, sbx):
        self.sbx = sbx
        self.runs: List[dict] = []  # {"node", "t", "rc", "result" or "stderr"}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop_event.is_set():
            for node in self.sbx.nodes:
                proc = self.sbx.slurm_mig(self.sbx.config_path(node), "sync", "--pending",
                                          "--node", node)
                run = {"node": node, "t": time.monotonic(), "rc": proc.returncode,
                       "stderr": proc.stderr.strip()}
                if proc.returncode == 0:
                    run["result"] = json.loads(proc.stdout)
                self.runs.append(run)
            self.stop_event.wait(0.3)

    def published(self, node: str) -> List[float]:
        return [r["t"] for r in self.runs if r["node"] == node and r.get("result", {}).get("published")]

    def applied(self, node: str) -> List[dict]:
        return [r["result"] for r in self.runs if r["node"] == node and r.get("result", {}).get("applied")]

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)


class World:
    def __init__(self, sbx, server, timers, count: str, ctl: str):
        self.sbx, self.server, self.timers, self.count, self.ctl = sbx, server, timers, count, ctl
        self.seen: Dict[str, object] = {}  # what the first test measured, for the others

    def extra(self, node: str) -> str:
        return self.sbx.extra(node)

    def rebalance(self) -> dict:
        return self.sbx.rebalance(self.ctl)

    def count_lines(self) -> List[str]:
        try:
            with open(self.count) as f:
                return [l.split()[0] for l in f]
        except FileNotFoundError:
            return []


@contextlib.contextmanager
def rebalance_world(tools: str, prefix: str, gpus: Mapping[str, List[str]],
                    layouts: Mapping[str, List[Tuple[str, str]]], floor: Mapping[str, int], *,
                    reader: Optional[str] = None) -> Iterator[World]:
    """A started cluster (:func:`sandbox`) with a controller config (``floor``, apply_wait 30 s,
    ``[slurm] reader`` when given), RECONFIGURE for the controller and the nodes (counted in
    ``<tools>/reconfigures.log``), n3 drained with ADMIN's reason, the nodes' timers running and
    every layout published.  What tests/test_rebalance_slurm.py and test_pyslurm_slurm.py share."""
    sock, count = os.path.join(tools, "reconf.sock"), os.path.join(tools, "reconfigures.log")
    node_extra = (f"[slurm]\nreconfigure_command = "
                  f"{json.dumps(reconfigure_command(tools, sock, count, 'node'))}\n")
    with sandbox(prefix, gpus, layouts, config_extra=node_extra) as sbx:
        floors = ", ".join(f'"{t}" = {n}' for t, n in floor.items())
        ctl = sbx.write_controller_config(reconfigure_command(tools, sock, count, "controller"),
                                          f"floor = {{ {floors} }}\napply_wait = 30\n")
        if reader is not None:
            with open(ctl) as f:
                text = f.read()
            with open(ctl, "w") as f:
                f.write(text.replace("[slurm]\n", f"[slurm]\nreader = {json.dumps(reader)}\n", 1))
        sbx.cluster.drain("n3", ADMIN)
        server = ReconfigureServer(sbx, sock)
        timers = NodeTimers(sbx)
        w = World(sbx, server, timers, count, ctl)
        try:
            # Every node publishes its layout on its timer's first run.
            until("every layout published", lambda: all(
                parse_channel(w.extra(n), n) is not None for n in sbx.nodes))
            yield w
        finally:
            timers.stop()
            server.close()
            sbx.cluster.resume("n3", wait=False)
