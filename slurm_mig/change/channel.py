"""The channel between ``rebalance`` (controller) and ``sync --pending`` (nodes): the node's
Slurm ``Extra`` field.

Why Extra: slurmctld is the one thing both sides already reach (a controller-side file
would need a shared filesystem the nodes may not have); ``scontrol update nodename=N
extra=...`` works on 22.05 and ``sinfo --json`` returns it (docs/slurm-json.md), so the
controller reads every node's channel in the same ``sinfo`` call that gives states and
gres.  slurm-mig owns the field: a node whose Extra holds anything else is left alone.

The text is one token, no blanks, no ``=`` (``scontrol show node -o`` ends a value at the
next ``word=``) and no commas::

    slurm-mig;have:0/A100-40GB/1g.5gb@0+1g.5gb@1|1/A100-40GB/3g.20gb@0;want:0/3g.20gb@0+3g.20gb@4;cycle:7

``have`` is published by the node (``sync --pending``, from its timer): every GPU in MIG
mode, its catalog model and its canonical layout; the controller cannot see NVML.
``want`` (GPU index -> canonical layout) and ``cycle`` are written by rebalance and cleared
by the node once applied.  ``applied:7`` is then set by the node: it applied cycle 7's want
and wrote its gres.conf, and the controller still has to write its ``Gres=``, reconfigure
Slurm and resume it (rebalance's finish step, which drops the marker).  The marker matters
when the counts per type did not change (only placements did): ``have`` then agrees with
Slurm, but slurmd must still re-read gres.conf.  Pure parsing here, and what a published
``have`` means in instances per type (:func:`have_counts`, :func:`have_gres`: both sides ask);
:class:`ScontrolExtra` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Protocol, Tuple

from ..core.catalog import Catalog
from ..core.errors import InputError, SlurmError
from ..core.gresconf import GresRecord, node_gres_value
from ..core.inputs import MAX_GPU_INDEX, from_text
from ..core.layout import parse_layout
from ..slurm.reader import run_command
from ..slurm.scontrol import parse_pairs
from .reasons import TAG


class ExtraChannel(Protocol):
    """A node's Extra field, read and written whole: :class:`ScontrolExtra` (scontrol) or
    :class:`MemoryExtra` (tests, dry runs)."""

    def read(self, node: str) -> str:
        """The field's text ("" when empty)."""

    def write(self, node: str, text: str) -> None:
        """Replace the field's text."""


class ChannelError(InputError):
    """A node's Extra field is not slurm-mig's, or is malformed."""


@dataclass(frozen=True)
class Channel:
    """What one node's Extra says."""

    have: Tuple[Tuple[int, str, str], ...] = ()  #: (gpu index, model key, canonical layout)
    want: Tuple[Tuple[int, str], ...] = ()  #: (gpu index, canonical layout)
    cycle: Optional[int] = None  #: the rebalance cycle that set ``want``
    applied: Optional[int] = None  #: the cycle whose want the node applied; Slurm not told yet

    def with_want(self, want: Mapping[int, str], cycle: int) -> "Channel":
        """A new want (rebalance's record step); an older applied marker is kept: that change
        still needs the controller's finish step."""
        return Channel(self.have, tuple(sorted(want.items())), cycle, self.applied)

    def published(self, have: Tuple[Tuple[int, str, str], ...]) -> "Channel":
        """The node's current layout, everything else kept."""
        return Channel(tuple(sorted(have)), self.want, self.cycle, self.applied)

    def applied_as(self, have: Tuple[Tuple[int, str, str], ...]) -> "Channel":
        """The node applied the want (``sync --pending``): new ``have``, want cleared, marker set."""
        return Channel(tuple(sorted(have)), (), None, self.cycle if self.cycle is not None else 0)

    def finished(self) -> "Channel":
        """Slurm reconfigured and the node registered (rebalance's finish step): marker dropped."""
        return Channel(self.have, self.want, self.cycle, None)


def _layout_out(text: str) -> str:
    return text.replace(",", "+")


def _layout_in(text: str) -> str:
    return text.replace("+", ",")


