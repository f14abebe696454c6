"""Export the current state to a folder: the Session's files plus the chart as offline HTML."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import ipywidgets as W

from .common import explain
from .host import Host
from .html import esc, span

__all__ = ["ExportPanel"]


_HELP = (
    "Writes the current state to a folder on the machine that runs the kernel: the profile as "
    "CSV, F as JSON, the image, the maps as PNG, and the chart as an HTML page that opens "
    "offline."
)


class ExportPanel:
    """A folder name and a button; lists the written files.

    Parameters
    ----------
    host : Host
    write_chart : callable(path)
        Writes the profile chart as a stand-alone HTML file (the profile panel's figure).
    folder : str
        Default folder name.
    """

    def __init__(
        self, host: Host, *, write_chart: Callable[[Path], None], folder: str = "psal_export"
    ) -> None:
        self.host = host
        self.write_chart = write_chart
        self.folder = W.Text(value=folder, description="folder", layout=W.Layout(width="360px"))
        self.button = W.Button(
            description="export", icon="download", layout=W.Layout(width="100px")
        )
        self.result = W.HTML("")
        self.button.on_click(host.status.guard(lambda _b: self.export(), "export"))
        self.widget = W.VBox(
            [
                explain("Export", "save what you see to files.", _HELP),
                W.HBox([self.folder, self.button]),
                self.result,
            ]
        )

    def export(self, folder: str | os.PathLike[str] | None = None) -> None:
        """Write profile.csv, filters.json, the PNGs (Session.export) and profile.html."""
        target = Path(os.fspath(folder if folder is not None else self.folder.value)).expanduser()
        if not str(target).strip():
            raise ValueError("give a folder name to export to")
        s = self.host.session
        write_chart = self.write_chart

        def run() -> list[Path]:
            paths = list(s.export(target))
            html_path = target / "profile.html"
            write_chart(html_path)
            paths.append(html_path)
            return paths

        self.host.worker.run(run, then=self.show, what="export")

    def show(self, paths: list[Path]) -> None:
        names = ", ".join(esc(Path(p).name) for p in paths)
        folder = esc(Path(paths[0]).parent) if paths else ""
        self.result.value = span(f"wrote {len(paths)} files to <code>{folder}</code>: {names}")
        self.host.status.info(
            f"exported {len(paths)} files to {Path(paths[0]).parent}"
            if paths
            else "nothing exported"
        )
