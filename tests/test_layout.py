"""Data flows one way: a subpackage imports only those before it (README, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxviz"
# rank of each subpackage; a module may import jaxviz modules of a lower or equal rank only
ORDER = {"checks": 0, "_version": 0, "_io": 0, "_batching": 0, "_progress": 0, "data": 1, "models": 2, "engine": 3,
         "methods": 4, "visualization": 4, "evaluation": 5, "runs": 5, "analysis": 6, "report": 7, "atlas": 7, "cli": 8}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem in ORDER)


def _part(module: str) -> str | None:
    """The subpackage ``module`` belongs to; ``"jaxviz"`` itself (the public API) imports every layer: "cli"."""
    parts = module.split(".")
    if parts[0] != "jaxviz":
        return None
    return parts[1] if len(parts) > 1 else "cli"


def test_every_subpackage_has_a_rank():
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages <= set(ORDER), subpackages - set(ORDER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers_only(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "jaxviz":  # from jaxviz import data / plots / ...
            names = [f"jaxviz.{a.name}" if a.name in ORDER else "jaxviz" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            other = _part(name)
            if other in ORDER and ORDER[other] > ORDER[own]:
                upward.append(f"line {node.lineno}: {name}")
    assert not upward, f"{path.relative_to(PACKAGE)} imports a higher layer: {upward}"