def format_channel(ch: Channel) -> str:
    parts = [TAG]
    if ch.have:
        parts.append("have:" + "|".join(f"{g}/{m}/{_layout_out(l)}" for g, m, l in ch.have))
    if ch.want:
        parts.append("want:" + "|".join(f"{g}/{_layout_out(l)}" for g, l in ch.want))
        if ch.cycle is not None:
            parts.append(f"cycle:{ch.cycle}")
    if ch.applied is not None:
        parts.append(f"applied:{ch.applied}")
    text = ";".join(parts)
    if any(c in text for c in " =,\t\n"):
        raise ChannelError(f"channel text {text!r} would hold a blank, '=' or ','; report this")
    return text


MAX_CYCLE = 10 ** 12  #: rebalance cycle numbers (one every few minutes: never reached)


def _gpu(text: str) -> int:
    return from_text(text, 0, MAX_GPU_INDEX, kind="a GPU index")


def parse_channel(text: str, node: str = "?") -> Optional[Channel]:
    """``None`` for an empty field; :class:`ChannelError` for one that is not ours."""
    text = (text or "").strip()
    if text in ("", "(null)"):
        return None
    parts = text.split(";")
    if parts[0] != TAG:
        raise ChannelError(f"node {node}: its Extra field holds {text[:60]!r}, not slurm-mig's; "
                           f"slurm-mig uses Extra to talk to the node: clear it with "
                           f"`scontrol update nodename={node} extra=` or leave the node out of "
                           f"[rebalance] nodes")
    have, want, cycle, applied = [], [], None, None
    try:
        for part in parts[1:]:
            key, _, value = part.partition(":")
            if key == "have":
                for item in value.split("|"):
                    g, m, l = item.split("/", 2)
                    have.append((_gpu(g), m, _layout_in(l)))
            elif key == "want":
                for item in value.split("|"):
                    g, l = item.split("/", 1)
                    want.append((_gpu(g), _layout_in(l)))
            elif key == "cycle":
                cycle = from_text(value, 0, MAX_CYCLE, kind="a cycle number")
            elif key == "applied":
                applied = from_text(value, 0, MAX_CYCLE, kind="a cycle number")
            else:
                raise ValueError(f"unknown part {key!r}")
    except ValueError as err:
        raise ChannelError(f"node {node}: cannot read its Extra field {text!r}: {err}; clear it "
                           f"with `scontrol update nodename={node} extra=` and run "
                           f"`slurm-mig sync --pending` on the node") from err
    return Channel(tuple(sorted(have)), tuple(sorted(want)), cycle, applied)


def have_counts(ch: Channel, catalog: Catalog) -> Dict[str, int]:
    """Instances per Slurm type in the node's published layout (InputError if unreadable)."""
    counts: Dict[str, int] = {}
    for _index, key, text in ch.have:
        for inst in parse_layout(text, catalog.model(key)):
            counts[inst.name] = counts.get(inst.name, 0) + 1
    return counts


def have_gres(node: str, ch: Channel, catalog: Catalog) -> str:
    """The node's ``Gres=`` value for its published layout, written as the node's own
    ``node-conf`` writes it (types sorted by name), so both files agree record by record."""
    records: List[GresRecord] = []
    for index, key, text in ch.have:
        records += [GresRecord(node, index, None, inst.name, ())
                    for inst in parse_layout(text, catalog.model(key))]
    return node_gres_value(records)


class ScontrolExtra:
    """Read and write a node's Extra with ``scontrol`` (argument lists, no shell)."""

    def __init__(self, scontrol: str = "scontrol", env: Optional[Mapping[str, str]] = None,
                 timeout: float = 60.0):
        self.scontrol = scontrol
        self.env = dict(env) if env is not None else None
        self.timeout = timeout

    def read(self, node: str) -> str:
        out = run_command([self.scontrol, "show", "node", "-o", node], f"read node {node}",
                          self.env, self.timeout)
        for line in out.splitlines():
            pairs = parse_pairs(line)
            if pairs.get("NodeName") == node:
                return pairs.get("Extra", "")
        raise SlurmError(f"node {node} is not known to slurmctld (`scontrol show node {node}`)")

    def write(self, node: str, text: str) -> None:
        run_command([self.scontrol, "update", f"nodename={node}", f"extra={text}"],
                    f"set the Extra field of {node}", self.env, self.timeout)


@dataclass
class MemoryExtra:
    """An in-memory channel, for tests and dry runs."""

    fields: Dict[str, str] = field(default_factory=dict)
    writes: List[Tuple[str, str]] = field(default_factory=list)

    def read(self, node: str) -> str:
        return self.fields.get(node, "")

    def write(self, node: str, text: str) -> None:
        self.writes.append((node, text))
        self.fields[node] = text

