"""What every experiment shares: its configuration, its context (model, statistics, dataset,
profile index, output writer) and the registry of experiments by name."""
from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .output import ResultWriter

if TYPE_CHECKING:
    from ..data import LabeledImages
    from ..explainer import Explainer

__all__ = ["EXPERIMENTS", "ExperimentConfig", "ExperimentContext", "ExperimentSpec", "register", "run_experiment"]


@dataclass(frozen=True)
class ExperimentConfig:
    """Options shared by every experiment (``psal experiment NAME --data ... --seed ...``).

    Attributes
    ----------
    data : str
        Labelled dataset: CSV ``file,label``, ImageFolder tree or flat ILSVRC2012 val folder.
    model, weights, stats, device : str or None
        As for ``psal explain``; ``stats`` is a helper-objects folder (default: the model's own).
    limit : int or None
        Use N images spread evenly over the dataset.
    seed : int
        Seeds every random choice (random filter baselines, bootstrap, splits).
    out : Path
        Output folder (created).
    index : str or None
        Profile-index folder to read (default: found or built for this model and data).
    batch_size : int
    progress : bool
        Progress bars (tqdm).
    options : dict
        The experiment's own options (from its ``add_arguments``).
    argv : list of str
        The command line, recorded in ``result.json``.
    """

    data: str
    model: str = "efficientnet_lite0"
    weights: str | None = None
    stats: str | None = None
    device: str | None = None
    limit: int | None = None
    seed: int = 0
    out: Path = Path("psal_out/experiment")
    index: str | None = None
    batch_size: int = 16
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)


class ExperimentContext:
    """Everything an experiment needs, built lazily and once.

    Parameters
    ----------
    name : str
        The experiment's name (for the output's provenance).
    config : ExperimentConfig
    explainer : Explainer, optional
        A ready model with its statistics (tests pass a tiny model here); default: built from
        ``config.model``, ``config.weights``, ``config.stats``.
    dataset : LabeledImages, optional
        Default: ``open_dataset(config.data, limit=config.limit)``.
    """

    def __init__(
        self,
        name: str,
        config: ExperimentConfig,
        *,
        explainer: Explainer | None = None,
        dataset: LabeledImages | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._explainer = explainer
        self._dataset = dataset
        self.writer = ResultWriter(config.out, experiment=name, config=config)

    @property
    def explainer(self) -> Explainer:
        if self._explainer is None:
            from ..explainer import Explainer

            c = self.config
            self._explainer = Explainer(c.model, weights=c.weights, stats=c.stats or "auto", device=c.device)
        return self._explainer

    @property
    def dataset(self) -> LabeledImages:
        if self._dataset is None:
            from ..data import open_dataset

            m = self.explainer.model
            self._dataset = open_dataset(self.config.data, labels=m.labels, preprocess=m.preprocess,
                                         limit=self.config.limit)
        return self._dataset

    @cached_property
    def index(self) -> Any:
        """The profile index of ``dataset`` (raw profiles + per-image table; see ``psal index``).

        Images the index skipped as unreadable are dropped from :attr:`dataset` here, so that
        row ``i`` of the index stays item ``i`` of the dataset (read the index before keeping a
        reference to the dataset)."""
        from ..index import index_for

        idx = index_for(self.explainer, self.dataset, path=self.config.index,
                        batch_size=self.config.batch_size, progress=self.config.progress)
        self._dataset = idx.usable(self.dataset)
        return idx

    def rng(self, *keys: int) -> np.random.Generator:
        """A generator seeded by the run's seed and ``keys`` (e.g. the image's index), so that runs
        repeat and every image gets its own independent stream."""
        return np.random.default_rng([self.config.seed, *keys])

    def option(self, name: str, default: Any = None) -> Any:
        return self.config.options.get(name, default)


@dataclass(frozen=True)
class ExperimentSpec:
    """One experiment: its name, one-line help, the run function and its own CLI options."""

    name: str
    help: str
    module: str
    run: Callable[[ExperimentContext], dict[str, Any]] | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    def load(self) -> ExperimentSpec:
        """The spec with ``run`` / ``add_arguments`` read from its module (imported lazily: the
        CLI lists experiments without importing torch)."""
        mod = importlib.import_module(f"{__package__}.{self.module}")
        return ExperimentSpec(self.name, self.help, self.module, mod.run, getattr(mod, "add_arguments", None))


#: Experiment name -> spec, in the paper's order.
EXPERIMENTS: dict[str, ExperimentSpec] = {}


def register(name: str, help: str, module: str) -> None:
    EXPERIMENTS[name] = ExperimentSpec(name, help, module)


register("profiles", "Fig. 1-2: mean raw and standardized profiles, correct vs incorrect", "profiles")
register("pruning", "§3.1 / Fig. 3 / A.6: turn off salient vs random vs least salient filters", "pruning")
register("neighbors", "§3.2 / A.2 / A.4: nearest neighbours in saliency space vs feature space", "neighbors")
register("finetune", "§3.3 / Fig. 6: one gradient step on the salient filters", "finetune")
register("masking", "§3.4 / A.8-A.9: mask the pixels that drive the salient filters", "masking")
register("smoothgrad", "A.1: SmoothGrad parameter saliency", "smoothgrad")
register("adversarial", "A.7: adversarial parameter perturbation", "adversarial")
register("sanity", "A.11: cascading model randomization sanity check", "sanity")


def run_experiment(
    name: str,
    *,
    data: str | os.PathLike[str],
    explainer: Explainer | None = None,
    dataset: LabeledImages | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run one experiment from Python; returns the ``result.json`` content.

    Keyword arguments that are fields of :class:`ExperimentConfig` set them; the others become
    the experiment's own options (e.g. ``k=[1, 5]`` for ``pruning``).
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    fields = set(ExperimentConfig.__dataclass_fields__)
    shared = {k: v for k, v in options.items() if k in fields}
    own = {k: v for k, v in options.items() if k not in fields}
    if "out" in shared:
        shared["out"] = Path(shared["out"])
    config = ExperimentConfig(data=os.fspath(data), options=own, **shared)
    spec = EXPERIMENTS[name].load()
    ctx = ExperimentContext(name, config, explainer=explainer, dataset=dataset)
    assert spec.run is not None
    result = spec.run(ctx)
    return ctx.writer.write(result, ctx)
