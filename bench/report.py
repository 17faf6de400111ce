"""Render the benchmark report as Markdown (pure: dict in, text out).

Programs are written by different people, so the renderer is tolerant: a result with ``rows`` (a list
of flat objects) becomes a table of every column it has; other top-level scalars become a key/value
list; any key containing ``ratio`` is the headline figure and is listed first.
"""

from __future__ import annotations

from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, (dict, list)):
        return "…"
    return str(value)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    ratios = [c for c in columns if "ratio" in c]
    return [c for c in columns if "ratio" not in c] + ratios


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return lines


def _rows_of(result: dict[str, Any]) -> list[dict[str, Any]] | None:
    for key in ("rows", "results", "cases"):
        value = result.get(key)
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return value
    return None


def render_entry(entry: dict[str, Any]) -> list[str]:
    """One benchmark's section."""
    lines = [f"### {entry['name']}", "", f"_{entry.get('what', '')}_", ""]
    if entry["status"] != "ok":
        return [*lines, f"**not run**: {entry.get('reason', 'unknown')}", ""]
    result = entry.get("result")
    if not isinstance(result, dict):
        return [*lines, f"result: `{result}`", ""]
    scalars = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
    for key in sorted(scalars, key=lambda k: ("ratio" not in k, k)):
        lines.append(f"- {key}: {_cell(scalars[key])}")
    rows = _rows_of(result)
    if rows:
        lines += ["", *_table(rows)]
    lines.append("")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report: summary table (status per program), then one section each."""
    entries = report.get("benchmarks", [])
    machine = report.get("machine", {})
    lines = [
        "# pyflannel benchmarks",
        "",
        f"Generated {report.get('generated', '?')} on {machine.get('cpus', '?')} CPUs, "
        f"kernel {machine.get('kernel', '?')}. Ratios compare against a baseline measured in the "
        "same run on the same topology.",
        "",
        "| benchmark | status | seconds |",
        "|---|---|---|",
    ]
    for entry in entries:
        status = (
            entry["status"] if entry["status"] == "ok" else f"not run ({entry.get('reason', '')})"
        )
        lines.append(f"| {entry['name']} | {status} | {entry.get('seconds', '')} |")
    lines.append("")
    for entry in entries:
        lines += render_entry(entry)
    return "\n".join(lines) + "\n"
