"""``flannelctl perf``'s numbers: parse iperf3 and ping, summarise, compare, render (PURE).

A ``PathResult`` is one path's measurements (node-to-node over the underlay, or pod-to-pod over
flannel); ``ratios`` divides pod by node for each figure, which is what the operator wants to know
("how much does the overlay cost here?") and what stays meaningful on a noisy machine, because
both paths are measured in the same run.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_PING_TIME = re.compile(r"\btime[=<]([\d.]+)\s*ms\b")


class PerfParseError(ValueError):
    """A tool's output could not be read (the message quotes what was wrong)."""


@dataclass(frozen=True)
class Latency:
    """A sample of round-trip times, in microseconds."""

    samples: int
    p50_us: float
    p90_us: float
    p99_us: float
    avg_us: float
    min_us: float
    max_us: float


@dataclass(frozen=True)
class Throughput:
    """One iperf3 run."""

    bits_per_second: float
    retransmits: int | None = None
    """TCP only (None for UDP or when iperf3 could not read them)."""
    lost_percent: float | None = None
    """UDP only."""
    jitter_ms: float | None = None
    """UDP only."""


@dataclass(frozen=True)
class PathResult:
    """Everything measured on one path (``node`` or ``pod``)."""

    path: str
    client: str
    server: str
    """Where the server ran, ``<netns> <address>``."""
    tcp: Throughput | None = None
    udp: Throughput | None = None
    ping: Latency | None = None
    tcp_rr: Latency | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency(samples_us: Sequence[float]) -> Latency:
    """Summary of round-trip times in microseconds."""
    if not samples_us:
        raise PerfParseError("no round trip completed")
    return Latency(
        samples=len(samples_us),
        p50_us=percentile(samples_us, 0.5),
        p90_us=percentile(samples_us, 0.9),
        p99_us=percentile(samples_us, 0.99),
        avg_us=statistics.fmean(samples_us),
        min_us=min(samples_us),
        max_us=max(samples_us),
    )


def ping_times_us(output: str) -> list[float]:
    """Every reply's ``time=`` from ping's output, in microseconds."""
    return [float(m.group(1)) * 1000.0 for m in _PING_TIME.finditer(output)]


def iperf3_result(text: str, *, udp: bool) -> Throughput:
    """Throughput from ``iperf3 -J`` output; an error iperf3 reports becomes PerfParseError."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PerfParseError(f"iperf3 output is not JSON: {text.strip()[:200]!r}") from exc
    if not isinstance(doc, dict):
        raise PerfParseError("iperf3 output is not a JSON object")
    if doc.get("error"):
        raise PerfParseError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    try:
        if udp:
            total = end["sum"]
            return Throughput(
                bits_per_second=float(total["bits_per_second"]),
                lost_percent=float(total.get("lost_percent", 0.0)),
                jitter_ms=float(total.get("jitter_ms", 0.0)),
            )
        received, sent = end["sum_received"], end.get("sum_sent", {})
        retransmits = sent.get("retransmits")
        return Throughput(
            bits_per_second=float(received["bits_per_second"]),
            retransmits=None if retransmits is None else int(retransmits),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PerfParseError(f"iperf3 JSON lacks end.{exc}: not a finished test") from exc


def _ratio(pod: float | None, node: float | None) -> float | None:
    if pod is None or node is None or node == 0:
        return None
    return pod / node


def ratios(node: PathResult, pod: PathResult) -> dict[str, float | None]:
    """pod ÷ node for each figure both paths have (throughput < 1 and latency > 1 mean the
    overlay costs that much)."""

    def bps(result: PathResult, kind: str) -> float | None:
        value = getattr(result, kind)
        return None if value is None else float(value.bits_per_second)

    def lat(result: PathResult, kind: str, stat: str) -> float | None:
        value = getattr(result, kind)
        return None if value is None else float(getattr(value, stat))

    return {
        "tcp_throughput": _ratio(bps(pod, "tcp"), bps(node, "tcp")),
        "udp_throughput": _ratio(bps(pod, "udp"), bps(node, "udp")),
        "ping_p50": _ratio(lat(pod, "ping", "p50_us"), lat(node, "ping", "p50_us")),
        "tcp_rr_p50": _ratio(lat(pod, "tcp_rr", "p50_us"), lat(node, "tcp_rr", "p50_us")),
        "tcp_rr_p99": _ratio(lat(pod, "tcp_rr", "p99_us"), lat(node, "tcp_rr", "p99_us")),
    }


def to_json(header: dict[str, Any], results: Iterable[PathResult]) -> dict[str, Any]:
    """The report for ``-o json``: the header, each path, and the pod/node ratios."""
    by_path = {r.path: r for r in results}
    out: dict[str, Any] = {**header, "paths": {p: asdict(r) for p, r in by_path.items()}}
    if "node" in by_path and "pod" in by_path:
        out["ratio_pod_over_node"] = ratios(by_path["node"], by_path["pod"])
    return out


def _cell(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def render(header: dict[str, Any], results: Sequence[PathResult]) -> str:
    """An aligned table: one row per path, then the pod/node ratio row."""
    udp = any(r.udp is not None for r in results)
    head = ["PATH", "TCP Gbit/s", "RETRANS"]
    head += ["UDP Gbit/s", "LOST %", "JITTER ms"] if udp else []
    head += ["PING p50 ms", "PING avg ms", "TCP RR p50 us", "TCP RR p99 us"]
    rows = [head]
    for r in results:
        row = [
            f"{r.path}-to-{r.path}",
            _cell(r.tcp.bits_per_second if r.tcp else None, 1e9),
            "-" if r.tcp is None or r.tcp.retransmits is None else str(r.tcp.retransmits),
        ]
        if udp:
            row += [
                _cell(r.udp.bits_per_second if r.udp else None, 1e9),
                _cell(r.udp.lost_percent if r.udp else None),
                _cell(r.udp.jitter_ms if r.udp else None, digits=3),
            ]
        row += [
            _cell(r.ping.p50_us if r.ping else None, 1000, 3),
            _cell(r.ping.avg_us if r.ping else None, 1000, 3),
            _cell(r.tcp_rr.p50_us if r.tcp_rr else None, digits=1),
            _cell(r.tcp_rr.p99_us if r.tcp_rr else None, digits=1),
        ]
        rows.append(row)
    by_path = {r.path: r for r in results}
    if "node" in by_path and "pod" in by_path:
        q = ratios(by_path["node"], by_path["pod"])
        row = ["pod/node", _cell(q["tcp_throughput"]), ""]
        row += [_cell(q["udp_throughput"]), "", ""] if udp else []
        row += [_cell(q["ping_p50"]), "", _cell(q["tcp_rr_p50"]), _cell(q["tcp_rr_p99"])]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    title = (
        f"perf {header.get('from', '?')} -> {header.get('to', '?')}"
        + (f" ({header['backend']})" if header.get("backend") else "")
        + f": iperf3 TCP {header.get('duration', '?')} s, {header.get('pings', '?')} pings, "
        f"{header.get('round_trips', '?')} TCP round trips"
    )
    notes = [f"{r.path}: {e}" for r in results for e in r.errors]
    return "\n".join([title, *lines, *(f"note: {n}" for n in notes)])
