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
