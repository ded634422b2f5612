"""What ``pip install .`` installs is the whole package, the tests see that installed copy, and
``import cxr_keras`` alone lets Keras load what the package saves."""

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _cli import console_script, python

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "cxr_keras"
DIST = importlib.metadata.distribution("cxr-keras")


def _editable() -> bool:
    text = DIST.read_text("direct_url.json")
    return bool(text and json.loads(text).get("dir_info", {}).get("editable"))


def _source_files():
    """Every module and data file of the checkout's package, relative to the repository."""
    return sorted(str(p.relative_to(REPO)) for p in SOURCE.rglob("*")
                  if p.is_file() and p.suffix in (".py", ".json") and "__pycache__" not in p.parts)


@pytest.mark.skipif(_editable(), reason="an editable install lists no module files")
def test_installed_distribution_holds_every_source_file():
    installed = {str(f) for f in DIST.files or []}
    source = _source_files()
    assert len(source) > 100 and any(s.endswith(".json") for s in source)
    missing = [s for s in source if s not in installed]
    assert not missing, f"not installed by `pip install .`: {missing}"


def test_the_tests_import_the_installed_copy():
    import cxr_keras

    here = Path(cxr_keras.__file__).resolve()
    assert DIST.version == cxr_keras.__version__
    if not _editable():
        assert not here.is_relative_to(REPO), f"tests imported the checkout: {here}"
        assert here == Path(DIST.locate_file("cxr_keras/__init__.py")).resolve()
    assert Path.cwd().resolve() != REPO and not Path.cwd().resolve().is_relative_to(REPO)


def test_manifests_are_package_data():
    from cxr_keras.data import manifests

    names = manifests.available()
    assert {"nih", "chexpert", "pedicxr", "shenzhen", "deepcovid"} <= set(names)
    assert manifests.load_manifest("nih")["name"] == "nih"
    assert sorted(p.stem for p in (REPO / "data_manifests").glob("*.json")) == names


def _registered_in_source():
    """(module, name) of every object the source decorates with register_keras_serializable,
    read from the files (not from the registry under test)."""
    found = []
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and any(
                    "register_keras_serializable" in ast.unparse(d) for d in node.decorator_list):
                found.append((str(path.relative_to(REPO)), node.name))
    return found


def test_import_cxr_keras_registers_every_serialisable(tmp_path):
    expected = _registered_in_source()
    assert len(expected) >= 25, expected
    code = ("import json, cxr_keras, keras\n"
            "print(json.dumps(sorted(keras.saving.get_custom_objects())))")
    res = python(code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    registered = set(json.loads(res.stdout.strip().splitlines()[-1]))
    missing = [f"{m}: {n}" for m, n in expected if f"cxr_keras>{n}" not in registered]
    assert not missing, f"not registered by `import cxr_keras`: {missing}"


def test_a_saved_model_with_our_loss_and_layers_loads_after_import_cxr_keras(tmp_path):
    """The reported failure: "Could not locate class 'FZLPR'" after only ``import cxr_keras``."""
    import keras
    import numpy as np

    from cxr_keras.layers import ECA
    from cxr_keras.losses import FZLPR

    inp = keras.Input((4, 4, 8))
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(ECA(3)(inp)))
    model = keras.Model(inp, out)
    model.compile("adam", loss=FZLPR(tau=0.3))
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, cxr_keras, keras\n"
            "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
            "assert type(m.loss).__name__ == 'FZLPR' and m.loss.tau == 0.3, m.loss\n"
            "np.save(sys.argv[3], m.predict_on_batch(np.load(sys.argv[2])))")
    res = python(code, tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "y.npy", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.predict_on_batch(x), atol=1e-6)


def test_spawned_workers_stay_light(tmp_path):
    """A spawned worker (the cache and phantom pools) imports cxr_keras without Keras."""
    code = ("import multiprocessing as mp, sys\n"
            "def probe():\n"
            "    import cxr_keras.data.images  # what a cache worker imports\n"
            "    return 'keras' in sys.modules\n"
            "if __name__ == '__main__':\n"
            "    with mp.get_context('spawn').Pool(1) as pool:\n"
            "        print(pool.apply(probe))\n")
    (tmp_path / "probe.py").write_text(code)
    res = subprocess.run([sys.executable, str(tmp_path / "probe.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "False"


def test_console_script_is_installed():
    assert os.access(console_script(), os.X_OK)
