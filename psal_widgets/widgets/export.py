"""Export what is on screen: a zip downloaded in the browser, or files saved on the server."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import ipywidgets as W

from .common import explain
from .exportdir import export_folder
from .host import Host
from .html import esc, span

__all__ = ["ExportPanel"]


_HELP = (
    "<b>Download</b> gives you one zip file in your browser: the profile as CSV, F and the "
    "settings as JSON, the image, the input map and the CAM exactly as shown, and the chart as an "
    "HTML page that opens offline (with plotly.min.js beside it). <b>Save on the server</b> writes "
    "the same files to the export folder of the machine that runs the explorer, or to a subfolder "
    "of it that you name (useful in JupyterLab); it never writes anywhere else."
)

#: The chart page loads plotly from this file, shipped beside it: the page stays small.
PLOTLY_JS = "plotly.min.js"


class ExportPanel:
    """A download button (one zip, built in memory) and a save-to-folder button.

    Parameters
    ----------
    host : Host
    chart_html : callable() -> str
        The profile chart as an HTML page that loads ``plotly.min.js`` from beside it.
    plotly_js : callable() -> str
        The plotly.js source to ship beside the page.
    root : path, optional
        The export folder: "save on the server" writes only inside it (default
        ``psal_export`` in the working folder).
    folder : str
        Default subfolder of ``root`` (empty: ``root`` itself).

    Notes
    -----
    The subfolder box is typed by whoever uses the page (a dashboard visitor): it is resolved
    by :func:`~psal_widgets.widgets.exportdir.export_folder`, which refuses ``..``, absolute
    paths and symlinks leading out of ``root``.
    """

    def __init__(
        self,
        host: Host,
        *,
        chart_html: Callable[[], str],
        plotly_js: Callable[[], str],
        root: str | os.PathLike[str] | None = None,
        folder: str = "",
    ) -> None:
        self.host = host
        self.chart_html = chart_html
        self.plotly_js = plotly_js
        self.root = Path(root).expanduser().resolve() if root is not None else Path.cwd().resolve() / "psal_export"
        self.download = W.Button(description="download zip", icon="download", layout=W.Layout(width="140px"))
        self.download.add_class("psal-download")
        self.link = W.HTML("")
        self.link.add_class("psal-download-link")
        self.folder = W.Text(
            value=folder,
            placeholder="subfolder (optional)",
            description="subfolder",
            layout=W.Layout(width="300px"),
        )
        self.folder.add_class("psal-export-folder")
        self.where = W.HTML(
            f'<span style="font-size:11px;color:#555">saved under <code>{esc(self.root)}</code></span>'
        )
        self.button = W.Button(description="save on the server", icon="save", layout=W.Layout(width="160px"))
        self.result = W.HTML("")
        self.button.on_click(host.status.guard(lambda _b: self.export(), "export"))
        self.download.on_click(host.status.guard(lambda _b: self.prepare_download(), "download"))
        self.widget = W.VBox(
            [
                explain("Export", "download what you see as one zip, or save it on the server.", _HELP),
                W.HBox([self.download, self.link]),
                W.HBox([self.folder, self.button]),
                self.where,
                self.result,
            ]
        )

    def _extra(self) -> dict[str, str]:
        return {"profile.html": self.chart_html(), PLOTLY_JS: self.plotly_js()}

    def prepare_download(self) -> None:
        """Build the zip on the worker, then show a link that saves it in the browser."""
        s = self.host.session
        extra = self._extra

        def run() -> tuple[bytes, str]:
            return s.export_zip(extra=extra()), s.image_name

        self.host.worker.run(run, then=self.show_link, what="download")

    def show_link(self, result: tuple[bytes, str]) -> None:
        data, image_name = result
        stem = Path(image_name).stem or "image"
        name = f"psal_{stem}.zip"
        # A data URL: the browser saves the bytes itself, nothing is read from the server's disk.
        href = "data:application/zip;base64," + base64.b64encode(data).decode("ascii")
        self.link.value = (
            f'<a download="{esc(name)}" href="{href}" style="font-size:12px">save {esc(name)} '
            f"({len(data) / 1e6:.1f} MB)</a>"
        )
        self.host.status.info(f"{name} is ready: click the link to save it")

    def export(self, folder: str | None = None) -> None:
        """Write the Session's files, profile.html and plotly.min.js into the subfolder ``folder``
        (default: the text box) of :attr:`root`, on the server.

        Raises
        ------
        ExportPathError
            ``folder`` would leave :attr:`root` (``..``, an absolute path, a symlink out).
        """
        name = self.folder.value if folder is None else folder
        target = export_folder(self.root, os.fspath(name))
        s = self.host.session
        extra = self._extra

        def run() -> list[Path]:
            return list(s.export(target, extra=extra()))

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
