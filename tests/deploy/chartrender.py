"""A tiny Helm template renderer for exactly the subset deploy/chart/pyflannel uses.

Supported: ``{{ .Values.a.b }}`` substitution (scalars print as Go does: ``true``/``false``),
``{{ toJson .Values.x }}``, ``{{- if .Values.x }}`` / ``{{- else }}`` / ``{{- end }}`` (nestable,
Go truthiness), and the ``{{-`` / ``-}}`` whitespace trimming. Anything else raises, so a template
that drifts outside the subset fails the tests instead of rendering wrongly. Helm cannot be installed
on these machines; this keeps the chart checkable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
VALUE = re.compile(r"^\.Values((?:\.[A-Za-z0-9_]+)+)$")


class TemplateError(ValueError):
    """The template uses something outside the supported subset, or a value is missing."""


def lookup(values: dict[str, Any], expr: str) -> Any:
    match = VALUE.match(expr)
    if not match:
        raise TemplateError(f"unsupported expression {expr!r}")
    current: Any = values
    for key in match.group(1).strip(".").split("."):
        if not isinstance(current, dict) or key not in current:
            raise TemplateError(f"missing value {expr}")
        current = current[key]
    return current


def go_print(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise TemplateError(f"value {value!r} is not a scalar: use toJson")


def evaluate(expr: str, values: dict[str, Any]) -> str:
    if expr.startswith("toJson "):
        return json.dumps(lookup(values, expr[len("toJson ") :].strip()), separators=(",", ":"))
    return go_print(lookup(values, expr))


def render(template: str, values: dict[str, Any]) -> str:
    """Render one template file."""
    parts: list[tuple[str, str]] = []  # ("text", s) or ("action", expr)
    pos = 0
    for match in ACTION.finditer(template):
        text = template[pos : match.start()]
        if match.group(1) == "-":
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", match.group(2)))
        pos = match.end()
        if match.group(3) == "-":
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip())
    parts.append(("text", template[pos:]))
    out: list[str] = []
    stack: list[bool] = []  # is the current branch emitting?
    for kind, body in parts:
        emitting = all(stack)
        if kind == "text":
            if emitting:
                out.append(body)
        elif body.startswith("if "):
            stack.append(emitting and bool(lookup(values, body[3:].strip())))
        elif body == "else":
            if not stack:
                raise TemplateError("else without if")
            outer = all(stack[:-1])
            stack[-1] = outer and not stack[-1]  # one else per if: runs when the if did not
        elif body == "end":
            if not stack:
                raise TemplateError("end without if")
            stack.pop()
        elif emitting:
            out.append(evaluate(body, values))
    if stack:
        raise TemplateError("unterminated if")
    return "".join(out)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def render_chart(chart: Path, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object of the chart's templates rendered with values.yaml (+ overrides)."""
    values = yaml.safe_load((chart / "values.yaml").read_text())
    values = deep_merge(values, overrides or {})
    objects: list[dict[str, Any]] = []
    for template in sorted((chart / "templates").glob("*.yaml")):
        text = render(template.read_text(), values)
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects
