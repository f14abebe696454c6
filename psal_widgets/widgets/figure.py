"""Plotly figure widgets that share one plotly.js per page.

plotly's ``FigureWidget`` is an anywidget whose front-end module (``_esm``) is plotly's whole
widget bundle, about 5 MB of JavaScript. anywidget imports every model's module from a fresh
Blob URL, so each figure on a page parses and runs plotly.js again: about 1 s each in Chromium
on this project's 2-core machine while idle, several seconds while the kernel computes. And
anywidget gives a model 2 s (``AbortSignal.timeout(2000)`` in its runtime) to load its module
and run ``initialize``; past that the model is dead for good ("[anywidget] Failed to initialize
model.", an empty chart). With three figures created together, the later ones missed the limit:
the dataset view's charts stayed empty in the browser.

:class:`FigureWidget` keeps plotly's Python API and its front-end code unchanged and replaces only
the module anywidget loads: a small loader (:data:`LOADER_JS`) that

- imports plotly's bundle (sent as the synced trait ``_psal_bundle``) once per page and shares the
  module between every figure, so a page pays for plotly.js once;
- returns from ``initialize`` at once, so anywidget's time limit never waits for plotly.js;
- once plotly's model code is attached, tells the kernel (``{"psal": "attached"}``). plotly sends
  every change after construction as a one-off message (restyle, relayout, ...) that only
  attached code sees, and its front end never redraws from the full state, so the changes made
  while plotly.js loaded would be lost (seen: figures restyled right after creation showed their
  first data). The kernel answers with the figure's current data and layout and
  ``{"psal": "synced"}``; ``render`` draws only after that, as plotly's own widget does.

A figure created later on the page (the dataset view's charts, filled when their tab is first
opened) costs no second parse.
"""

from __future__ import annotations

import functools
from copy import deepcopy
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import traitlets

__all__ = ["LOADER_JS", "FigureWidget", "plotly_bundle"]

#: The module anywidget loads for every figure (see the module docstring). ``Symbol.for`` names
#: the page-wide slot, so every figure (and a re-run cell's new figures) finds the same import.
LOADER_JS = r"""
// psal_widgets: one plotly.js per page for every figure (psal_widgets/widgets/figure.py).
const SLOT = Symbol.for("psal_widgets.plotly_widget_bundle");
// Render anyway if the kernel does not answer the handshake (a kernel busy for this long).
const HANDSHAKE_MS = 20000;

function plotlyModule(model) {
  let loading = globalThis[SLOT];
  if (!loading) {
    const url = URL.createObjectURL(new Blob([model.get("_psal_bundle")], { type: "text/javascript" }));
    loading = import(url);
    loading.finally(() => URL.revokeObjectURL(url)).catch(() => {});
    globalThis[SLOT] = loading;
    // A failed import is not cached: the next figure tries again.
    loading.catch(() => { if (globalThis[SLOT] === loading) delete globalThis[SLOT]; });
  }
  return loading;
}

export default () => {
  let attached = null;
  return {
    initialize({ model, experimental }) {
      let answered;
      const synced = new Promise((resolve) => { answered = resolve; });
      const onMessage = (msg) => {
        if (msg && msg.psal === "synced") { model.off("msg:custom", onMessage); answered(); }
      };
      model.on("msg:custom", onMessage);
      // Returns at once: anywidget's time limit does not wait for plotly.js.
      attached = plotlyModule(model).then(async (mod) => {
        const factory = typeof mod.default === "function" ? mod.default : () => mod.default;
        const widget = factory();
        widget.initialize({ model, experimental });
        // Updates sent before this point reached no plotly code: ask the kernel for the
        // figure's current data and layout, and draw only once they are here.
        model.send({ psal: "attached" });
        await Promise.race([synced, new Promise((resolve) => setTimeout(resolve, HANDSHAKE_MS))]);
        if (model.state_change) await model.state_change;
        return widget;
      });
      attached.catch((err) => console.error("[psal_widgets] plotly.js failed to load", err));
    },
    async render(view) {
      const widget = await attached;
      return widget.render(view);
    },
  };
};
"""


@functools.cache
def plotly_bundle() -> str:
    """plotly's own widget module (the JavaScript its ``FigureWidget`` would load), as text."""
    esm = go.FigureWidget._esm
    if isinstance(esm, Path):
        return esm.read_text(encoding="utf-8")
    return str(esm)


class FigureWidget(go.FigureWidget):
    """``plotly.graph_objects.FigureWidget`` whose pages load plotly.js once (module docstring).

    Same constructor, properties, callbacks and update methods as plotly's class.
    """

    _esm = LOADER_JS
    _psal_bundle = traitlets.Unicode().tag(sync=True)

    # A dynamic default is computed when the widget first sends its state, so the bundle is in
    # the state the front-end model starts with (the loader reads it in ``initialize``).
    @traitlets.default("_psal_bundle")
    def _default_psal_bundle(self) -> str:
        return plotly_bundle()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_msg(self._psal_message)

    def _psal_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("psal") == "attached":
            self.resync()

    def resync(self) -> None:
        """Send the figure's current data and layout to the front end, then ``{"psal": "synced"}``.

        plotly keeps ``_widget_data`` / ``_widget_layout`` as they were at construction and sends
        later changes as messages; a front end that attached after some of them gets the whole
        current state here instead.
        """
        self._widget_data = deepcopy(self._data)
        self._widget_layout = deepcopy(self._layout_obj._props)
        # An assignment equal to the kernel's last value sends nothing, yet the front end may
        # hold an older one: send both explicitly (at worst once more than needed, per page).
        self.send_state(["_widget_data", "_widget_layout"])
        self.send({"psal": "synced"})
