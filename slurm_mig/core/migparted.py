"""NVIDIA mig-parted's ``config.yaml``, in and out: pure code (docs/mig-parted.md).

mig-parted (github.com/NVIDIA/mig-parted, ``api/spec/v1``) names MIG configurations::

    version: v1
    mig-configs:
      all-balanced:
        - device-filter: ["0x20B210DE"]     # optional: PCI device ids, a string or a list
          devices: all                      # or [0, 1]: NVML indexes
          mig-enabled: true
          mig-devices: {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}

Counts are per GPU: every GPU an entry covers gets that many instances of each profile.
mig-parted walks the entries in order and applies each to every GPU it covers, so the last
entry that covers a GPU is the one that GPU ends with; a GPU no entry covers is left alone.

Here: :func:`parse_text`/:func:`parse_spec` read a file's text (PyYAML's safe loader) into
frozen values, checked as mig-parted checks them; :func:`resolve` turns one named config
into a layout per GPU, placed by :func:`~slurm_mig.core.layout.resolve_counts`;
:func:`export_entries` and :func:`render_yaml` write a node's layouts back as a config,
identical GPUs grouped as ``nvidia-mig-parted export`` groups them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .catalog import GpuModel, Profile
from .errors import InputError, LayoutError, UnknownProfile
from .inputs import MAX_GPU_INDEX, shown
from .layout import Instance, Layout, format_counts, format_layout, resolve_counts

VERSION = "v1"
#: ``nvidia-mig-parted export``'s default label.
DEFAULT_EXPORT_NAME = "current"
#: Highest count read for one profile: above any GPU's (7); the placement says what fits.
MAX_COUNT = 64
#: A config label ``export --name`` writes: what mig-parted's own files use.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")

ENTRY_KEYS = ("device-filter", "devices", "mig-enabled", "mig-devices")
#: mig-parted's profile grammar: ``[<c>c.]<g>g.<gb>gb[(+|-)<attr>[,<attr>...]]``.
PROFILE_RE = re.compile(r"(?:([0-9]+)c\.)?([0-9]+)g\.([0-9]+)gb(?:([+-])([A-Za-z][A-Za-z0-9.,]*))?")
DEVICE_ID_RE = re.compile(r"0[xX]([0-9A-Fa-f]{1,8})(?::0[xX]([0-9A-Fa-f]{1,8}))?")
#: Plain YAML 1.1 words that a bare key would turn into a bool or null.
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class DeviceFilter:
    """One ``device-filter`` id: ``0xDDDDVVVV`` (device, vendor), optionally
    ``:0xSSSSssss`` (subsystem device and vendor)."""

    text: str
    device_vendor: int
    subsystem: Optional[int] = None

    def matches(self, pci_device_id: str) -> bool:
        """Whether the GPU's PCI id (``0x20B210DE``, as NVML and the catalog write it) is
        this one's device and vendor.  slurm-mig does not read subsystem ids: :func:`resolve`
        refuses a filter with one that matches a GPU, rather than guess."""
        try:
            return int(pci_device_id, 16) == self.device_vendor
        except ValueError:
            return False


@dataclass(frozen=True)
class Entry:
    """One item of a named config: which GPUs, MIG on or off, and the counts."""

    where: str  #: ``mig-configs.all-balanced[2]``, for messages
    devices: Optional[Tuple[int, ...]]  #: NVML indexes; None: ``all``
    mig_enabled: bool
    mig_devices: Tuple[Tuple[str, int], ...] = ()  #: (profile as written, count), file order
    device_filter: Tuple[DeviceFilter, ...] = ()  #: (): every GPU

    def covers(self, index: int, pci_device_ids: Sequence[str]) -> bool:
        """mig-parted's match: the filter (any id, when there is one) and the index."""
        if self.device_filter and not any(f.matches(p) for f in self.device_filter
                                          for p in pci_device_ids):
            return False
        return self.devices is None or index in self.devices

    def as_dict(self) -> Dict[str, Any]:
        """The entry as mig-parted's JSON/YAML writes it."""
        out: Dict[str, Any] = {}
        if self.device_filter:
            texts = [f.text for f in self.device_filter]
            out["device-filter"] = texts[0] if len(texts) == 1 else texts
        out["devices"] = "all" if self.devices is None else list(self.devices)
        out["mig-enabled"] = self.mig_enabled
        if self.mig_enabled:
            out["mig-devices"] = dict(self.mig_devices)
        return out


