"""The reliability catalogue (docs/RELIABILITY.md), one test per row: bad images, bad options, bad
statistics and weights, unusable output folders, and nothing executed or fetched.

Fast by design: crafted files written here, the tiny model of conftest.py, the CLI in-process
(``main([...])``); only the memory probe and the no-socket run start a subprocess.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from psal_widgets.cli import main
from psal_widgets.data import MAX_ASPECT_RATIO, ImageError, Preprocess, load_image

from .conftest import ROOT, make_tiny
from .tinydata import make_dataset_csv, photo, tiny_model

GRACE = ROOT / "raw_images" / "grace_hopper.jpg"


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """``psal ARGS`` in-process: (exit code, stderr). SystemExit counts as its code."""
    try:
        code = main(args)
    except SystemExit as done:  # pragma: no cover - main() returns, never exits
        code = done.code
    return int(code), capsys.readouterr().err


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psal: error: "), err
    assert "Traceback" not in err and "looks like a bug" not in err
    return lines[0]


# -- crafted images ----------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, width: int, height: int, *, color: int = 2, depth: int = 8, rows: int | None = None) -> Path:
    """An all-zero PNG of any size, streamed: a few KB on disk whatever it claims.

    ``color``: PNG colour type (0 gray, 2 RGB, 6 RGBA); ``depth``: bits per sample; ``rows``:
    rows actually written (default all: a valid file; fewer: a header that claims more).
    """
    channels = {0: 1, 2: 3, 6: 4}[color]
    row = b"\x00" * (1 + width * channels * depth // 8)  # filter byte 0 + zero samples
    comp = zlib.compressobj(9 if len(row) * height < 2**26 else 1)  # 1: fast for the huge ones
    with path.open("wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)))
        body = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
        fh.write(_chunk(b"IDAT", body))
        fh.write(_chunk(b"IEND", b""))
    return path


def jpeg_bytes(size: int = 160, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    photo(7, size=size).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height`` (the decoder allocates that)."""
    data = bytearray(jpeg_bytes(64))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def damaged_jpeg(how: str) -> bytes:
    """A JPEG whose entropy-coded body is damaged without any marker byte (0xFF) written: libjpeg
    recovers from it with a warning only, so Pillow alone decodes it as garbage."""
    data = bytearray(jpeg_bytes(256))
    start = data.index(b"\xff\xda") + 20  # inside the scan, past the SOS header
    if how == "zeros":
        data[start + 800:start + 2800] = b"\x00" * 2000
    else:  # scattered random bytes
        rng = np.random.default_rng(0)
        for off in range(start + 200, len(data) - 100, 3000):
            data[off:off + 8] = bytes(rng.integers(0, 254, 8, dtype=np.uint8))
    return bytes(data)


# == Images ====================================================================================
def test_elongated_png_is_refused_before_decoding(tmp_path):
    path = write_png(tmp_path / "strip.png", 200_000, 8)
    assert path.stat().st_size < 10_000  # a few KB claiming 1.6 megapixels
    with pytest.raises(ImageError, match=r"200000x8 .*aspect ratio of 25,000:1.*crop it"):
        load_image(path)
    with pytest.raises(ImageError, match="aspect ratio"):
        load_image(path.read_bytes())  # the upload path (Session.set_image) too


def test_aspect_ratio_limit_is_inclusive(tmp_path):
    ok = write_png(tmp_path / "pano.png", int(16 * MAX_ASPECT_RATIO), 16)
    assert load_image(ok).size == (int(16 * MAX_ASPECT_RATIO), 16)
    with pytest.raises(ImageError, match="aspect ratio"):
        load_image(write_png(tmp_path / "over.png", int(16 * MAX_ASPECT_RATIO) + 1, 16))


MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from psal_widgets.data import ImageError, Preprocess, load_image
    from psal_widgets.session.resolve import read_image

    pre = Preprocess()  # Resize(256) + CenterCrop(224): what the CLI and the session do
    results = {}
    for path in sys.argv[1:]:
        small = path.endswith(("strip.png", ".jpg"))  # the big ones once: they cost seconds each
        sources = (("path", path), ("bytes", open(path, "rb").read())) if small else (("path", path),)
        for kind, source in sources:
            try:
                loaded = read_image(source)
                results[f"{path}:{kind}"] = list(pre.display(loaded.pil).shape)
            except ImageError as err:
                results[f"{path}:{kind}"] = "refused: " + str(err).replace(path, "FILE")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mb": peak_mb, "results": results}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_peak_memory_stays_under_2_gb_for_extreme_images(tmp_path):
    files = [
        write_png(tmp_path / "strip.png", 200_000, 8),  # 4.7 KB: was a 7.7 GB peak
        write_png(tmp_path / "strip1m.png", 1_000_000, 8),  # was a MemoryError
        write_png(tmp_path / "rgba.png", 9400, 9400, color=6),  # 88 MP RGBA, just under Pillow's limit
        write_png(tmp_path / "gray16.png", 9400, 9400, color=0, depth=16),  # 88 MP 16-bit gray
        write_png(tmp_path / "wide.png", 8 * 2000, 2000),  # 32 MP at 8:1: accepted and resized
        write_png(tmp_path / "huge.png", 100_000, 100_000, rows=1),  # 10 gigapixels claimed
    ]
    claim = tmp_path / "claims.jpg"
    claim.write_bytes(jpeg_claiming(9000, 9000))  # 81 MP claimed, 2 KB of data
    files.append(claim)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *map(str, files)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    res = report["results"]
    assert res[f"{files[0]}:path"].startswith("refused") and "aspect ratio" in res[f"{files[0]}:bytes"]
    assert "aspect ratio" in res[f"{files[1]}:path"]
    assert res[f"{files[2]}:path"] == res[f"{files[3]}:path"] == [224, 224, 3]
    assert res[f"{files[4]}:path"] == [224, 224, 3]
    assert "too large to decode safely" in res[f"{files[5]}:path"]
    assert "damaged JPEG" in res[f"{claim}:path"]  # Pillow alone decodes it as grey
    assert report["peak_mb"] < 2048, report


