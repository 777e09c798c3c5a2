"""The ``AccountingStorageTRES`` value that makes ``sacct`` count each MIG type.

Slurm records per-type GPU usage (``gres/gpu:3g.40gb=1`` in ``AllocTRES``) only for the
types listed in ``AccountingStorageTRES``, and only for jobs that start after the type was
listed there.  With layouts that change, every type a node may ever carry has to be listed
up front: every profile of every GPU model of the cluster, under each name a driver may
report it by (the catalog's aliases, e.g. ``3g.39gb`` for ``3g.40gb``).

Pure: takes catalog models and the admin's other TRES, returns the value.  No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple

from .catalog import GpuModel
from .errors import InputError

#: The gres name slurm-mig's types live under (gres.conf ``Name=gpu``).
GPU_TRES = "gres/gpu"
KEY = "AccountingStorageTRES"

#: One TRES name as slurm.conf takes it: ``cpu``, ``mem``, ``gres/gpu:1g.10gb``, ``license/x``.
_TRES_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z0-9_.+-]+(:[A-Za-z0-9_.+-]+)?)?")


@dataclass(frozen=True)
class AccountingTres:
    """The TRES list: the admin's own ones first (their order), then ``gres/gpu`` and its
    types in natural order, each once."""

    models: Tuple[str, ...]  #: catalog keys the types came from
    kept: Tuple[str, ...]  #: the admin's other TRES, as given (deduplicated)
    tres: Tuple[str, ...]  #: the whole list

    @property
    def value(self) -> str:
        return ",".join(self.tres)

    @property
    def line(self) -> str:
        return f"{KEY}={self.value}"

    def as_dict(self) -> Dict[str, Any]:
        return {"models": list(self.models), "kept": list(self.kept), "tres": list(self.tres),
                "value": self.value, "line": self.line}


def _natural(text: str) -> Tuple[Any, ...]:
    """``1g.5gb`` before ``1g.10gb``; ``1g.10gb`` before ``1g.10gb+me``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def gpu_types(models: Iterable[GpuModel], aliases: bool = True) -> List[str]:
    """Every gres type name the models' MIG instances may carry, once each, natural order."""
    names: Set[str] = set()
    for m in models:
        for p in m.profiles:
            names.update(p.names() if aliases else (p.name,))
    return sorted(names, key=_natural)


def parse_keep(text: str) -> List[str]:
    """The admin's other TRES: ``cpu,mem,energy`` or a whole ``AccountingStorageTRES=...``
    line (to merge with an existing value); a bad name is refused naming it."""
    text = text.strip()
    if text.lower().startswith(KEY.lower() + "="):
        text = text[len(KEY) + 1:]
    out: List[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not _TRES_RE.fullmatch(item):
            raise InputError(f"--keep: {item!r} is not a TRES name; give names like "
                             f"cpu,mem,energy,gres/gpu:a100 separated by commas")
        if item not in out:
            out.append(item)
    return out


def accounting_tres(models: Sequence[GpuModel], keep: Sequence[str] = (),
                    aliases: bool = True) -> AccountingTres:
    """The ``AccountingStorageTRES`` list for ``models``, keeping the admin's ``keep``."""
    kept = tuple(dict.fromkeys(keep))
    typed = {f"{GPU_TRES}:{t}" for t in gpu_types(models, aliases)}
    typed.update(k for k in kept if k.startswith(GPU_TRES + ":"))
    others = [k for k in kept if k != GPU_TRES and not k.startswith(GPU_TRES + ":")]
    gpu_all = [GPU_TRES] + sorted(typed, key=_natural)
    return AccountingTres(models=tuple(dict.fromkeys(m.key for m in models)), kept=kept,
                          tres=tuple(others + gpu_all))
