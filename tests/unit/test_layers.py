"""Layers point one way: no package imports a package above it (design §3).

Reads every module's imports (module level, in functions and under TYPE_CHECKING alike) and fails
naming the module and the import when a package reaches outside its allow-list. Adding a package
means deciding here where it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

import flannel

ROOT = Path(flannel.__file__).resolve().parent

CORE = {"errors", "tasks", "metrics"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "tasks": {"errors"},
    "metrics": set(),  # pure exposition: families of samples read at scrape time
    "model": {"errors"},
    "dataplane": {"model"} | CORE,
    "subnet": {"model"} | CORE,
    "trafficmgr": {"model"} | CORE,
    "backend": {"dataplane", "subnet", "model"} | CORE,
    "daemon": {"backend", "dataplane", "subnet", "trafficmgr", "model"} | CORE,
    "cni": set(),  # the CNI plugin starts fast: stdlib and itself only
    "lab": {"cni", "subnet", "dataplane", "trafficmgr", "model"} | CORE,
    "netpol": {"subnet", "trafficmgr", "model"} | CORE,  # the policy enforcer: a separate program
    "doctor": {"backend", "dataplane", "subnet", "trafficmgr", "model", "cni"} | CORE,
    "cli": {"daemon", "backend", "dataplane", "subnet", "trafficmgr", "model", "lab", "cni"}
    | {"netpol", "doctor"}
    | CORE,
}


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _flannel_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.startswith("flannel.")]


def violations() -> list[str]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        package = _package(path)
        allowed = ALLOWED.get(package)
        if allowed is None:
            out.append(f"{path.relative_to(ROOT)}: package {package!r} has no place in ALLOWED")
            continue
        for line, name in _flannel_imports(ast.parse(path.read_text(), str(path))):
            target = name.split(".")[1]
            if target != package and target not in allowed:
                out.append(f"{path.relative_to(ROOT)}:{line}: {package} imports {name}")
    return out


def test_no_package_imports_a_higher_layer() -> None:
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    tree = ast.parse("def f():\n    from flannel.daemon.main import run_daemon\n")
    assert _flannel_imports(tree) == [(2, "flannel.daemon.main")]
    assert "daemon" not in ALLOWED["subnet"]
