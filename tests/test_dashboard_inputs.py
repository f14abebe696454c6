"""What a dashboard visitor can send, headless: uploads (size limit, file type, file name) and the
"save on the server" folder (only under the export folder), and no text box that reads a path.

The checks themselves first (no model), then the Explorer driven through its widgets with the
default model, as tests/test_widgets.py does.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psal_widgets.session.export import write_files
from psal_widgets.widgets.exportdir import ExportPathError, export_folder
from psal_widgets.widgets.upload import DEFAULT_UPLOAD_LIMIT, UploadError, check_upload, clean_name

from .conftest import ROOT


def encoded(fmt: str, size: tuple[int, int] = (64, 48), *, noise: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) if noise else np.full(
        (size[1], size[0], 3), 120, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


# -- uploads: the check on the bytes alone -----------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_image_uploads_pass_and_report_their_format(fmt) -> None:
    assert check_upload(encoded(fmt), "photo", limit=DEFAULT_UPLOAD_LIMIT) == fmt


def test_default_upload_limit_is_20_mb_in_both_tiers() -> None:
    from psal_widgets.dashboard_security import DEFAULT_UPLOAD_LIMIT as DASHBOARD_LIMIT

    assert DEFAULT_UPLOAD_LIMIT == DASHBOARD_LIMIT == 20_000_000


def test_an_upload_over_the_limit_is_refused_by_its_size() -> None:
    data = encoded("PNG")
    assert check_upload(data, "ok.png", limit=len(data)) == "PNG"
    with pytest.raises(UploadError, match=r"big\.png: .* MB is over the upload limit of .* MB.*--upload-limit"):
        check_upload(data, "big.png", limit=len(data) - 1)


@pytest.mark.parametrize(("content", "why"), [
    (b"", "empty"),
    (b"<html><script>alert(1)</script></html>", "not an image"),
    (b"%PDF-1.7\n1 0 obj\n", "not an image"),
    # Pillow can open EPS (through Ghostscript) and SVG-like text: not plugins an upload may reach.
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image"),
    (encoded("PNG")[:40], "not an image"),  # a truncated PNG: the header parses, verify() does not
])
def test_a_file_that_is_no_image_is_refused_by_its_signature(content, why) -> None:
    with pytest.raises(UploadError, match=why):
        check_upload(content, "notes.png")


@pytest.mark.parametrize(("sent", "shown"), [
    ("../../etc/passwd.png", "passwd.png"),
    ("C:\\Users\\me\\cat.jpg", "cat.jpg"),
    ("/abs/path/dog.png", "dog.png"),
    ("bad\x00\x1bname.png", "badname.png"),
    ("..", "upload"),
    (None, "upload"),
])
def test_the_upload_name_is_a_plain_base_name(sent, shown) -> None:
    assert clean_name(sent) == shown


# -- the export folder ---------------------------------------------------------------------------------
def test_export_folder_stays_under_the_root(tmp_path) -> None:
    root = tmp_path / "exports"
    assert export_folder(root, "") == root.resolve()
    assert export_folder(root, "run1") == root.resolve() / "run1"
    assert export_folder(root, " shark/top10 ") == root.resolve() / "shark" / "top10"
    assert export_folder(root, "a\\b") == root.resolve() / "a" / "b"  # a Windows separator too


@pytest.mark.parametrize(("name", "why"), [
    ("..", r"'\.\.' and '~'"),
    ("../outside", r"'\.\.' and '~'"),
    ("run/../../outside", r"'\.\.' and '~'"),
    ("..\\outside", r"'\.\.' and '~'"),
    ("~", r"'\.\.' and '~'"),
    ("~root/x", r"'\.\.' and '~'"),
    ("/etc", "absolute"),
    ("//server/share", "absolute"),
    ("C:\\Windows", "absolute"),
    ("\\tmp", "absolute"),
    ("a\x00b", "NUL"),
])
def test_export_folder_refuses_names_that_leave_the_root(tmp_path, name, why) -> None:
    with pytest.raises(ExportPathError, match=why):
        export_folder(tmp_path, name)


def test_export_folder_refuses_a_symlink_out_and_accepts_one_inside(tmp_path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    with pytest.raises(ExportPathError, match="symbolic link leads out"):
        export_folder(root, "out")
    with pytest.raises(ExportPathError, match="symbolic link leads out"):
        export_folder(root, "out/deeper")
    assert export_folder(root, "alias") == (root / "real").resolve()


def test_export_never_writes_through_a_planted_file_symlink(tmp_path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "profile.csv").symlink_to(victim)
    with pytest.raises(PermissionError, match="symbolic link"):
        write_files(folder, {"profile.csv": b"id,saliency\n"})
    assert victim.read_text() == "keep me\n"
    assert write_files(folder, {"filters.json": b"{}"}) == [folder.resolve() / "filters.json"]


# -- the Explorer, driven through its widgets --------------------------------------------------------------
UPLOAD_LIMIT = 300_000


@pytest.fixture(scope="module")
def explorer(default_explainer, tmp_path_factory):
    from psal_widgets.session import Session
    from psal_widgets.widgets import Explorer

    root = tmp_path_factory.mktemp("exports")
    session = Session(default_explainer, image=ROOT / "raw_images" / "chelsea.png", basis_k=4, basis_per_layer=0)
    app = Explorer(session=session, export_dir=root, upload_limit=UPLOAD_LIMIT)
    app.wait_idle(120)
    yield app
    app.close()
    session.close()


def send_upload(app, content: bytes, name: str) -> None:
    """What the browser's FileUpload sends."""
    app.image_panel.upload.value = ({
        "name": name, "type": "image/png", "size": len(content), "content": memoryview(content),
        "last_modified": dt.datetime.now(dt.timezone.utc),
    },)
    app.wait_idle(120)


