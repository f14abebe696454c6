"""ImageNet label lookup: indices, WordNet ids, names, typos, duplicates, validation file names."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from psal_widgets.labels import (
    AmbiguousLabelError,
    LabelSet,
    UnknownLabelError,
    ilsvrc_val_label,
    imagenet_labels,
)


@pytest.fixture(scope="module")
def imnet() -> LabelSet:
    return imagenet_labels()


def test_imagenet_tables_are_complete(imnet):
    assert len(imnet) == 1000
    assert imnet.wnids is not None and len(imnet.wnids) == 1000
    assert len(set(imnet.wnids)) == 1000
    # Standard order is sorted WordNet ids.
    assert list(imnet.wnids) == sorted(imnet.wnids)
    assert imagenet_labels() is imnet  # cached


@pytest.mark.parametrize(
    ("index", "name", "wnid"),
    [
        (0, "tench", "n01440764"),
        (2, "great white shark", "n01484850"),
        (3, "tiger shark", "n01491361"),
        (281, "tabby", "n02123045"),
        (999, "toilet tissue", "n15075141"),
    ],
)
def test_known_pairs(imnet, index, name, wnid):
    assert imnet.name(index) == name
    assert imnet.wnids[index] == wnid
    assert imnet.resolve(wnid) == index
    assert imnet.resolve(name) == index


@pytest.mark.parametrize(
    "label",
    [281, "281", " 281 ", np.int64(281), torch.tensor(281), "n02123045", "N02123045", "tabby",
     "TABBY", "  Tabby "],
)
def test_resolve_forms(imnet, label):
    assert imnet.resolve(label) == 281


def test_resolve_multiword_names(imnet):
    assert imnet.resolve("Great White Shark") == 2
    assert imnet.resolve("great_white_shark") == 2
    assert imnet.resolve("great   white shark") == 2
    assert imnet.resolve("shih tzu") == imnet.resolve("Shih-Tzu")


def test_typo_suggests_close_name(imnet):
    with pytest.raises(UnknownLabelError) as info:
        imnet.resolve("tabbby")
    msg = str(info.value)
    assert "'tabbby'" in msg
    assert "did you mean 'tabby' (281)" in msg
    assert "WordNet id" in msg and "class index 0-999" in msg
    assert info.value.suggestions[0] == (281, "tabby")
    assert isinstance(info.value, ValueError)


def test_unknown_wnid_suggests_close_wnid(imnet):
    with pytest.raises(UnknownLabelError, match="n02123045 tabby"):
        imnet.resolve("n02123046")


@pytest.mark.parametrize("bad", [1000, -1, "1000", "-3", 10**9])
def test_out_of_range(imnet, bad):
    with pytest.raises(UnknownLabelError, match="out of range 0-999"):
        imnet.resolve(bad)
    if isinstance(bad, int):
        with pytest.raises(UnknownLabelError, match="out of range"):
            imnet.name(bad)


@pytest.mark.parametrize("bad", ["", "   ", True, 2.0, None, "zzzz qqqq"])
def test_other_bad_labels(imnet, bad):
    with pytest.raises(UnknownLabelError):
        imnet.resolve(bad)


def test_case_only_duplicate_needs_exact_spelling(imnet):
    # torchvision lists "Cardigan" (the corgi) and "cardigan" (the sweater).
    assert imnet.resolve("Cardigan") == 264
    assert imnet.resolve("cardigan") == 474
    with pytest.raises(AmbiguousLabelError) as info:
        imnet.resolve("CARDIGAN")
    assert "264" in str(info.value) and "474" in str(info.value)


def test_torchvision_names_are_unique_as_written(imnet):
    # Older name lists had "crane" and "maillot" twice; torchvision disambiguates them.
    assert len(set(imnet.names)) == 1000
    assert imnet.name(134) == "crane bird" and imnet.name(517) == "crane"
    assert imnet.resolve("crane") == 517


def test_exact_duplicates_in_custom_set_list_both_indices():
    labels = LabelSet(names=("crane", "dog", "crane"))
    with pytest.raises(AmbiguousLabelError, match=r"0 'crane', 2 'crane'"):
        labels.resolve("crane")
    assert labels.resolve("dog") == 1
    assert labels.resolve(2) == 2


def test_custom_set_without_wnids():
    labels = LabelSet(names=["cat", "dog"])  # lists are accepted and stored as tuples
    assert labels.names == ("cat", "dog") and hash(labels)
    assert len(labels) == 2
    assert labels.resolve("DOG") == 1
    with pytest.raises(UnknownLabelError, match="no WordNet ids") as info:
        labels.resolve("n02123045")
    assert "WordNet id like" not in str(info.value)
    with pytest.raises(ValueError, match="2 names but 1 wnids"):
        LabelSet(names=("a", "b"), wnids=("n00000001",))


def test_search_order(imnet):
    hits = imnet.search("shark")
    assert [i for i, _ in hits] == [2, 3]  # word matches, no fuzzy noise after real hits
    assert imnet.search("tabbby")[0] == (281, "tabby")  # falls back to fuzzy
    assert imnet.search("crane")[0] == (517, "crane")  # exact before containing
    assert (134, "crane bird") in imnet.search("crane")
    assert imnet.search("n01440764") == [(0, "tench")]
    assert imnet.search("281")[0] == (281, "tabby")
    assert len(imnet.search("dog", limit=5)) == 5
    assert imnet.search("", limit=3) == [(0, "tench"), (1, "goldfish"), (2, "great white shark")]
    assert imnet.search("tabby", limit=0) == []
    hits = imnet.search("terrier", limit=100)
    assert len(hits) == len({i for i, _ in hits}) > 10


def test_ilsvrc_val_label():
    assert ilsvrc_val_label("ILSVRC2012_val_00000347.JPEG") == 472
    assert ilsvrc_val_label("some/dir/ILSVRC2012_val_00015416.JPEG") == 13
    assert ilsvrc_val_label("C:\\val\\ILSVRC2012_val_00015416.JPEG") == 13
    assert ilsvrc_val_label("ilsvrc2012_val_00015416.png") == 13  # re-encoded copy
    assert ilsvrc_val_label("ILSVRC2012_val_00000000.JPEG") is None  # numbering starts at 1
    assert ilsvrc_val_label("ILSVRC2012_val_00050001.JPEG") is None
    assert ilsvrc_val_label("cat.jpg") is None
