"""jaxviz has one version number: the one pyproject.toml builds the package with is ``jaxviz.__version__``."""

import ast
from pathlib import Path

import pytest

import jaxviz

ROOT = Path(__file__).resolve().parents[1]


def _module_attr(dotted):
    """The literal ``dotted`` (``package.module.NAME``) is assigned in its source file, read without importing."""
    module, name = dotted.rsplit(".", 1)
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not assigned in {path}")


def test_pyproject_builds_the_package_with_jaxviz_version():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = config["project"]
    if "version" in project:
        built = project["version"]
    else:
        assert "version" in project.get("dynamic", []), "pyproject.toml declares no version"
        built = _module_attr(config["tool"]["setuptools"]["dynamic"]["version"]["attr"])
    assert built == jaxviz.__version__
