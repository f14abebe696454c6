"""Serve the explorer as a stand-alone web page: Voila running ``notebooks/dashboard.ipynb``.

The notebook is two short cells (plotly.js for the page, then ``Explorer.from_env()``); everything the user chooses
on the command line reaches it through environment variables (:data:`ENV_VARS`), because a
Voila kernel takes no arguments. :func:`launch` checks the inputs, starts Voila as a child
process of this Python on 127.0.0.1, waits until the port answers and returns a
:class:`Dashboard` handle (URL with its token, process, ``stop()``). Token, Host check and the
private log folder: :mod:`.dashboard_security`.

This module imports neither torch nor the widgets: ``psal dashboard`` starts Voila at once.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import dashboard_page as page
from . import dashboard_security as security

__all__ = [
    "ENV_VARS",
    "NOTEBOOK_NAME",
    "Dashboard",
    "DashboardError",
    "check_inputs",
    "check_paths",
    "dashboard_env",
    "find_notebook",
    "free_port",
    "launch",
    "notebook_json",
    "voila_command",
]

#: Name of the notebook Voila serves (in ``notebooks/`` of a source checkout).
NOTEBOOK_NAME = "dashboard.ipynb"

#: Launch option -> environment variable read by ``Explorer.from_env()``.
ENV_VARS: dict[str, str] = {
    "model": "PSAL_MODEL",
    "image": "PSAL_IMAGE",
    "data": "PSAL_DATA",
    "device": "PSAL_DEVICE",
    "weights": "PSAL_WEIGHTS",
    "stats": "PSAL_STATS",
    "index": "PSAL_INDEX",
    "export_dir": "PSAL_EXPORT_DIR",
    "upload_limit": "PSAL_UPLOAD_LIMIT",
}

#: JupyterLab extensions the dashboard page does not load (see :func:`voila_command`).
DENIED_EXTENSIONS = ("jupyterlab-plotly", "@voila-dashboards/jupyterlab-preview")

HOST = "127.0.0.1"
#: Where ``allow_remote=True`` listens: every IPv4 interface.
ALL_INTERFACES = "0.0.0.0"

# The code cells of the served notebook. Voila shows outputs only (sources are stripped), so
# the comments are for whoever opens the file in Jupyter. Voila streams the page cell by cell:
# the first cell's output (a script that loads plotly.js) reaches the browser while the second
# cell still builds the explorer.
_CELLS = (
    (
        "# Served by `psal dashboard` (Voila). First, before the explorer is built: plotly.js for the\n"
        "# page (psal_widgets/widgets/figure.py, page_preload_html; under `psal dashboard` the page's\n"
        "# head has already started it, psal_widgets/dashboard_page.py).\n"
        "import psal_widgets.lean_kernel  # first: skips a slow optional import (see that module)\n"
        "from IPython.display import HTML\n"
        "from psal_widgets.widgets.figure import page_preload_html\n"
        "\n"
        "HTML(page_preload_html())"
    ),
    (
        "# Options arrive as environment variables:\n"
        "# PSAL_MODEL, PSAL_IMAGE, PSAL_DATA, PSAL_DEVICE, PSAL_WEIGHTS, PSAL_STATS, PSAL_INDEX,\n"
        "# PSAL_EXPORT_DIR, PSAL_UPLOAD_LIMIT (unset = the defaults).\n"
        "from psal_widgets import Explorer\n"
        "\n"
        "Explorer.from_env()"
    ),
)
_CELL_IDS = ("dashboard-preload", "dashboard-explorer")


class DashboardError(RuntimeError):
    """The dashboard cannot start; the message names the problem and the fix."""


def notebook_json() -> str:
    """Text of the dashboard notebook, exactly as committed in ``notebooks/dashboard.ipynb``.

    Clean (no outputs, ``execution_count`` null) and bound to the ``python3`` kernel, so the
    copy written to a cache folder for a non-editable install is the same file.
    """
    cells = []
    for cell_id, code in zip(_CELL_IDS, _CELLS, strict=True):
        lines = code.split("\n")
        cells.append({
            "cell_type": "code",
            "execution_count": None,
            "id": cell_id,
            "metadata": {},
            "outputs": [],
            "source": [line + "\n" for line in lines[:-1]] + [lines[-1]],
        })
    nb = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "title": "Parameter-space saliency explorer",
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "psal_widgets" / "dashboard"


def find_notebook(*, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The notebook Voila serves.

    In a source checkout (editable install) that is ``notebooks/dashboard.ipynb`` next to the
    package; otherwise the same notebook is written to ``cache_dir`` (default
    ``$XDG_CACHE_HOME/psal_widgets/dashboard``) and that copy is returned.
    """
    repo_copy = Path(__file__).resolve().parent.parent / "notebooks" / NOTEBOOK_NAME
    if cache_dir is None and repo_copy.is_file():
        return repo_copy
    folder = Path(cache_dir) if cache_dir is not None else _cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NOTEBOOK_NAME
    text = notebook_json()
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as servers (tornado) set it: a port whose last connections are in
        # TIME_WAIT is free for a new server, and must count as free here too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_paths(*, image: str | os.PathLike[str] | None = None,
                data: str | os.PathLike[str] | None = None) -> None:
    """Cheap checks (no torch): the image is an existing file, the data path exists.

    Raises
    ------
    FileNotFoundError
        With a one-line message naming the option, the path and the fix.
    """
    if image is not None:
        p = Path(image).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"--image {image}: no such file; give the path of a photo (JPEG, PNG...)")
        if not p.is_file():
            raise FileNotFoundError(f"--image {image}: is a folder, not an image file; "
                                    "use --data for a folder of images")
    if data is not None:
        p = Path(data).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"--data {data}: no such file or folder; give a CSV (file,label), "
                                    "an ImageFolder tree or a flat ILSVRC2012 val folder")


