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

__all__ = ["EXPERIMENTS", "ExperimentConfig", "ExperimentContext", "ExperimentSpec", "register", "run_experiment"]
