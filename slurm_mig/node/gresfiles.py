"""This node's Slurm files from its GPUs: the gres.conf records and the node's ``Gres=``.

``slurm-mig gres-conf`` and ``node-conf`` print or write them; ``sync`` and
``sync --pending`` write them after an apply.  The records come from the GPUs (through a
backend) and the driver's ``mig-minors``; the text and the merge are
:mod:`slurm_mig.core.gresconf`'s; the write is atomic, under the file's lock
(:func:`slurm_mig.host.atomic.update_file`).
"""

from __future__ import annotations

from typing import Optional

from ..core.devices import read_mig_minors
from ..core.gresconf import (merge_gres_conf, merge_node_include, node_gres_value, node_records,
                             render_gres_conf, render_node_line)
from ..gpu.backend import GpuBackend
from ..host.atomic import preview_update, update_file
from ..host.config import Config, host_paths
from .inventory import gpu_model


def node_gres_records(config: Config, backend: GpuBackend, node: str, non_mig_type: Optional[str] = None) -> list:
    """This node's gres.conf records, from its GPUs and their complete MIG instances."""
    dev, proc = host_paths(config)
    minors = read_mig_minors(proc)
    gpus = backend.gpus()
    instances, models = {}, {}
    for info in gpus:
        if info.mig_current:
            models[info.index] = gpu_model(backend, info)
            instances[info.index] = backend.instances(info.index)
    return node_records(node, gpus, instances, models, minors, dev, non_mig_type=non_mig_type)


def gres_conf(config: Config, backend: GpuBackend, node: str, *, write: bool = False,
              non_mig_type: Optional[str] = None, dry_run: bool = False) -> dict:
    """The node's gres.conf lines; with ``write``, merged into ``paths.gres_conf`` (with
    ``dry_run`` too: ``changed`` says whether it would be, nothing is written)."""
    records = node_gres_records(config, backend, node, non_mig_type)
    path = config.paths.gres_conf
    result = {"node": node, "path": path, "records": [r.as_dict() for r in records],
              "gres": node_gres_value(records), "text": render_gres_conf(records),
              "written": False, "changed": False, "prev": None}
    if write:
        done = _merge(path, lambda old: merge_gres_conf(old, node, records, source=path), config, dry_run)
        result.update(written=not dry_run, changed=done.changed, prev=done.prev)
    return result


def node_conf(config: Config, backend: GpuBackend, node: str, *, write: bool = False,
              non_mig_type: Optional[str] = None, dry_run: bool = False) -> dict:
    """The node's ``NodeName=... Gres=...`` line; with ``write``, merged into the include
    (with ``dry_run`` too: ``changed`` says whether it would be, nothing is written)."""
    records = node_gres_records(config, backend, node, non_mig_type)
    gres = node_gres_value(records)
    path = config.paths.node_gres_include
    result = {"node": node, "path": path, "gres": gres, "line": render_node_line(node, records),
              "written": False, "changed": False, "prev": None}
    if write:
        done = _merge(path, lambda old: merge_node_include(old, node, gres, source=path), config, dry_run)
        result.update(written=not dry_run, changed=done.changed, prev=done.prev)
    return result


def _merge(path: str, transform, config: Config, dry_run: bool):
    if dry_run:
        return preview_update(path, transform)
    return update_file(path, transform, lock_timeout=config.apply.lock_timeout)
