"""`agent` and `server` never import each other; `policies` and `protos` import neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "agent": {"server"},
    "server": {"agent"},
    "policies": {"agent", "server"},
    "protos": {"agent", "server"},
}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_forbidden_packages(package: str) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imported_roots(p) & FORBIDDEN[package])
        for p in (ROOT / package).rglob("*.py")
        if _imported_roots(p) & FORBIDDEN[package]
    }
    assert offenders == {}, f"{package} imports what it must not: {offenders}"
