"""Render a CheckReport as a compact table (pure).

One line per pod: its node and IP(s), then passed/total for each probe kind it started; failures are
listed underneath with what was expected. A 50-node lab still fits a screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flannel.lab.check import CheckReport

KINDS = ("ping", "tcp", "wan-ping", "wan-tcp", "ping6", "tcp6", "wan-ping6", "wan-tcp6")
_HEADERS = {
    "ping": "ping",
    "tcp": "tcp",
    "wan-ping": "wan ping",
    "wan-tcp": "wan tcp(masq)",
    "ping6": "ping6",
    "tcp6": "tcp6",
    "wan-ping6": "wan ping6",
    "wan-tcp6": "wan tcp6(masq)",
}


def render_report(report: CheckReport) -> str:
    """The table, a summary line and the failures."""
    kinds = [kind for kind in KINDS if any(row.kind == kind for row in report.rows)]
    counts: dict[tuple[str, str], list[int]] = {}
    for row in report.rows:
        passed_total = counts.setdefault((row.src, row.kind), [0, 0])
        passed_total[0] += int(row.ok)
        passed_total[1] += 1
    header = ["pod", "node", "ip", *(_HEADERS[kind] for kind in kinds)]
    table = [header]
    for pod in report.pods:
        cells = [pod.name, f"node{pod.node}", " ".join(ip for ip in (pod.ip, pod.ip6) if ip)]
        for kind in kinds:
            passed, total = counts.get((pod.name, kind), [0, 0])
            mark = "" if passed == total else " FAIL"
            cells.append(f"{passed}/{total}{mark}" if total else "-")
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    failures = report.failures
    passed = len(report.rows) - len(failures)
    verdict = "OK" if report.ok else "FAILED"
    lines.append(f"check {verdict}: {passed}/{len(report.rows)} probes passed")
    for row in failures[:40]:
        lines.append(f"  FAIL {row.kind:8} {row.src} -> {row.dst}: {row.detail}")
    if len(failures) > 40:
        lines.append(f"  ... and {len(failures) - 40} more failures")
    return "\n".join(lines)
