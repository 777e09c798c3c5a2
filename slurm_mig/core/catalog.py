"""The catalog of MIG-capable GPU models: profiles, ids, slices, placements.

Pure data and lookups, no I/O beyond reading the packaged JSON once.  Profiles are
keyed on their NVML profile id (what ``nvmlDeviceCreateGpuInstance*`` takes), never on
their name: drivers rename profiles (``3g.39gb`` vs ``3g.40gb``), so names are only a
way in, through the canonical name or a known alias.  On a live GPU what NVML reports
wins: :func:`observed_model` builds the effective model from the driver's answers and
:func:`verify` lists where the driver and the catalog differ.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import UnknownModel, UnknownProfile

#: Memory-size classes, as the driver groups GPU-instance ids (swizzle ids).
SIZE_CLASSES = ("FULL", "HALF", "QUARTER", "EIGHTH")


def normalize_profile_name(name: str) -> str:
    """``'MIG 1g.10gb'`` and ``' 1G.10GB '`` both become ``'1g.10gb'``."""
    name = name.strip()
    if name.upper().startswith("MIG "):
        name = name[4:]
    return name.strip().lower()


def _normalize_model_name(name: str) -> str:
    name = name.strip().lower()
    if name.startswith("nvidia "):
        name = name[len("nvidia "):]
    return re.sub(r"[\s_\-]+", "", name)


@dataclass(frozen=True)
class Profile:
    """One GPU-instance profile of one GPU model, as NVML describes it."""

    id: int  #: NVML profile id (``info.id``), what create/list calls take
    name: str  #: canonical name, e.g. ``1g.10gb``
    compute_slices: int
    memory_slices: int
    max_count: int
    placements: Tuple[int, ...]  #: legal placement starts, in placement units
    placement_size: int  #: placement units one instance occupies
    memory_mib: Optional[int] = None
    enum: str = ""  #: NVML_GPU_INSTANCE_PROFILE_<enum> index name, where known
    sm_count: Optional[int] = None
    aliases: Tuple[str, ...] = ()

    def names(self) -> Tuple[str, ...]:
        return (self.name,) + tuple(self.aliases)

    def units(self, start: int) -> range:
        """The placement units an instance of this profile at ``start`` occupies."""
        return range(start, start + self.placement_size)


@dataclass(frozen=True)
class GpuModel:
    """A MIG-capable GPU model and its profiles."""

    key: str  #: short name used on the command line, e.g. ``A100-40GB``
    name: str  #: what ``nvmlDeviceGetName`` returns, e.g. ``NVIDIA A100-SXM4-40GB``
    compute_slices: int
    memory_slices: int
    placement_units: int
    profiles: Tuple[Profile, ...]
    aliases: Tuple[str, ...] = ()
    pci_device_ids: Tuple[str, ...] = ()
    unverified: Tuple[Any, ...] = field(default=(), compare=False)
    sources: Tuple[Any, ...] = field(default=(), compare=False)

    def profile(self, query: Union[int, str]) -> Profile:
        """Look a profile up by NVML id (int) or by name/alias (str)."""
        if isinstance(query, int):
            for p in self.profiles:
                if p.id == query:
                    return p
            raise UnknownProfile(
                f"profile id {query} is not offered by {self.name} "
                f"(offered ids: {', '.join(str(p.id) for p in self.profiles)})"
            )
        wanted = normalize_profile_name(str(query))
        for p in self.profiles:
            if wanted in (n.lower() for n in p.names()):
                return p
        raise UnknownProfile(
            f"profile '{query}' is not offered by {self.name} "
            f"(offered: {', '.join(p.name for p in self.profiles)})"
        )

    def size_class(self, profile: Profile) -> str:
        """The driver's memory-size class of ``profile`` (FULL, HALF, QUARTER, EIGHTH)."""
        fraction = self.memory_slices // max(profile.memory_slices, 1)
        return {1: "FULL", 2: "HALF", 4: "QUARTER", 8: "EIGHTH"}.get(fraction, "EIGHTH")


@dataclass(frozen=True)
class Catalog:
    models: Tuple[GpuModel, ...]

    def model(self, query: str) -> GpuModel:
        """Find a model by key, NVML name, alias or PCI device id (``0x20B010DE``)."""
        q = query.strip()
        if q.lower().startswith("0x"):
            for m in self.models:
                if q.upper().replace("0X", "0x") in m.pci_device_ids:
                    return m
        norm = _normalize_model_name(q)
        for m in self.models:
            if norm in {_normalize_model_name(n) for n in (m.key, m.name) + tuple(m.aliases)}:
                return m
        raise UnknownModel(
            f"unknown GPU model '{query}'; known models: "
            f"{', '.join(m.key for m in self.models)} (see `slurm-mig catalog`)"
        )

    def find(self, query: str) -> Optional[GpuModel]:
        try:
            return self.model(query)
        except UnknownModel:
            return None


def _profile_from_json(d: Mapping[str, Any]) -> Profile:
    return Profile(
        id=int(d["id"]),
        name=d["name"],
        compute_slices=int(d["compute_slices"]),
        memory_slices=int(d["memory_slices"]),
        max_count=int(d["max_count"]),
        placements=tuple(int(s) for s in d["placements"]),
        placement_size=int(d["placement_size"]),
        memory_mib=d.get("memory_mib"),
        enum=d.get("enum", ""),
        sm_count=d.get("sm_count"),
        aliases=tuple(d.get("aliases", ())),
    )


