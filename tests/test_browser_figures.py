"""Many plotly figures on one page, in a real browser (Voila + Debian's Chromium via Playwright).

plotly's own ``FigureWidget`` makes anywidget parse its 5 MB bundle once per figure (about 1 s
each here) and anywidget gives each model 2 s to initialize: a page that created three figures
at once lost the later ones ("[anywidget] Failed to initialize model.", empty charts).
:class:`psal_widgets.widgets.figure.FigureWidget` loads plotly.js once per page and records
the messages sent before it has run. The page below creates seven figures (six restyled at once) in one cell and
restyles each right after it is created, inside that window: every figure must show its
restyled data, and the page must report no error. With plotly's own class the same page gave,
here, two "Failed to initialize model" errors and all six figures on their first data.
"""
from __future__ import annotations

import json

import pytest

from psal_widgets.dashboard import BLOCKED_URL, CHROMIUM_ARGS, chromium_path, launch
from psal_widgets.dashboard_page import BUNDLE_FILE

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = chromium_path()

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]

N_FIGURES = 7  # six restyled right after creation, a seventh never changed
LOAD_MS = 180_000

_CELL = f"""
import ipywidgets as W
from psal_widgets.widgets.figure import FigureWidget

figs = []
for i in range({N_FIGURES}):
    y = [i, i + 1, i + 2] if i == {N_FIGURES} - 1 else [0, 0, 0]
    f = FigureWidget(data=[{{"type": "scatter", "x": [0, 1, 2], "y": y, "mode": "markers"}}],
                     layout={{"width": 300, "height": 200, "title": {{"text": f"figure {{i}}"}}}})
    figs.append(f)
box = W.GridBox(figs, layout=W.Layout(grid_template_columns="repeat(3, 310px)"))
display(box)
# Sent right after the figures were created, before any browser can have run plotly.js.
for i, f in enumerate(figs[:-1]):
    f.data[0].y = [i, i + 1, i + 2]
"""

_PRELOAD_CELL = ("from IPython.display import HTML\nfrom psal_widgets.widgets.figure import page_preload_html\n"
                 "HTML(page_preload_html())")

#: How the page gets plotly.js, as (preload cell, page template, head import blocked):
#: "head": the dashboard's way, the page's head imports it from its URL (dashboard_page.py), and
#: the figures' state and the preload cell leave it out; "head-failed": that import fails, so each
#: figure asks the kernel; with Voila's own template: in each figure's state ("state"), from the
#: first cell's preload script ("page"), or, state empty and no script run, from the kernel.
_PRELOAD = {
    "head": (_PRELOAD_CELL, True, False),
    "head-failed": (_PRELOAD_CELL, True, True),
    "state": (None, False, False),
    "page": (_PRELOAD_CELL, False, False),
    "kernel": ("from psal_widgets.widgets.figure import page_preload_html\n_ = page_preload_html()", False, False),
}


def _notebook(preload: str | None) -> dict:
    cells = [{"cell_type": "code", "execution_count": None, "id": "many", "metadata": {}, "outputs": [],
              "source": _CELL}]
    if preload is not None:
        cells.insert(0, {"cell_type": "code", "execution_count": None, "id": "preload", "metadata": {},
                         "outputs": [], "source": preload})
    return {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                    "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


#: The y values each drawn figure shows, in page order.
DRAWN_JS = """
() => [...document.querySelectorAll('.js-plotly-plot')].map(
  g => (g._fullData && g._fullData[0] && g._fullData[0].y) ? Array.from(g._fullData[0].y) : null)
"""


@pytest.mark.parametrize("source", sorted(_PRELOAD))
def test_figures_created_together_all_draw_their_latest_data(tmp_path, source) -> None:
    cell, page_plotly, block_head = _PRELOAD[source]
    nb = tmp_path / "many.ipynb"
    nb.write_text(json.dumps(_notebook(cell)))
    dash = launch(notebook=nb, check=False, preheat=False, quiet=True, timeout=120, page_plotly=page_plotly)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                errors: list[str] = []
                page.on("pageerror", lambda err: errors.append(str(err)))
                page.route(BLOCKED_URL, lambda route: route.abort())
                bundle_requests: list[str] = []
                page.on("request", lambda r: bundle_requests.append(r.url) if BUNDLE_FILE in r.url else None)
                if block_head:
                    page.route(f"**/{BUNDLE_FILE}*", lambda route: route.abort())
                page.goto(dash.url, timeout=LOAD_MS)
                page.wait_for_function(
                    f"() => {{ const d = ({DRAWN_JS})(); return d.length === {N_FIGURES} && d.every(y => y); }}",
                    timeout=LOAD_MS,
                )
                expected = json.dumps([[i, i + 1, i + 2] for i in range(N_FIGURES)], separators=(",", ":"))
                try:
                    page.wait_for_function(f"() => JSON.stringify(({DRAWN_JS})()) === {json.dumps(expected)}",
                                           timeout=30_000)
                except sync_api.TimeoutError:
                    pytest.fail(f"figures show {page.evaluate(DRAWN_JS)}, want {expected}; errors {errors}")
                assert not errors, errors
                marks = page.evaluate("() => performance.getEntriesByType('mark').map(m => m.name)")
                # plotly.js was imported once for the page; the unchanged figure skipped the handshake.
                assert marks.count("psal:plotly-imported") == 1, marks
                assert marks.count("psal:fresh") == 1 and marks.count("psal:attached") == N_FIGURES - 1, marks
                # Only the template's head asks for the bundle's URL, once; when that fails, the
                # figures got it from the kernel (their state leaves it out: the kernel knows).
                assert len(bundle_requests) == (1 if page_plotly else 0), bundle_requests
                assert ("psal:plotly-import-failed" in marks) == block_head, marks
            finally:
                browser.close()
    finally:
        dash.stop()