@dataclass(frozen=True)
class Spec:
    """A parsed config file: its named configs, in file order."""

    source: str  #: the file name, for messages
    configs: Tuple[Tuple[str, Tuple[Entry, ...]], ...]

    def names(self) -> Tuple[str, ...]:
        return tuple(name for name, _ in self.configs)

    def config(self, name: str) -> Tuple[Entry, ...]:
        for n, entries in self.configs:
            if n == name:
                return entries
        names = self.names()
        listed = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
        raise InputError(f"{self.source}: no mig-parted config named {shown(name)}; "
                         f"it has: {listed}")


# ----------------------------------------------------------------------------- reading


def parse_text(text: str, source: str) -> Spec:
    """A config file's text -> :class:`Spec`.  PyYAML's safe loader (JSON is YAML too);
    a key given twice in one mapping is an error, as a silently lost config would be."""
    try:
        import yaml
    except ImportError as err:
        raise InputError("reading mig-parted configs needs PyYAML, which is missing; "
                         "reinstall slurm-mig with its dependencies (pip install PyYAML)") from err
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _no_duplicate_keys(node, yaml)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise InputError(f"{source}: not valid YAML: {_yaml_problem(err)}; fix the file "
                         f"(mig-parted's examples/config.yaml shows the format)") from err
    except RecursionError as err:  # PyYAML composes nested collections recursively
        raise InputError(f"{source}: nested too deeply to be a mig-parted config") from err
    return parse_spec(data, source)


def _yaml_problem(err: Any) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _no_duplicate_keys(root: Any, yaml: Any) -> None:
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if (key.tag, key.value) in keys:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key.value!r} given twice", key.start_mark)
                    keys.add((key.tag, key.value))
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def parse_spec(data: object, source: str) -> Spec:
    """Already loaded YAML/JSON -> :class:`Spec`, checked as mig-parted's ``api/spec/v1``
    checks it: ``version: v1``, no unknown key, at least one config and one entry each,
    ``devices`` and ``mig-enabled`` required, no ``mig-devices`` with MIG off."""
    if data is None:
        raise InputError(f"{source}: empty; a mig-parted config starts with 'version: v1' "
                         f"and 'mig-configs:'")
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping with 'version: v1' and 'mig-configs', "
                         f"got {type(data).__name__}")
    if "version" not in data:
        raise InputError(f"{source}: no 'version'; mig-parted configs start with 'version: v1'")
    if data["version"] != VERSION:
        raise InputError(f"{source}: version {shown(data['version'])} is not known; "
                         f"slurm-mig reads mig-parted's 'version: v1'")
    for key in data:
        if key not in ("version", "mig-configs"):
            raise InputError(f"{source}: unexpected key {shown(key)}; a mig-parted config has "
                             f"only 'version' and 'mig-configs'")
    configs = data.get("mig-configs")
    if not isinstance(configs, dict) or not configs:
        raise InputError(f"{source}: 'mig-configs' must map at least one config name to a "
                         f"list of entries (got {shown(configs)})")
    out = []
    for name, entries in configs.items():
        if not isinstance(name, str):
            raise InputError(f"{source}: mig-configs: config name {shown(name)} is not a "
                             f"string; quote it")
        if not isinstance(entries, list) or not entries:
            raise InputError(f"{source}: mig-configs.{name}: expected a list of at least one "
                             f"entry (- devices: ..., mig-enabled: ...), got {shown(entries)}")
        out.append((name, tuple(_entry(e, f"mig-configs.{name}[{i}]", source)
                                for i, e in enumerate(entries))))
    return Spec(source, tuple(out))


