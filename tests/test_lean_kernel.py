"""The dashboard kernel's lean start: the slow optional import is skipped, nothing else breaks."""
from __future__ import annotations

import subprocess
import sys

from psal_widgets.dashboard import notebook_json

_PROBE = """
import sys
import psal_widgets.lean_kernel
from psal_widgets.widgets.figure import FigureWidget  # plotly -> nbformat -> jsonschema
import jsonschema
fig = FigureWidget(data=[{"type": "scatter", "y": [1, 2]}])
checker = jsonschema.FormatChecker()
assert sys.modules["rfc3987_syntax"] is None, "the grammar package was imported"
assert "iri" not in checker.checkers, "jsonschema should leave iri unchecked"
assert checker.conforms("2026-12-04", "date")  # other formats still work
jsonschema.validate({"a": 1}, {"type": "object"})
print("ok")
"""


def test_dashboard_kernel_skips_the_grammar_package_and_keeps_jsonschema_working() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_served_notebook_imports_it_before_anything_else() -> None:
    code = [line for line in notebook_json().split("\\n") if "import" in line and not line.lstrip('" ').startswith("#")]
    assert "import psal_widgets.lean_kernel" in code[0], code


_LAZY_PROBE = """
import sys
import psal_widgets.session, psal_widgets.kernels, psal_widgets.widgets.app, psal_widgets.viz
from psal_widgets.session import Session  # the lazy attribute the explorer resolves: session/core.py
import psal_widgets.session.export, psal_widgets.session.dataset
heavy = [m for m in ("pytorch_grad_cam", "sklearn", "matplotlib") if m in sys.modules]
print(heavy)
from psal_widgets.viz import profile_png  # loads on first use
from psal_widgets.kernels.cam import _grad_cam
cls, target = _grad_cam("gradcam")
print(cls.__name__, target.__name__, "matplotlib" in sys.modules)
"""


def test_the_explorer_path_defers_grad_cam_and_matplotlib_to_first_use() -> None:
    # grad-cam imports scikit-learn (~0.9 s) and matplotlib costs ~0.3 s: neither is needed
    # before the dashboard's first chart.
    out = subprocess.run([sys.executable, "-c", _LAZY_PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "GradCAM ClassifierOutputTarget True"], out.stdout
