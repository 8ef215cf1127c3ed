"""The tour notebook runs top to bottom headless, and the committed copy shows its figures."""

import ast
import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "what_did_the_cnn_learn.ipynb"


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebook", ROOT / "tools" / "make_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figure_cells(nb) -> int:
    """Code cells whose last statement is a ``plots.…(...)`` call: each must show one PNG."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        body = ast.parse("\n".join(l for l in cell.source.splitlines() if not l.startswith("%"))).body
        last = body[-1] if body else None
        if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call):
            func = last.value.func
            count += isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "plots"
    return count


def test_committed_notebook_matches_its_generator_and_has_figures():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    built = _generator().build()
    assert [c.source for c in committed.cells] == [c.source for c in built.cells]
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "the committed notebook was not executed"
    pngs = sum("image/png" in out.get("data", {}) for c in code for out in c.outputs)
    assert pngs == _figure_cells(committed) >= 10
    errors = [out for c in code for out in c.outputs if out.output_type == "error"]
    assert not errors


@pytest.mark.slow
def test_notebook_executes_headless(tmp_path):
    nb = _generator().build()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error
    pngs = sum("image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code" for out in c.outputs)
    assert pngs == _figure_cells(nb) >= 10
