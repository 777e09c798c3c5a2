"""Slurm's little strings -> plain values.  Pure functions; each raises ValueError on text it
cannot read, and the readers turn that into a :class:`~.model.SlurmOutputError` naming the field.

Forms handled (recorded on 22.05, documented for 23.02+; docs/slurm-json.md):

* request strings (``tres_per_node``, ``tres_per_job``, ``tres_per_task``,
  ``tres_per_socket``): ``gres:gpu:1g.10gb:2`` (22.05), ``gres/gpu:1g.10gb:2`` (23.02+),
  the TRES form ``gres/gpu:1g.10gb=2``, untyped ``gres:gpu:1`` / ``gres/gpu=1``, a bare
  ``gpu:1g.10gb`` (count 1), several items joined by commas; non-GPU items (``cpu=2``,
  ``gres:shard:1``) are skipped;
* node gres: ``gpu:1g.10gb:4(S:0-1),gpu:3g.40gb:1`` and gres used
  ``gpu:1g.10gb:4(IDX:0-3),gpu:3g.40gb:0(IDX:N/A)``;
* array task specs: ``1-4``, ``0-9%2``, ``0,3,5-7``, ``1-10:3``, ``0x2F`` (hex bitmap);
* node states: ``mixed`` + flags, ``["MIXED", "DRAIN"]``, ``MIXED+DRAIN``, ``IDLE*``.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

from ..core.inputs import ascii_digits
from .model import DRAIN, GresRequest, drain_flagged

_PROFILE = re.compile(r"([0-9]+g\.[0-9]+gb(?:\+me)?)$")  # [0-9], not \d: ASCII digits only


def split_top(text: str, sep: str = ",") -> List[str]:
    """Split on ``sep`` outside parentheses and brackets (``IDX:0,2`` and ``n[1,3]`` stay whole)."""
    out: List[str] = []
    cur: List[str] = []
    depth = 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(depth - 1, 0)
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def _count(text: str) -> int:
    text = text.strip()
    if not ascii_digits(text) or len(text) > 9:
        raise ValueError(f"count {text[:40]!r} is not a whole number")
    return int(text)


def _gpu_item(item: str) -> Optional[Tuple[Optional[str], int, str]]:
    """``gres/gpu:1g.10gb=2`` -> (type, count, detail); None for a non-GPU item."""
    detail = ""
    m = re.search(r"\((.*)\)\s*$", item)
    if m:
        detail, item = m.group(1), item[:m.start()]
    for prefix in ("gres/", "gres:"):
        if item.startswith(prefix):
            item = item[len(prefix):]
    name = re.split(r"[:=]", item, maxsplit=1)[0]
    if name != "gpu":
        return None
    rest = item[len(name):]
    if not rest:
        return None, 1, detail
    if "=" in rest:
        left, _, count = rest.rpartition("=")
        gtype = left.lstrip(":") or None
        return gtype, _count(count), detail
    parts = rest.lstrip(":").split(":")
    if len(parts) == 1:  # gpu:2, or gpu:1g.10gb meaning one
        return (None, _count(parts[0]), detail) if parts[0].isdigit() else (parts[0], 1, detail)
    if len(parts) == 2 and parts[0]:
        return parts[0], _count(parts[1]), detail
    raise ValueError(f"{item!r} is not gpu[:type][:count]")


def parse_tres_per(text: Optional[str], per: str) -> Tuple[GresRequest, ...]:
    """A job's ``tres_per_<per>`` string -> its GPU requests (same type twice is summed)."""
    if not text or text in ("N/A", "(null)"):
        return ()
    totals: Dict[Optional[str], int] = {}
    for item in split_top(text):
        got = _gpu_item(item)
        if got is None:
            continue
        gtype, count, _ = got
        totals[gtype] = totals.get(gtype, 0) + count
    return tuple(GresRequest(t, n, per) for t, n in totals.items() if n > 0)


def parse_gres_counts(text: Optional[str]) -> Dict[str, int]:
    """A node's ``gres`` string -> GPU type -> count; untyped GPUs count under ""."""
    out: Dict[str, int] = {}
    for gtype, count, _ in _gres_items(text):
        out[gtype] = out.get(gtype, 0) + count
    return out