def catalog_from_json(data: Mapping[str, Any]) -> Catalog:
    models = []
    for m in data["models"]:
        models.append(
            GpuModel(
                key=m["key"],
                name=m["name"],
                compute_slices=int(m["compute_slices"]),
                memory_slices=int(m["memory_slices"]),
                placement_units=int(m["placement_units"]),
                profiles=tuple(_profile_from_json(p) for p in m["profiles"]),
                aliases=tuple(m.get("aliases", ())),
                pci_device_ids=tuple(m.get("pci_device_ids", ())),
                unverified=tuple(m.get("unverified", ())),
                sources=tuple(m.get("sources", ())),
            )
        )
    return Catalog(models=tuple(models))


@functools.lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The catalog shipped with the package (``slurm_mig/data/catalog.json``)."""
    # A plain path, not importlib.resources: the hooks load the catalog on every job
    # start and importlib.resources costs more than reading the file.
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                        "catalog.json")
    with open(path, encoding="utf-8") as f:
        return catalog_from_json(json.load(f))


# --------------------------------------------------------------------------- NVML vs catalog


#: NVML_GPU_INSTANCE_PROFILE_* enum indexes, by the name after the prefix.
GI_PROFILE_ENUMS = {
    "1_SLICE": 0x0, "2_SLICE": 0x1, "3_SLICE": 0x2, "4_SLICE": 0x3, "7_SLICE": 0x4, "8_SLICE": 0x5,
    "6_SLICE": 0x6, "1_SLICE_REV1": 0x7, "2_SLICE_REV1": 0x8, "1_SLICE_REV2": 0x9,
    "1_SLICE_GFX": 0xA, "2_SLICE_GFX": 0xB, "4_SLICE_GFX": 0xC, "1_SLICE_NO_ME": 0xD,
    "2_SLICE_NO_ME": 0xE, "1_SLICE_ALL_ME": 0xF, "2_SLICE_ALL_ME": 0x10, "3_SLICE_GFX": 0x11,
}


@dataclass(frozen=True)
class ObservedProfile:
    """A GPU-instance profile as the driver reported it (from profile info + placements)."""

    id: int
    name: str  #: without the ``MIG `` prefix
    compute_slices: int  #: ``info.sliceCount``
    max_count: int  #: ``info.instanceCount``
    memory_mib: int  #: ``info.memorySizeMB``
    placements: Tuple[int, ...]
    placement_size: int
    enum: int = -1  #: the index it was read at


def observed_model(
    gpu_name: str, observed: Sequence[ObservedProfile], base: Optional[GpuModel]
) -> GpuModel:
    """The effective model of a live GPU: the driver's facts, the catalog's only to fill gaps.

    A model the catalog does not know still works: the totals are derived from the
    largest profile the driver offers.
    """
    units = max((o.placements[-1] + o.placement_size for o in observed if o.placements), default=0)
    if base is not None:
        units = base.placement_units or units
        mem_total, compute_total = base.memory_slices, base.compute_slices
    else:
        full = max(observed, key=lambda o: (o.placement_size, o.compute_slices), default=None)
        compute_total = full.compute_slices if full else 0
        mem_total = 8 if units % 8 == 0 else 4
    profiles = []
    for o in observed:
        known = None
        if base is not None:
            known = next((p for p in base.profiles if p.id == o.id), None)
        mem_slices = max(1, o.placement_size * mem_total // units) if units else 1
        aliases: Tuple[str, ...] = ()
        if known is not None and known.name != o.name:
            aliases = tuple(dict.fromkeys((known.name,) + tuple(known.aliases)))
        elif known is not None:
            aliases = known.aliases
        profiles.append(
            Profile(
                id=o.id,
                name=o.name,
                compute_slices=o.compute_slices,
                memory_slices=mem_slices,
                max_count=o.max_count,
                placements=tuple(o.placements),
                placement_size=o.placement_size,
                memory_mib=o.memory_mib,
                enum=known.enum if known else "",
                sm_count=known.sm_count if known else None,
                aliases=aliases,
            )
        )
    if base is not None:
        return replace(base, name=gpu_name, profiles=tuple(profiles))
    return GpuModel(
        key=gpu_name,
        name=gpu_name,
        compute_slices=compute_total,
        memory_slices=mem_total,
        placement_units=units,
        profiles=tuple(profiles),
    )


@dataclass(frozen=True)
class Difference:
    """One disagreement between the driver and the catalog."""

    profile_id: Optional[int]
    field: str
    catalog: object
    nvml: object

    def describe(self) -> str:
        where = f"profile id {self.profile_id}" if self.profile_id is not None else "model"
        return f"{where}: {self.field}: catalog {self.catalog!r}, NVML {self.nvml!r}"


def verify(model: Optional[GpuModel], gpu_name: str,
           observed: Iterable[ObservedProfile]) -> List[Difference]:
    """Every field where the driver's answer differs from the catalog's entry."""
    observed = list(observed)
    if model is None:
        return [Difference(None, "model", None, gpu_name)]
    diffs = []
    seen = set()
    for o in observed:
        seen.add(o.id)
        try:
            p = model.profile(o.id)
        except UnknownProfile:
            diffs.append(Difference(o.id, "profile", None, o.name))
            continue
        checks = [
            ("name", p.name, o.name, True if o.name in p.names() else None),
            ("compute_slices", p.compute_slices, o.compute_slices, None),
            ("max_count", p.max_count, o.max_count, None),
            ("placements", list(p.placements), list(o.placements), None),
            ("placement_size", p.placement_size, o.placement_size, None),
            ("memory_mib", p.memory_mib, o.memory_mib, True if p.memory_mib is None else None),
            ("enum", GI_PROFILE_ENUMS.get(p.enum), o.enum, True if o.enum < 0 else None),
        ]
        for name, want, got, known_ok in checks:
            if not (known_ok or want == got):
                diffs.append(Difference(o.id, name, want, got))
    for p in model.profiles:
        if p.id not in seen:
            diffs.append(Difference(p.id, "profile", p.name, None))
    return diffs