def _entry(raw: object, where: str, source: str) -> Entry:
    def bad(what: str) -> InputError:
        return InputError(f"{source}: {where}: {what}")

    if not isinstance(raw, dict):
        raise bad(f"expected a mapping (devices, mig-enabled, mig-devices), got {shown(raw)}")
    for key in raw:
        if key not in ENTRY_KEYS:
            raise bad(f"unexpected key {shown(key)}; an entry has {', '.join(ENTRY_KEYS)}")
    for key in ("devices", "mig-enabled"):
        if key not in raw:
            raise bad(f"missing '{key}' (mig-parted requires it)")
    devices = _devices(raw["devices"], bad)
    enabled = raw["mig-enabled"]
    if not isinstance(enabled, bool):
        raise bad(f"mig-enabled {shown(enabled)} is not true or false")
    counts = _mig_devices(raw.get("mig-devices"), bad)
    if not enabled and counts:
        raise bad("mig-devices given with mig-enabled: false; drop them or enable MIG")
    filters = _device_filter(raw.get("device-filter"), bad)
    return Entry(where, devices, enabled, counts, filters)


def _devices(value: object, bad: Any) -> Optional[Tuple[int, ...]]:
    if value == "all":
        return None
    if isinstance(value, list) and value and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_GPU_INDEX
            for i in value):
        return tuple(value)
    raise bad(f"devices {shown(value)}: write 'all' or a list of GPU indexes such as [0, 1] "
              f"(0 to {MAX_GPU_INDEX})")


def _mig_devices(value: object, bad: Any) -> Tuple[Tuple[str, int], ...]:
    if value is None:  # absent (or null): no instances; mig-parted itself wants {}
        return ()
    if not isinstance(value, dict):
        raise bad(f"mig-devices {shown(value)}: write a mapping of profile to count, "
                  f"e.g. {{\"1g.10gb\": 7}}, or {{}}")
    out = []
    for profile, count in value.items():
        if not isinstance(profile, str) or not PROFILE_RE.fullmatch(profile):
            raise bad(f"profile {shown(profile)} is not a MIG profile name as mig-parted "
                      f"writes them (1g.10gb, 1g.10gb+me, 1c.3g.40gb)")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise bad(f"profile {profile}: count {shown(count)} is not a whole number "
                      f"(0 to {MAX_COUNT})")
        out.append((profile, count))
    if out and not any(n for _, n in out):
        raise bad("every count in mig-devices is 0 (mig-parted refuses that); "
                  "write mig-devices: {} for MIG on with no instances")
    return tuple(out)


def _device_filter(value: object, bad: Any) -> Tuple[DeviceFilter, ...]:
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise bad(f"device-filter {shown(value)}: write a PCI device id such as "
                  f"\"0x20B210DE\", or a list of them")
    out = []
    for text in items:
        m = DEVICE_ID_RE.fullmatch(text.strip())
        if not m:
            raise bad(f"device-filter {shown(text)} is not a PCI device id such as "
                      f"\"0x20B210DE\" (device, then vendor 10DE)")
        out.append(DeviceFilter(text, int(m.group(1), 16),
                                int(m.group(2), 16) if m.group(2) else None))
    return tuple(out)


# ----------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Target:
    """One GPU a config is resolved for: its NVML index and what is known of it."""

    index: int
    name: str  #: the driver's name, or the model's
    model: Optional[GpuModel]  #: None: not a MIG GPU slurm-mig knows
    pci_device_ids: Tuple[str, ...]  #: the GPU's id; for a catalog model, all of its ids
    current: Optional[Layout] = None  #: what it has now: kept where the counts allow
    busy: Tuple[Instance, ...] = ()
    mig_now: Optional[bool] = None  #: its MIG mode now; None: not known (a catalog model)


@dataclass(frozen=True)
class GpuPlan:
    """What one named config means for one GPU."""

    index: int
    name: str
    model: Optional[str]  #: catalog key (or the driver's name), None if unknown
    entry: Optional[str]  #: the entry that decides it; None: no entry covers the GPU
    mig_enabled: Optional[bool]  #: None: left alone
    layout: Optional[Layout]  #: None unless MIG is on
    note: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {
            "index": self.index, "name": self.name, "model": self.model, "entry": self.entry,
            "mig_enabled": self.mig_enabled,
            "layout": format_layout(self.layout) if self.layout is not None else None,
            "counts": format_counts(self.layout) if self.layout is not None else None,
            "note": self.note,
        }


