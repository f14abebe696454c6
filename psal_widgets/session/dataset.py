"""A labelled dataset behind the session: its helper objects, the browser rows and neighbours.

``psal stats --data PATH`` stores, for every image of a dataset, the model's prediction and
(with ``--profiles``) its raw profile. :class:`DatasetBrowser` finds the helper-objects folder
that covers the dataset, lists rows (right / wrong predictions, one class), and ranks images by
cosine similarity of standardized profiles (paper §3.2). NumPy only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data import LabeledImages, open_dataset
from ..labels import LabelSet
from ..kernels.neighbours import cosine_neighbours, layer_columns, standardize_bank
from ..store import PROFILES_FILE, SampleResults, StatsError, load_samples, load_stats, stats_dirs
from .errors import SessionError
from .types import DatasetRow, NeighbourRow, OnlyFilter

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["DatasetBrowser", "no_dataset"]


@dataclass
class DatasetBrowser:
    """A dataset matched with per-sample helper objects of the session's model.

    Attributes
    ----------
    dataset : LabeledImages
    samples : SampleResults
        Per-sample predictions (and profiles) of the helper objects.
    rows : np.ndarray of int64, shape [N]
        Row of ``samples`` for each dataset image.
    folder : Path
        The helper-objects folder used.
    """

    dataset: LabeledImages
    samples: SampleResults
    rows: np.ndarray
    folder: Path
    _bank: np.ndarray | None = None

    @classmethod
    def open(
        cls,
        data: str | os.PathLike[str],
        data_stats: str | os.PathLike[str] | None,
        *,
        explainer: Explainer,
    ) -> DatasetBrowser:
        """Open ``data`` and find helper objects computed over it.

        Parameters
        ----------
        data : path
            A labels CSV or folder (:func:`~psal_widgets.data.open_dataset`).
        data_stats : path, optional
            The helper-objects folder; default every folder of the model
            (:func:`~psal_widgets.store.stats_dirs`), one with profiles first.
        explainer : Explainer
            Its model and filter index must match the helper objects.

        Raises
        ------
        StatsError
            No folder covers the dataset (the message gives the command that computes one).
        """
        model = explainer.model
        ds = open_dataset(data, labels=model.labels, preprocess=model.preprocess)
        shown = Path(os.fspath(data)).name
        cmd = (
            f"`psal stats --data {shown} --out DIR` (add --profiles for neighbours), "
            "then Session(data=..., data_stats=DIR)"
        )
        if data_stats is not None:
            folders = [Path(data_stats)]
        else:
            # Every helper-objects folder of the model is a candidate: the shipped one may cover
            # the dataset without profiles while `psal stats --profiles` wrote another to the
            # user cache. The first that covers the dataset wins, one with profiles first.
            folders = stats_dirs(model.name)
        if not folders:
            raise StatsError(
                f"no helper objects found for {model.name}: compute them over the dataset with {cmd}"
            )
        matches: list[DatasetBrowser] = []
        errors: list[StatsError] = []
        for folder in folders:
            try:
                samples, rows = _match_samples(folder, ds, shown, cmd, explainer)
            except StatsError as err:
                errors.append(err)
            else:
                matches.append(cls(ds, samples, rows, folder))
        if not matches:
            raise errors[0]
        matches.sort(key=lambda m: not (m.folder / PROFILES_FILE).is_file())
        return matches[0]

    def __len__(self) -> int:
        return len(self.dataset)

    def list_rows(
        self, labels: LabelSet, *, only: OnlyFilter | None = None, want: int | None = None
    ) -> list[DatasetRow]:
        """Dataset images with the model's prediction, in dataset order.

        Parameters
        ----------
        labels : LabelSet
        only : {None, "correct", "incorrect"}
        want : int, optional
            Keep only images of this true class.
        """
        if only not in (None, "correct", "incorrect"):
            raise ValueError(f"only must be None, 'correct' or 'incorrect'; got {only!r}")
        ds, samples = self.dataset, self.samples
        files = ds.relative_files()
        out: list[DatasetRow] = []
        for i, j in enumerate(self.rows.tolist()):
            label, pred = int(ds.labels[i]), int(samples.pred[j])
            correct = label == pred
            if (only == "correct" and not correct) or (only == "incorrect" and correct):
                continue
            if want is not None and label != want:
                continue
            out.append(
                {
                    "i": i,
                    "file": files[i],
                    "label": label,
                    "label_name": labels.name(label),
                    "pred": pred,
                    "pred_name": labels.name(pred),
                    "correct": correct,
                    "prob_label": float(samples.prob_label[j]),
                    "prob_pred": float(samples.prob_pred[j]),
                }
            )
        return out

    def entry(self, i: int) -> tuple[Path, str, int]:
        """``(file, relative name, true label)`` of dataset image ``i``."""
        n = len(self.dataset)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n:
            raise IndexError(f"dataset index must lie in [0, {n}); got {i!r}")
        i = int(i)
        return self.dataset.files[i], self.dataset.relative_files()[i], int(self.dataset.labels[i])

    def neighbours(
        self,
        query: np.ndarray | None,
        *,
        explainer: Explainer,
        k: int = 10,
        layers: tuple[int, int] | None = None,
        exclude: int | None = None,
    ) -> list[NeighbourRow]:
        """Dataset images whose standardized profiles are closest (cosine) to ``query``.

        Parameters
        ----------
        query : np.ndarray, shape [F], or None
            Standardized profile of the current image (None without statistics).
        explainer : Explainer
            Its statistics standardize the bank (the same as the query's).
        k : int
        layers : (first, last), optional
            Layer positions (0-based, inclusive) to compare on (shallow vs deep filters).
        exclude : int, optional
            A dataset row never returned (the current image itself).
        """
        samples, rows, ds = self.samples, self.rows, self.dataset
        if samples.profiles is None:
            raise StatsError(
                f"no profiles.safetensors in {self.folder}: neighbours need every image's "
                "profile; compute them with `psal stats --data PATH --out DIR --profiles` "
                "and pass data_stats=DIR"
            )
        stats = explainer.stats
        if stats is None or query is None:
            raise StatsError(
                "neighbours compare standardized profiles, which need validation statistics"
            )
        if self._bank is None:
            # Standardized once per session: [N, F] float32.
            self._bank = standardize_bank(
                samples.profiles[rows], stats.mean.numpy(), stats.std.numpy()
            )
        columns = layer_columns(explainer.index, layers)
        skip = () if exclude is None else (exclude,)
        idx, sims = cosine_neighbours(query, self._bank, k=k, columns=columns, exclude=skip)
        files = ds.relative_files()
        labels = explainer.model.labels
        out: list[NeighbourRow] = []
        for i, sim in zip(idx.tolist(), sims.tolist(), strict=True):
            label, pred = int(ds.labels[i]), int(samples.pred[rows[i]])
            out.append(
                {
                    "i": i,
                    "file": files[i],
                    "label": label,
                    "label_name": labels.name(label),
                    "pred": pred,
                    "pred_name": labels.name(pred),
                    "correct": label == pred,
                    "similarity": float(sim),
                }
            )
        return out

    def release(self) -> None:
        """Drop the standardized neighbour bank (rebuilt on the next query)."""
        self._bank = None


def _match_samples(
    folder: Path, ds: LabeledImages, shown: str, cmd: str, explainer: Explainer
) -> tuple[SampleResults, np.ndarray]:
    """The per-sample results of ``folder`` for every image of ``ds``, and their rows."""
    # Refuses statistics of another model or other weights.
    load_stats(folder, index=explainer.index, weights_id=explainer.model.weights_id)
    samples = load_samples(folder)
    if samples is None:
        raise StatsError(
            f"the helper objects in {folder.name} hold no per-sample results; recompute them with {cmd}"
        )
    where = {f: j for j, f in enumerate(samples.files)}
    files = ds.relative_files()
    missing = [f for f in files if f not in where]
    if missing:
        raise StatsError(
            f"the helper objects in {folder.name} were computed over another dataset: "
            f"{len(missing)} of {len(files)} images of {shown} are not in them "
            f"(e.g. {missing[0]}); compute them with {cmd}"
        )
    rows = np.asarray([where[f] for f in files], dtype=np.int64)
    wrong = np.flatnonzero(samples.label[rows] != np.asarray(ds.labels))
    if wrong.size:
        raise StatsError(
            f"{wrong.size} images of {shown} have other labels than in the helper objects of "
            f"{folder.name} (e.g. {files[int(wrong[0])]}); recompute them with {cmd}"
        )
    return samples, rows


def no_dataset() -> SessionError:
    """The error of a dataset request on a session without ``data=``."""
    return SessionError(
        "no dataset: create the session with Session(data=PATH) (a labels CSV or folder)"
    )
