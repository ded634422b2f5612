"""The tests of what our own code computes with ``keras.ops``, again on the JAX backend (the
multi-host path), in one fresh ``KERAS_BACKEND=jax`` pytest: losses and custom layers (NumPy,
scipy and sklearn references, gradients through ``jax.value_and_grad``), and the forward passes of
our own model code (Res2Net's channel split, the ViT layers) against their NumPy references.
Networks of stock Keras layers (ResNet, DenseNet, the U-Net) behave as Keras makes them on each
backend and are checked on TensorFlow only; the custom training steps (MAE, MoCo, Faster R-CNN,
multitask, layer decay) run their own JAX checks in their modules. A TensorFlow-only test in the
modules below skips itself on JAX."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

HERE = Path(__file__).resolve().parent
ON_JAX = ["test_losses_ranking", "test_losses_calibrated", "test_mlrfnet_layers",
          "test_segmentation", "test_regularizers", "test_cyclic_cosine", "test_anchors",
          "test_roi_align", "test_raw_image",
          "test_res2net::test_small_model_matches_numpy_reference",
          "test_vit_convert::test_timm_state_dict_gives_the_numpy_logits",
          "test_vit_convert::test_mae_checkpoint_decoder_is_ignored_and_positions_are_resized"]

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed"),
    pytest.mark.skipif(keras.backend.backend() == "jax", reason="this run is on JAX already"),
]


def _path(item):
    module, _, test = item.partition("::")
    return str(HERE / f"{module}.py") + (f"::{test}" if test else "")


def test_passes_on_jax(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-m", "not slow", "-W", "ignore", *map(_path, ON_JAX)],
                         capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert " passed" in out.stdout.strip().splitlines()[-1], out.stdout[-500:]
