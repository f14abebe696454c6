"""The paper's dataset-level experiments, as functions (``psal experiment NAME``).

Each experiment is one module with a ``run(ctx) -> dict`` function and an ``add_arguments``
hook for its own options; :data:`EXPERIMENTS` maps the command-line name to it. Every run
writes into ``ctx.out``: ``result.json`` (the numbers plus provenance, see
:mod:`.output`), PNG figures and one interactive HTML figure.

>>> from psal_widgets.experiments import run_experiment
>>> result = run_experiment("profiles", data="val/labels.csv", limit=50, out="psal_out/profiles")
"""
from __future__ import annotations

from .base import EXPERIMENTS, ExperimentConfig, ExperimentContext, ExperimentSpec, register, run_experiment

__all__ = [
    "EXPERIMENTS", "ExperimentConfig", "ExperimentContext", "ExperimentSpec", "figures", "register",
    "run_experiment", "show",
]


def figures(result: dict) -> list[str]:
    """Absolute paths of the PNG figures a run wrote (from its ``result.json`` content)."""
    from pathlib import Path

    return [str(Path(result["out"]) / f) for f in result.get("files", []) if f.endswith(".png")]


def show(result: dict, *, summary: bool = True) -> None:
    """In a notebook: print a run's summary lines and display its PNG figures."""
    if summary:
        for line in result.get("summary", []):
            print(line)
    from IPython.display import Image, display

    for path in figures(result):
        display(Image(filename=path))
