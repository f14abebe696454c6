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
from psal_widgets.data import MAX_ASPECT_RATIO, ImageError, load_image

from .conftest import ROOT, make_tiny
from .tinydata import photo, tiny_model

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
    # VmHWM: this process's own peak. ru_maxrss would carry the parent's size across fork and
    # exec (a pytest process grown over the whole suite made it read 13 GB).
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    peak_mb = min(peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
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


# == Options ===================================================================================
OPTIONS = [
    (["explain", "IMG", "--boost", "nan"], "--boost"),
    (["explain", "IMG", "--boost", "inf"], "--boost"),
    (["explain", "IMG", "--boost", "0"], "--boost"),
    (["explain", "IMG", "--boost", "-100"], "--boost"),
    (["explain", "IMG", "--k", "0"], "--k"),
    (["explain", "IMG", "--k", "-5"], "--k"),
    (["explain", "IMG", "--k", "ten"], "--k"),
    (["explain", "IMG", "--percentile", "nan"], "--percentile"),
    (["explain", "IMG", "--percentile", "99"], "--percentile"),
    (["explain", "IMG", "--percentile", "-1"], "--percentile"),
    (["explain", "IMG", "--filters", "1.7"], "--filters"),
    (["explain", "IMG", "--mode", "bogus"], "--mode"),
    (["explain", "IMG", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["explain"], "required: image"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["stats", "--data", "D", "--limit", "0"], "--limit"),
    (["stats", "--data", "D", "--batch-size", "0"], "--batch-size"),
    (["stats"], "required: --data"),
    (["index", "--data", "D", "--batch-size", "-1"], "--batch-size"),
    (["experiment", "pruning", "--data", "D", "--seed", "-1"], "--seed"),
    (["experiment", "adversarial", "--data", "D", "--eps", "1e-3,nan"], "--eps"),
    (["experiment", "masking", "--data", "D", "--percent", "0"], "--percent"),
    (["experiment", "finetune", "--data", "D", "--k", "0,5"], "--k"),
    (["experiment", "smoothgrad", "--data", "D", "--n-samples", "0"], "--n-samples"),
    (["dashboard", "--port", "70000"], "--port"),
    (["bench", "--repeat", "0"], "--repeat"),
]


@pytest.mark.parametrize("args,needle", OPTIONS, ids=[" ".join(a) for a, _ in OPTIONS])
def test_meaningless_option_is_refused_at_parse_time(args, needle, capsys, monkeypatch):
    import psal_widgets.models as models

    def no_model(*a, **k):  # a parse-time refusal never gets this far
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    args = [str(GRACE) if a == "IMG" else a for a in args]
    line = one_line_error(*run_cli(args, capsys))
    assert needle in line


@pytest.mark.slow
def test_k_over_the_filter_count_is_refused_before_the_analysis(tmp_path, capsys, monkeypatch):
    from psal_widgets.explainer import Explainer

    def no_analysis(*a, **k):
        raise AssertionError("the image was analysed before --k was checked")

    monkeypatch.setattr(Explainer, "analyze", no_analysis)
    line = one_line_error(*run_cli(["explain", str(GRACE), "--k", "30000", "--out", str(tmp_path / "o")], capsys))
    assert "--k 30000 is more than the 21008 filters of efficientnet_lite0" in line
    assert not (tmp_path / "o").exists()


def test_help_still_exits_zero(capsys):
    assert main(["explain", "--help"]) == 0
    assert "--boost" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_analysis():
    from psal_widgets.explainer import Explainer

    return Explainer(tiny_model(), stats=None, mode="raw").analyze(photo(3), label=0)


@pytest.mark.parametrize("filters", [[1.7], [2, 0.5], [float("nan")], [True], ["3"]], ids=repr)
def test_non_integer_filter_ids_raise_instead_of_truncating(tiny_analysis, filters):
    with pytest.raises(ValueError, match="filter ids must be integers"):
        tiny_analysis.input_map(filters=filters)


def test_integral_filter_ids_are_accepted_as_integers(tiny_analysis):
    assert np.array_equal(tiny_analysis.input_map(filters=[2.0, 5.0]), tiny_analysis.input_map(filters=[2, 5]))


def test_out_of_range_filter_ids_raise(tiny_analysis):
    with pytest.raises(ValueError, match=r"out of range: this model has 13 filters"):
        tiny_analysis.input_map(filters=[3, 13])


@pytest.mark.parametrize("boost", [float("nan"), float("inf"), 0.0, -100.0])
def test_meaningless_boost_raises_in_python(tiny_analysis, boost):
    with pytest.raises(ValueError, match="boost must be a positive finite number"):
        tiny_analysis.input_map(filters=[1, 2], boost=boost)


def test_unknown_mode_is_refused_at_construction():
    from psal_widgets.explainer import Explainer

    # The mode is checked before the (here unknown) model would be loaded.
    with pytest.raises(ValueError, match="unknown mode 'bogus'; use one of std, raw, norm, signed"):
        Explainer("no-such-model", mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown mode"):
        Explainer(tiny_model(), stats=None, mode="bogus")  # type: ignore[arg-type]


# == Statistics and weights ====================================================================
def _tiny_stats(mean: torch.Tensor, std: torch.Tensor):
    from psal_widgets.kernels.stats import FilterStats

    return FilterStats(mean.double(), std.double(), {"model": "tiny"})


BAD_STATS = [
    ("nan mean", lambda m, s: (m.index_fill(0, torch.tensor([4]), float("nan")), s), "1 mean values are NaN"),
    (
        "inf std",
        lambda m, s: (m, s.index_fill(0, torch.tensor([0, 2]), float("inf"))),
        "2 std values are NaN or infinite",
    ),
    ("negative std", lambda m, s: (m, s.index_fill(0, torch.tensor([7]), -0.5)), "1 std values are negative"),
]


@pytest.mark.parametrize("case,spoil,needle", BAD_STATS, ids=[c[0] for c in BAD_STATS])
def test_statistics_with_bad_numbers_are_refused_on_load(case, spoil, needle, tmp_path):
    from psal_widgets.kernels.filters import FilterIndex
    from psal_widgets.store import StatsError, load_stats, save_stats

    mean, std = spoil(torch.rand(13), torch.rand(13) + 0.1)
    save_stats(tmp_path / "h", _tiny_stats(mean, std))
    with pytest.raises(StatsError, match=needle + ".*recompute them"):
        load_stats(tmp_path / "h", index=FilterIndex(make_tiny()))


def _resnet18_filters() -> int:
    import torchvision

    from psal_widgets.kernels.filters import FilterIndex

    with torch.device("meta"):
        return FilterIndex(torchvision.models.resnet18()).n_filters


@pytest.mark.parametrize("case,spoil,needle", BAD_STATS, ids=[c[0] for c in BAD_STATS])
def test_legacy_import_with_bad_numbers_exits_2_and_writes_nothing(case, spoil, needle, tmp_path, capsys):
    n = _resnet18_filters()
    mean, std = spoil(torch.rand(n), torch.rand(n) + 0.1)
    src = tmp_path / "resnet18_saliency_stat_filter_wise.pth"
    torch.save({"mean": mean.float(), "std": std.float()}, src)
    line = one_line_error(*run_cli(["import-legacy", str(src), "--model", "resnet18", "--out", str(tmp_path / "o")],
                                   capsys))
    assert needle in line
    assert not (tmp_path / "o").exists()


def test_legacy_import_of_good_numbers_still_works(tmp_path, capsys):
    n = _resnet18_filters()
    src = tmp_path / "resnet18_saliency_stat_filter_wise.pth"
    torch.save({"mean": torch.rand(n), "std": torch.rand(n)}, src)
    assert main(["import-legacy", str(src), "--model", "resnet18", "--out", str(tmp_path / "o")]) == 0
    assert f"imported {n} filters of resnet18" in capsys.readouterr().out


class _Planted:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_pickle_as_weights_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"conv.weight": _Planted(marker)}, evil)
    line = one_line_error(*run_cli(["explain", str(GRACE), "--weights", str(evil), "--out", str(tmp_path / "o")],
                                   capsys))
    assert "it holds pickled Python objects (" in line and "could run code: refused" in line
    assert "weights_only" not in line  # torch's hint to switch the safety off is never passed on
    assert not marker.exists()


def test_planted_pickle_as_legacy_statistics_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "resnet18_saliency_stat_filter_wise.pth"
    torch.save({"mean": _Planted(marker), "std": torch.ones(3)}, evil)
    line = one_line_error(*run_cli(["import-legacy", str(evil), "--model", "resnet18", "--out", str(tmp_path / "o")],
                                   capsys))
    assert "could run code: refused" in line and "weights_only" not in line
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_weights_and_legacy_statistics_are_read_with_weights_only(tmp_path, monkeypatch):
    from psal_widgets import models, store
    from psal_widgets.kernels.filters import FilterIndex

    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    net = make_tiny()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    models._read_state_dict(tmp_path / "w.pth")
    torch.save({"mean": torch.rand(13), "std": torch.rand(13)}, tmp_path / "legacy.pth")
    store.import_legacy(tmp_path / "legacy.pth", index=FilterIndex(net), model_name="tiny", out_dir=tmp_path / "o")
    assert calls == [True, True]


@pytest.mark.parametrize("content,needle", [
    (b"these are not weights\n", "not a PyTorch checkpoint or safetensors file"),
    (b"PK\x03\x04 a broken zip", "not a PyTorch checkpoint"),
], ids=["text file", "broken zip"])
def test_a_non_weights_file_gets_our_words(content, needle, tmp_path, capsys):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(content)
    line = one_line_error(*run_cli(["explain", str(GRACE), "--weights", str(bad), "--out", str(tmp_path / "o")],
                                   capsys))
    assert needle in line and "weights_only" not in line


def test_a_garbage_safetensors_file_gets_our_words(tmp_path):
    from psal_widgets.models import ModelError, _read_state_dict

    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(ModelError, match="cannot read weights from .*not a PyTorch checkpoint or safetensors"):
        _read_state_dict(bad)


def test_weights_of_another_architecture_give_key_counts_on_one_short_line(tmp_path):
    import torchvision

    from psal_widgets.models import ModelError, load_model

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelError) as err:
        load_model("resnet50", weights=tmp_path / "r18.pth", device="cpu")
    msg = str(err.value)
    r18, r50 = torchvision.models.resnet18().state_dict(), torchvision.models.resnet50().state_dict()
    missing = sum(k not in r18 for k in r50)
    unexpected = sum(k not in r50 for k in r18)
    shapes = sum(k in r18 and r18[k].shape != r50[k].shape for k in r50)
    assert f"{missing} missing keys, {unexpected} unexpected keys, {shapes} shape mismatches (first: " in msg
    assert "Pass weights saved from this architecture, or the --model they belong to" in msg
    assert len(msg) < 400 and "\n" not in msg


