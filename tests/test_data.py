"""Image loading, preprocessing and dataset discovery, on tiny generated files (no model)."""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from psal_widgets.data import (
    DatasetError,
    ImageError,
    LabeledImages,
    Preprocess,
    load_image,
    open_dataset,
)
from psal_widgets.labels import imagenet_labels

ROOT = Path(__file__).resolve().parents[1]
VAL800 = Path(
    os.environ.get("PSAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
) / "imagenet-val-800"

SMALL = Preprocess(resize=40, crop=32)  # keeps the dataset tests fast


@pytest.fixture(scope="module")
def labels():
    return imagenet_labels()


def _photo(w: int = 48, h: int = 36, seed: int = 0) -> Image.Image:
    """A smooth RGB test picture (gradients + noise), not a flat colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    noisy = base + rng.normal(0, 10, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _save(path: Path, img: Image.Image | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (img or _photo()).save(path, **kw)
    return path


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


# -- load_image: failures ------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="image not found: .*nope.jpg"):
        load_image(tmp_path / "nope.jpg")


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a folder, not an image.*open_dataset"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_text_renamed_as_jpeg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("these are my holiday notes, not a photo\n")
    with pytest.raises(ImageError, match="not an image.*text file renamed"):
        load_image(p)


def test_html_saved_as_jpeg(tmp_path):
    p = tmp_path / "page.jpg"
    p.write_text("<!DOCTYPE html><html><body>404</body></html>")
    with pytest.raises(ImageError, match="HTML"):
        load_image(p)


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.jpg"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="noise.jpg is not an image"):
        load_image(p)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    _photo(256, 256).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(p)


def test_corrupt_png_payload(tmp_path):
    buf = io.BytesIO()
    _photo(64, 64).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)  # zero a block inside the compressed pixels
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(p)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but carries almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + pixels + chunk(b"IEND", b"")


def test_decompression_bomb(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(60_000, 60_000))  # 3.6 gigapixels declared
    with pytest.raises(ImageError, match="too large|pixel limit"):
        load_image(p)


def test_own_pixel_limit(tmp_path):
    p = _save(tmp_path / "a.png", _photo(40, 30))
    with pytest.raises(ImageError, match=r"40x30 pixels, over the 1,000 pixel limit"):
        load_image(p, max_pixels=1000)
    assert load_image(p, max_pixels=1200).size == (40, 30)


def test_too_small(tmp_path):
    p = _save(tmp_path / "icon.png", _photo(5, 40))
    with pytest.raises(ImageError, match="only 5x40 pixels.*at least 8"):
        load_image(p)


# -- load_image: conversions ---------------------------------------------------------------
def test_bytes_and_pathlike_sources(tmp_path):
    p = _save(tmp_path / "x.png", _photo(20, 10))
    a, b, c = load_image(p), load_image(str(p)), load_image(p.read_bytes())
    assert a.mode == b.mode == c.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(c))


def test_grayscale_png(tmp_path):
    arr = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    p = _save(tmp_path / "g.png", Image.fromarray(arr, "L"))
    out = np.asarray(load_image(p))
    assert out.shape == (16, 16, 3)
    assert np.array_equal(out[..., 0], arr) and np.array_equal(out[..., 2], arr)


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[:, :5] = (255, 0, 0, 255)  # opaque red
    arr[:, 5:] = (0, 0, 255, 0)  # fully transparent blue
    p = _save(tmp_path / "t.png", Image.fromarray(arr, "RGBA"))
    out = np.asarray(load_image(p))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 9]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (12, 12), 0)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    img.paste(1, (0, 0, 6, 12))
    p = _save(tmp_path / "p.png", img, transparency=0)
    out = np.asarray(load_image(p))
    assert tuple(out[0, 0]) == (0, 200, 0)
    assert tuple(out[0, 11]) == (255, 255, 255)


def test_sixteen_bit_png_is_scaled(tmp_path):
    arr = np.array([[0, 32896, 65535, 65535]] * 8, dtype=np.uint16)
    arr = np.repeat(arr, 2, axis=1)  # 8 x 8
    p = _save(tmp_path / "deep.png", Image.fromarray(arr))
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(load_image(p))
    assert out.dtype == np.uint8
    assert list(out[0, ::2, 0]) == [0, 128, 255, 255]


def test_cmyk_jpeg(tmp_path):
    p = _save(tmp_path / "c.jpg", _photo().convert("CMYK"), quality=95)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (48, 36)


def test_exif_orientation_applied(tmp_path):
    img = _photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    p = _save(tmp_path / "rot.jpg", img, exif=exif)
    assert Image.open(p).size == (40, 20)
    assert load_image(p).size == (20, 40)


def test_raw_images_ship_and_load():
    folder = ROOT / "raw_images"
    files = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    assert {p.name for p in files} >= {"grace_hopper.jpg", "chelsea.png", "coffee.png"}
    for p in files:
        assert p.stat().st_size < 520_000, p.name
        assert min(load_image(p).size) >= 224
    assert (folder / "CREDITS.md").is_file()


# -- Preprocess ----------------------------------------------------------------------------
def test_preprocess_shapes_and_roundtrip():
    pre = Preprocess()
    img = _photo(300, 260, seed=3)
    x = pre(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    shown = pre.display(img)
    assert shown.shape == (224, 224, 3) and shown.dtype == np.uint8
    back = pre.denormalize(x)
    assert back.shape == shown.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - shown.astype(int)).max() <= 1
    # Normalization really happened: channel means are near zero-centred, not in [0, 1].
    assert x.min() < 0


def test_preprocess_follows_torchvision_reference():
    from torchvision.transforms import v2

    img = _photo(300, 260, seed=4)
    ref = v2.Compose([
        v2.Resize(256, antialias=True),
        v2.CenterCrop(224),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])(img)
    assert torch.allclose(Preprocess()(img), ref, atol=1e-5)


def test_preprocess_accepts_other_modes_and_devices():
    pre = Preprocess(resize=32, crop=24, interpolation="bicubic")
    x = pre(_photo().convert("L"))
    assert x.shape == (3, 24, 24)
    assert pre.denormalize(x.requires_grad_()).shape == (24, 24, 3)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        pre.denormalize(x.unsqueeze(0))


def test_preprocess_dict_roundtrip():
    pre = Preprocess(
        resize=292, crop=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"
    )
    d = json.loads(json.dumps(pre.to_dict()))
    assert d == {
        "resize": 292, "crop": 256, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"
    }
    again = Preprocess.from_dict(d)
    assert again == pre and hash(again) == hash(pre)
    assert Preprocess.from_dict({}) == Preprocess()
    squash = Preprocess(crop_mode="squash")
    assert Preprocess.from_dict(json.loads(json.dumps(squash.to_dict()))) == squash
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocess.from_dict({**d, "resize_mode": "x"})


@pytest.mark.parametrize(
    "kw", [{"interpolation": "cubic"}, {"crop": 0}, {"std": (1.0, 0.0, 1.0)}, {"mean": (0.5, 0.5)}]
)
def test_preprocess_rejects_bad_options(kw):
    with pytest.raises(ValueError):
        Preprocess(**kw)


# -- datasets ------------------------------------------------------------------------------
def test_csv_dataset(tmp_path, labels):
    for i, name in enumerate(["a.png", "sub/b.jpg", "c.JPEG"]):
        _save(tmp_path / "set" / name, _photo(seed=i))
    csv_path = _write_csv(
        tmp_path / "set" / "list.csv",
        [
            ["file", "label", "note"],
            ["a.png", "281", "index"],
            ["sub/b.jpg", "n01484850", "wnid"],
            ["c.JPEG", "Tiger Shark", "name"],
        ],
    )
    ds = open_dataset(csv_path, labels=labels, preprocess=SMALL)
    assert len(ds) == 3
    assert ds.labels == [281, 2, 3]
    assert ds.relative_files() == ["a.png", "sub/b.jpg", "c.JPEG"]
    assert ds.root == csv_path.parent
    assert ds.description == "csv list.csv in set, 3 images"
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 2
    xb, yb = next(iter(DataLoader(ds, batch_size=3)))
    assert xb.shape == (3, 3, 32, 32) and yb.tolist() == [281, 2, 3]


def test_csv_header_case_bom_and_blank_rows(tmp_path, labels):
    _save(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("\ufeffFile , Label\r\na.png,tabby\r\n\r\n", encoding="utf-8")
    assert open_dataset(tmp_path / "t.csv", labels=labels).labels == [281]


def test_folder_with_labels_csv(tmp_path, labels):
    _save(tmp_path / "d" / "images" / "x.png")
    _write_csv(tmp_path / "d" / "labels.csv", [["file", "label"], ["images/x.png", "espresso"]])
    ds = open_dataset(tmp_path / "d", labels=labels)
    assert ds.labels == [967]
    assert ds.root == tmp_path / "d"
    assert ds.description == "csv labels.csv in d, 1 images"
    assert ds.preprocess is None and ds[0][0].shape == (3, 224, 224)  # default preprocessing


def test_image_folder(tmp_path, labels):
    root = tmp_path / "train"
    _save(root / "n02123045" / "b.png")
    _save(root / "n02123045" / "a.jpg")
    _save(root / "2" / "deep" / "c.webp")
    _save(root / "tiger shark" / "d.bmp")
    _save(root / "tiger shark" / ".hidden.png")
    (root / "empty_notes").mkdir()
    (root / "n02123045" / "readme.txt").write_text("not an image")
    ds = open_dataset(root, labels=labels, preprocess=SMALL)
    # Folders sorted by name: "2", "n02123045", "tiger shark"; files sorted inside.
    assert ds.relative_files() == [
        "2/deep/c.webp", "n02123045/a.jpg", "n02123045/b.png", "tiger shark/d.bmp"
    ]
    assert ds.labels == [2, 281, 281, 3]
    assert ds.description == "image folder train, 3 classes, 4 images"
    assert ds[3][1] == 3


def test_image_folder_unknown_class(tmp_path, labels):
    _save(tmp_path / "root" / "tabbby" / "a.png")
    with pytest.raises(DatasetError, match="class folder 'tabbby'.*did you mean 'tabby'"):
        open_dataset(tmp_path / "root", labels=labels)


def test_flat_ilsvrc_folder(tmp_path, labels):
    for name in ["ILSVRC2012_val_00015416.JPEG", "ILSVRC2012_val_00000347.JPEG"]:
        _save(tmp_path / "val" / name, format="JPEG")
    ds = open_dataset(tmp_path / "val", labels=labels)
    assert ds.relative_files() == ["ILSVRC2012_val_00000347.JPEG", "ILSVRC2012_val_00015416.JPEG"]
    assert ds.labels == [472, 13]
    assert ds.description == "ILSVRC2012 validation images in val, 2 images"


def test_flat_folder_without_known_names(tmp_path, labels):
    _save(tmp_path / "pics" / "holiday.jpg")
    with pytest.raises(DatasetError, match="none of the 1 images.*ILSVRC2012"):
        open_dataset(tmp_path / "pics", labels=labels)
    _save(tmp_path / "pics" / "ILSVRC2012_val_00000347.JPEG", format="JPEG")
    with pytest.raises(DatasetError, match="1 of 2 images.*holiday.jpg"):
        open_dataset(tmp_path / "pics", labels=labels)


def test_limit_spreads_over_classes(tmp_path, labels):
    for cls in ["0", "1", "2", "3"]:
        for k in range(3):
            _save(tmp_path / "f" / cls / f"{k}.png")
    ds = open_dataset(tmp_path / "f", labels=labels, limit=4)
    assert ds.labels == [0, 1, 2, 3]
    assert ds.description == "image folder f, 4 classes, 4 of 12 images (evenly spaced)"
    assert len(open_dataset(tmp_path / "f", labels=labels, limit=50)) == 12
    with pytest.raises(DatasetError, match="limit"):
        open_dataset(tmp_path / "f", labels=labels, limit=0)


def test_subset_and_no_absolute_paths(tmp_path, labels):
    for k in range(4):
        _save(tmp_path / "s" / "tabby" / f"{k}.png")
    ds = open_dataset(tmp_path / "s", labels=labels, preprocess=SMALL)
    sub = ds.subset([3, 1])
    assert isinstance(sub, LabeledImages)
    assert sub.relative_files() == ["tabby/3.png", "tabby/1.png"]
    assert sub.preprocess == SMALL and sub.root == ds.root
    assert len(ds) == 4  # the original is untouched
    for d in (ds, sub):
        assert str(tmp_path) not in d.description
        assert all(not Path(f).is_absolute() for f in d.relative_files())


# -- dataset errors ------------------------------------------------------------------------
def test_missing_path(tmp_path, labels):
    with pytest.raises(DatasetError, match="dataset not found"):
        open_dataset(tmp_path / "nowhere", labels=labels)


def test_single_image_is_not_a_dataset(tmp_path, labels):
    with pytest.raises(DatasetError, match="single file"):
        open_dataset(_save(tmp_path / "a.png"), labels=labels)


def test_csv_without_columns(tmp_path, labels):
    p = _write_csv(tmp_path / "x.csv", [["path", "class"], ["a.png", "1"]])
    with pytest.raises(DatasetError, match=r"columns \['path', 'class'\].*'file' and 'label'"):
        open_dataset(p, labels=labels)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="needs at least 'file' and 'label'"):
        open_dataset(tmp_path / "empty.csv", labels=labels)


def test_csv_unknown_label_names_the_row(tmp_path, labels):
    _save(tmp_path / "a.png")
    _save(tmp_path / "b.png")
    p = _write_csv(tmp_path / "l.csv", [["file", "label"], ["a.png", "tabby"], ["b.png", "tabbby"]])
    with pytest.raises(DatasetError, match=r"l.csv line 3 \(b.png\).*did you mean 'tabby'"):
        open_dataset(p, labels=labels)
    p = _write_csv(tmp_path / "m.csv", [["file", "label"], ["a.png", "1000"]])
    with pytest.raises(DatasetError, match="line 2.*out of range"):
        open_dataset(p, labels=labels)


def test_csv_missing_file(tmp_path, labels):
    _save(tmp_path / "a.png")
    p = _write_csv(tmp_path / "l.csv", [["file", "label"], ["a.png", "1"], ["gone.png", "2"]])
    with pytest.raises(DatasetError, match="1 missing file.*line 3: gone.png.*relative to the CSV"):
        open_dataset(p, labels=labels)


def test_empty_datasets(tmp_path, labels):
    p = _write_csv(tmp_path / "only_header.csv", [["file", "label"]])
    with pytest.raises(DatasetError, match="lists no images"):
        open_dataset(p, labels=labels)
    (tmp_path / "void").mkdir()
    (tmp_path / "void" / "sub").mkdir()
    _write_csv(tmp_path / "void" / "mine.csv", [["file", "label"]])
    with pytest.raises(DatasetError, match=r"no images found in void \(found mine.csv"):
        open_dataset(tmp_path / "void", labels=labels)


def test_raw_images_labels_csv(labels):
    ds = open_dataset(ROOT / "raw_images", labels=labels)
    named = dict(zip(ds.relative_files(), ds.labels, strict=True))
    assert named == {"grace_hopper.jpg": 652, "chelsea.png": 281, "coffee.png": 967}


# -- shared validation subset --------------------------------------------------------------
@pytest.mark.data
@pytest.mark.skipif(
    not (VAL800 / "labels.csv").is_file(), reason="shared imagenet-val-800 not present"
)
def test_shared_val800(labels):
    with (VAL800 / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    ds = open_dataset(VAL800, labels=labels)
    assert len(ds) == len(rows) == 800
    assert ds.labels == [int(r["label"]) for r in rows]
    assert ds.relative_files() == [r["file"] for r in rows]
    assert [labels.wnids[v] for v in ds.labels] == [r["wnid"] for r in rows]
    assert [labels.name(v) for v in ds.labels] == [r["class_name"] for r in rows]
    assert ds.description == "csv labels.csv in imagenet-val-800, 800 images"
    # The file names agree with the official validation ground truth as well.
    from psal_widgets.labels import ilsvrc_val_label

    assert [ilsvrc_val_label(f) for f in ds.relative_files()] == ds.labels
    x, y = ds.subset([0])[0]
    assert x.shape == (3, 224, 224) and y == ds.labels[0]