@pytest.mark.slow
def test_oversized_and_fake_uploads_are_refused_and_the_app_keeps_working(explorer) -> None:
    s = explorer.session
    before = s.image_name
    big = encoded("PNG", (400, 400), noise=True)
    assert len(big) > UPLOAD_LIMIT
    send_upload(explorer, big, "big.png")
    line = explorer.status.line.value
    assert "error" in line and "over the upload limit of 0.3 MB" in line
    assert s.image_name == before and explorer.image_panel.upload.value == ()
    send_upload(explorer, b"<html>not a picture</html>", "fake.png")
    assert "fake.png is not an image" in explorer.status.line.value and s.image_name == before
    # The next upload is fine: a real image, named with a path that is only shown as its base name.
    send_upload(explorer, encoded("JPEG", (120, 90), noise=True), "../../somewhere/ok photo.jpg")
    assert s.image_name == "ok photo.jpg"
    assert "error" not in explorer.status.line.value
    assert explorer.image_panel.upload.value == ()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../escaped", "/tmp/psal-absolute-export", "~/psal-export"])
def test_export_box_refuses_folders_outside_the_export_folder(explorer, tmp_path, name) -> None:
    panel = explorer.export_panel
    panel.folder.value = name
    panel.button.click()
    explorer.wait_idle(120)
    assert "error" in explorer.status.line.value and "export folder" in explorer.status.line.value
    assert not (panel.root.parent / "escaped").exists()
    assert not Path("/tmp/psal-absolute-export").exists()
    assert not (Path.home() / "psal-export").exists()


@pytest.mark.slow
def test_export_box_refuses_a_symlink_out_of_the_export_folder(explorer, tmp_path) -> None:
    panel = explorer.export_panel
    outside = tmp_path / "outside"
    outside.mkdir()
    panel.root.mkdir(parents=True, exist_ok=True)
    (panel.root / "link").symlink_to(outside, target_is_directory=True)
    panel.folder.value = "link"
    panel.button.click()
    explorer.wait_idle(120)
    assert "symbolic link leads out" in explorer.status.line.value
    assert list(outside.iterdir()) == []


@pytest.mark.slow
def test_export_box_writes_inside_the_export_folder(explorer) -> None:
    panel = explorer.export_panel
    panel.folder.value = "run1"
    panel.button.click()
    explorer.wait_idle(120)
    written = sorted(p.name for p in (panel.root / "run1").iterdir())
    assert {"profile.csv", "filters.json", "image.png", "profile.html"} <= set(written)
    assert "exported" in explorer.status.line.value


def _text_boxes(widget) -> list:
    """Every free-text widget (Text, Textarea, Combobox) in the app's widget tree."""
    import ipywidgets as W

    found, stack, seen = [], [widget], set()
    while stack:
        w = stack.pop()
        if id(w) in seen:
            continue
        seen.add(id(w))
        if isinstance(w, (W.Text, W.Textarea)):
            found.append(w)
        stack.extend(c for c in getattr(w, "children", ()) if isinstance(c, W.Widget))
    return found


_OPENED: list[str] = []
_WATCH = threading.Event()


def _audit(event: str, args: tuple) -> None:
    if _WATCH.is_set() and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


@pytest.mark.slow
def test_no_text_box_reads_or_writes_a_path_a_visitor_types(explorer, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "photo.png").write_bytes(encoded("PNG"))
    boxes = _text_boxes(explorer)
    # The label and CAM class boxes (class names) and the export subfolder: nothing else is free text.
    assert "psal-export-folder" in {c for b in boxes for c in b._dom_classes}
    assert len(boxes) >= 3
    sys.addaudithook(_audit)  # stays installed; records only while _WATCH is set
    _OPENED.clear()
    _WATCH.set()
    try:
        with open(secret / "photo.png", "rb"):  # the hook sees an open (positive control)
            pass
        assert _OPENED == [str(secret / "photo.png")]
        _OPENED.clear()
        for typed in (str(secret / "photo.png"), str(secret), f"../{secret.name}/photo.png"):
            for box in boxes:
                box.value = typed
            explorer.export_panel.button.click()
            explorer.wait_idle(120)
    finally:
        _WATCH.clear()
        for box in boxes:
            box.value = ""
        explorer.wait_idle(120)
    assert not [p for p in _OPENED if str(secret) in os.path.abspath(p)], _OPENED
    assert sorted(p.name for p in secret.iterdir()) == ["photo.png"]
    assert explorer.session.image_name != "photo.png"