def test_weights_with_the_wrong_tensor_count_for_the_default_model(tmp_path):
    from psal_widgets.models import ModelError, load_model

    state = make_tiny().state_dict()
    torch.save(state, tmp_path / "tiny.pth")
    with pytest.raises(ModelError, match=rf"holds {len(state)} tensors; EfficientNet-Lite0 needs 296"):
        load_model(weights=tmp_path / "tiny.pth", device="cpu")


# == Output folders ============================================================================
def _a_file(d: Path) -> Path:
    f = d / "taken"
    f.write_text("x")
    return f


OUT_CASES = [
    ("a file", lambda d: _a_file(d), "is a file, not a folder"),
    ("under a file", lambda d: _a_file(d) / "sub", "cannot be created: "),
]


@pytest.mark.parametrize("command", ["explain", "stats", "index", "experiment", "import-legacy"])
@pytest.mark.parametrize("case,make,needle", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_unusable_out_is_refused_before_the_model_loads(command, case, make, needle, tmp_path, capsys, monkeypatch):
    import psal_widgets.models as models

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    out = make(tmp_path)
    legacy = tmp_path / "legacy.pth"
    torch.save({"mean": torch.zeros(3), "std": torch.ones(3)}, legacy)
    argv = {
        "explain": ["explain", str(GRACE)],
        "stats": ["stats", "--data", str(tmp_path)],
        "index": ["index", "--data", str(tmp_path)],
        "experiment": ["experiment", "profiles", "--data", str(tmp_path)],
        "import-legacy": ["import-legacy", str(legacy), "--model", "resnet18"],
    }[command]
    if command != "import-legacy":  # import-legacy needs the layout (a meta model, no weights) first
        monkeypatch.setattr(models, "load_model", no_model)
    line = one_line_error(*run_cli([*argv, "--out", str(out)], capsys))
    assert f"--out {out}" in line and needle in line


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys (Linux), where nobody can create files")
def test_out_on_a_read_only_file_system_is_refused(tmp_path, capsys):
    line = one_line_error(*run_cli(["explain", str(GRACE), "--out", "/sys/psal_out", "--model", "nope"], capsys))
    assert "--out /sys/psal_out is not writable (/sys:" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        line = one_line_error(*run_cli(["explain", str(GRACE), "--out", str(ro / "o"), "--model", "nope"], capsys))
    finally:
        ro.chmod(0o700)
    assert "is not writable" in line


def test_a_failure_while_writing_removes_the_folders_it_created(tmp_path):
    from psal_widgets.cli import _output_folder

    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with _output_folder(out):
            (out / "profile.png").write_bytes(b"half")
            raise RuntimeError("late failure")
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("user file")
    with pytest.raises(RuntimeError):
        with _output_folder(kept):
            raise RuntimeError("late failure")
    assert (kept / "mine.txt").read_text() == "user file"  # a folder that existed is left alone
    with _output_folder(tmp_path / "ok") as done:
        (done / "f").write_text("1")
    assert (tmp_path / "ok" / "f").is_file()


@pytest.mark.slow
def test_a_late_explain_error_leaves_no_output_folder(tmp_path, capsys, monkeypatch):
    import psal_widgets.viz.static as static

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("disk full")

    monkeypatch.setattr(static, "triptych_png", failing)
    code, err = run_cli(["explain", str(GRACE), "--out", str(tmp_path / "new" / "out")], capsys)
    assert code == 1 and "disk full" in err and calls
    assert not (tmp_path / "new").exists()


# == Nothing executed, nothing fetched =========================================================
NO_NETWORK = textwrap.dedent(
    """
    # Loaded at start-up (sitecustomize on PYTHONPATH): any TCP/UDP connection attempt is logged
    # and refused, in this process and in the ones it forks (DataLoader workers).
    import os, socket
    _LOG = os.environ["PSAL_SOCKET_LOG"]
    _real_connect = socket.socket.connect

    def _record(what):
        with open(_LOG, "a") as fh:
            fh.write(f"{what}\\n")
        raise OSError("network blocked by the test")

    def _connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _record(f"connect {address}")
        return _real_connect(self, address)

    socket.socket.connect = _connect
    socket.socket.connect_ex = lambda self, address: _connect(self, address) or 0
    socket.create_connection = lambda address, *a, **k: _record(f"create_connection {address}")
    socket.getaddrinfo = lambda host, *a, **k: _record(f"getaddrinfo {host}")
    """
)

OFFLINE_RUN = textwrap.dedent(
    """
    import socket, sys
    import sitecustomize  # the blocker is in place (else this test would prove nothing)
    try:  # control: an attempt is refused and logged
        socket.create_connection(("example.com", 80))
        raise SystemExit("the network is not blocked")
    except OSError:
        pass
    from psal_widgets.cli import main
    img, data, out = sys.argv[1:4]
    assert main(["explain", img, "--out", out + "/explain", "--k", "3"]) == 0
    assert main(["stats", "--data", data, "--limit", "2", "--batch-size", "2", "--out", out + "/stats", "--quiet"]) == 0
    assert main(["index", "--data", data, "--limit", "2", "--batch-size", "2", "--out", out + "/index", "--quiet"]) == 0
    from psal_widgets.widgets import Explorer
    app = Explorer(image=img)
    assert app.session.image_name == "grace_hopper.jpg" and len(app.session.filters) == 10
    app.close()
    print("OFFLINE-OK")
    """
)


@pytest.mark.slow
def test_explain_stats_index_and_the_explorer_open_no_socket(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = ["file,label"]
    for i in range(2):
        photo(i, size=64).save(data / "images" / f"{i}.png")
        rows.append(f"images/{i}.png,{i}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    log = tmp_path / "sockets.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "PSAL_SOCKET_LOG": str(log),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HUB_CACHE": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "torch")}
    env.pop("PSAL_OFFLINE", None)  # the default model must need no offline switch
    run = subprocess.run([sys.executable, "-c", OFFLINE_RUN, str(GRACE), str(data / "labels.csv"), str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=900)
    # Only the control attempt was logged: nothing else tried the network.
    assert log.read_text() == "create_connection ('example.com', 80)\n", log.read_text()
    assert run.returncode == 0 and "OFFLINE-OK" in run.stdout, run.stderr[-3000:]
    assert (tmp_path / "o" / "explain" / "result.json").is_file()
    assert (tmp_path / "o" / "stats" / "stats.safetensors").is_file()
