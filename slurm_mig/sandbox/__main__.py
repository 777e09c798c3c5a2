"""``python -m slurm_mig.sandbox``: run a private Slurm cluster in the foreground for a demo.

Each node gets one fake GPU (``<root>/dev/nvidia<i>``) cut into the profiles of ``--layout``,
one gres.conf record per instance.  Prints the shell lines that point Slurm commands at the
cluster, then waits; Ctrl-C (or SIGTERM) stops every daemon.  Needs root.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections import Counter
from typing import Dict, List, Optional

from .cluster import SandboxCluster
from .devices import make_device_nodes
from .errors import SandboxError


def demo_layout(dev_root: str, nodes: List[str], profiles: List[str]):
    """(node -> Gres= text, gres.conf text): GPU i for node i, two cap files per instance."""
    caps = range(1000, 1000 + 2 * len(profiles) * len(nodes))
    dev = make_device_nodes(dev_root, range(len(nodes)), caps)
    node_gres: Dict[str, str] = {}
    lines = []
    cap = iter(caps)
    for i, node in enumerate(nodes):
        for p in profiles:
            files = [dev.gpu(i), dev.cap(next(cap)), dev.cap(next(cap))]
            lines.append(f"NodeName={node} Name=gpu Type={p} MultipleFiles={','.join(files)}")
        node_gres[node] = ",".join(f"gpu:{p}:{n}" for p, n in Counter(profiles).items())
    return node_gres, "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slurm_mig.sandbox", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="directory for everything (default: a new /var/tmp/sbx-*)")
    ap.add_argument("--nodes", default="n1,n2", help="node names (default: n1,n2)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs per node (default: 2)")
    ap.add_argument("--layout", default="1g.10gb,1g.10gb,3g.40gb",
                    help="MIG profiles on each node's GPU (default: 1g.10gb,1g.10gb,3g.40gb)")
    ap.add_argument("--prolog", help="a Prolog script for slurm.conf (PrologFlags=Alloc)")
    args = ap.parse_args(argv)
    root = args.root or tempfile.mkdtemp(prefix="sbx-", dir="/var/tmp")
    nodes = [n for n in args.nodes.split(",") if n]
    cluster = SandboxCluster(root, nodes, cpus_per_node=args.cpus)
    try:
        node_gres, gres_text = demo_layout(os.path.join(root, "dev"), nodes,
                                           [p for p in args.layout.split(",") if p])
        extra = {"Prolog": os.path.abspath(args.prolog)} if args.prolog else None
        cluster.write_config(node_gres, gres_text, extra)
        cluster.start()
    except SandboxError as err:
        print(f"slurm-mig sandbox: error: {err}", file=sys.stderr)
        cluster.stop()
        return err.exit_code
    print(f"# sandbox cluster up in {cluster.timings['start']:.1f}s under {root}")
    print(f"# isolation: {cluster.isolation.mode} ({cluster.isolation.reason})")
    print(cluster.export_lines(), end="")
    print("# Ctrl-C stops it", flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