def resolve(spec: Spec, name: str, targets: Sequence[Target]) -> Tuple[GpuPlan, ...]:
    """The layout per GPU of config ``name``: the last entry that covers a GPU decides it
    (mig-parted applies the entries in order).  Raises InputError (exit 2) naming the
    config, the GPU and the profile when a count cannot be placed."""
    entries = spec.config(name)
    plans = []
    for target in targets:
        covering = [e for e in entries if e.covers(target.index, target.pci_device_ids)]
        for e in covering:
            for f in e.device_filter:
                if f.subsystem is not None and any(f.matches(p) for p in target.pci_device_ids):
                    raise InputError(
                        f"{spec.source}: {e.where}: device-filter {f.text} names a board by its "
                        f"subsystem id, which slurm-mig does not read; write the device id "
                        f"alone ({f.text.split(':')[0]}) or list the GPUs in devices")
        for earlier in covering[:-1]:  # mig-parted applies these first: they must be possible
            _plan(spec.source, target, earlier)
        plans.append(_plan(spec.source, target, covering[-1] if covering else None))
    if not any(p.entry for p in plans):
        gpus = "; ".join(f"gpu {t.index} {t.name} ({', '.join(t.pci_device_ids) or 'no PCI id'})"
                         for t in targets) or "none"
        raise InputError(f"{spec.source}: mig-configs.{name} covers none of these GPUs "
                         f"({gpus}); check its devices and device-filter")
    return tuple(plans)


def _plan(source: str, target: Target, entry: Optional[Entry]) -> GpuPlan:
    key = target.model.key if target.model is not None else None
    if entry is None:
        return GpuPlan(target.index, target.name, key, None, None, None,
                       "no entry of this config covers it: left alone")
    if target.model is None:
        if not entry.mig_enabled or entry.devices is None:  # as mig-parted: skip, not fail
            return GpuPlan(target.index, target.name, None, None, None, None,
                           "not a MIG GPU slurm-mig knows: left alone")
        raise InputError(f"{source}: {entry.where}: gpu {target.index} ({target.name}) is not "
                         f"a MIG GPU slurm-mig knows (see `slurm-mig catalog`); "
                         f"take it out of devices")
    if not entry.mig_enabled:
        note = (f"MIG is on now: `slurm-mig mode off --gpu {target.index}` turns it off "
                f"(docs/mig-mode.md)" if target.mig_now else "")
        return GpuPlan(target.index, target.name, key, entry.where, False, None, note)
    where = f"{source}: {entry.where}: gpu {target.index} ({target.model.name})"
    counts: Dict[int, int] = {}
    for written, n in entry.mig_devices:
        if not n:  # mig-parted skips a zero count, whatever the profile
            continue
        profile = profile_for(target.model, written, where)
        counts[profile.id] = counts.get(profile.id, 0) + n
        if counts[profile.id] > profile.max_count:
            raise LayoutError(f"{where}: profile {written}: {counts[profile.id]} instances, but "
                              f"at most {profile.max_count} fit on one GPU")
    try:
        layout = resolve_counts(target.model, counts, current=target.current, busy=target.busy)
    except LayoutError as err:
        raise LayoutError(f"{where}: profiles {', '.join(p for p, n in entry.mig_devices if n)}: "
                          f"{err}") from err
    note = (f"MIG is off now: `slurm-mig mode on --gpu {target.index}` first (docs/mig-mode.md)"
            if target.mig_now is False else "")
    return GpuPlan(target.index, target.name, key, entry.where, True, layout, note)


def profile_for(model: GpuModel, written: str, where: str) -> Profile:
    """The model's profile for a name as mig-parted writes it.  ``1c.3g.40gb`` (a compute
    instance smaller than its GPU instance) is refused: slurm-mig makes one full-size
    compute instance per GPU instance."""
    m = PROFILE_RE.fullmatch(written)
    if m is None:  # parse_spec checked the grammar
        raise InputError(f"{where}: profile {shown(written)} is not a MIG profile name")
    c, g, gb, sign, attrs = m.groups()
    if c is not None and int(c) != int(g):
        raise InputError(f"{where}: profile {written} asks for {c}-slice compute instances in "
                         f"a {g}g GPU instance; slurm-mig makes one full-size compute instance "
                         f"per GPU instance: write {g}g.{gb}gb{sign or ''}{attrs or ''}")
    name = f"{int(g)}g.{int(gb)}gb" + (f"{sign}{attrs}" if sign else "")
    try:
        return model.profile(name)
    except UnknownProfile as err:
        raise UnknownProfile(f"{where}: {err}") from err


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class GpuState:
    """One GPU as export sees it."""

    index: int
    name: str
    pci_device_id: str
    mig_enabled: bool
    counts: Tuple[Tuple[str, int], ...] = ()  #: (profile name, count), sorted by name


