"""The model, layer and loss tests again, on the JAX backend (the multi-host path): each module
below runs in a fresh ``KERAS_BACKEND=jax`` pytest (two groups, to pay the start-up twice, not
thirteen times; the full-size U-Net builds, 90 s on JAX, are left to the TensorFlow run). Its own assertions (NumPy, scipy, sklearn
references, gradients through ``jax.value_and_grad``, safe-mode reloads in a fresh process) are
what is checked; a TensorFlow-only test in them skips itself on JAX."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

HERE = Path(__file__).resolve().parent
GROUPS = {
    "losses_and_layers": ["test_losses_ranking", "test_losses_calibrated", "test_mlrfnet_layers",
                          "test_segmentation", "test_regularizers", "test_cyclic_cosine",
                          "test_anchors", "test_roi_align"],
    "models": ["test_resnet", "test_res2net", "test_densenet_fzlpr", "test_vit_convert",
               "test_efficientnet_unet::test_small_unet_keras_roundtrip",
               "test_efficientnet_unet::test_unet_any_spatial_size"],
}

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed"),
    pytest.mark.skipif(keras.backend.backend() == "jax", reason="this run is on JAX already"),
]


def _path(item):
    module, _, test = item.partition("::")
    return str(HERE / f"{module}.py") + (f"::{test}" if test else "")


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_passes_on_jax(group, tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-m", "not slow", "-W", "ignore", *map(_path, GROUPS[group])],
                         capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert " passed" in out.stdout.strip().splitlines()[-1], out.stdout[-500:]
