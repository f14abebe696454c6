"""Top-5 prediction and the label under study (a Combobox searchable over every class name)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from .html import esc, prediction_table

if TYPE_CHECKING:
    from .app import Explorer

__all__ = ["PredictionPanel", "class_picker", "label_option", "parse_label"]

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


class PredictionPanel:
    """``psal-prediction`` (top-5 with probability bars) and ``psal-label`` (the label picker).

    Picking a class (Enter or leaving the box) analyzes the image for that label; an unknown
    label shows an error in the status line and the picker goes back to the current label.
    """

    def __init__(self, app: Explorer) -> None:
        self.app = app
        s = app.session
        self.label = class_picker(
            s.labels.names,
            value=label_option(s.label, s.label_name),
            placeholder="type a class name",
            description="label",
            width="360px",
        )
        self.label.add_class("psal-label")
        self.source = W.HTML("")
        self.default = W.Button(description="true / default label", layout=W.Layout(width="170px"))
        self.table = W.HTML("")
        self.table.add_class("psal-prediction")
        app.watch(self.label, self._label_changed, "label")
        self.default.on_click(
            app.status.guard(lambda _b: self.request_label(None, default=True), "default label")
        )
        self.widget = W.VBox(
            [
                W.HTML("<b>Prediction</b>"),
                self.table,
                W.HBox([self.label, self.default], layout=W.Layout(flex_flow="row wrap")),
                self.source,
            ]
        )

    def request_label(self, label: int | str | None, *, default: bool = False) -> None:
        """Study ``label`` (None with ``default=True``: back to the true / default label)."""
        if label is None and not default:
            self.show_label()  # blank text: keep the current label
            return
        s = self.app.session

        def change() -> None:
            try:
                s.set_label(label)
            except Exception:
                self.show_label()  # the previous label stays, and the picker says so
                raise

        self.app.change_state(change, what="label")

    def _label_changed(self, change: dict[str, Any]) -> None:
        self.request_label(parse_label(str(change["new"])))

    # -- views (worker thread) ------------------------------------------------------------------
    def show_label(self) -> None:
        s = self.app.session
        with self.app.quiet(self.label):
            self.label.value = label_option(s.label, s.label_name)
        how = {
            "known": "the true label",
            "given": "chosen",
            "prediction": "the prediction (no true label known)",
        }
        self.source.value = (
            f'<span style="font-size:12px;color:#555">studying <b>{esc(s.label_name)}</b> '
            f"({esc(how.get(s.label_source, s.label_source))})</span>"
        )

    def show(self) -> None:
        s = self.app.session
        top = s.prediction(5)
        probs = s.probabilities() if hasattr(s, "probabilities") else None
        extra = ""
        if probs is not None and all(p["index"] != s.label for p in top):
            extra = (
                f'<div style="font-size:12px">label <b>{esc(s.label_name)}</b>: '
                f"{float(probs[s.label]):.4f}</div>"
            )
        self.table.value = prediction_table(top, mark=s.label) + extra
        self.show_label()
