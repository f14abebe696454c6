"""`psal dashboard` and psal_widgets.dashboard without a browser: input errors, the Voila command
line, ports, the served notebook and the options reaching the explorer through the environment.

The page itself is tested in tests/test_browser.py; executing every notebook of notebooks/ is
tests/test_notebooks.py's job, so the dashboard notebook runs here only with options set.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from psal_widgets import dashboard
from psal_widgets.dashboard import DashboardError

from .conftest import ROOT

RAW = ROOT / "raw_images"


def psal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "psal_widgets.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as servers (tornado) set it: a port whose last connections are in
        # TIME_WAIT is free for a new server, and must count as free here too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--image", "no_such_photo.jpg", ["--image", "no_such_photo.jpg", "no such file"]),
    ("--image", str(RAW), ["--image", "folder", "--data"]),
    ("--data", "no_such_folder", ["--data", "no_such_folder", "no such file or folder"]),
])
def test_bad_path_exits_with_a_one_line_error(option: str, value: str, words: list[str]) -> None:
    run = psal("dashboard", option, value)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psal: error:"), run.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "http://" not in run.stdout  # nothing was served


def test_busy_port_is_refused_before_voila_starts() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(DashboardError, match=f"port {port} .* in use"):
            dashboard.launch(port=port, check=False, quiet=True)


@pytest.mark.parametrize("port", [0, 70000])
def test_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(ValueError, match="between 1 and 65535"):
        dashboard.launch(port=port, check=False, quiet=True)


def test_free_port_can_be_bound() -> None:
    port = dashboard.free_port()
    assert 0 < port < 65536 and can_bind(port)


def test_voila_command_serves_the_notebook_on_localhost_only(tmp_path: Path) -> None:
    nb = tmp_path / "dashboard.ipynb"
    cmd = dashboard.voila_command(nb, port=8123)
    # The same interpreter, so Voila's kernel sees this environment's packages.
    assert cmd[:4] == [sys.executable, "-m", "voila", str(nb)]
    assert "--port=8123" in cmd and "--no-browser" in cmd
    # Voila ignores `--ip`; only the full trait name binds to 127.0.0.1.
    assert "--Voila.ip=127.0.0.1" in cmd and not any(a.startswith("--ip") for a in cmd)
    # Voila would silently move to another port (and the printed URL would be wrong).
    assert "--Voila.port_retries=0" in cmd
    assert "--preheat_kernel=True" in cmd
    # plotly's JupyterLab extension would load a second plotly.js into every page.
    deny = [a for a in cmd if a.startswith("--VoilaConfiguration.extension_denylist=")]
    assert len(deny) == 1 and "jupyterlab-plotly" in json.loads(deny[0].split("=", 1)[1])
    assert not any("preheat" in a for a in dashboard.voila_command(nb, port=8123, preheat=False))


def test_options_reach_the_kernel_as_absolute_paths(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "PSAL_DATA": "inherited", "PSAL_DEVICE": "inherited"}
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        env = dashboard.dashboard_env(model="resnet50", image="photo.jpg", device=None, base=base)
    finally:
        os.chdir(old)
    assert env["PSAL_MODEL"] == "resnet50"
    # The kernel runs in the notebook's folder: a relative path would point elsewhere.
    assert env["PSAL_IMAGE"] == str(tmp_path.resolve() / "photo.jpg")
    # Options left out are removed, so values from the calling shell cannot leak in.
    assert "PSAL_DATA" not in env and "PSAL_DEVICE" not in env
    assert env["PATH"] == "/bin"


def test_committed_notebook_is_the_one_written_for_installs(tmp_path: Path) -> None:
    committed = ROOT / "notebooks" / dashboard.NOTEBOOK_NAME
    assert dashboard.find_notebook() == committed
    copy = dashboard.find_notebook(cache_dir=tmp_path)
    assert copy == tmp_path / dashboard.NOTEBOOK_NAME
    assert copy.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8")
    nb = json.loads(copy.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    # Two cells: the page's plotly.js preload first (streamed while the second builds), then the explorer.
    assert len(code) == 2 and "page_preload_html()" in "".join(code[0]["source"])
    assert "Explorer.from_env()" in "".join(code[1]["source"])


@pytest.mark.slow
def test_corrupt_image_stops_voila_and_frees_the_port(tmp_path: Path) -> None:
    from psal_widgets.data import ImageError

    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    port = dashboard.free_port()
    with pytest.raises(ImageError, match="photo.jpg"):
        dashboard.launch(port=port, image=bad, quiet=True, log_path=tmp_path / "voila.log")
    # The image is checked while Voila boots; a failed check must not leave Voila running.
    assert can_bind(port)


@pytest.mark.slow
def test_dashboard_notebook_opens_the_image_given_in_the_environment(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # A name found nowhere else (the gallery lists raw_images/, so not one of those).
    image = tmp_path / "from_the_environment.jpg"
    shutil.copy(RAW / "rocket.jpg", image)
    nb = nbformat.read(dashboard.find_notebook(), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    env = dashboard.dashboard_env(image=image)
    client.execute(env=env)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    views = [o for o in nb.cells[-1].outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, "Explorer.from_env() displayed no widget"
    # The explorer shows the file name somewhere in its widgets' state.
    state = json.dumps(nb.metadata.get("widgets", {}))
    assert image.name in state


def test_psal_dashboard_serves_until_interrupted() -> None:
    port = dashboard.free_port()
    # --no-preheat: no kernel is started, only the server (a page visit would start one).
    cmd = [sys.executable, "-m", "psal_widgets.cli", "dashboard", "--port", str(port), "--no-preheat"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in first, first
        assert not can_bind(port)  # Voila listens there
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/voila/static/nonexistent", timeout=10) as r:
            r.read()
    except urllib.error.HTTPError as err:
        assert err.code < 500  # an answer from Voila all the same
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert can_bind(port)  # Voila is gone


@pytest.mark.parametrize(("extra", "words"), [
    (["--model", "resnet18", "--offline"], ["resnet18-f37072fd.pth", "offline"]),
    (["--model", "resnet18", "--weights", "WEIGHTS"], ["do not fit"]),
    (["--stats", "no_such_stats"], ["--stats", "no_such_stats"]),
])
def test_model_weights_and_statistics_are_loaded_before_a_url_is_printed(extra, words, tmp_path) -> None:
    import torch

    bad = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    args = [str(bad) if a == "WEIGHTS" else a for a in extra]
    run = subprocess.run([sys.executable, "-m", "psal_widgets.cli", "dashboard", *args], capture_output=True,
                         text=True, timeout=180, env={**os.environ, "TORCH_HOME": str(tmp_path / "torch")})
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psal: error:"), run.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "http://" not in run.stdout


def test_weights_and_stats_reach_the_kernel_as_absolute_paths(tmp_path) -> None:
    env = dashboard.dashboard_env(model="resnet18", weights="w.pth", stats="helper", base={})
    assert env["PSAL_WEIGHTS"] == str(Path("w.pth").resolve())
    assert env["PSAL_STATS"] == str(Path("helper").resolve())
    assert "PSAL_DATA" not in dashboard.dashboard_env(base={"PSAL_DATA": "leaked"})


def test_ctrl_c_while_launching_is_a_normal_stop(monkeypatch, capsys) -> None:
    """A Ctrl-C that lands inside launch() (a loaded machine: the URL is printed, the command has
    not reached its wait yet) stops like any other Ctrl-C, exit 0, instead of 'interrupted' (130)."""
    from psal_widgets import cli

    def interrupted(**_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dashboard, "launch", interrupted)
    old = signal.getsignal(signal.SIGTERM)  # the command installs its own SIGTERM handler
    try:
        assert cli.main(["dashboard", "--no-preheat"]) == 0
    finally:
        signal.signal(signal.SIGTERM, old)
    assert "psal dashboard: stopped" in capsys.readouterr().out
