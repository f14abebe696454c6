"""Turn filters off (paper §3.1): prune F, or the same number of random / least-salient filters."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from .common import explain
from .host import Host, StateEvent
from .html import esc, table

__all__ = ["PrunePanel"]

_KINDS = {
    "selected": "F (the boosted set)",
    "salient": "top-n most salient",
    "random": "n random",
    "least": "n least salient",
}


def prune_table(results: list[dict[str, Any]]) -> str:
    """One row per pruning: which filters, top-1, P(label under study) and P(class predicted
    before) before -> after, new top-5."""
    rows = []
    for r in results:
        (b1, a1), (pb, pa) = r["top1"], r["prob_label"]
        qb, qa = r.get("prob_pred", (float("nan"), float("nan")))
        top5 = ", ".join(f"{esc(p['name'])} {p['prob']:.2f}" for p in r["prediction"])
        rows.append(
            [
                esc(_KINDS.get(r["kind"], r["kind"])),
                str(r.get("n", len(r["filters"]))),
                f"{esc(b1['name'])} {b1['prob']:.3f} &rarr; {esc(a1['name'])} {a1['prob']:.3f}",
                f"{pb:.4f} &rarr; {pa:.4f}",
                f"{qb:.4f} &rarr; {qa:.4f}",
                top5,
            ]
        )
    first = results[0] if results else {}
    label = esc(first.get("label", {}).get("name", "label"))
    pred = esc(first.get("pred", {}).get("name", "predicted"))
    return table(
        ["filters off", "n", "top-1 before &rarr; after", f"P({label})", f"P({pred}, predicted before)",
         "top-5 after"],
        rows,
        align=["left", "right", "left", "right", "right", "left"],
    )


_HELP = (
    "<b>Turning a filter off</b> means making its output channel exactly zero after its "
    "normalization layer, and predicting again: the next layer gets no signal at all from that "
    "filter. Your model is not changed. (The original code zeroed the weights and the batch "
    "norm's bias, which leaves a constant in the channel; that recipe is kept as an option of "
    "<code>psal experiment pruning --recipe paper-literal</code>.) "
    "If the filters of F really cause a mistake, turning them off should help the true class "
    "more than turning off as many <b>random</b> filters or the <b>least salient</b> ones "
    "(the baselines; paper section 3.1). The seed picks the random filters."
)


class PrunePanel:
    """Buttons: turn F off; F plus the random and least-salient baselines in one click.

    The result table is the place for more per-run fields (the Session's prune report).
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        g = host.status.guard
        self.seed = W.BoundedIntText(
            value=0, min=0, max=2**31 - 1, description="seed", layout=W.Layout(width="150px")
        )
        self.off = W.Button(
            description="turn off F", button_style="warning", layout=W.Layout(width="120px")
        )
        self.compare = W.Button(
            description="F vs random vs least salient", layout=W.Layout(width="230px")
        )
        self.result = W.HTML("")
        self.results: list[dict[str, Any]] = []
        self.off.on_click(g(lambda _b: self.prune(("selected",)), "turn off F"))
        self.compare.on_click(
            g(lambda _b: self.prune(("selected", "random", "least")), "baselines")
        )
        self.widget = W.VBox(
            [
                explain(
                    "Turn filters off",
                    "off = the filter's output channel is exactly zero; compare F with as many "
                    "random (drawn afresh per image) or least-salient filters.",
                    _HELP,
                ),
                W.HBox([self.off, self.compare, self.seed]),
                self.result,
            ]
        )
        host.changed.connect(self._on_change, "turn filters off")

    def prune(self, kinds: tuple[str, ...] = ("selected",)) -> None:
        s = self.host.session
        seed = int(self.seed.value)

        def run() -> list[dict[str, Any]]:
            n = len(s.filters)
            return [s.prune(kind, n=None if kind == "selected" else n, seed=seed) for kind in kinds]

        self.host.worker.run(run, then=self.show, what="turn filters off")

    def _on_change(self, event: StateEvent) -> None:
        if event.touches("profile"):
            self.clear()  # the results were for another image, label or mask

    def show(self, results: list[dict[str, Any]]) -> None:
        self.results = results
        self.result.value = prune_table(results)

    def clear(self) -> None:
        self.results = []
        self.result.value = ""
