"""Shared test hygiene.

* The suite tests the **installed** package, never the checkout: the checkout's folder is taken
  off ``sys.path`` (``python -m pytest`` puts the current folder first), the session and every
  subprocess run from an empty temporary folder, and under CI (``CI`` set) an import of
  ``cxr_keras`` from inside the checkout stops the run.
* Every test module starts from a clean Keras / TensorFlow state, so that one module's models,
  traced functions and global policy do not accumulate into the next.
"""

import gc
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# TensorFlow 2.21's oneDNN CPU kernels corrupt the heap when training our reduced test networks
# (4-8 channels) on a batch of odd size (a short last batch): "corrupted double-linked list",
# segfaults or aborts later, at random places of the suite. Measured: a 4-8-channel ResNet-18
# crashed 4 of 5 fits of 25 images in batches of 8, none with oneDNN off or at full width. Set
# before TensorFlow is first imported (subprocesses inherit it).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Python >= 3.11: subprocesses (python -c, python -m) do not put their folder on sys.path.
os.environ["PYTHONSAFEPATH"] = "1"

sys.path[:] = [p for p in sys.path if p not in ("", ".") and Path(p).resolve() != REPO]


def _installed_copy() -> Path:
    spec = importlib.util.find_spec("cxr_keras")
    if spec is None or spec.origin is None:
        pytest.exit("cxr_keras is not installed: run `pip install \".[test]\"` first "
                    "(the tests check the installed package, not the checkout)", returncode=4)
    return Path(spec.origin).resolve().parent


INSTALLED = _installed_copy()
if os.environ.get("CI") and INSTALLED.is_relative_to(REPO):
    pytest.exit(f"CI: cxr_keras was imported from the checkout ({INSTALLED}), not from the "
                "installed package; install it with `pip install \".[test]\"` (not editable)",
                returncode=4)


@pytest.fixture(autouse=True, scope="session")
def _run_from_an_empty_folder(tmp_path_factory):
    """Tests and their subprocesses run from an empty folder, as a user outside the checkout
    (after collection: pytest-xdist workers resolve the test paths against the first folder)."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True, scope="module")
def _fresh_keras_state():
    yield
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    gc.collect()


@pytest.fixture
def restore_runtime():
    """Put back what ``cxr_keras.training.runtime.configure`` changes process-wide: TensorFlow's
    op determinism (as it was; TensorFlow has no public switch to turn it off, hence the
    internal module) and the global dtype policy ("float32")."""
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    try:
        yield
    finally:
        (tf_config.enable_op_determinism if was else tf_config.disable_op_determinism)()
        import keras

        keras.mixed_precision.set_global_policy("float32")