def check_inputs(*, model: str | None = None, image: str | os.PathLike[str] | None = None,
                 device: str | None = None, weights: str | os.PathLike[str] | None = None,
                 stats: str | os.PathLike[str] | None = None) -> None:
    """Thorough checks that need torch: the image decodes, the device exists, and the model
    loads with its real weights and statistics (so a missing weights file or statistics of
    another model end the command with one line before any URL is printed).

    Costs the torch import (seconds); :func:`launch` runs it while Voila boots. With no model,
    weights or statistics given, the embedded default is known to load and is not loaded here.

    Raises
    ------
    ValueError
        ``ImageError``, ``ModelError``, ``StatsError`` or a device error, with the library's message.
    """
    # Imported only when needed: with nothing to check, torch is never imported.
    if image is not None:
        from .data import load_image

        load_image(Path(image).expanduser())
    if device is not None:
        from .kernels.device import pick_device

        pick_device(device)
    if model is not None or weights is not None or stats is not None:
        from .explainer import Explainer
        from .models import DEFAULT_MODEL

        Explainer(model or DEFAULT_MODEL, weights=weights, stats=stats if stats is not None else "auto", device="cpu")


def dashboard_env(*, model: str | None = None, image: str | os.PathLike[str] | None = None,
                  data: str | os.PathLike[str] | None = None, device: str | None = None,
                  weights: str | os.PathLike[str] | None = None, stats: str | os.PathLike[str] | None = None,
                  index: str | os.PathLike[str] | None = None,
                  export_dir: str | os.PathLike[str] | None = None, upload_limit: int | None = None,
                  token: str | None = None,
                  base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the Voila process: ``base`` (default ``os.environ``) plus ``PSAL_*``.

    Paths are made absolute because the kernel runs in the notebook's folder. Options left
    at ``None`` are removed from the environment, so an inherited value cannot leak in.
    ``token`` becomes ``JUPYTER_TOKEN`` (jupyter_server reads it there; unlike the command
    line, a process's environment is private to its user).
    """
    env = dict(os.environ if base is None else base)
    env.pop("JUPYTER_TOKEN", None)
    env.pop("JUPYTER_TOKEN_FILE", None)  # would win over nothing, but must not leak in either
    if token is not None:
        env["JUPYTER_TOKEN"] = token
    values = {
        "model": model,
        "image": None if image is None else str(Path(image).expanduser().resolve()),
        "data": None if data is None else str(Path(data).expanduser().resolve()),
        "device": device,
        "weights": None if weights is None else str(Path(weights).expanduser().resolve()),
        "stats": None if stats is None else str(Path(stats).expanduser().resolve()),
        "index": None if index is None else str(Path(index).expanduser().resolve()),
        "export_dir": None if export_dir is None else str(Path(export_dir).expanduser().resolve()),
        "upload_limit": None if upload_limit is None else str(int(upload_limit)),
    }
    for key, var in ENV_VARS.items():
        if values[key] is None:
            env.pop(var, None)
        else:
            env[var] = str(values[key])
    return env


def voila_command(notebook: str | os.PathLike[str], *, port: int, preheat: bool = True,
                  fill_delay: float = 60.0, python: str | None = None, host: str = HOST,
                  config_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Command line that serves ``notebook`` on ``host:port`` (default ``127.0.0.1``).

    The token is not on it (see :func:`dashboard_env`). With ``config_dir`` Voila reads its
    configuration from there only (:func:`~psal_widgets.dashboard_security.voila_config`: Host
    check, websocket size, no file route), every request needs the token and a request without
    it gets 403 (:mod:`psal_widgets.dashboard_auth`).

    Parameters
    ----------
    preheat : bool
        Run the notebook in a waiting kernel before anyone visits, so the page opens on a
        ready explorer (Voila's ``preheat_kernel``).
    fill_delay : float
        Seconds before Voila starts the next waiting kernel once one is taken. That kernel
        runs the whole notebook (model load, first analysis); delaying it keeps the CPU for
        the visitor's first clicks.
    python : str, optional
        Interpreter (default: this one, so Voila and its kernel share this environment).
    """
    cmd = [
        python or sys.executable, "-m", "voila", str(notebook),
        "--no-browser",
        f"--port={int(port)}",
        # `--ip` is silently ignored by Voila 0.5; the trait must be named in full.
        f"--Voila.ip={host}",
        # Fail instead of silently moving to another port (the URL we print would be wrong).
        "--Voila.port_retries=0",
        # A single-user tool whose visitors all hold the owner's token: show the real error if
        # the notebook fails.
        "--show_tracebacks=True",
        # The page draws plotly through its figure widgets only (widgets/figure.py). plotly's
        # JupyterLab extension (a renderer for plotly outputs) would make every page load and
        # run a second 4.8 MB copy of plotly.js while the widgets start.
        f"--VoilaConfiguration.extension_denylist={json.dumps(list(DENIED_EXTENSIONS))}",
    ]
    if config_dir is not None:
        cmd += [
            # Only our file: not voila.json / voila.py of the working folder or ~/.jupyter.
            f"--Voila.config_file_paths={os.fspath(config_dir)}",
            # The token comes from JUPYTER_TOKEN (auto_token: Voila does not blank it).
            "--Voila.auto_token=True",
            f"--Voila.identity_provider_class={security.IDENTITY_PROVIDER}",
        ]
    if preheat:
        cmd += ["--preheat_kernel=True", "--pool_size=1", f"--VoilaKernelManager.fill_delay={float(fill_delay)}"]
    return cmd


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


@dataclass
class Dashboard:
    """A running dashboard: Voila serving the explorer at :attr:`url`."""

    process: subprocess.Popen
    url: str
    port: int
    notebook: Path
    log_path: Path
    command: list[str] = field(default_factory=list)
    #: The token every request needs (in :attr:`url` as ``?token=``).
    token: str = ""
    #: Serving every interface (``allow_remote``), not only 127.0.0.1.
    remote: bool = False

    @property
    def remote_url(self) -> str:
        """The URL for another machine (this host's name), with the token."""
        query = f"?token={self.token}" if self.token else ""
        return f"http://{socket.gethostname()}:{self.port}/{query}"

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop Voila and its kernels; returns the exit code.

        SIGTERM lets Voila shut its kernels down (they run in sessions of their own, so only
        Voila can stop them); if Voila has not exited after ``timeout`` seconds, it and its
        process group are killed.
        """
        proc = self.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            if os.name == "posix":
                try:  # the group started for Voila (start_new_session) and nothing else
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            proc.kill()
        return proc.wait()

    def wait(self) -> int:
        """Block until Voila exits; returns its exit code."""
        return self.process.wait()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_http(proc: subprocess.Popen, port: int, *, timeout: float, log_path: Path) -> None:
    # Not "/": with a preheated kernel that request would take the waiting kernel. Any HTTP
    # answer (even 404) from a static path proves the server is up.
    probe = f"http://{HOST}:{port}/voila/static/favicon.ico"
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise DashboardError(f"Voila exited with code {code} before serving; log {log_path}:\n"
                                 + _tail(log_path))
        try:
            with urllib.request.urlopen(probe, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise DashboardError(f"Voila did not answer on port {port} within {timeout:.0f} s; log {log_path}:\n"
                                 + _tail(log_path))
        time.sleep(0.2)


def launch(*, port: int | None = None, model: str | None = None, image: str | os.PathLike[str] | None = None,
           data: str | os.PathLike[str] | None = None, device: str | None = None,
           weights: str | os.PathLike[str] | None = None, stats: str | os.PathLike[str] | None = None,
           index: str | os.PathLike[str] | None = None, open_browser: bool = False,
           notebook: str | os.PathLike[str] | None = None, preheat: bool = True, fill_delay: float = 60.0,
           check: bool = True, timeout: float = 60.0, log_path: str | os.PathLike[str] | None = None,
           extra_env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
           quiet: bool = False, allow_remote: bool = False,
           upload_limit: int = security.DEFAULT_UPLOAD_LIMIT,
           export_dir: str | os.PathLike[str] | None = None, token: str | None = None,
           page_plotly: bool = True) -> Dashboard:
    """Start the dashboard on ``127.0.0.1`` and return once the HTTP port answers.

    Every request needs the token of :attr:`Dashboard.url` (403 without it) and a loopback Host
    header (403 for ``Host: attacker.example``), as for Jupyter's own server.

    Parameters
    ----------
    port : int, optional
        Port to serve on; a free one when omitted. A busy port is an error.
    model, image, data, device : optional
        Passed to ``Explorer.from_env()`` as ``PSAL_MODEL`` / ``PSAL_IMAGE`` / ``PSAL_DATA`` /
        ``PSAL_DEVICE``; ``None`` keeps the explorer's default.
    weights, stats : path, optional
        Weights file of a named model and its helper-objects folder (``PSAL_WEIGHTS``,
        ``PSAL_STATS``).
    index : path, optional
        Profile-index folder of ``data`` (``psal index --out DIR``; ``PSAL_INDEX``); default: found
        in the user cache or built when the explorer starts.
    open_browser : bool
        Open the URL in the default web browser once the server answers.
    notebook : path, optional
        Serve another notebook instead of the dashboard (tests, custom layouts).
    preheat, fill_delay
        See :func:`voila_command`.
    check : bool
        Also run :func:`check_inputs` (image decodes, model and device exist) while Voila
        boots; on failure Voila is stopped and the error re-raised.
    timeout : float
        Seconds to wait for the port to answer.
    log_path : path, optional
        Where Voila's output goes (default: ``voila.log`` in a new private folder under
        ``$XDG_CACHE_HOME/psal_widgets/run``, mode 0700). A symlink there is never followed.
    quiet : bool
        Do not print the URL.
    allow_remote : bool
        Serve every network interface and accept any Host header, still with the token (a
        warning says so). Traffic is plain HTTP.
    upload_limit : int
        Largest image upload in bytes (default 20 MB); larger files are refused with a message.
    export_dir : path, optional
        The only folder "save on the server" writes under (default ``psal_export`` in the
        current folder).
    token : str, optional
        The token (default: a new random one, :func:`~psal_widgets.dashboard_security.new_token`).
    page_plotly : bool
        Serve the page with :mod:`.dashboard_page`'s template, whose head imports plotly.js while
        the kernel still runs the notebook (``False``: Voila's own ``lab`` template; the
        notebook or the figures then bring plotly.js).

    Returns
    -------
    Dashboard
        ``.url``, ``.process``, ``.stop()``; also a context manager that stops Voila.

    Raises
    ------
    FileNotFoundError, ValueError
        Bad inputs (before anything starts, or while Voila boots for ``check``).
    DashboardError
        Busy port, Voila failing to start or not answering in time.
    """
    check_paths(image=image, data=data)
    for option, value in (("--weights", weights), ("--stats", stats)):
        if value is not None and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{option} {value}: no such file or folder")
    nb = Path(notebook).expanduser().resolve() if notebook is not None else find_notebook()
    if not nb.is_file():
        raise FileNotFoundError(f"notebook {nb} not found")
    if port is None:
        port = free_port(ALL_INTERFACES if allow_remote else HOST)
    elif not 0 < int(port) < 65536:
        raise ValueError(f"--port {port}: give a TCP port between 1 and 65535")
    elif _port_in_use(int(port), ALL_INTERFACES if allow_remote else HOST):
        raise DashboardError(f"port {port} on {HOST} is already in use; choose another --port or leave it out")
    port = int(port)
    if index is not None and data is None:
        raise ValueError("--index needs --data: the index is read for the dataset given with --data")
    if not int(upload_limit) > 0:
        raise ValueError(f"--upload-limit {upload_limit}: give a positive size")
    token = security.new_token() if token is None else token
    if not token:
        raise ValueError("the dashboard token must not be empty: leave it out for a random one")
    env = dashboard_env(model=model, image=image, data=data, device=device, weights=weights, stats=stats,
                        index=index, upload_limit=int(upload_limit),
                        export_dir=export_dir if export_dir is not None else Path.cwd() / "psal_export",
                        token=token)
    env.update(extra_env or {})
    # Voila's configuration and (by default) its log live in a new private folder of this user.
    private = security.run_dir(port)
    config = os.fdopen(security.open_private(private / "voila.json"), "w", encoding="utf-8")
    with config:
        config.write(security.voila_config(allow_remote=allow_remote, upload_limit=int(upload_limit)))
    cmd = voila_command(nb, port=port, preheat=preheat, fill_delay=fill_delay,
                        host=ALL_INTERFACES if allow_remote else HOST, config_dir=private)
    if page_plotly:
        env = page.page_env(page.template_root(security.private_root()), env)
        cmd += page.template_args()
    else:
        env.pop(page.PAGE_PLOTLY_ENV, None)
    cmd += list(extra_args)
    if log_path is not None:
        log = Path(log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = security.open_private(log, exclusive=False)
    else:
        log = private / "voila.log"
        fd = security.open_private(log)
    with os.fdopen(fd, "wb") as fh:
        # Own session: a Ctrl-C in the terminal reaches only the parent, which then stops
        # Voila in order (SIGTERM, Voila shuts its kernels down), and stop() can kill the
        # whole group if Voila hangs.
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=nb.parent, start_new_session=True)
    dash = Dashboard(proc, f"http://{HOST}:{port}/?token={token}", port, nb, log, cmd, token=token,
                     remote=allow_remote)
    # Everything up to the return stops Voila on any error or Ctrl-C: a caller that never gets
    # the handle could not stop it.
    try:
        if check:
            check_inputs(model=model, image=image, device=device, weights=weights, stats=stats)
        _wait_http(proc, port, timeout=timeout, log_path=log)
        if not quiet:
            print(f"psal dashboard: serving {nb.name} at {dash.url}", flush=True)
            if allow_remote:
                print(f"psal dashboard: warning: --allow-remote serves every network interface "
                      f"({dash.remote_url}); anyone who has the URL with its token can use the "
                      "dashboard, and the traffic is not encrypted", file=sys.stderr, flush=True)
        if open_browser:
            webbrowser.open(dash.url)
    except BaseException:
        dash.stop(timeout=5)
        raise
    return dash


# -- driving the page from a browser (``psal bench dashboard``, tests/test_browser.py) ----------
#: Flags for Debian's Chromium driven by Playwright: headless in a container, no background traffic.
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
)
#: Voila's template asks this CDN for a font stylesheet; abort it when there is no network.
BLOCKED_URL = "**/cdn.jsdelivr.net/**"
BLOCKED_HOST = "cdn.jsdelivr.net"

#: JavaScript for ``page.evaluate(PROFILE_POINT_JS, [rank, avoid])``: viewport position of a marker
#: of the profile chart, from plotly's own axis transforms (scattergl draws on a canvas, so there
#: is no element per point to click). It picks the ``rank``-th highest point of the first trace
#: with markers, skipping filter ids in ``avoid`` when the trace carries ids as ``customdata``.
#: Returns ``{x, y, id, n}`` (``id`` null without customdata) or null.
PROFILE_POINT_JS = """
([rank, avoid]) => {
  const gd = document.querySelector('.psal-profile .js-plotly-plot');
  if (!gd || !gd._fullLayout) return null;
  gd.scrollIntoView({block: 'center'});
  const box = gd.getBoundingClientRect();
  const full = gd._fullLayout;
  for (const tr of gd._fullData) {
    if (!tr.visible || !tr.x || !tr.x.length || !(tr.mode || '').includes('markers')) continue;
    const xa = full[(tr.xaxis || 'x').replace('x', 'xaxis')];
    const ya = full[(tr.yaxis || 'y').replace('y', 'yaxis')];
    // customdata rows may be typed arrays (of BigInt for int64): Number() takes both.
    const id = i => {
      const row = tr.customdata ? tr.customdata[i] : null;
      return row == null ? null : Number(typeof row === 'object' ? row[0] : row);
    };
    const order = [...Array(tr.y.length).keys()]
      .filter(i => Number.isFinite(Number(tr.y[i])) && (id(i) === null || !avoid.includes(id(i))))
      .sort((a, b) => tr.y[b] - tr.y[a]);
    if (!order.length) continue;
    const i = order[Math.min(rank, order.length - 1)];
    const px = xa._offset + xa.l2p(xa.d2l ? xa.d2l(tr.x[i]) : tr.x[i]);
    const py = ya._offset + ya.l2p(ya.d2l ? ya.d2l(tr.y[i]) : tr.y[i]);
    return {x: box.left + px, y: box.top + py, id: id(i), n: tr.x.length};
  }
  return null;
}
"""


def chromium_path() -> str | None:
    """Debian's Chromium (``apt-get install chromium``), or ``None`` when not installed."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")
