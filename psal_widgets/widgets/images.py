"""Where images come from: the ``raw_images/`` gallery, a file upload, and a dataset browser.

The dataset browser appears when the session has a dataset (``Explorer(data=...)``): filter by
correct / incorrect and by true class, pick a row to analyze that image with its true label.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ipywidgets as W

from .common import class_picker, explain, parse_label
from .host import Host, StateEvent
from .html import esc
from .upload import DEFAULT_UPLOAD_LIMIT, check_upload, clean_name

__all__ = ["ImagePanel", "find_raw_images", "gallery_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def find_raw_images(extra: Path | None = None) -> Path | None:
    """The sample-image folder: ``$PSAL_RAW_IMAGES``, then ``raw_images/`` in the working
    directory or its parent (notebooks/ runs), then beside the package (a source checkout)."""
    candidates: list[Path] = []
    if extra is not None:
        candidates.append(extra)
    env = os.environ.get("PSAL_RAW_IMAGES")
    if env:
        candidates.append(Path(env))
    cwd = Path.cwd()
    candidates += [
        cwd / "raw_images",
        cwd.parent / "raw_images",
        Path(__file__).resolve().parents[2] / "raw_images",
    ]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def gallery_files(folder: Path | None) -> list[Path]:
    """Image files of ``folder`` (not recursive), sorted by name; [] for None."""
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


_DATASET_HELP = (
    "The images of the dataset given with <code>data=</code>, with the model's prediction: "
    "&#10003; correct, &#10007; a mistake. Mistakes are where parameter saliency is most "
    "useful: their salient filters often point at what confused the model. Pick a row to "
    "study that image with its true label."
)


class ImagePanel:
    """``psal-gallery`` dropdown, ``psal-upload`` file upload, optional dataset browser.

    Attributes
    ----------
    widget : ipywidgets.HBox
        Gallery, upload and the caption, one compact row.
    browser : ipywidgets.VBox or None
        The dataset browser (with ``data=``), placed by the app.
    upload_limit : int
        Largest upload in bytes; a larger one, or one that is not an image, is refused before
        anything decodes it (:func:`~psal_widgets.widgets.upload.check_upload`).

    Notes
    -----
    Nothing here reads a path typed by a visitor: the gallery's values are the files found in
    ``raw_images/`` (a Dropdown only takes one of its options), an upload stays in memory.
    """

    def __init__(
        self, host: Host, *, raw_images: Path | None = None, upload_limit: int = DEFAULT_UPLOAD_LIMIT
    ) -> None:
        self.host = host
        self.upload_limit = int(upload_limit)
        s = host.session
        self.folder = find_raw_images(raw_images)
        files = gallery_files(self.folder)
        self.gallery = W.Dropdown(
            options=[("choose a sample image", None)] + [(p.name, str(p)) for p in files],
            value=None,
            description="image",
            style={"description_width": "initial"},
            layout=W.Layout(width="250px"),
        )
        self.gallery.add_class("psal-gallery")
        host.watch(self.gallery, self._gallery_changed, "gallery")
        self.upload = W.FileUpload(
            accept="image/*", multiple=False, description="upload", layout=W.Layout(width="110px")
        )
        self.upload.add_class("psal-upload")
        host.watch(self.upload, self._uploaded, "upload")
        self.caption = W.HTML("")

        self.browser: W.VBox | None = None
        if getattr(s, "dataset", None) is not None:
            self.only = W.ToggleButtons(
                options=[("all", None), ("correct", "correct"), ("incorrect", "incorrect")],
                value=None,
            )
            self.cls = class_picker(
                s.labels.names, placeholder="any class", description="class", width="300px"
            )
            self.rows = W.Select(options=[], rows=8, layout=W.Layout(width="100%"))
            self.count = W.HTML("")
            host.watch(self.only, lambda _c: self.refresh_rows(), "dataset filter")
            host.watch(self.cls, lambda _c: self.refresh_rows(), "dataset class")
            host.watch(self.rows, self._row_picked, "dataset row")
            self.browser = W.VBox(
                [
                    explain("Dataset", "browse its images and open one.", _DATASET_HELP),
                    W.HBox([self.only, self.cls]),
                    self.count,
                    self.rows,
                ]
            )
        self.widget = W.HBox(
            [self.gallery, self.upload, self.caption], layout=W.Layout(align_items="center")
        )
        host.changed.connect(self._on_change, "image caption")

    # -- actions -------------------------------------------------------------------------------
    def open_file(self, path: str | os.PathLike[str]) -> None:
        s = self.host.session
        self.host.change_state(lambda: s.set_image(os.fspath(path)), what="open image")

    def open_bytes(self, data: bytes, name: str) -> None:
        s = self.host.session

        def load() -> None:
            try:
                # Size and file type first: a refused file never reaches the decoder.
                check_upload(data, name, limit=self.upload_limit)
                s.set_image(data, name=name)
            finally:
                # Accepted or refused, the button's "(1)" counter goes back to zero, so that the
                # same file can be picked again and the button does not claim a loaded file.
                self._reset_upload()

        self.host.change_state(load, what=f"upload {name}")

    def open_row(self, i: int) -> None:
        s = self.host.session
        self.host.change_state(lambda: s.open_dataset_image(int(i)), what="open dataset image")

    def refresh_rows(self) -> None:
        """Re-list the dataset rows for the current filters (runs on the worker)."""
        s = self.host.session
        only = self.only.value
        cls = parse_label(str(self.cls.value or ""))

        def listing() -> None:
            rows = s.dataset_rows(only=only, cls=cls)
            options = [
                (
                    f"{'✓' if r['correct'] else '✗'} {r['file']}: "
                    f"{r['label_name']} -> {r['pred_name']}",
                    int(r["i"]),
                )
                for r in rows
            ]
            with self.host.quiet(self.rows):
                self.rows.options = options
                self.rows.value = None
            self.count.value = f'<span style="font-size:12px;color:#555">{len(rows)} images</span>'

        self.host.worker.run(listing, what="dataset rows")

    # -- callbacks (main thread) ------------------------------------------------------------------
    def _gallery_changed(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self.open_file(change["new"])

    def _uploaded(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        name = clean_name(f.get("name") if isinstance(f, dict) else getattr(f, "name", None))
        content = f["content"] if isinstance(f, dict) else f.content
        self.open_bytes(bytes(content), name)

    def _row_picked(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.open_row(int(change["new"]))

    # -- views (worker thread) --------------------------------------------------------------------
    def _on_change(self, event: StateEvent) -> None:
        if event.touches("image", "label", "profile"):
            self.show()

    def _reset_upload(self) -> None:
        if self.upload.value:
            with self.host.quiet(self.upload):
                self.upload.value = ()

    def show(self) -> None:
        s = self.host.session
        masks = len(s.masks)
        extra = f", {masks} mask{'s' if masks != 1 else ''}" if masks else ""
        top = s.prediction(1)[0]
        self.caption.value = (
            f'<span style="font-size:12px">showing <b>{esc(s.image_name)}</b>{extra}; the model '
            f"predicts <b>{esc(top['name'])}</b> ({float(top['prob']):.2f})</span>"
        )
        current = None
        for value in (v for _, v in self.gallery.options if v):
            if Path(value).name == s.image_name:
                current = value
        if self.gallery.value != current:
            with self.host.quiet(self.gallery):
                self.gallery.value = current
        self._reset_upload()
