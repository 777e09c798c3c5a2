"""The simulated cluster: nodes, their GPUs and layouts, from ``--cluster FILE`` (TOML).  Pure:
text in, frozen values out.

::

    [[node]]
    name = "gpu[01-04]"              # a Slurm hostlist
    gpus = ["A100-80GB:8"]           # catalog models; ":8" = eight of them
    layout = "1g.10gb:7"             # every GPU; or a list, one per GPU
    partitions = ["batch"]           # default: none (jobs without a partition only)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from ..core.catalog import Catalog, GpuModel
from ..core.errors import InputError, SlurmMigError
from ..core.layout import Layout, parse_layout
from ..slurm.gresspec import expand_hostlist

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.9/3.10
    import tomli as tomllib

MAX_NODES = 100_000
MAX_GPUS_PER_NODE = 64


class ClusterError(InputError):
    """A cluster file that cannot be read (exit 2): the key path, what is wrong and the fix."""


@dataclass(frozen=True)
class SimNode:
    name: str
    partitions: Tuple[str, ...]
    gpus: Tuple[Tuple[str, Layout], ...]  #: (catalog model key, layout) per GPU index


@dataclass(frozen=True)
class Cluster:
    nodes: Tuple[SimNode, ...]

    def models(self) -> Tuple[str, ...]:
        return tuple(sorted({m for n in self.nodes for m, _ in n.gpus}))

    def with_layouts(self, per_model: Mapping[str, Layout]) -> "Cluster":
        """Every GPU of a model in ``per_model`` given that layout (best-static)."""
        return Cluster(tuple(SimNode(n.name, n.partitions,
                                     tuple((m, per_model.get(m, lay)) for m, lay in n.gpus))
                             for n in self.nodes))


def parse_cluster(text: str, source: str, catalog: Catalog) -> Cluster:
    """The TOML cluster file (module doc) -> a :class:`Cluster`."""
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as err:
        raise ClusterError(f"{source}: not valid TOML: {' '.join(str(err).split())}; see "
                           f"docs/simulate.md for the [[node]] form") from err
    extra = sorted(set(doc) - {"node"})
    if extra:
        raise ClusterError(f"{source}: unknown key(s) {', '.join(extra)}; only [[node]] tables")
    entries = doc.get("node")
    if not isinstance(entries, list) or not entries:
        raise ClusterError(f"{source}: no [[node]] table; add one with name, gpus and layout")
    nodes: List[SimNode] = []
    seen: Dict[str, str] = {}
    for i, e in enumerate(entries):
        where = f"{source}: node[{i}]"
        nodes.extend(_entry(e, where, catalog, seen))
        if len(nodes) > MAX_NODES:
            raise ClusterError(f"{where}: more than {MAX_NODES} nodes")
    return Cluster(tuple(nodes))


def _entry(e: Any, where: str, catalog: Catalog, seen: Dict[str, str]) -> List[SimNode]:
    if not isinstance(e, dict):
        raise ClusterError(f"{where}: expected a table")
    extra = sorted(set(e) - {"name", "gpus", "layout", "partitions"})
    if extra:
        raise ClusterError(f"{where}: unknown key(s) {', '.join(extra)} (known: name, gpus, "
                           f"layout, partitions)")
    name = e.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ClusterError(f"{where}.name: a Slurm hostlist like \"gpu[01-04]\" is needed")
    try:
        names = expand_hostlist(name)
    except ValueError as err:
        raise ClusterError(f"{where}.name: {name[:60]!r} is not a hostlist like gpu[01-04]") from err
    models = _gpus(e.get("gpus"), f"{where}.gpus", catalog)
    layouts = _layouts(e.get("layout", ""), f"{where}.layout", models)
    parts = e.get("partitions", [])
    if isinstance(parts, str):
        parts = [parts]
    if not isinstance(parts, list) or not all(isinstance(p, str) and p for p in parts):
        raise ClusterError(f"{where}.partitions: a list of partition names, like [\"batch\"]")
    out = []
    for n in names:
        if n in seen:
            raise ClusterError(f"{where}.name: node {n} is already in {seen[n]}; name each node once")
        seen[n] = where
        out.append(SimNode(n, tuple(sorted(set(parts))),
                           tuple((m.key, lay) for m, lay in zip(models, layouts))))
    return out


def _gpus(value: Any, where: str, catalog: Catalog) -> List[GpuModel]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise ClusterError(f"{where}: a list of catalog models like [\"A100-80GB:8\"]")
    out: List[GpuModel] = []
    for item in items:
        model_name, _, count = item.partition(":")
        n = 1
        if count:
            if not count.isascii() or not count.isdigit() or not 1 <= int(count) <= MAX_GPUS_PER_NODE:
                raise ClusterError(f"{where}: {item!r}: the count after ':' must be 1 to "
                                   f"{MAX_GPUS_PER_NODE}")
            n = int(count)
        try:
            model = catalog.model(model_name)
        except InputError as err:
            raise ClusterError(f"{where}: {err}") from err
        out.extend([model] * n)
    if len(out) > MAX_GPUS_PER_NODE:
        raise ClusterError(f"{where}: more than {MAX_GPUS_PER_NODE} GPUs on one node")
    return out


def _layouts(value: Any, where: str, models: Sequence[GpuModel]) -> List[Layout]:
    texts = [value] * len(models) if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(x, str) for x in texts):
        raise ClusterError(f"{where}: a layout like \"1g.10gb:7\" (every GPU) or a list, one per GPU")
    if len(texts) != len(models):
        raise ClusterError(f"{where}: {len(texts)} layouts for {len(models)} GPUs; give one, "
                           f"or one per GPU")
    out = []
    for gi, (text, model) in enumerate(zip(texts, models)):
        try:
            out.append(parse_layout(text, model))
        except InputError as err:
            raise ClusterError(f"{where}: gpu {gi}: {err}") from err
    return out


def cluster_from_sinfo(text: str, source: str, catalog: Catalog) -> Cluster:
    """A ``sinfo -N --json`` snapshot of a cluster slurm-mig runs on -> a :class:`Cluster`:
    partitions from Slurm, each GPU's model and layout from what the node published in its
    Extra field (``have``, :mod:`slurm_mig.change.channel`).  Nodes with no GPU gres are left
    out; a GPU node with nothing published is an error naming it and the fix."""
    from ..change.channel import ChannelError, parse_channel
    from ..slurm.jsonread import read_nodes

    try:
        infos = read_nodes(text, f"{source} (sinfo -N --json)")
    except SlurmMigError as err:  # bad JSON, an unknown shape, no node: not usable
        raise ClusterError(f"{source}: not a usable sinfo -N --json snapshot: "
                           f"{' '.join(str(err).split())[:200]}") from err
    nodes: List[SimNode] = []
    for name, info in sorted(infos.items()):
        if not any(n for n in info.gres.values()):
            continue
        try:
            ch = parse_channel(info.extra, name)
        except ChannelError as err:
            raise ClusterError(f"{source}: {err}") from err
        if ch is None or not ch.have:
            raise ClusterError(f"{source}: node {name}: no layout published in its Extra field; "
                               f"run `slurm-mig sync --pending` on it, or describe the cluster "
                               f"in a TOML file (docs/simulate.md)")
        gpus = []
        for index, key, layout_text in ch.have:
            try:
                model = catalog.model(key)
                gpus.append((model.key, parse_layout(layout_text, model)))
            except InputError as err:
                raise ClusterError(f"{source}: node {name}: gpu {index}: {err}") from err
        nodes.append(SimNode(name, tuple(sorted(info.partitions)), tuple(gpus)))
    if not nodes:
        raise ClusterError(f"{source}: no node with GPU gres in the snapshot")
    return Cluster(tuple(nodes))


def read_cluster(text: str, source: str, catalog: Catalog) -> Cluster:
    """The TOML form, or a ``sinfo -N --json`` snapshot (text starting with ``{``)."""
    if text.lstrip().startswith("{"):
        return cluster_from_sinfo(text, source, catalog)
    return parse_cluster(text, source, catalog)
