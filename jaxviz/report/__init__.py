"""Figures (``plots``, the only module that imports matplotlib) and the HTML report."""
