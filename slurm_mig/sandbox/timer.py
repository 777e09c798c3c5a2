"""Each sandbox node's stand-in for its systemd timer: ``slurm-mig sync --pending`` every 1.5 s.

On a real cluster every GPU node runs etc/slurm-mig-node.timer (once a minute), which applies
the layout ``slurm-mig rebalance`` left in the node's Extra field, or publishes the node's
layout there.  The sandbox has no systemd, so ``sandbox up`` starts one loop process per node,
detached like the Slurm daemons (own session, no parent-death signal), and ``sandbox down``
stops it.  Each run is a fresh ``python -m slurm_mig --config <node config> --json sync
--pending`` process, as the timer's would be; the loop writes to ``log/timer-<node>.log``
only the runs that did something (published, applied, waited, failed), so an idle sandbox
does not fill its log.

The loop names itself ``slurm-mig-timer`` (``PR_SET_NAME``) and writes its pid file after
that, so :class:`~.daemons.Daemon` finds it from any process and never mistakes a reused pid
for it.  SIGTERM lets a run in progress finish (it may be applying a layout), then ends.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

from .daemons import Daemon, set_process_name, stop_daemons, wait_for
from .errors import SandboxError
from .files import SandboxFiles
from .host import write_atomic

PERIOD = 1.5  # seconds between two runs; a real node's timer waits a minute
PROC_NAME = "slurm-mig-timer"  # at most 15 characters (the kernel's comm)
RUN_TIMEOUT = 300


# ----------------------------------------------------------------------------- from up/down


def timer_argv(files: SandboxFiles, node: str, python: str = sys.executable,
               period: float = PERIOD) -> List[str]:
    return [python, "-m", "slurm_mig.sandbox.timer", "--config", files.node_config(node),
            "--every", f"{period:g}", "--pid-file", files.timer_pid(node)]


def node_timer(files: SandboxFiles, node: str, python: str = sys.executable) -> Daemon:
    return Daemon(f"timer-{node}", timer_argv(files, node, python), files.timer_log(node),
                  files.timer_pid(node), proc_name=PROC_NAME)


def start_timers(files: SandboxFiles, nodes: Sequence[str], env: Mapping[str, str],
                 python: str = sys.executable, timeout: float = 10.0) -> Dict[str, List[int]]:
    """Start the timer of every node in ``nodes`` whose timer is not running; wait until each
    has written its pid file (so ``status`` from another process finds it at once)."""
    started = []
    for node in nodes:
        timer = node_timer(files, node, python)
        if timer.alive():
            continue
        timer.start(env, die_with_parent=False)
        started.append(timer)
    for timer in started:
        def up(t: Daemon = timer) -> bool:
            return t.pid_file_pid() is not None or t.exit_status() is not None

        if not wait_for(up, timeout):
            raise SandboxError(f"{timer.name} wrote no pid file within {timeout:g}s; see "
                               f"{timer.output}")
        if timer.exit_status() is not None:
            raise SandboxError(f"{timer.name} exited at start (exit {timer.exit_status()}); see "
                               f"{timer.output}")
    return timer_pids(files, nodes)


def timer_pids(files: SandboxFiles, nodes: Sequence[str]) -> Dict[str, List[int]]:
    """``timer-<node>`` -> live pids ([] when it is not running)."""
    return {f"timer-{n}": node_timer(files, n).pids() for n in nodes}


def stop_timers(files: SandboxFiles) -> Dict[str, List[int]]:
    """Stop every timer that has a pid file under the root (whatever the spec says);
    returns those that were running."""
    nodes = sorted(os.path.basename(p)[len("timer-"):-len(".pid")]
                   for p in glob.glob(files.timer_pid("*")))
    timers = [node_timer(files, n) for n in nodes]
    running = {t.name: t.pids() for t in timers if t.pids()}
    stop_daemons(timers, timeout=10.0)  # a run in progress finishes first
    for n in nodes:
        try:
            os.unlink(files.timer_pid(n))
        except FileNotFoundError:
            pass
    return running


# ----------------------------------------------------------------------------- the loop


def _log(text: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print("\n".join(f"{stamp} {line}" for line in text.splitlines()), flush=True)


def _worth_logging(result: dict) -> bool:
    return bool(result.get("published") or result.get("applied") or result.get("want")
                or result.get("action") != "nothing wanted")


def run_once(config: str, python: str = sys.executable) -> Optional[str]:
    """One ``sync --pending`` as its own process; the text to log, or None for a quiet run."""
    from ..app.render import sync_pending_text

    argv = [python, "-m", "slurm_mig", "--config", config, "--json", "sync", "--pending"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"sync --pending did not end within {RUN_TIMEOUT}s (killed)"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return f"sync --pending: exit {proc.returncode}: {lines[-1] if lines else 'no output'}"
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        return f"sync --pending: unreadable output: {proc.stdout.strip()[:200]}"
    return sync_pending_text(result) if _worth_logging(result) else None


def loop(config: str, every: float, pid_file: Optional[str]) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    set_process_name(PROC_NAME)
    if pid_file:
        write_atomic(pid_file, f"{os.getpid()}\n")
    _log(f"node timer: `slurm-mig --config {config} sync --pending` every {every:g}s; "
         f"only runs that did something are logged")
    last = None
    while not stop:
        if not os.path.exists(config):  # the sandbox was removed under us
            _log(f"{config} is gone; stopping")
            return 0
        text = run_once(config)
        if text and text != last:  # a node waiting for its jobs says so once
            _log(text)
        last = text
        deadline = time.monotonic() + every
        while not stop and time.monotonic() < deadline:
            time.sleep(0.1)
    _log("stopped (SIGTERM)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slurm_mig.sandbox.timer",
                                 description="Run `slurm-mig sync --pending` for one node, "
                                             "again and again (the sandbox's node timer).")
    ap.add_argument("--config", required=True, help="the node's slurm-mig config")
    ap.add_argument("--every", type=float, default=PERIOD, help="seconds between runs")
    ap.add_argument("--pid-file", help="write this process's pid here once named")
    args = ap.parse_args(argv)
    return loop(os.path.abspath(args.config), max(args.every, 0.1), args.pid_file)


if __name__ == "__main__":
    sys.exit(main())
