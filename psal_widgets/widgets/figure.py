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

- imports plotly's bundle once per page and shares the module between every figure, so a page
  pays for plotly.js once (:mod:`psal_widgets.plotly_page`). The bundle comes from whichever is
  first: the page's own head (``psal dashboard``'s template, :mod:`psal_widgets.dashboard_page`),
  a preload cell (:func:`page_preload_html`), the figure's state (the synced trait
  ``_psal_bundle``, left empty when the page brings it) or the kernel on request;
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
import json
import os
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import traitlets

from ..plotly_page import IMPORT_ONCE_JS, PAGE_PLOTLY_ENV, widget_bundle_path

__all__ = ["LOADER_JS", "PRELOAD_HTML", "FigureWidget", "page_imports_plotly", "page_preload_html", "plotly_bundle"]

#: The module anywidget loads for every figure (see the module docstring).
LOADER_JS = (
    "// psal_widgets: one plotly.js per page for every figure (psal_widgets/widgets/figure.py).\n"
    + IMPORT_ONCE_JS
    + r"""
// Render anyway if the kernel does not answer the handshake (a kernel busy for this long).
const HANDSHAKE_MS = 20000;

// plotly's bundle, as text: from the figure's state, or (state left empty: the page carries it,
// see page_preload_html) from the kernel on request, for a page whose preload did not run.
function bundleText(model) {
  const code = model.get("_psal_bundle");
  if (code) return code;
  return new Promise((resolve) => {
    const onMessage = (msg) => {
      if (msg && msg.psal === "bundle") { model.off("msg:custom", onMessage); resolve(msg.code); }
    };
    model.on("msg:custom", onMessage);
    model.send({ psal: "need_bundle" });
  });
}

// The page's import, whoever started it (the page's head, a preload cell, another figure). If that
// one fails (the head's URL unreachable), this figure starts one from the kernel's copy, which the
// other figures waiting on the failed import then share.
const fromKernel = (model) => () => Promise.resolve(bundleText(model)).then(importText);
const plotlyModule = (model) => importOnce(fromKernel(model)).catch(() => importOnce(fromKernel(model)));

export default () => {
  let attached = null;
  return {
    initialize({ model, experimental }) {
      model.send({ psal: "loading" });  // a page is starting this figure: the kernel may hold back idle work
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
        // Updates sent before this point reached no plotly code. "_psal_fresh": the kernel has
        // sent none since the data and layout in this state, which can then be drawn at once.
        // Otherwise ask the kernel for the current ones, and draw only once they are here.
        if (model.get("_psal_fresh")) {
          model.off("msg:custom", onMessage);
          mark("fresh");
        } else {
          model.send({ psal: "attached" });
          mark("attached");
          await Promise.race([synced, new Promise((resolve) => setTimeout(resolve, HANDSHAKE_MS))]);
          mark("synced");
        }
        if (model.state_change) await model.state_change;
        return widget;
      });
      attached.catch((err) => console.error("[psal_widgets] plotly.js failed to load", err));
    },
    async render(view) {
      const widget = await attached;
      mark("render-start");
      const out = await widget.render(view);
      mark("render-end");
      view.model.send({ psal: "drawn" });  // the kernel may start work it held back for the first draw
      return out;
    },
  };
};
"""
)


@functools.cache
def plotly_bundle() -> str:
    """plotly's own widget module (the JavaScript its ``FigureWidget`` would load), as text.

    The same file the dashboard's page serves (:func:`~psal_widgets.plotly_page.widget_bundle_path`;
    ``tests/test_dashboard_page.py`` checks it is the one plotly's widget loads).
    """
    return widget_bundle_path().read_text(encoding="utf-8")


#: The page preload (:func:`page_preload_html`) was displayed in this kernel: figures created
#: afterwards leave plotly.js out of their state.
_PAGE_CARRIES_BUNDLE = False

#: Markup that starts importing plotly.js into the page as soon as the browser reads it; see
#: :func:`page_preload_html`. ``BUNDLE_TEXT`` stands for the bundle as a JSON string.
PRELOAD_HTML = (
    "<script>\n/* psal_widgets: import plotly.js now, for the figures that come later (widgets/figure.py). */\n"
    "(() => {" + IMPORT_ONCE_JS + "importOnce(() => importText(BUNDLE_TEXT));\n})();\n</script>"
)