def parse_gres_used(text: Optional[str]) -> Tuple[Dict[str, int], Dict[str, Tuple[int, ...]]]:
    """A node's ``gres_used`` -> (type -> count in use, type -> record indices in use).

    Types with nothing in use are left out of both."""
    used: Dict[str, int] = {}
    idx: Dict[str, Tuple[int, ...]] = {}
    for gtype, count, detail in _gres_items(text):
        if count <= 0:
            continue
        used[gtype] = used.get(gtype, 0) + count
        m = re.search(r"IDX:([^)]*)", detail)
        if m and m.group(1) not in ("", "N/A"):
            idx[gtype] = tuple(sorted(set(idx.get(gtype, ())) | set(expand_ranges(m.group(1)))))
    return used, idx


def _gres_items(text: Optional[str]) -> Iterable[Tuple[str, int, str]]:
    if not text or text in ("N/A", "(null)"):
        return []
    items = []
    for item in split_top(text):
        got = _gpu_item(item)
        if got is not None:
            gtype, count, detail = got
            items.append((gtype or "", count, detail))
    return items


def expand_ranges(text: str) -> List[int]:
    """``0-3,5,7-11:2`` -> the integers it names (``:N`` is a step)."""
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        step = 1
        if ":" in part:
            part, _, s = part.partition(":")
            step = _count(s) or 1
        if "-" in part:
            lo, _, hi = part.partition("-")
            a, b = _count(lo), _count(hi)
            if b < a:
                raise ValueError(f"range {part!r} runs backwards")
            out.extend(range(a, b + 1, step))
        else:
            out.append(_count(part))
    return out


def array_task_count(spec: str) -> int:
    """How many array tasks a pending record's task spec names: ``0-9%2`` -> 10,
    ``0,3,5-7`` -> 5, ``0x2F`` (hex bitmap) -> 5.  A spec Slurm cut short with ``...``
    counts what is shown (a lower bound)."""
    spec = spec.strip().split("%", 1)[0]
    if spec.lower().startswith("0x"):
        return bin(int(spec, 16)).count("1")
    spec = spec.replace("...", "").strip(", ")
    return len(set(expand_ranges(spec)))


def array_throttle(spec: str) -> Optional[int]:
    """The ``%N`` of ``0-9%2`` (None without one)."""
    _, pct, limit = spec.partition("%")
    return _count(limit) if pct and _count(limit) > 0 else None


BASE_STATES = ("idle", "mixed", "allocated", "down", "unknown", "future", "error")
_ALIASES = {"alloc": "allocated", "mix": "mixed", "unk": "unknown", "comp": "completing"}


def normalize_state(words: Iterable[str]) -> Tuple[str, Tuple[str, ...]]:
    """Slurm's state words (base first, then flags, any case, ``*`` = not responding) ->
    (idle|mixed|allocated|drained|draining|down|unknown|future|error, sorted flags)."""
    base = None
    flags = set()
    for word in words:
        word = word.strip()
        if not word:
            continue
        if word.endswith("*"):
            flags.add("NOT_RESPONDING")
            word = word.rstrip("*")
        low = _ALIASES.get(word.lower(), word.lower())
        if base is None and low in BASE_STATES:
            base = low
        elif low == "completing":
            flags.add("COMPLETING")
        elif low in ("drain", "drained", "draining"):
            flags.add(DRAIN)
        elif low in BASE_STATES:  # a second base word (never seen): keep it visible
            flags.add(word.upper())
        else:
            flags.add(word.upper())
    base = base or "unknown"
    state = base
    if base != "down" and drain_flagged(flags):
        busy = base in ("allocated", "mixed") or "COMPLETING" in flags
        state = "draining" if busy else "drained"
    return state, tuple(sorted(flags))


def expand_hostlist(text: str) -> List[str]:
    """``n[1-3,7],gpu01`` -> ["n1", "n2", "n3", "n7", "gpu01"] (one bracket per name)."""
    out: List[str] = []
    for part in split_top(text):
        m = re.fullmatch(r"([^\[\]]*)\[([^\]]+)\]([^\[\]]*)", part)
        if not m:
            out.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(f"{prefix}{i:0{width}d}{suffix}")
    return out


def mig_profile(gres_type: Optional[str]) -> Optional[str]:
    """The MIG profile in a gres type: ``1g.10gb`` as is, and AutoDetect=nvml's
    ``nvidia_a100-sxm4-80gb_1g.10gb`` -> ``1g.10gb``; None when there is none."""
    if not gres_type:
        return None
    m = _PROFILE.search(gres_type)
    return m.group(1) if m else None
