"""Prometheus' text exposition format (version 0.0.4), rendered from plain values.  Pure.

What node_exporter's textfile collector reads and what ``slurm-mig metrics`` prints
(docs/metrics.md): per family one ``# HELP`` and one ``# TYPE`` line, then its samples,
``name{label="value",...} value``, with no timestamps.  Label values and help text are
escaped as the format says (backslash, double quote in label values, newline); a
histogram has cumulative ``_bucket`` samples ending with ``le="+Inf"`` (equal to
``_count``), then ``_sum`` and ``_count``.  Families and samples come out sorted, so the
same values always give the same bytes (an unchanged textfile is not rewritten).

Series are kept between processes as plain JSON (:func:`inc`, :func:`set_value`,
:func:`observe` change a ``{name: {label key: value}}`` dict; the node and the controller
keep theirs in a small state file): a counter survives the process that counted.

Stdlib only, no ``typing`` or ``dataclasses`` at run time: the hooks' fast path imports
this module on every job.  ``prometheus_client`` is not used; docs/metrics.md says why.
"""

from __future__ import annotations

import json
import math

TYPE_CHECKING = False  # no `typing` at run time (the hooks' fast path imports this module)
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

    Labels = Union[Mapping[str, str], Sequence[Tuple[str, str]]]
    Histogram = Dict[str, Any]
    Value = Union[int, float, Histogram]
    Series = Dict[str, Dict[str, Any]]

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"
KINDS = (COUNTER, GAUGE, HISTOGRAM)
#: Bucket bounds of a hook's duration: a fast hook is ~25 ms, a full one ~100 ms, an
#: apply inside a prolog seconds (docs/benchmarks.md).
HOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: A rebalance cycle: a second without changes, minutes when it waits for nodes to apply.
CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class MetricsError(ValueError):
    """A metric or label name the format does not allow (a bug in the caller)."""


def _name_ok(name: str, *, colon: bool) -> bool:
    if not name or not name.isascii() or name[0].isdigit():
        return False
    extra = "_:" if colon else "_"
    return all(c.isalnum() or c in extra for c in name)


