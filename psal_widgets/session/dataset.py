"""A labelled dataset behind the session, read from its profile index (``psal index``).

:class:`DatasetBrowser` pairs a :class:`~psal_widgets.data.LabeledImages` with the
:class:`~psal_widgets.index.ProfileIndex` of the session's model over it (row ``i`` = dataset
image ``i``) and answers every dataset question of the explorer from the index alone: the
browser rows and the error table (prediction, loss, mean standardized saliency), neighbours in
standardized saliency space (paper §3.2; streamed over the memory-mapped index), the Fig. 2
summary (correct vs incorrect mean profiles) and a 2-D map of saliency space (PCA, or UMAP when
``umap-learn`` is installed).

Standardized profiles ``(raw - μ) / σ`` use the explainer's statistics (any dataset of the same
model). They are read in row blocks; the whole standardized matrix is kept in memory only when
it is small (:data:`BANK_LIMIT_BYTES`), otherwise every question streams over the index again.
NumPy only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..data import LabeledImages, open_dataset
from ..kernels.layout import sorted_profile
from ..kernels.neighbours import layer_columns
from ..labels import LabelSet
from ..store import StatsError
from .errors import SessionError
from .types import DatasetRow, DatasetSummary, NeighbourRow, OnlyFilter

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..index import ProfileIndex

__all__ = ["BANK_LIMIT_BYTES", "DatasetBrowser", "MapMethod", "SortKey", "no_dataset", "pca_2d"]

#: Column of the error table to sort by.
SortKey = Literal["loss", "mean_saliency"]
#: How :meth:`DatasetBrowser.map_2d` projects saliency space onto the plane.
MapMethod = Literal["pca", "umap"]

#: The standardized profiles are kept in memory (float32) up to this size (800 ImageNet images
#: with the default model: 67 MB); beyond it every question reads the index again in blocks.
BANK_LIMIT_BYTES = 512 * 2**20
#: Rows standardized at a time when streaming (float64 temporaries of CHUNK x F).
CHUNK = 256
#: PCA on at most this many matrix entries: more filters than fit are subsampled (random
#: columns, seeded), which keeps the SVD of a large dataset within seconds.
PCA_MAX_ENTRIES = 40_000_000


def _no_stats() -> StatsError:
    return StatsError(
        "the dataset view compares standardized profiles, which need validation statistics: "
        "create the session with stats='auto' (the model's own) or stats=DIR"
    )


def pca_2d(z: np.ndarray) -> np.ndarray:
    """The first two principal-component scores of the rows of ``z`` (centred; exact: the SVD,
    or the eigenvectors of the Gram matrix when there are fewer rows than columns).

    Signs are fixed so that each component's largest loading (in absolute value) is positive,
    which makes the result deterministic.

    Parameters
    ----------
    z : np.ndarray, shape [N, D]

    Returns
    -------
    np.ndarray of float64, shape [N, 2]
        Zero columns where fewer than two components exist (N < 3 or D < 2).
    """
    x = np.asarray(z, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    out = np.zeros((x.shape[0], 2), dtype=np.float64)
    if x.shape[0] < 2 or x.shape[1] < 1:
        return out
    if x.shape[0] < x.shape[1]:
        # Fewer images than filters (800 x 21k): the N x N Gram matrix has the same top
        # eigenvectors as the SVD's U at a fraction of the cost (one matrix product, one eigh).
        w, v = np.linalg.eigh(x @ x.T)
        top = np.argsort(-w, kind="stable")[:2]
        s = np.sqrt(np.clip(w[top], 0.0, None))
        u = v[:, top]
        with np.errstate(invalid="ignore", divide="ignore"):
            vt = (x.T @ u / np.where(s > 0, s, 1.0)).T
    else:
        u, s, vt = np.linalg.svd(x, full_matrices=False)
    m = min(2, s.shape[0])
    signs = np.sign(vt[np.arange(m), np.argmax(np.abs(vt[:m]), axis=1)])
    signs[signs == 0] = 1.0
    out[:, :m] = u[:, :m] * s[:m] * signs
    return out


@dataclass
class DatasetBrowser:
    """A dataset matched with the profile index of the session's model.

    Attributes
    ----------
    dataset : LabeledImages
    index : ProfileIndex
        Row ``i`` = dataset image ``i`` (:meth:`ProfileIndex.aligned`).
    """

    dataset: LabeledImages
    index: ProfileIndex
    _bank: np.ndarray | None = None
    _mean_saliency: np.ndarray | None = None
    _maps: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        data: str | os.PathLike[str],
        index: str | os.PathLike[str] | None = None,
        *,
        explainer: Explainer,
        progress: bool = False,
    ) -> DatasetBrowser:
        """Open ``data`` and find (or build) its profile index.

        Parameters
        ----------
        data : path
            A labels CSV or folder (:func:`~psal_widgets.data.open_dataset`).
        index : path, optional
            An index folder (``psal index --out DIR``), or where to build one. Default: an index
            in the user cache that covers the dataset, else one built there now (minutes for a
            few hundred images on a CPU; :func:`~psal_widgets.index.index_for`).
        explainer : Explainer
            Its model, weights and preprocessing must match the index.
        progress : bool
            A progress bar while building.

        Raises
        ------
        IndexError_
            The index belongs to another model or does not cover the dataset.
        """
        from ..index import index_for

        model = explainer.model
        ds = open_dataset(data, labels=model.labels, preprocess=model.preprocess)
        idx = index_for(explainer, ds, path=index, progress=progress)
        return cls(idx.usable(ds), idx)  # without unreadable images: row i of the index = item i

    @property
    def folder(self) -> Path:
        """The index folder."""
        return Path(self.index.path)

    def __len__(self) -> int:
        return len(self.dataset)

    # -- standardized profiles ----------------------------------------------------------------
    def _blocks(self, explainer: Explainer) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(rows [b], z [b, F] float32)`` over the whole index: from the kept bank, or read and
        standardized block by block (the bank is kept when it fits :data:`BANK_LIMIT_BYTES`)."""
        stats = explainer.stats
        if stats is None:
            raise _no_stats()
        n, f = len(self.index), self.index.n_filters
        if self._bank is None and n * f * 4 <= BANK_LIMIT_BYTES:
            self._bank = self.index.standardized(stats, chunk=CHUNK)
        if self._bank is not None:
            yield np.arange(n), self._bank
            return
        for start in range(0, n, CHUNK):
            rows = np.arange(start, min(n, start + CHUNK))
            yield rows, self.index.standardized(stats, rows=rows, chunk=CHUNK)

    def mean_saliency(self, explainer: Explainer) -> np.ndarray:
        """Mean standardized saliency of every image (over all filters; paper Fig. 2's measure).

        Returns
        -------
        np.ndarray of float64, shape [N]
            NaN everywhere when the explainer has no statistics.
        """
        if explainer.stats is None:
            return np.full(len(self), np.nan)
        if self._mean_saliency is None:
            out = np.empty(len(self), dtype=np.float64)
            for rows, z in self._blocks(explainer):
                out[rows] = z.mean(axis=1, dtype=np.float64)
            self._mean_saliency = out
        return self._mean_saliency

    # -- rows -----------------------------------------------------------------------------------
    def _row(self, i: int, labels: LabelSet, files: list[str], mean_sal: np.ndarray) -> DatasetRow:
        idx = self.index
        label, pred = int(idx.label[i]), int(idx.pred[i])
        loss = float(idx.loss[i])
        return {
            "i": int(i),
            "file": files[i],
            "label": label,
            "label_name": labels.name(label),
            "pred": pred,
            "pred_name": labels.name(pred),
            "correct": bool(idx.correct[i]),
            # The loss is the cross-entropy against the label: p(label) = exp(-loss).
            "prob_label": float(np.exp(-loss)),
            "prob_pred": float(idx.top5_prob[i, 0]),
            "loss": loss,
            "mean_saliency": float(mean_sal[i]),
        }

    def select(self, *, only: OnlyFilter | None = None, want: int | None = None) -> np.ndarray:
        """Rows (ascending) that pass the filters.

        Parameters
        ----------
        only : {None, "correct", "incorrect"}
        want : int, optional
            Keep only images of this true class.

        Returns
        -------
        np.ndarray of int64, shape [n]
        """
        if only not in (None, "correct", "incorrect"):
            raise ValueError(f"only must be None, 'correct' or 'incorrect'; got {only!r}")
        keep = np.ones(len(self), dtype=bool)
        if only is not None:
            keep &= self.index.correct == (only == "correct")
        if want is not None:
            keep &= self.index.label == int(want)
        return np.flatnonzero(keep).astype(np.int64)

    def list_rows(
        self,
        labels: LabelSet,
        *,
        explainer: Explainer,
        only: OnlyFilter | None = None,
        want: int | None = None,
        sort: SortKey | None = None,
        descending: bool = True,
        limit: int | None = None,
    ) -> list[DatasetRow]:
        """Dataset images with the model's prediction, in dataset order or sorted.

        Parameters
        ----------
        labels : LabelSet
        explainer : Explainer
            Its statistics give ``mean_saliency`` (NaN without statistics).
        only, want
            See :meth:`select`.
        sort : {None, "loss", "mean_saliency"}
            None: dataset order. Ties keep dataset order.
        descending : bool
        limit : int, optional
            At most this many rows (after sorting).
        """
        rows = self.select(only=only, want=want)
        mean_sal = self.mean_saliency(explainer)
        if sort is not None:
            if sort == "loss":
                key = self.index.loss[rows].astype(np.float64)
            elif sort == "mean_saliency":
                key = mean_sal[rows]
            else:
                raise ValueError(f"sort must be 'loss' or 'mean_saliency'; got {sort!r}")
            # Stable sort of the (negated) key: ties keep dataset order either way.
            rows = rows[np.argsort(-key if descending else key, kind="stable")]
        if limit is not None:
            if isinstance(limit, bool) or int(limit) < 0:
                raise ValueError(f"limit must be a non-negative integer; got {limit!r}")
            rows = rows[: int(limit)]
        files = self.dataset.relative_files()
        return [self._row(int(i), labels, files, mean_sal) for i in rows]

    def entry(self, i: int) -> tuple[Path, str, int]:
        """``(file, relative name, true label)`` of dataset image ``i``."""
        n = len(self.dataset)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n:
            raise IndexError(f"dataset index must lie in [0, {n}); got {i!r}")
        i = int(i)
        return self.dataset.files[i], self.dataset.relative_files()[i], int(self.dataset.labels[i])

    # -- neighbours -----------------------------------------------------------------------------
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
            Its statistics standardize the index (the same as the query's).
        k : int
        layers : (first, last), optional
            Layer positions (0-based, inclusive) to compare on (shallow vs deep filters).
        exclude : int, optional
            A dataset row never returned (the current image itself).
        """
        if isinstance(k, bool) or int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if explainer.stats is None or query is None:
            raise _no_stats()
        columns = layer_columns(explainer.index, layers)
        # Streamed over the index's memory-mapped float16 profiles: memory stays a few row
        # chunks whatever the dataset's size (kernels.neighbours.stream_neighbours).
        order, found = self.index.neighbours(
            query, explainer.stats, k=int(k), columns=columns, exclude=() if exclude is None else (int(exclude),)
        )
        sims = dict(zip(order.tolist(), found.tolist(), strict=True))
        files = self.dataset.relative_files()
        labels = explainer.model.labels
        idx = self.index
        out: list[NeighbourRow] = []
        for i in order.tolist():
            label, pred = int(idx.label[i]), int(idx.pred[i])
            out.append(
                {
                    "i": i,
                    "file": files[i],
                    "label": label,
                    "label_name": labels.name(label),
                    "pred": pred,
                    "pred_name": labels.name(pred),
                    "correct": bool(idx.correct[i]),
                    "similarity": sims[i],
                }
            )
        return out

    # -- dataset-level views --------------------------------------------------------------------
    def summary(self, explainer: Explainer) -> DatasetSummary:
        """Paper Fig. 2 for this dataset: the standardized profile averaged over the correct and
        over the incorrect images, each sorted per layer (the layout of the profile chart)."""
        correct = np.asarray(self.index.correct, dtype=bool)
        f = self.index.n_filters
        sums = {True: np.zeros(f), False: np.zeros(f)}
        for rows, z in self._blocks(explainer):
            for group in (True, False):
                sel = correct[rows] == group
                if sel.any():
                    sums[group] += z[sel].sum(axis=0, dtype=np.float64)
        counts = {g: int((correct == g).sum()) for g in (True, False)}
        means = {g: sums[g] / counts[g] if counts[g] else np.full(f, np.nan) for g in (True, False)}
        layouts = {g: sorted_profile(np.nan_to_num(means[g]), explainer.index) for g in (True, False)}
        per_image = self.mean_saliency(explainer)
        return {
            "x": layouts[True].x,
            "y_correct": layouts[True].y if counts[True] else np.full(f, np.nan),
            "y_incorrect": layouts[False].y if counts[False] else np.full(f, np.nan),
            "layer": layouts[True].layer,
            "layer_names": list(layouts[True].layer_names),
            "n_correct": counts[True],
            "n_incorrect": counts[False],
            "mean_saliency_correct": float(per_image[correct].mean()) if counts[True] else float("nan"),
            "mean_saliency_incorrect": float(per_image[~correct].mean()) if counts[False] else float("nan"),
        }

    def map_2d(self, explainer: Explainer, method: MapMethod = "pca", *, seed: int = 0) -> np.ndarray:
        """2-D coordinates of every image's standardized profile, cached per method.

        Parameters
        ----------
        explainer : Explainer
        method : {"pca", "umap"}
            ``pca``: the first two principal components (exact SVD of the centred matrix; with
            more than :data:`PCA_MAX_ENTRIES` entries, of a seeded random subset of the
            filters). ``umap``: cosine UMAP (needs ``umap-learn``).
        seed : int
            For the column subset and UMAP.

        Returns
        -------
        np.ndarray of float64, shape [N, 2]
        """
        if method not in ("pca", "umap"):
            raise ValueError(f"method must be 'pca' or 'umap'; got {method!r}")
        if method in self._maps:
            return self._maps[method]
        if method == "umap":
            try:
                import umap  # type: ignore[import-not-found]
            except ImportError as err:
                raise SessionError(
                    "the UMAP map needs the umap-learn package (pip install umap-learn); "
                    "method='pca' needs nothing more"
                ) from err
            z = np.concatenate([b for _, b in self._blocks(explainer)])
            n_nb = max(2, min(15, len(self) - 1))
            coords = umap.UMAP(n_components=2, metric="cosine", n_neighbors=n_nb, random_state=seed).fit_transform(z)
            out = np.asarray(coords, dtype=np.float64)
        else:
            n, f = len(self.index), self.index.n_filters
            cols = np.arange(f)
            if n * f > PCA_MAX_ENTRIES:
                keep = max(2, PCA_MAX_ENTRIES // max(n, 1))
                cols = np.sort(np.random.default_rng(seed).choice(f, size=min(f, keep), replace=False))
            z = np.empty((n, cols.size), dtype=np.float32)
            for rows, block in self._blocks(explainer):
                z[rows] = block[:, cols]
            out = pca_2d(z)
        self._maps[method] = out
        return out

    def release(self) -> None:
        """Drop the standardized profiles and the cached maps (rebuilt on the next query)."""
        self._bank = None
        self._mean_saliency = None
        self._maps.clear()


def no_dataset() -> SessionError:
    """The error of a dataset request on a session without ``data=``."""
    return SessionError(
        "no dataset: create the session with Session(data=PATH) (a labels CSV or folder)"
    )
