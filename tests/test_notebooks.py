"""The notebooks of ``notebooks/`` (in the checkout, beside ``tests/``): stored without outputs,
valid nbformat, linked from the README, and each one runs top to bottom in a fresh kernel on the
installed package, at smoke size, with its figures shown inline.

Execution: nbclient, from a temporary folder, with ``CXR_NOTEBOOK_SMOKE=1`` (each notebook's
first, "parameters" cell reads it and shrinks data, images and epochs), in a kernel of this
interpreter (a kernelspec written for the test, so that a user's own "python3" kernel is never
picked). The executed copy must hold no error and at least the image/png outputs listed in
FIGURES, and its ``cxr_keras`` must be the installed package the suite tests. Without nbclient,
nbformat or ipykernel these tests are skipped: ``pip install ".[test]"`` (or ``.[notebooks]``)
installs them.

Measured on the 2-core CI machine, shared (load 4): the six executions take 14-18 s each, about
100 s of wall time and 85 s of CPU time together; about 7 s of CPU of each is the kernel starting
and importing TensorFlow. Smoke sizes train a few steps per model, eagerly (tracing a train step
costs more than those steps).
"""

import json
import re
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
# name -> image/png outputs the executed notebook shows at least (its figures)
FIGURES = {"tour": 4, "fzlpr": 4, "multiloss": 3, "mlrfnet": 1, "dual_mae": 3, "mtpret": 3}
EXTRA = 'pip install ".[test]" (or ".[notebooks]")'
CELL_TIMEOUT = 600


def _read(name):
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))


def test_every_notebook_is_tested_and_linked_from_the_readme():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [name for name in FIGURES if f"](notebooks/{name}.ipynb)" not in readme]
    assert missing == [], f"README links no notebooks/{missing}"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_stored_without_outputs(name):
    """Outputs and execution counts belong to a run, not to the repository: clear them
    (Jupyter: "Clear All Outputs"; or ``jupyter nbconvert --clear-output --inplace``)."""
    dirty = [i for i, cell in enumerate(_read(name)["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert dirty == [], f"notebooks/{name}.ipynb: code cells {dirty} hold outputs or execution counts"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_valid_nbformat_with_a_parameters_cell_first(name):
    nbformat = pytest.importorskip("nbformat", reason=f"nbformat is missing: {EXTRA}")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the first code cell is tagged 'parameters'"
    assert first.source.startswith("%matplotlib inline"), "figures show inline in any front end"
    assert 'os.environ.get("CXR_NOTEBOOK_SMOKE") == "1"' in first.source
    # the public API only, never the command line or Keras' internals
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert not re.search(r"keras\.src|subprocess|!cxr-keras|cxr_keras\.cli", code)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec running this interpreter (the installed package), found first."""
    pytest.importorskip("nbclient", reason=f"nbclient is missing: {EXTRA}")
    pytest.importorskip("ipykernel", reason=f"ipykernel is missing: {EXTRA}")
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "cxr-keras-tests"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cxr-keras tests", "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        yield "cxr-keras-tests"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_shows_its_figures(name, kernel_name, tmp_path, monkeypatch, capsys):
    import nbformat
    from conftest import INSTALLED
    from nbclient import NotebookClient

    monkeypatch.setenv("CXR_NOTEBOOK_SMOKE", "1")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import cxr_keras\nprint(cxr_keras.__file__)"))
    start = time.perf_counter()
    NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - start
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= FIGURES[name], f"{name}: {images} inline figures, expected {FIGURES[name]}"
    where = Path(nb.cells[-1].outputs[-1].text.strip()).resolve().parent
    assert where == INSTALLED, f"the notebook imported cxr_keras from {where}, not {INSTALLED}"
    assert (tmp_path / "cxr-notebooks").is_dir()      # it wrote into the folder it ran in
    with capsys.disabled():
        print(f"\nnotebooks/{name}.ipynb: {seconds:.1f} s, {images} figures")
