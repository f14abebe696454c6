"""The notebooks under notebooks/: committed clean, and they run top to bottom without errors.

Execution happens on a copy in a temporary folder (the kernel's working directory is that
folder's ``notebooks/``, with ``raw_images/`` beside it), so the committed file is never touched.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .conftest import VAL800

ROOT = Path(__file__).resolve().parents[1]
#: Teaching notebooks (those with a "parameters" cell) run on this many images in the test.
TEST_LIMIT = 12
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300

nbformat = pytest.importorskip("nbformat")


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; "
        "clear them before committing (Kernel > Restart and Clear Outputs)"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    teaching = any("parameters" in c.get("metadata", {}).get("tags", []) for c in nbformat.read(path, 4).cells)
    if teaching:
        # The kernel inherits these: the shared ImageNet images, a small limit, a private cache
        # (the profile index the experiments build lands there, not in the user's cache).
        if not VAL800.exists():
            pytest.skip("teaching notebooks run on ../shared/data/imagenet-val-800 in the tests")
        monkeypatch.setenv("PSAL_DATA", str(VAL800 / "labels.csv"))
        monkeypatch.setenv("PSAL_LIMIT", str(TEST_LIMIT))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    # A throwaway tree with the same shape as the repository: notebooks/ next to raw_images/.
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy2(path, work / path.name)
    shutil.copytree(ROOT / "raw_images", tmp_path / "raw_images")
    original = path.read_bytes()

    nb = nbformat.read(work / path.name, as_version=4)
    # First cell (not saved anywhere): record the kernel's environment, so the test can check that
    # it runs in this virtual environment (sys.prefix; a venv's python may be a symlink to the
    # system one, so comparing executables would not tell them apart).
    probe = nbformat.v4.new_code_cell("import sys; print('KERNEL-PREFIX=' + sys.prefix)")
    probe["id"] = "test-probe"
    nb.cells.insert(0, probe)

    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)

    probe_text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    kernel_prefix = probe_text.split("KERNEL-PREFIX=", 1)[-1].strip()
    assert Path(kernel_prefix).resolve() == Path(sys.prefix).resolve(), (
        f"the python3 kernel ran in {kernel_prefix!r}, not in the test environment {sys.prefix!r}"
    )
    errors = [
        (i, o.get("ename"))
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for o in cell.outputs
        if o.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: error outputs in cells {errors}"
    assert path.read_bytes() == original, f"{path.name} was modified by the test"
