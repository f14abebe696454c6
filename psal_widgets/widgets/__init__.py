"""Widget tier: ipywidgets + plotly FigureWidget panels and the Explorer app (never imports torch).

Every panel talks to a :class:`psal_widgets.session.Session`; CSS classes and Python hooks are
listed in ``docs/explorer-ui-contract.md``.
"""

from __future__ import annotations

from .app import Explorer

__all__ = ["Explorer"]
