"""Export the current state to a folder: the Session's files plus the chart as offline HTML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import ipywidgets as W

from .html import esc, span

if TYPE_CHECKING:
    from .app import Explorer

__all__ = ["ExportPanel"]


class ExportPanel:
    """A folder name and a button; lists the written files."""

    def __init__(self, app: Explorer, *, folder: str = "psal_export") -> None:
        self.app = app
        self.folder = W.Text(value=folder, description="folder", layout=W.Layout(width="360px"))
        self.button = W.Button(
            description="export", icon="download", layout=W.Layout(width="100px")
        )
        self.result = W.HTML("")
        self.button.on_click(app.status.guard(lambda _b: self.export(), "export"))
        self.widget = W.VBox([W.HBox([self.folder, self.button]), self.result])

    def export(self, folder: str | os.PathLike[str] | None = None) -> None:
        """Write profile.csv, filters.json, the PNGs (Session.export) and profile.html."""
        target = Path(os.fspath(folder if folder is not None else self.folder.value)).expanduser()
        if not str(target).strip():
            raise ValueError("give a folder name to export to")
        s = self.app.session
        figure = self.app.profile_panel.figure

        def run() -> list[Path]:
            paths = list(s.export(target))
            html_path = target / "profile.html"
            # plotly.js embedded (about 5 MB): the file opens offline.
            figure.write_html(html_path, include_plotlyjs=True, full_html=True)
            paths.append(html_path)
            return paths

        self.app.worker.run(run, then=self.show, what="export")

    def show(self, paths: list[Path]) -> None:
        names = ", ".join(esc(Path(p).name) for p in paths)
        folder = esc(Path(paths[0]).parent) if paths else ""
        self.result.value = span(f"wrote {len(paths)} files to <code>{folder}</code>: {names}")
        self.app.status.info(
            f"exported {len(paths)} files to {Path(paths[0]).parent}"
            if paths
            else "nothing exported"
        )