def export_entries(gpus: Sequence[GpuState]) -> Tuple[Entry, ...]:
    """Entries for these GPUs, grouped as ``nvidia-mig-parted export`` groups them: GPUs
    with the same mode and counts share one entry; a device filter only when the node has
    more than one kind of GPU; ``devices: all`` when an entry has every GPU its filter
    (or the node) names."""
    groups: List[Tuple[Tuple[bool, Tuple[Tuple[str, int], ...]], List[GpuState]]] = []
    for gpu in sorted(gpus, key=lambda g: g.index):
        key = (gpu.mig_enabled, gpu.counts if gpu.mig_enabled else ())
        for k, members in groups:
            if k == key:
                members.append(gpu)
                break
        else:
            groups.append((key, [gpu]))
    kinds = {_pci(g.pci_device_id) for g in gpus}
    out: List[Entry] = []
    for (enabled, counts), members in groups:
        ids = sorted({_pci(g.pci_device_id) for g in members})
        filters: Tuple[DeviceFilter, ...] = ()
        if len(kinds) > 1 and len(groups) > 1:
            filters = tuple(DeviceFilter(i, _device_vendor(i)) for i in ids)
        same_kind = [g.index for g in gpus if not filters or _pci(g.pci_device_id) in ids]
        indexes = tuple(g.index for g in members)
        devices = None if sorted(same_kind) == list(indexes) else indexes
        out.append(Entry(f"mig-configs[{len(out)}]", devices, enabled, counts, filters))
    return tuple(out)


def _pci(pci_device_id: str) -> str:
    """``0x20b210de`` -> ``0x20B210DE``, as mig-parted writes ids."""
    text = pci_device_id.strip()
    return "0x" + text[2:].upper() if text[:2].lower() == "0x" else text


def _device_vendor(pci_device_id: str) -> int:
    try:
        return int(pci_device_id, 16)
    except ValueError:
        return -1


def spec_dict(name: str, entries: Sequence[Entry]) -> Dict[str, Any]:
    """The config as mig-parted's JSON (``nvidia-mig-parted export -o json``) shapes it."""
    return {"version": VERSION, "mig-configs": {name: [e.as_dict() for e in entries]}}


def render_yaml(name: str, entries: Sequence[Entry],
                comments: Optional[Mapping[int, str]] = None, header: Sequence[str] = ()) -> str:
    """The config as YAML in mig-parted's own style; ``comments``: a line above entry i
    (the GPUs it holds); ``header``: comment lines at the top."""
    lines = [f"# {' '.join(h.split())}" for h in header]
    lines += [f"version: {VERSION}", "mig-configs:", f"  {_scalar(name)}:"]
    comments = comments or {}
    for i, e in enumerate(entries):
        if i in comments:
            lines.append(f"    # {' '.join(comments[i].split())}")
        first = "    - "
        if e.device_filter:
            texts = [json.dumps(f.text) for f in e.device_filter]
            value = texts[0] if len(texts) == 1 else f"[{', '.join(texts)}]"
            lines.append(f"{first}device-filter: {value}")
            first = "      "
        devices = "all" if e.devices is None else f"[{', '.join(map(str, e.devices))}]"
        lines.append(f"{first}devices: {devices}")
        lines.append(f"      mig-enabled: {'true' if e.mig_enabled else 'false'}")
        if e.mig_enabled:
            if not e.mig_devices:
                lines.append("      mig-devices: {}")
            else:
                lines.append("      mig-devices:")
                lines += [f"        {json.dumps(p)}: {n}" for p, n in e.mig_devices]
    return "\n".join(lines) + "\n"


def _scalar(text: str) -> str:
    """``text`` as a YAML key: bare where YAML reads it back as the same string."""
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)


def check_name(name: str) -> str:
    """An ``export --name`` label: letters, digits, ``. _ + -`` (as mig-parted's own)."""
    if not NAME_RE.fullmatch(name):
        raise InputError(f"--name {shown(name)}: use letters, digits and . _ + - "
                         f"(up to 100), e.g. current or all-balanced")
    return name
