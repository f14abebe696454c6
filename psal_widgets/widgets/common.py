"""Helpers shared by the panels: sizes, the class pickers, explanations, colour bars, and closing
every widget of a tree (ipywidgets keeps each widget, its ``Layout`` and its ``Style`` registered
until it is closed)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import ipywidgets as W

from ..viz.heatmap import colormap_stops
from .html import esc

__all__ = [
    "DISPLAY_WIDTH",
    "class_picker",
    "close_widgets",
    "colorbar_html",
    "explain",
    "label_option",
    "parse_label",
    "widget_tree",
]

#: Displayed size of the 224-px images (enlarged a little so that brushing is comfortable, small
#: enough that the image and its map sit beside the chart on a 1366-px screen).
DISPLAY_WIDTH = 264

_OPTION = re.compile(r"^(.*\S)\s+\((\d+)\)$")


def label_option(index: int, name: str) -> str:
    """How a class appears in the pickers: ``"tabby (281)"`` (unique even for duplicate names)."""
    return f"{name} ({int(index)})"


def parse_label(text: str) -> int | str | None:
    """A picker's text -> what ``Session.set_label`` takes: the index of ``"name (i)"``,
    otherwise the text itself (an index, WordNet id or name); None for blank text."""
    t = text.strip()
    if not t:
        return None
    m = _OPTION.match(t)
    if m:
        return int(m.group(2))
    return t


def class_picker(
    names: list[str], *, description: str, placeholder: str, width: str, value: str = ""
) -> W.Combobox:
    """A searchable picker over the class names (options ``"name (i)"``, free text allowed:
    an index, a WordNet id or a name), applied on Enter or when the box loses focus."""
    return W.Combobox(
        options=[label_option(i, n) for i, n in enumerate(names)],
        value=value,
        placeholder=placeholder,
        ensure_option=False,
        continuous_update=False,
        description=description,
        layout=W.Layout(width=width),
    )


def explain(title: str, summary: str, details: str) -> W.HTML:
    """A panel heading: bold ``title``, a one-line ``summary`` and a collapsible "what is this?".

    ``summary`` and ``details`` are HTML (escape user text first); ``details`` is shown inside an
    HTML ``<details>`` element, so opening it needs no round trip to the kernel.
    """
    html = (
        f'<div class="psal-help" style="font-size:12px;line-height:1.35;color:#444">'
        f'<b style="font-size:13px;color:#111">{esc(title)}</b> &nbsp;{summary} '
        f'<details style="display:inline"><summary style="display:inline;cursor:pointer;'
        f'color:#2a5db0">what is this?</summary>'
        f'<div style="margin:4px 0 6px 0;padding:6px 8px;background:#f6f8fb;border-left:3px solid '
        f'#9db4d8;max-width:640px;white-space:normal">{details}</div></details></div>'
    )
    out = W.HTML(html, layout=W.Layout(width="100%"))
    out.add_class("psal-explain")
    return out


def colorbar_html(
    *, colormap: str = "jet", width: int = DISPLAY_WIDTH, low: str = "", high: str = ""
) -> str:
    """A horizontal colour bar (CSS gradient of the OpenCV colour map) with end labels."""
    stops = ", ".join(f"rgb({r},{g},{b}) {100 * t:.0f}%" for t, (r, g, b) in colormap_stops(colormap))
    return (
        f'<div class="psal-colorbar" style="width:{width}px;font-size:10px;color:#555">'
        f'<div style="height:8px;border:1px solid #bbb;background:linear-gradient(to right, {stops})">'
        f'</div><div style="display:flex;justify-content:space-between"><span>{low}</span>'
        f"<span>{high}</span></div></div>"
    )


def widget_tree(roots: Iterable[Any]) -> list[W.Widget]:
    """Every widget reachable from ``roots`` through traits (children, layout, style, sources).

    Plain objects among ``roots`` (a panel) contribute the widgets among their attributes.
    """
    seen: dict[int, W.Widget] = {}
    stack: list[Any] = []
    for r in roots:
        if isinstance(r, W.Widget):
            stack.append(r)
        elif r is not None:
            stack.extend(v for v in vars(r).values() if isinstance(v, (W.Widget, list, tuple)))
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
            continue
        if not isinstance(item, W.Widget) or id(item) in seen:
            continue
        seen[id(item)] = item
        for name in item.trait_names():
            if name.startswith("_") and name not in ("_dom_classes",):
                continue
            try:
                value = getattr(item, name)
            except Exception:  # a trait that cannot be read on a closed widget
                continue
            if isinstance(value, (W.Widget, list, tuple)):
                stack.append(value)
    return list(seen.values())


def close_widgets(roots: Iterable[Any]) -> int:
    """Close every widget reachable from ``roots`` (see :func:`widget_tree`); returns how many."""
    tree = widget_tree(roots)
    for w in tree:
        w.close()
    return len(tree)
