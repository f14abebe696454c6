"""A zero-height widget that reports the width of the box it sits in (an ``anywidget``).

Plotly's ``FigureWidget`` takes plotly.js's 700-px default on its first render in Voila instead
of filling its box, and a figure width set from Python is the one thing that reliably reaches
the browser after display. So the chart's column holds a :class:`WidthProbe`; its front end
reports the column's width and the window's height (on load and on every resize, debounced)
and the profile panel sets the figure's size from them: the chart follows the window.
"""

from __future__ import annotations

import anywidget
import traitlets

__all__ = ["WidthProbe"]

_ESM = """
function render({ model, el }) {
  el.style.width = "100%";
  el.style.height = "0px";
  let lastW = -1, lastH = -1, timer = null;
  const send = () => {
    const w = Math.round(el.getBoundingClientRect().width);
    const h = Math.round(window.innerHeight);
    if (w > 0 && (Math.abs(w - lastW) >= 4 || Math.abs(h - lastH) >= 20)) {
      lastW = w;
      lastH = h;
      model.set("window_height", h);
      model.set("width", w);
      model.save_changes();
    }
  };
  const later = () => { clearTimeout(timer); timer = setTimeout(send, 100); };
  const ro = new ResizeObserver(later);
  ro.observe(el);
  window.addEventListener("resize", later);
  setTimeout(send, 0);
  return () => { ro.disconnect(); window.removeEventListener("resize", later); clearTimeout(timer); };
}
export default { render };
"""


class WidthProbe(anywidget.AnyWidget):
    """Reports ``width`` (pixels, 0 until displayed) and ``window_height`` from the browser."""

    _esm = _ESM
    width = traitlets.Int(0).tag(sync=True)
    window_height = traitlets.Int(0).tag(sync=True)
