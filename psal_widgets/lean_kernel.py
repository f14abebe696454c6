"""Optional imports the dashboard's kernel skips, so the first chart comes sooner.

Imported first by the served notebook (``notebooks/dashboard.ipynb``), before anything else.

plotly's ``FigureWidget`` imports nbformat, nbformat imports jsonschema, and jsonschema's format
checkers import the optional package ``rfc3987_syntax`` when it is installed (Jupyter Server's
dependencies install it). That package compiles a Lark grammar at import: 1.4-1.8 s on this
project's 2-core CPU (``python -X importtime``), all of it before the dashboard's first chart.
The dashboard kernel validates no IRI formats, so the package is marked absent here (``None`` in
``sys.modules``, the documented way to make an import raise ``ImportError``); jsonschema then
leaves the "iri" format unchecked, as it does when the package is not installed.

Only the dashboard's own kernel imports this module; an Explorer in a user's JupyterLab kernel
changes nothing in that kernel.
"""
from __future__ import annotations

import sys

__all__ = ["SKIPPED"]

#: Optional packages marked absent (only if nothing imported them yet).
SKIPPED = ("rfc3987_syntax",)

for _name in SKIPPED:
    sys.modules.setdefault(_name, None)  # type: ignore[arg-type]
