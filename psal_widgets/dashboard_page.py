"""The dashboard's page: Voila's ``lab`` template, plus plotly.js imported from the page's head.

A visitor who opens the dashboard while its kernel still runs the notebook (everyone who opens it
right after ``psal dashboard`` starts) waits about 5 s for the page: Voila sends the head at
once and the cells as they finish. With Voila's own template the browser sits idle meanwhile,
and only then evaluates plotly.js (about 1 s of its main thread on this project's 2-core
machine) before it can draw the first chart. This template's head starts that import at once,
from a URL Voila serves (the template's ``static`` folder holds plotly's bundle), so it is done
before the cells arrive; figures then find it in the page-wide slot of
:data:`~psal_widgets.plotly_page.IMPORT_ONCE_JS`.

The kernel is told (:data:`~psal_widgets.plotly_page.PAGE_PLOTLY_ENV`) so that its figures and
its preload cell leave the 5 MB bundle out of what they send. If the head's import fails, each
figure asks the kernel for the bundle instead (``need_bundle`` in ``widgets/figure.py``).

The template (with a copy of the bundle: Voila's static handler refuses a link to a file outside
its folder) is written once per plotly version and template text into the user's private cache
(:func:`template_root`), and found by Voila through ``JUPYTER_PATH``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .plotly_page import IMPORT_ONCE_JS, PAGE_PLOTLY_ENV, plotly_version, widget_bundle_path

__all__ = ["BUNDLE_FILE", "TEMPLATE_NAME", "index_template", "page_env", "template_args", "template_root",
           "write_template"]

#: Voila template name (``--template``).
TEMPLATE_NAME = "psal"
#: plotly's bundle in the template's ``static`` folder, served at ``voila/static/<BUNDLE_FILE>``.
BUNDLE_FILE = "plotly-widget.js"

# ``v=`` lets Voila's static handler answer with a long cache lifetime, so a browser that comes
# back finds the bundle (and its compiled code) in its cache; a new plotly version gets a new URL.
_INDEX = """{%- extends 'lab/index.html.j2' -%}
{#- psal_widgets: Voila's lab template; the head also imports plotly.js (psal_widgets/dashboard_page.py). -#}
{%- block html_head_js -%}
<script>
/* Imported now, while the kernel still runs the notebook: the figures find it when they come. */
(() => {
{%- raw %}IMPORT_ONCE_JS{% endraw %}
importOnce(() => import("{{ resources.base_url }}voila/static/BUNDLE_FILE?v=VERSION"));
})();
</script>
{{ super() }}
{%- endblock html_head_js -%}
"""


def index_template() -> str:
    """Text of the template's ``index.html.j2`` (Jinja, extends Voila's ``lab/index.html.j2``)."""
    return (_INDEX.replace("IMPORT_ONCE_JS", IMPORT_ONCE_JS)
            .replace("BUNDLE_FILE", BUNDLE_FILE).replace("VERSION", plotly_version()))


def write_template(root: str | os.PathLike[str]) -> Path:
    """Write the template under ``root/voila/templates/psal``; return ``root`` (for ``JUPYTER_PATH``).

    Raises
    ------
    FileNotFoundError
        plotly's widget bundle is missing (the message says how to reinstall plotly).
    """
    root = Path(root)
    folder = root / "voila" / "templates" / TEMPLATE_NAME
    (folder / "static").mkdir(parents=True, exist_ok=True)
    # Voila reads base_template to find the lab template's files (voila.js, its macros).
    (folder / "conf.json").write_text(json.dumps({"base_template": "lab"}) + "\n", encoding="utf-8")
    (folder / "index.html.j2").write_text(index_template(), encoding="utf-8")
    shutil.copyfile(widget_bundle_path(), folder / "static" / BUNDLE_FILE)
    return root


def template_root(cache: str | os.PathLike[str]) -> Path:
    """The template's folder under ``cache`` for this plotly and this template text, written once.

    Runs share it (5 MB each time would add up in the run folders). It is written beside and
    renamed into place, so a folder that exists is complete; two runs writing it at once both
    end with the same one.
    """
    cache = Path(cache)
    bundle = widget_bundle_path()
    st = bundle.stat()
    key = hashlib.sha256(f"{index_template()}\0{bundle}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = cache / f"page-{key}"
    if root.is_dir():
        return root
    tmp = Path(tempfile.mkdtemp(prefix=".page-", dir=cache))
    try:
        write_template(tmp)
        os.rename(tmp, root)
    except OSError:
        if not root.is_dir():  # not a lost race with another run: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def template_args() -> list[str]:
    """Voila options that serve the page with this template."""
    return [f"--template={TEMPLATE_NAME}"]


def page_env(root: str | os.PathLike[str], env: dict[str, str]) -> dict[str, str]:
    """``env`` for Voila and its kernels: ``root`` first on ``JUPYTER_PATH``, and :data:`PAGE_PLOTLY_ENV` set."""
    out = dict(env)
    paths = [os.fspath(root)] + [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    out["JUPYTER_PATH"] = os.pathsep.join(paths)
    out[PAGE_PLOTLY_ENV] = "1"
    return out
