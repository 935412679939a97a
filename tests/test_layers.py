"""Imports point one way (ARCHITECTURE.md): every import statement of the package, lazy ones included, is read
from the source and checked against the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pih2t_deploy"


def imported_modules(path: Path) -> set[str]:
    """Every pih2t_deploy module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("pih2t_deploy")}


def sources(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("export", "pih2t_deploy.training"),
        ("bench", "pih2t_deploy.training"),
        ("serving", "pih2t_deploy.training"),
        ("predict", "pih2t_deploy.training"),
        ("runtime", "pih2t_deploy.training"),
        ("training", "pih2t_deploy.serving"),
        ("data", "pih2t_deploy.models"),
        ("data", "pih2t_deploy.training"),
    ],
)
def test_no_import_points_the_wrong_way(layer, forbidden):
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(m for m in imported_modules(path) if m.startswith(forbidden))
        for path in sources(layer)
    }
    assert {path: found for path, found in offenders.items() if found} == {}


def test_evaluation_and_the_format_table_sit_below_everything_that_uses_them():
    above = ("pih2t_deploy.training", "pih2t_deploy.export", "pih2t_deploy.bench", "pih2t_deploy.serving")
    for module in ("evaluation.py", "formats.py"):
        assert sorted(m for m in imported_modules(PACKAGE / module) if m.startswith(above)) == []
