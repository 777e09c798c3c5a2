"""GPU layouts: which MIG instances a GPU carries, and where.

A layout is a set of GPU instances, each a profile at a placement start.  Pure code:
parsing, validation against a :class:`~slurm_mig.core.catalog.GpuModel`, enumeration of
every valid layout, maximality, and resolving a count form (``1g.10gb:2,3g.40gb:1``)
to placements.

Text forms:
  canonical  ``3g.40gb@0,2g.20gb@4,1g.10gb@6``  (ordered by start)
  counts     ``1g.10gb:2,3g.40gb:1``            (placed deterministically)
  empty      ``empty``                          (MIG on, no instances)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from .catalog import GpuModel, Profile
from .errors import LayoutError, UnknownProfile
from .inputs import NumberError, from_text, shown

#: Highest count (``P:N``) and placement start (``P@S``) read from layout text: well above
#: any GPU's (7 instances, starts 0-7); the layout check then says what fits.
MAX_COUNT = 64
MAX_START = 64

EMPTY_WORDS = ("empty", "none")


@dataclass(frozen=True)
class Instance:
    """One GPU instance: a profile at a placement start.  Equal on (profile id, start)."""

    profile_id: int
    start: int
    name: str = field(compare=False)
    size: int = field(compare=False)
    compute_slices: int = field(compare=False, default=0)

    @classmethod
    def of(cls, profile: Profile, start: int) -> "Instance":
        return cls(profile.id, start, profile.name, profile.placement_size, profile.compute_slices)

    @property
    def end(self) -> int:
        return self.start + self.size

    def overlaps(self, other: "Instance") -> bool:
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"{self.name}@{self.start}"


@dataclass(frozen=True)
class Layout:
    """An ordered, immutable set of instances (ordered by start)."""

    instances: Tuple[Instance, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "instances", tuple(sorted(self.instances, key=lambda i: (i.start, i.profile_id)))
        )

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)

    def __str__(self) -> str:
        return format_layout(self)

    def counts(self) -> Dict[str, int]:
        """Instances per profile name, e.g. ``{'1g.10gb': 2}``."""
        out: Dict[str, int] = {}
        for i in self.instances:
            out[i.name] = out.get(i.name, 0) + 1
        return out

    def keys(self) -> FrozenSet[Tuple[int, int]]:
        return frozenset((i.profile_id, i.start) for i in self.instances)


def format_layout(layout: Layout) -> str:
    """Canonical text: ``PROFILE@START`` joined by commas, by start; ``empty`` if none."""
    if not layout.instances:
        return "empty"
    return ",".join(str(i) for i in layout.instances)


def format_counts(layout: Layout) -> str:
    counts = layout.counts()
    return ",".join(f"{name}:{n}" for name, n in sorted(counts.items())) or "empty"


# ----------------------------------------------------------------------------- validity


def check_layout(model: GpuModel, instances: Iterable[Instance]) -> Layout:
    """Validate instances on ``model``; raise :class:`LayoutError` naming the first problem."""
    layout = Layout(tuple(instances))
    counts: Dict[int, int] = {}
    for inst in layout:
        try:
            profile = model.profile(inst.profile_id)
        except UnknownProfile as err:
            raise LayoutError(str(err)) from err
        if inst.start not in profile.placements:
            raise LayoutError(
                f"{profile.name}@{inst.start}: {inst.start} is not a placement of {profile.name} "
                f"on {model.name} (placements: {', '.join(map(str, profile.placements))})"
            )
        counts[profile.id] = counts.get(profile.id, 0) + 1
        if counts[profile.id] > profile.max_count:
            raise LayoutError(
                f"{profile.name}: {counts[profile.id]} instances but {model.name} allows at most "
                f"{profile.max_count}"
            )
    media = [i for i in layout if is_media_extension(model.profile(i.profile_id))]
    if len(media) > 1:
        raise LayoutError(
            f"{media[0]} and {media[1]} both take the GPU's media engines; "
            f"keep at most one +me instance per GPU"
        )
    ordered = layout.instances
    for a, b in zip(ordered, ordered[1:]):
        if a.overlaps(b):
            raise LayoutError(
                f"{a} and {b} overlap (units {a.start}-{a.end - 1} and {b.start}-{b.end - 1}); "
                f"pick placements that do not share units (`slurm-mig layouts {model.key}`)"
            )
    compute = sum(model.profile(i.profile_id).compute_slices for i in ordered)
    if compute > model.compute_slices:
        raise LayoutError(
            f"layout needs {compute} compute slices but {model.name} has {model.compute_slices}"
        )
    return layout


def is_valid(model: GpuModel, instances: Iterable[Instance]) -> bool:
    try:
        check_layout(model, instances)
    except LayoutError:
        return False
    return True


# ----------------------------------------------------------------------------- parsing


def parse_layout(text: str, model: GpuModel, current: Optional[Layout] = None,
                 busy: Iterable[Instance] = ()) -> Layout:
    """Parse either text form and validate it on ``model``.

    ``current`` (and the ``busy`` part of it) only steer how a count form is placed:
    the instances the GPU already has are kept where the counts allow, busy ones first.
    An empty string is refused: a layout with no instances is written ``empty``, so an
    unset shell variable cannot wipe a GPU.
    """
    raw = (text or "").strip()
    if not raw:
        raise LayoutError("empty layout text; write 'empty' to remove every instance, "
                          "or e.g. 3g.40gb@0,1g.10gb@6 or 1g.10gb:2,3g.40gb:1")
    if raw.lower() in EMPTY_WORDS:
        return Layout()
    items = [p.strip() for p in raw.split(",")]
    if any(not p for p in items):
        raise LayoutError(f"malformed layout '{text}': empty item; write e.g. 3g.40gb@0,1g.10gb@6")
    placed = [p for p in items if "@" in p]
    counted = [p for p in items if ":" in p and "@" not in p]
    if placed and len(placed) != len(items):
        raise LayoutError(
            f"malformed layout '{text}': mixes PROFILE@START and PROFILE:COUNT; use one form"
        )
    if placed:
        instances = []
        for item in items:
            name, _, start = item.partition("@")
            profile = _profile(model, name, text)
            instances.append(Instance.of(profile, _int(start, item, "placement start", MAX_START)))
        return check_layout(model, instances)
    if len(counted) != len(items):
        bad = next(p for p in items if ":" not in p)
        raise LayoutError(
            f"malformed layout item '{bad}': write PROFILE@START (3g.40gb@0) or PROFILE:COUNT (1g.10gb:2)"
        )
    counts: Dict[int, int] = {}
    for item in items:
        name, _, n = item.partition(":")
        profile = _profile(model, name, text)
        counts[profile.id] = counts.get(profile.id, 0) + _int(n, item, "count", MAX_COUNT)
    return resolve_counts(model, counts, current=current, busy=busy)


def _profile(model: GpuModel, name: str, text: str) -> Profile:
    try:
        return model.profile(name.strip())
    except UnknownProfile as err:
        raise LayoutError(f"in layout '{text}': {err}") from err


def _int(value: str, item: str, what: str, hi: int) -> int:
    """A count or start: ASCII digits, 0 to ``hi`` (:mod:`slurm_mig.core.inputs`)."""
    try:
        return from_text(value.strip(), 0, hi)
    except NumberError as err:
        example = "3g.40gb@0" if what == "placement start" else "1g.10gb:2"
        raise LayoutError(f"malformed layout item {shown(item)}: {what} {shown(value.strip())} "
                          f"is {err}; write e.g. {example}") from err


# ----------------------------------------------------------------------------- enumeration


def _candidates(model: GpuModel, include_me: bool) -> List[Tuple[Profile, int]]:
    out = []
    for p in model.profiles:
        if not include_me and is_media_extension(p):
            continue
        for s in p.placements:
            out.append((p, s))
    return out


def is_media_extension(profile: Profile) -> bool:
    """``+me``/``+me.all`` profiles take all of the GPU's media engines: one such instance per GPU.

    (``-me`` profiles, with no media engines, are ordinary.)
    """
    return "+me" in profile.name


@functools.lru_cache(maxsize=64)
def enumerate_layouts(model: GpuModel, include_me: bool = True) -> Tuple[Layout, ...]:
    """Every valid layout of ``model`` (the empty one included), in canonical order.

    Depth-first over placement units from the left: at each unit either leave it
    unused or start one instance there.  Each layout is produced exactly once since
    instances are chosen in order of their start.
    """
    by_start: Dict[int, List[Profile]] = {}
    for p, s in _candidates(model, include_me):
        by_start.setdefault(s, []).append(p)
    out: List[Layout] = []

    def walk(unit: int, chosen: List[Instance], counts: Dict[int, int], compute: int,
             media: bool) -> None:
        if unit >= model.placement_units:
            out.append(Layout(tuple(chosen)))
            return
        walk(unit + 1, chosen, counts, compute, media)
        for p in by_start.get(unit, ()):
            if counts.get(p.id, 0) >= p.max_count or compute + p.compute_slices > model.compute_slices:
                continue
            me = is_media_extension(p)
            if me and media:
                continue
            counts[p.id] = counts.get(p.id, 0) + 1
            chosen.append(Instance.of(p, unit))
            walk(unit + p.placement_size, chosen, counts, compute + p.compute_slices, media or me)
            chosen.pop()
            counts[p.id] -= 1

    walk(0, [], {}, 0, False)
    return tuple(sorted(out, key=format_layout))


def addable(model: GpuModel, layout: Layout, include_me: bool = True) -> List[Instance]:
    """Every instance that could be added to ``layout`` keeping it valid."""
    out = []
    base = list(layout.instances)
    for p, s in _candidates(model, include_me):
        inst = Instance.of(p, s)
        if inst in base:
            continue
        if is_valid(model, base + [inst]):
            out.append(inst)
    return out


def is_maximal(model: GpuModel, layout: Layout, include_me: bool = True) -> bool:
    """True when no instance can be added to ``layout``."""
    return not addable(model, layout, include_me)


def maximal_layouts(model: GpuModel, include_me: bool = True) -> Tuple[Layout, ...]:
    return tuple(l for l in enumerate_layouts(model, include_me) if is_maximal(model, l, include_me))


# ----------------------------------------------------------------------------- count form


def room_score(model: GpuModel, layout: Layout) -> Tuple[int, ...]:
    """How much room ``layout`` leaves: addable placements per profile, biggest profile first.

    Comparing these tuples prefers the layout that still admits the largest profiles,
    then the most placements of them: small instances are packed away from the space
    big ones need (the driver does the same when no placement is given).
    """
    free = addable(model, layout, include_me=False)
    per: Dict[int, int] = {}
    for inst in free:
        per[inst.profile_id] = per.get(inst.profile_id, 0) + 1
    order = sorted(
        (p for p in model.profiles if not is_media_extension(p)),
        key=lambda p: (-p.placement_size, -p.compute_slices, p.id),
    )
    return tuple(per.get(p.id, 0) for p in order)


def resolve_counts(model: GpuModel, counts: Mapping[int, int], current: Optional[Layout] = None,
                   busy: Iterable[Instance] = ()) -> Layout:
    """Place ``{profile id: count}`` on ``model``, leaving the most room for later instances.

    Deterministic: among all valid layouts with exactly these counts, the one that keeps
    the most busy instances of ``current``, then the most of its other instances (so a
    GPU that already has the counts is left alone), then has the best
    :func:`room_score`; ties broken by canonical text.
    """
    kept = current.keys() if current is not None else frozenset()
    busy_keys = frozenset((i.profile_id, i.start) for i in busy)
    wanted = {pid: n for pid, n in counts.items() if n}
    if not wanted:
        return Layout()
    include_me = any(is_media_extension(model.profile(pid)) for pid in wanted)
    best: Optional[Layout] = None
    best_key = None
    for layout in enumerate_layouts(model, include_me):
        have: Dict[int, int] = {}
        for i in layout:
            have[i.profile_id] = have.get(i.profile_id, 0) + 1
        if have != wanted:
            continue
        keys = layout.keys()
        key = (-len(keys & busy_keys), -len(keys & kept),
               tuple(-x for x in room_score(model, layout)), format_layout(layout))
        if best_key is None or key < best_key:
            best, best_key = layout, key
    if best is None:
        text = ",".join(f"{model.profile(pid).name}:{n}" for pid, n in sorted(wanted.items()))
        raise LayoutError(
            f"{text} does not fit on one {model.name}; see `slurm-mig layouts {model.key} --maximal`"
        )
    return best


def layout_from(model: GpuModel, pairs: Sequence[Tuple[int, int]]) -> Layout:
    """Build a validated layout from ``(profile id, start)`` pairs (e.g. read from a GPU)."""
    return check_layout(model, [Instance.of(model.profile(pid), start) for pid, start in pairs])
