"""The real helm (v4) for the chart tests: ``make tools`` puts it in .tools/ (override: $HELM)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "chart" / "pyflannel"


def helm_binary() -> str:
    path = os.environ.get("HELM") or str(ROOT / ".tools" / "helm")
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm not found at {path}: run `make tools` (fetches helm v4 into .tools/)")
    return path


def helm(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run helm with a private home (no repositories or cache of the machine's)."""
    home = ROOT / ".tools" / "helm-home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run(
        [helm_binary(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _values_args(values: dict[str, Any] | None) -> tuple[list[str], str]:
    """Values go in as a values file on stdin, so numbers stay YAML numbers (as users write them)."""
    return (["--values", "-"], yaml.safe_dump(values)) if values else ([], "")


def template(values: dict[str, Any] | None = None, *, namespace: str = "kube-flannel") -> list[Any]:
    """``helm template`` of the chart: the rendered objects."""
    extra, stdin = _values_args(values)
    done = helm("template", "flannel", str(CHART), "--namespace", namespace, *extra, stdin=stdin)
    assert done.returncode == 0, f"helm template {values} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def template_error(values: dict[str, Any]) -> str:
    """helm's message for values it must refuse."""
    extra, stdin = _values_args(values)
    done = helm("template", "flannel", str(CHART), *extra, stdin=stdin)
    assert done.returncode != 0, f"helm accepted {values}"
    return done.stderr


def lint(values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    extra, stdin = _values_args(values)
    return helm("lint", "--strict", str(CHART), *extra, stdin=stdin)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind]
    return obj


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind(objects, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def container(objects: list[dict[str, Any]], name: str = "kube-flannel") -> dict[str, Any]:
    [found] = [c for c in pod_spec(objects)["containers"] if c["name"] == name]
    return found


def net_conf(objects: list[dict[str, Any]]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(by_kind(objects, "ConfigMap")["data"]["net-conf.json"])
    return loaded
