"""Top-5 prediction and the label under study (a Combobox searchable over every class name)."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from .common import class_picker, explain, label_option, parse_label
from .host import Host, StateEvent
from .html import esc, prediction_table

__all__ = ["PredictionPanel"]

_HELP = (
    "The model's five most probable classes for the image as it is now (masks included). "
    "The <b>label under study</b> is the class whose loss is differentiated to get the filter "
    "saliencies: by default the true label when it is known, otherwise the prediction. Pick "
    "another class to ask &ldquo;why is this not a <i>tabby</i>?&rdquo;: every view then "
    "explains that label."
)


class PredictionPanel:
    """``psal-prediction`` (top-5 with probability bars) and ``psal-label`` (the label picker).

    Picking a class (Enter or leaving the box) analyzes the image for that label; an unknown
    label shows an error in the status line and the picker goes back to the current label.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        s = host.session
        self.label = class_picker(
            s.labels.names,
            value=label_option(s.label, s.label_name),
            placeholder="type a class name",
            description="label",
            width="300px",
        )
        self.label.style.description_width = "initial"
        self.label.add_class("psal-label")
        self.source = W.HTML("")
        self.default = W.Button(
            description="back to default label", layout=W.Layout(width="170px")
        )
        self.table = W.HTML("")
        self.table.add_class("psal-prediction")
        host.watch(self.label, self._label_changed, "label")
        self.default.on_click(
            host.status.guard(lambda _b: self.request_label(None, default=True), "default label")
        )
        #: The label row sits in the app's toolbar; the table with the explanation in a column.
        self.label_row = W.HBox(
            [self.label, self.default, self.source],
            layout=W.Layout(flex_flow="row wrap", align_items="center"),
        )
        self.widget = W.VBox(
            [explain("Prediction", "what the model says now.", _HELP), self.table]
        )
        host.changed.connect(self._on_change, "prediction")

    def request_label(self, label: int | str | None, *, default: bool = False) -> None:
        """Study ``label`` (None with ``default=True``: back to the true / default label)."""
        if label is None and not default:
            self.show_label()  # blank text: keep the current label
            return
        s = self.host.session

        def change() -> None:
            try:
                s.set_label(label)
            except Exception:
                self.show_label()  # the previous label stays, and the picker says so
                raise

        self.host.change_state(
            change, what="label", changes=frozenset(("profile", "label", "filters"))
        )

    def _label_changed(self, change: dict[str, Any]) -> None:
        self.request_label(parse_label(str(change["new"])))

    # -- views (worker thread) ------------------------------------------------------------------
    def _on_change(self, event: StateEvent) -> None:
        if event.touches("profile", "image", "label"):
            self.show()

    def show_label(self) -> None:
        s = self.host.session
        with self.host.quiet(self.label):
            self.label.value = label_option(s.label, s.label_name)
        how = {
            "known": "the true label",
            "given": "chosen by you",
            "prediction": "the prediction (no true label known)",
        }
        self.source.value = (
            f'<span style="font-size:12px;color:#555">studying <b>{esc(s.label_name)}</b> '
            f"({esc(how.get(s.label_source, s.label_source))})</span>"
        )

    def show(self) -> None:
        s = self.host.session
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
