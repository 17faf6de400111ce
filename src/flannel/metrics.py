"""Prometheus text exposition (format 0.0.4) of flanneld's metrics, without a client library (PURE).

Lowest layer, beside ``errors`` and ``tasks``: a backend or runtime describes its own families
(per WireGuard peer, per udp forwarder counter) and the daemon's /metrics renders them.

Why our own: importing prometheus-client costs ~14 MiB of resident memory here (8.5 → 22.5 MiB
measured), over a quarter of the 50 MiB flanneld runs in; the format is a few lines of text. The
tests check every scrape with prometheus-client's own parser.

A family is a name, a type, a help text and a function returning its samples, each a label set and
a value; samples are read at scrape time, so nothing is copied on the hot path.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Labels = Mapping[str, str]
Samples = Callable[[], Iterable[tuple[Labels, float]]]


SuffixedSamples = Callable[[], Iterable[tuple[str, Labels, float]]]


@dataclass(frozen=True)
class Family:
    """One metric family: ``counter``, ``gauge`` or ``histogram``."""

    name: str
    kind: str
    help: str
    samples: Samples
    suffixed: SuffixedSamples | None = None
    """Samples whose names add a suffix (a histogram's ``_bucket``, ``_sum``, ``_count``)."""


class Histogram:
    """Observations counted into fixed buckets (cumulative on exposition, as Prometheus wants).

    ``observe`` is a bisect and two additions: cheap enough for every lease event.
    """

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram {name}: buckets must be distinct and finite: {buckets}")
        self.name = name
        self.help = help_text
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation (``le`` is inclusive: a value equal to a bound falls in it)."""
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def _suffixed(self) -> list[tuple[str, Labels, float]]:
        out: list[tuple[str, Labels, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self._counts, strict=False):
            running += count
            out.append(("_bucket", {"le": repr(bound)}, float(running)))
        out.append(("_bucket", {"le": "+Inf"}, float(self.count)))
        out.append(("_sum", {}, self.sum))
        out.append(("_count", {}, float(self.count)))
        return out

    def family(self) -> Family:
        """The family /metrics renders (read at scrape time)."""
        return Family(self.name, "histogram", self.help, lambda: [], self._suffixed)


@runtime_checkable
class MetricsSource(Protocol):
    """Anything that describes its own metric families (a network, a backend runtime)."""

    def metric_families(self) -> list[Family]:
        """The families to add to /metrics; their samples are read at every scrape."""
        ...


def counter_family(name: str, help_text: str, read: Callable[[], float]) -> Family:
    """A one-sample counter."""
    return Family(name, "counter", help_text, lambda: [({}, float(read()))])


def escape_label(value: str) -> str:
    """Label values escape backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.17g}" if value != int(value) else str(int(value))


def _sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_value(value)}"
    text = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())
    return f"{name}{{{text}}} {_value(value)}"


def render(families: Iterable[Family]) -> str:
    """The exposition text: ``# HELP``/``# TYPE`` once per family, then its samples."""
    lines: list[str] = []
    for family in sorted(families, key=lambda f: f.name):
        samples = list(family.samples())
        lines.append(f"# HELP {family.name} {family.help.replace(chr(10), ' ')}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        lines += [_sample(family.name, labels, value) for labels, value in samples]
        if family.suffixed is not None:
            lines += [_sample(family.name + sfx, lbl, val) for sfx, lbl, val in family.suffixed()]
    return "\n".join(lines) + "\n"


def split_name(key: str) -> tuple[str, dict[str, str]]:
    """``name{a="x"}`` → (``name``, {a: x}): gauges registered with their labels in the name."""
    name, brace, rest = key.partition("{")
    if not brace:
        return key, {}
    labels = {}
    for part in rest.rstrip("}").split(","):
        label, _, quoted = part.partition("=")
        labels[label.strip()] = quoted.strip().strip('"')
    return name, labels