def check_name(name: str) -> str:
    """A metric name: ``[a-zA-Z_:][a-zA-Z0-9_:]*``."""
    if not _name_ok(name, colon=True):
        raise MetricsError(f"{name!r} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
    return name


def check_label_name(name: str) -> str:
    """A label name: ``[a-zA-Z_][a-zA-Z0-9_]*``, not starting with ``__`` (reserved), not ``le``."""
    if not _name_ok(name, colon=False) or name.startswith("__") or name == "le":
        raise MetricsError(f"{name!r} is not a label name we may use ([a-zA-Z_][a-zA-Z0-9_]*, "
                           f"no leading __, not le)")
    return name


def escape_label_value(value: str) -> str:
    """Backslash, double quote and newline escaped, as the format requires in label values."""
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(text: str) -> str:
    """Backslash and newline escaped, as the format requires in ``# HELP`` lines."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Go's ParseFloat reads it: ``3``, ``0.25``, ``+Inf``, ``NaN``."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _pairs(labels: Labels) -> List[Tuple[str, str]]:
    items = labels.items() if hasattr(labels, "items") else labels
    out = sorted((check_label_name(str(k)), str(v)) for k, v in items)
    for a, b in zip(out, out[1:]):
        if a[0] == b[0]:
            raise MetricsError(f"label {a[0]!r} given twice")
    return out


def _label_text(pairs: Sequence[Tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs) + "}"


# ----------------------------------------------------------------------------- histograms


def new_histogram(bounds: Sequence[float]) -> Histogram:
    """An empty histogram: ``counts[i]`` observations in ``(bounds[i-1], bounds[i]]``, the last
    one above every bound (``+Inf``); ``sum`` and ``count``."""
    b = [float(x) for x in bounds]
    if any(not math.isfinite(x) for x in b) or b != sorted(set(b)):
        raise MetricsError(f"histogram bounds {list(bounds)} must be finite and increasing")
    return {"le": b, "counts": [0] * (len(b) + 1), "sum": 0.0, "count": 0}


def histogram_observe(hist: Histogram, value: float) -> None:
    """Count ``value`` in ``hist`` (in place)."""
    i = 0
    for i, bound in enumerate(hist["le"]):  # noqa: B007 - i is used after the loop
        if value <= bound:
            break
    else:
        i = len(hist["le"])
    hist["counts"][i] += 1
    hist["sum"] += float(value)
    hist["count"] += 1


def valid_histogram(hist: Any) -> bool:
    """Whether ``hist`` (read back from a state file) is a histogram :func:`new_histogram` made."""
    if not isinstance(hist, dict):
        return False
    le, counts, count = hist.get("le"), hist.get("counts"), hist.get("count")
    return (isinstance(le, list) and all(type(x) in (int, float) and math.isfinite(x) for x in le)
            and le == sorted(set(le)) and isinstance(counts, list) and len(counts) == len(le) + 1
            and all(type(c) is int and c >= 0 for c in counts) and type(count) is int
            and count == sum(counts) and type(hist.get("sum")) in (int, float))


# ----------------------------------------------------------------------------- kept series


def label_key(labels: Labels) -> str:
    """The labels as one canonical string (a JSON list of sorted pairs): a key in a state file."""
    return json.dumps([list(p) for p in _pairs(labels)], separators=(",", ":"))


def labels_of(key: str) -> List[Tuple[str, str]]:
    """The labels back from :func:`label_key`; MetricsError for anything else."""
    try:
        data = json.loads(key)
    except ValueError as err:
        raise MetricsError(f"{key!r} is not a label key") from err
    if not isinstance(data, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in data):
        raise MetricsError(f"{key!r} is not a label key")
    return _pairs([(p[0], p[1]) for p in data])


def inc(series: Series, name: str, labels: Labels = (), by: float = 1) -> None:
    """Add ``by`` (>= 0) to a counter."""
    if not by >= 0:
        raise MetricsError(f"counter {name} cannot go down by {by}")
    values = series.setdefault(check_name(name), {})
    key = label_key(labels)
    values[key] = values.get(key, 0) + by


def set_value(series: Series, name: str, labels: Labels, value: float) -> None:
    """Set a gauge."""
    series.setdefault(check_name(name), {})[label_key(labels)] = value


def observe(series: Series, name: str, labels: Labels, value: float, bounds: Sequence[float]) -> None:
    """Count ``value`` in a histogram with ``bounds``; one kept with other bounds (an older
    release's) starts again, which Prometheus takes as a counter reset."""
    values = series.setdefault(check_name(name), {})
    key = label_key(labels)
    hist = values.get(key)
    if hist is None or not valid_histogram(hist) or hist["le"] != [float(b) for b in bounds]:
        hist = values[key] = new_histogram(bounds)
    histogram_observe(hist, value)


def clean_series(data: Any, kinds: Mapping[str, str]) -> Series:
    """The series of a state file read back, keeping only well-formed values of the known
    ``kinds`` (name -> kind): a damaged entry is dropped, not rendered."""
    out: Series = {}
    if not isinstance(data, dict):
        return out
    for name, values in data.items():
        kind = kinds.get(name)
        if kind is None or not isinstance(values, dict):
            continue
        for key, value in values.items():
            try:
                labels_of(key)
            except MetricsError:
                continue
            if kind == HISTOGRAM:
                ok = valid_histogram(value)
            else:
                ok = type(value) in (int, float) and (kind == GAUGE or value >= 0)
            if ok:
                out.setdefault(name, {})[key] = value
    return out


# ----------------------------------------------------------------------------- families


class Family:
    """One metric family: name, kind (counter, gauge, histogram), help text, samples as
    (labels, value) with a histogram dict (:func:`new_histogram`) as a histogram's value."""

    __slots__ = ("name", "kind", "help", "samples")

    def __init__(self, name: str, kind: str, help: str,
                 samples: Iterable[Tuple[Labels, Value]] = ()) -> None:
        if kind not in KINDS:
            raise MetricsError(f"{name}: kind {kind!r} is not one of {', '.join(KINDS)}")
        check_name(name)
        if kind == COUNTER and not name.endswith("_total"):
            raise MetricsError(f"counter {name} must end in _total")
        if kind != COUNTER and name.endswith("_total"):
            raise MetricsError(f"{kind} {name} must not end in _total")
        self.name, self.kind, self.help = name, kind, help
        self.samples: List[Tuple[Labels, Value]] = list(samples)

    def add(self, labels: Labels, value: Value) -> None:
        self.samples.append((labels, value))


def families_from(series: Series, specs: Mapping[str, Tuple[str, str]]) -> List[Family]:
    """A :class:`Family` per name of ``specs`` (name -> (kind, help)) with the kept
    ``series`` of that name."""
    out = []
    for name, (kind, text) in specs.items():
        values = series.get(name, {})
        out.append(Family(name, kind, text, [(labels_of(k), v) for k, v in values.items()]))
    return out


def _histogram_lines(name: str, pairs: List[Tuple[str, str]], hist: Histogram) -> List[str]:
    lines = []
    running = 0
    for bound, n in zip(list(hist["le"]) + [math.inf], hist["counts"]):
        running += n
        le = "+Inf" if bound == math.inf else format_value(float(bound))
        lines.append(f"{name}_bucket{_label_text(pairs + [('le', le)])} {running}")
    lines.append(f"{name}_sum{_label_text(pairs)} {format_value(float(hist['sum']))}")
    lines.append(f"{name}_count{_label_text(pairs)} {hist['count']}")
    return lines


def render(families: Iterable[Family]) -> str:
    """The text exposition of ``families``, sorted by name, samples sorted by labels.

    Every family gets its HELP and TYPE lines, also one without samples (yet).  Two
    families of one name, or one sample given twice, are a :class:`MetricsError`."""
    out: List[str] = []
    seen = set()
    for fam in sorted(families, key=lambda f: f.name):
        if fam.name in seen:
            raise MetricsError(f"metric family {fam.name} given twice")
        seen.add(fam.name)
        out.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.kind}")
        samples = sorted(((_pairs(labels), value) for labels, value in fam.samples),
                         key=lambda s: s[0])
        for (a, _), (b, _) in zip(samples, samples[1:]):
            if a == b:
                raise MetricsError(f"{fam.name}{_label_text(a)} given twice")
        for pairs, value in samples:
            if fam.kind == HISTOGRAM:
                if not valid_histogram(value):
                    raise MetricsError(f"{fam.name}{_label_text(pairs)}: not a histogram")
                out.extend(_histogram_lines(fam.name, pairs, value))  # type: ignore[arg-type]
            else:
                out.append(f"{fam.name}{_label_text(pairs)} {format_value(value)}")  # type: ignore[arg-type]
    return "".join(line + "\n" for line in out)
