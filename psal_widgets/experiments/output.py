"""Writing an experiment's outputs: ``result.json`` with provenance, PNG and HTML figures."""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .base import ExperimentConfig, ExperimentContext

__all__ = ["ResultWriter", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """NumPy scalars and arrays, tuples and paths as plain JSON values; NaN/inf as null."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


class ResultWriter:
    """Collects the files of one run in ``out`` and writes ``result.json`` last.

    Parameters
    ----------
    out : Path
        Output folder (created on the first write).
    experiment : str
    config : ExperimentConfig
    """

    def __init__(self, out: Path, *, experiment: str, config: ExperimentConfig) -> None:
        self.out = Path(out)
        self.experiment = experiment
        self.config = config
        self.files: list[str] = []

    def path(self, name: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        if name not in self.files:
            self.files.append(name)
        return self.out / name

    def png(self, name: str, figure: Any, *, dpi: int = 120) -> Path:
        """Save a matplotlib figure as ``name`` (closed afterwards)."""
        import matplotlib.pyplot as plt

        p = self.path(name)
        figure.savefig(p, dpi=dpi, bbox_inches="tight")
        plt.close(figure)
        return p

    def html(self, name: str, figure: Any) -> Path:
        """Save a plotly figure as a self-contained interactive page (works offline)."""
        p = self.path(name)
        figure.write_html(str(p), include_plotlyjs=True, full_html=True)
        return p

    def write(self, result: dict[str, Any], ctx: ExperimentContext) -> dict[str, Any]:
        """Add provenance to ``result`` and write ``result.json``; returns what was written."""
        from .. import __version__

        c = self.config
        model = ctx.explainer.model
        stats = ctx.explainer.stats
        doc = {
            "experiment": self.experiment,
            **result,
            "command": " ".join(c.argv) if c.argv else None,
            "model": model.name,
            "weights_id": model.weights_id,
            "data": ctx.dataset.description,
            "n_images": len(ctx.dataset),
            "limit": c.limit,
            "seed": c.seed,
            "options": c.options,
            "stats": None
            if stats is None
            else {k: stats.meta.get(k) for k in ("dataset", "n", "created") if k in stats.meta},
            "package_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": [*self.files, "result.json"],
            "out": str(self.out.resolve()),
        }
        doc = to_jsonable(doc)
        self.path("result.json").write_text(json.dumps(doc, indent=2) + "\n")
        return doc
