"""The one version number: ``pyproject.toml`` builds the package with it (a literal, read without importing)."""

__version__ = "0.2.0"