def test_fifo_named_jpg_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    box: dict[str, object] = {}

    def attempt() -> None:
        try:
            load_image(fifo)
        except ImageError as err:
            box["err"] = str(err)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "load_image blocked on a FIFO"
    assert "named pipe (FIFO), not a regular file" in str(box.get("err"))


def test_dev_zero_is_refused_before_reading():
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(ImageError, match="/dev/zero is a device, not a regular file"):
        load_image("/dev/zero")


def test_file_over_the_size_cap_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.png"
    with big.open("wb") as fh:  # a sparse file: 600 MB claimed, nothing written
        fh.truncate(600 * 2**20)
    with pytest.raises(ImageError, match=r"600 MB, over the 512 MB limit"):
        load_image(big)
    path = tmp_path / "ok.jpg"
    path.write_bytes(jpeg_bytes())
    with pytest.raises(ImageError, match="over the 0 MB limit"):
        load_image(path, max_bytes=1000)
    with pytest.raises(ImageError, match="limit"):
        load_image(path.read_bytes(), max_bytes=1000)


@pytest.mark.parametrize("how", ["zeros", "scattered"])
def test_jpeg_with_a_damaged_body_is_refused(tmp_path, how):
    data = damaged_jpeg(how)
    img = Image.open(io.BytesIO(data))
    img.load()  # the premise: Pillow alone decodes it without a word
    path = tmp_path / "damaged.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=r"damaged JPEG \(libjpeg: Corrupt JPEG data"):
        load_image(path)
    with pytest.raises(ImageError, match="damaged JPEG"):
        load_image(data)


def test_truncated_jpeg_is_refused(tmp_path):
    data = jpeg_bytes(256)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path)


def test_intact_jpeg_passes_the_body_check():
    img = load_image(jpeg_bytes(256))
    ref = Image.open(io.BytesIO(jpeg_bytes(256))).convert("RGB")
    assert np.array_equal(np.asarray(img), np.asarray(ref))


def test_truncated_images_stay_refused_when_pillow_is_told_to_accept_them(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="LOAD_TRUNCATED_IMAGES is on"):
        load_image(jpeg_bytes()[:3000])


def test_sixteen_bit_and_transparent_conversions_match_the_reference():
    # The memory-lean to_rgb equals the straightforward float64 / alpha_composite version.
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 65536, (37, 41), dtype=np.uint16)
    deep = Image.fromarray(gray)
    assert deep.mode == "I;16"
    got = np.asarray(load_image(_encode(deep)))
    assert np.array_equal(got[..., 0], np.clip(np.rint(gray * (255 / 65535)), 0, 255).astype(np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (37, 41, 4), dtype=np.uint8), "RGBA")
    want = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba).convert("RGB")
    assert np.array_equal(np.asarray(load_image(_encode(rgba))), np.asarray(want))


def _encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


IMAGE_CLI = [
    ("missing", lambda d: str(d / "nope.jpg"), "image not found"),
    ("folder", lambda d: str(d), "is a folder, not an image"),
    ("text renamed .jpg", lambda d: _write(d / "notes.jpg", b"hello, this is text\n"), "text file renamed"),
    ("html saved as .jpg", lambda d: _write(d / "page.jpg", b"<!DOCTYPE html><html></html>"), "HTML"),
    ("empty", lambda d: _write(d / "empty.png", b""), "empty (0 bytes)"),
    ("elongated", lambda d: str(write_png(d / "strip.png", 200_000, 8)), "aspect ratio"),
    ("damaged jpeg body", lambda d: _write(d / "dmg.jpg", damaged_jpeg("zeros")), "damaged JPEG"),
    ("fifo", lambda d: _fifo(d / "pipe.jpg"), "not a regular file"),
    ("tiny", lambda d: _write(d / "icon.png", _encode(photo(1, size=4))), "need at least 8 px"),
]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("case,make,needle", IMAGE_CLI, ids=[c[0] for c in IMAGE_CLI])
def test_bad_image_on_the_command_line(case, make, needle, tmp_path, capsys):
    image = make(tmp_path)
    # --model bogus would fail later: a bad image must be found first, before any model loads.
    code, err = run_cli(["explain", image, "--model", "no-such-model", "--out", str(tmp_path / "o")], capsys)
    assert needle in one_line_error(code, err)
    assert not (tmp_path / "o").exists()
