"""The dashboard page's template (psal_widgets/dashboard_page.py) and what the kernel does with it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import jinja2
import plotly.graph_objects as go
import pytest

from psal_widgets import dashboard, dashboard_page
from psal_widgets.plotly_page import PAGE_PLOTLY_ENV, plotly_version, widget_bundle_path


def test_the_bundle_found_without_importing_plotly_is_the_one_its_widget_loads() -> None:
    assert widget_bundle_path() == Path(go.FigureWidget._esm._path)
    import plotly

    assert plotly_version() == plotly.__version__


def _render(root: Path, base_url: str = "/base/") -> str:
    folder = root / "voila" / "templates" / dashboard_page.TEMPLATE_NAME
    # Voila's lab template stands in as a page with the block the template extends.
    loader = jinja2.ChoiceLoader([
        jinja2.FileSystemLoader(str(folder)),
        jinja2.DictLoader({"lab/index.html.j2": "<head>{% block html_head_js %}LAB-HEAD{% endblock %}</head>"}),
    ])
    return jinja2.Environment(loader=loader).get_template("index.html.j2").render(resources={"base_url": base_url})


def test_template_imports_the_served_bundle_in_the_head_and_keeps_voilas_own(tmp_path: Path) -> None:
    root = dashboard_page.write_template(tmp_path)
    folder = root / "voila" / "templates" / dashboard_page.TEMPLATE_NAME
    assert json.loads((folder / "conf.json").read_text()) == {"base_template": "lab"}
    served = folder / "static" / dashboard_page.BUNDLE_FILE
    assert served.read_bytes() == widget_bundle_path().read_bytes() and not served.is_symlink()
    html = _render(root)
    url = f"/base/voila/static/{dashboard_page.BUNDLE_FILE}?v={plotly_version()}"
    assert f'importOnce(() => import("{url}"));' in html
    # Our script comes first, then Voila's own head scripts (super()).
    assert html.index("<script>") < html.index("LAB-HEAD")
    assert html.count("<script") == 1 and html.count("</script>") == 1


def test_template_root_is_written_once_and_shared_by_runs(tmp_path: Path) -> None:
    first = dashboard_page.template_root(tmp_path)
    stamp = (first / "voila" / "templates" / "psal" / "index.html.j2").stat().st_mtime_ns
    second = dashboard_page.template_root(tmp_path)
    assert second == first
    assert (first / "voila" / "templates" / "psal" / "index.html.j2").stat().st_mtime_ns == stamp
    # No half-written folders are left beside it.
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_template_root_changes_with_the_template_text(tmp_path: Path, monkeypatch) -> None:
    first = dashboard_page.template_root(tmp_path)
    monkeypatch.setattr(dashboard_page, "_INDEX", dashboard_page._INDEX + "{# changed #}\n")
    assert dashboard_page.template_root(tmp_path) != first


def test_page_env_puts_the_template_first_and_tells_the_kernel(tmp_path: Path) -> None:
    env = dashboard_page.page_env(tmp_path, {"JUPYTER_PATH": os.pathsep.join(["/a", "/b"]), "X": "1"})
    assert env["JUPYTER_PATH"].split(os.pathsep) == [str(tmp_path), "/a", "/b"]
    assert env[PAGE_PLOTLY_ENV] == "1" and env["X"] == "1"
    assert dashboard_page.page_env(tmp_path, {})["JUPYTER_PATH"] == str(tmp_path)


def test_launch_serves_the_template_and_its_bundle(tmp_path: Path) -> None:
    import urllib.request

    with dashboard.launch(notebook=_tiny_notebook(tmp_path), check=False, preheat=False, quiet=True,
                          timeout=120) as dash:
        assert f"--template={dashboard_page.TEMPLATE_NAME}" in dash.command
        base = dash.url.split("?", 1)[0]
        with urllib.request.urlopen(f"{base}voila/static/{dashboard_page.BUNDLE_FILE}?token={dash.token}") as r:
            assert r.status == 200 and r.read() == widget_bundle_path().read_bytes()
        with urllib.request.urlopen(dash.url, timeout=120) as r:
            page = r.read().decode()
        # The import is in the head, before the first cell's output.
        assert page.index(f"voila/static/{dashboard_page.BUNDLE_FILE}?v=") < page.index("cell-index=")
    with dashboard.launch(notebook=_tiny_notebook(tmp_path), check=False, preheat=False, quiet=True,
                          timeout=120, page_plotly=False) as dash:
        assert not any(a.startswith("--template") for a in dash.command)


def _tiny_notebook(folder: Path) -> Path:
    nb = folder / "tiny.ipynb"
    nb.write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": "one", "metadata": {}, "outputs": [],
                   "source": "print('hello')"}],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }))
    return nb


@pytest.fixture
def page_brings_plotly(monkeypatch):
    import psal_widgets.widgets.figure as figure_module

    monkeypatch.setenv(PAGE_PLOTLY_ENV, "1")
    monkeypatch.setattr(figure_module, "_PAGE_CARRIES_BUNDLE", False)
    return figure_module


def test_under_the_template_figures_and_the_preload_cell_leave_the_bundle_out(page_brings_plotly, monkeypatch) -> None:
    figure_module = page_brings_plotly
    fig = figure_module.FigureWidget(data=[{"type": "scatter", "y": [1, 2]}])
    assert fig.get_state()["_psal_bundle"] == ""
    html = figure_module.page_preload_html()
    assert "<script" not in html and len(html) < 200
    # A page whose head import failed still gets the bundle from the kernel.
    sent = []
    monkeypatch.setattr(fig, "send", lambda content, buffers=None: sent.append(content))
    fig._psal_message(fig, {"psal": "need_bundle"}, [])
    assert sent == [{"psal": "bundle", "code": figure_module.plotly_bundle()}]


def test_without_the_template_figures_carry_the_bundle(monkeypatch) -> None:
    import psal_widgets.widgets.figure as figure_module

    monkeypatch.delenv(PAGE_PLOTLY_ENV, raising=False)
    monkeypatch.setattr(figure_module, "_PAGE_CARRIES_BUNDLE", False)
    fig = figure_module.FigureWidget(data=[{"type": "scatter", "y": [1, 2]}])
    assert fig.get_state()["_psal_bundle"] == figure_module.plotly_bundle()
