"""Every Python snippet of the README runs as shipped, from the repository root, in a fresh process."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import ROOT

README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_snippets() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs(code: str) -> None:
    # Widgets built outside a kernel hold a worker thread: close whatever the snippet left open.
    tail = (
        "\nimport ipywidgets as _W\n"
        "for _w in list(_W.Widget.widgets.values()) if hasattr(_W.Widget, 'widgets') else []:\n"
        "    _w.close()\n"
        "import os as _os; _os._exit(0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code + tail], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PSAL_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, f"snippet failed:\n{code}\n--- stderr ---\n{run.stderr[-3000:]}"
