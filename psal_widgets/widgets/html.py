"""Small HTML snippets shared by the panels (tables with inline bars), escaped throughout."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["bar", "change_bar", "esc", "prediction_table", "span", "table"]

_TABLE = 'style="border-collapse:collapse;font-size:12px;line-height:1.35"'
_CELL = 'style="padding:1px 6px;text-align:{align};white-space:nowrap"'


def esc(value: Any) -> str:
    return html.escape(str(value))


def span(content: str, style: str = "font-size:12px;color:#555", *, block: bool = False) -> str:
    """``<span style=...>content</span>`` (``<div>`` with ``block=True``); content as given."""
    tag = "div" if block else "span"
    return f'<{tag} style="{style}">{content}</{tag}>'


def bar(fraction: float, *, width: int = 90, color: str = "#4c72b0") -> str:
    """A horizontal bar ``fraction`` (clipped to [0, 1]) of ``width`` pixels."""
    f = min(max(float(fraction), 0.0), 1.0)
    inner = span("", f"display:block;width:{f * width:.1f}px;height:9px;background:{color}")
    track = f"display:inline-block;width:{width}px;height:9px;background:#eee;vertical-align:middle"
    return span(inner, track)


def change_bar(pct: float | None, *, scale: float = 100.0, width: int = 60) -> str:
    """A bar centred on zero: red to the right for an increase, green to the left for a decrease."""
    if pct is None:
        return '<span style="color:#888">n/a</span>'
    f = min(abs(float(pct)) / scale, 1.0) * width
    track = f"display:inline-block;width:{width}px;height:9px;background:#f3f3f3"
    fill = span("", f"display:inline-block;width:{f:.1f}px;height:9px;background:%s")
    left = span(fill % "#3a9d5d" if pct < 0 else "", track + ";text-align:right")
    right = span(fill % "#e8453c" if pct >= 0 else "", track + ";text-align:left")
    axis = span("", "display:inline-block;width:1px;height:11px;background:#666")
    return left + axis + right


def table(
    header: Sequence[str], rows: Iterable[Sequence[str]], *, align: Sequence[str] | None = None
) -> str:
    """An HTML table; cells are inserted as given (escape text with :func:`esc` first)."""
    aligns = list(align) if align is not None else ["left"] * len(header)
    head = "".join(
        f"<th {_CELL.format(align=a)}>{h}</th>" for h, a in zip(header, aligns, strict=False)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td {_CELL.format(align=a)}>{c}</td>" for c, a in zip(row, aligns, strict=False)
        )
        + "</tr>"
        for row in rows
    )
    head_row = f'<tr style="border-bottom:1px solid #ccc">{head}</tr>'
    return f"<table {_TABLE}><thead>{head_row}</thead><tbody>{body}</tbody></table>"


def prediction_table(top: Sequence[dict[str, Any]], *, mark: int | None = None) -> str:
    """Top-k rows ``{index, name, prob}`` with probability bars; class ``mark`` in bold."""
    rows = []
    for p in top:
        name = esc(p["name"])
        if mark is not None and int(p["index"]) == int(mark):
            name = f"<b>{name}</b>"
        rows.append([name, f"{float(p['prob']):.3f}", bar(float(p["prob"]))])
    return table(["class", "prob", ""], rows, align=["left", "right", "left"])
