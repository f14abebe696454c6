"""plotly.js on a web page: one import per page, shared by every figure and by the dashboard's page.

plotly's widget bundle (plotly.js and its widget code, about 5 MB) is imported once per page into
a page-wide slot (:data:`IMPORT_ONCE_JS`). Three things may start that import, whichever comes
first: the dashboard page's own head (:mod:`psal_widgets.dashboard_page`), a notebook cell's
preload script (``page_preload_html``), or the first figure widget (``widgets/figure.py``).

This module imports neither plotly nor the widgets: ``psal dashboard`` uses it before it starts
Voila, where every tenth of a second delays the first chart.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

__all__ = ["IMPORT_ONCE_JS", "PAGE_PLOTLY_ENV", "plotly_version", "widget_bundle_path"]

#: Set (to ``1``) in a kernel whose outputs are shown on a page that imports plotly.js itself
#: (``psal dashboard``'s Voila template): figures then leave the bundle out of their state.
PAGE_PLOTLY_ENV = "PSAL_PAGE_PLOTLY"

#: The page's one import of plotly's bundle. ``importOnce(load)`` calls ``load()`` (a promise of
#: the module) only if nothing on the page has started the import yet; ``importText(code)``
#: imports a module given as text. ``Symbol.for`` names the page-wide slot, so the page's head,
#: a preload cell and every figure (and a re-run cell's new figures) find the same import.
IMPORT_ONCE_JS = r"""
const SLOT = Symbol.for("psal_widgets.plotly_widget_bundle");
// performance.mark names, read by `psal bench dashboard` to split the time to the first chart.
const mark = (name) => { try { performance.mark("psal:" + name); } catch (e) { /* no marks: fine */ } };

function importText(code) {
  const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
  const imported = import(url);
  imported.finally(() => URL.revokeObjectURL(url)).catch(() => {});
  return imported;
}

function importOnce(load) {
  let loading = globalThis[SLOT];
  if (loading) return loading;
  mark("plotly-import-start");
  loading = Promise.resolve().then(load);
  loading.then(() => mark("plotly-imported"), () => mark("plotly-import-failed"));
  globalThis[SLOT] = loading;
  // A failed import is not kept: the next figure tries again (the kernel sends the bundle).
  loading.catch(() => { if (globalThis[SLOT] === loading) delete globalThis[SLOT]; });
  return loading;
}
"""


def widget_bundle_path() -> Path:
    """plotly's widget bundle (the module its ``FigureWidget`` loads in the browser), found without importing plotly.

    Raises
    ------
    FileNotFoundError
        plotly is not installed, or its package has no ``package_data/widgetbundle.js``.
    """
    spec = importlib.util.find_spec("plotly")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "package_data" / "widgetbundle.js"
        if path.is_file():
            return path
    raise FileNotFoundError("plotly's widget bundle (plotly/package_data/widgetbundle.js) was not found: "
                            "reinstall plotly (pip install --force-reinstall plotly)")


def plotly_version() -> str:
    """The installed plotly's version, read from its metadata (no import)."""
    return importlib.metadata.version("plotly")