def page_imports_plotly() -> bool:
    """Whether the page showing this kernel's outputs imports plotly.js by itself.

    True in ``psal dashboard``'s kernels (:data:`~psal_widgets.plotly_page.PAGE_PLOTLY_ENV`): its
    Voila template starts the import from the page's head (:mod:`psal_widgets.dashboard_page`).
    """
    return os.environ.get(PAGE_PLOTLY_ENV, "") == "1"


def page_preload_html() -> str:
    """A classic ``<script>`` carrying plotly.js, for the first output of a served page.

    The dashboard notebook shows it before building the explorer. The browser runs a classic
    script as soon as it renders it, so plotly.js (about 1 s of the page's main thread on a
    2-core machine) loads while the page boots its widget manager, instead of after the first
    figure arrives. Figures created afterwards in this kernel leave the bundle out of their
    state (5 MB less to send); a page where the script did not run (an untrusted notebook)
    gets it from the kernel on request.

    Under ``psal dashboard`` (:func:`page_imports_plotly`) the page's head has already started
    the import, earlier still (while this kernel runs the notebook), so the script is left out:
    an HTML comment only.

    Returns
    -------
    str
        HTML; the bundle is a JSON string with ``<`` escaped, so it can never close the tag.
    """
    global _PAGE_CARRIES_BUNDLE
    _PAGE_CARRIES_BUNDLE = True
    if page_imports_plotly():
        return "<!-- psal_widgets: plotly.js is imported by the page itself (psal_widgets/dashboard_page.py) -->"
    code = json.dumps(plotly_bundle()).replace("<", "\\u003c")
    return PRELOAD_HTML.replace("BUNDLE_TEXT", code, 1)


@functools.cache
def _layout_template(name: str | None) -> go.layout.Template | None:
    """plotly's default template ``name`` without its defaults for every trace type.

    The figures set their traces' styles themselves; the per-type part (about 40 trace types)
    only costs the browser time on every first draw: 60-120 ms of the profile chart's 400 ms in
    Chromium on this project's machine, side by side with the full template.
    """
    if not name:
        return None
    return go.layout.Template(layout=pio.templates[name].layout)


class FigureWidget(go.FigureWidget):
    """``plotly.graph_objects.FigureWidget`` whose pages load plotly.js once (module docstring).

    Same constructor, properties, callbacks and update methods as plotly's class.
    """

    _esm = LOADER_JS
    _psal_bundle = traitlets.Unicode().tag(sync=True)
    #: No update was sent since ``_widget_data`` / ``_widget_layout``: a front end that starts
    #: from this state draws at once, without the handshake.
    _psal_fresh = traitlets.Bool(True).tag(sync=True)

    # A dynamic default is computed when the widget first sends its state, so the bundle is in
    # the state the front-end model starts with (the loader reads it in ``initialize``).
    @traitlets.default("_psal_bundle")
    def _default_psal_bundle(self) -> str:
        return "" if _PAGE_CARRIES_BUNDLE or page_imports_plotly() else plotly_bundle()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        layout = kwargs.get("layout")
        if len(args) < 2 and (layout is None or isinstance(layout, dict)) and "template" not in (layout or {}):
            template = _layout_template(pio.templates.default)
            if template is not None:
                kwargs["layout"] = {**(layout or {}), "template": template}
        super().__init__(*args, **kwargs)
        # plotly's constructor ends by copying its data and layout into the state (after it has
        # sent its own template update to nobody): a front end starting from it needs no handshake.
        self._psal_fresh = True
        self._front_end_callbacks: dict[str, list[Callable[[], None]]] = {"loading": [], "drawn": []}
        self.on_msg(self._psal_message)

    def on_loading(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (kernel main thread) when a front end starts loading the figure."""
        self._front_end_callbacks["loading"].append(callback)

    def on_drawn(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (kernel main thread) each time a front end has drawn the figure."""
        self._front_end_callbacks["drawn"].append(callback)

    def notify_change(self, change: Any) -> None:
        # plotly sends every update as a one-off ``_py2js_*`` value. Mark the state stale first,
        # so a front end never sees the update's message before ``_psal_fresh`` turns false.
        if (change.get("name", "").startswith("_py2js_") and change.get("new") is not None
                and self._psal_fresh):
            self._psal_fresh = False
        super().notify_change(change)

    def _psal_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("psal") == "attached":
            self.resync()
        elif content.get("psal") in self._front_end_callbacks:
            for callback in list(self._front_end_callbacks[content["psal"]]):
                callback()
        elif content.get("psal") == "need_bundle":
            self.send({"psal": "bundle", "code": plotly_bundle()})

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
        # Last: a front end must never read "fresh" before the current data and layout.
        self._psal_fresh = True
