"""Grad-CAM (Selvaraju et al. 2017) heatmaps and their overlay on a radiograph.

``fzlpr`` paper Sec. 4.6 / Fig. 7: Grad-CAM on the "conv5" block, i.e. DenseNet121's final feature
map (layer ``relu``, 7x7x1024), blended over the CXR with high activity in red (JET colormap).

For a class score y_c (the model's output, here a logit) and feature maps A_k of the named layer:
alpha_k = mean_{u,v} dy_c/dA_k(u,v), L = ReLU(sum_k alpha_k A_k), upsampled bilinearly to the input
size and divided by its maximum per image (an all-zero map stays zero), so values lie in [0, 1].
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
from keras import ops


def _feature_and_output_models(model, layer_name):
    layer = model.get_layer(layer_name)
    both = keras.Model(model.input, [layer.output, model.outputs[0]])
    return layer, both


def _gradients(model, layer_name, images, class_idx):
    """Feature maps A (N, h, w, K) and dy_c/dA for each image's class, as NumPy arrays."""
    backend = keras.backend.backend()
    layer, both = _feature_and_output_models(model, layer_name)
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(images)
        # Watching the input records every op, so dy/dA exists for the intermediate feature map.
        with tf.GradientTape() as tape:
            tape.watch(x)
            feats, out = both(x, training=False)
            score = tf.reduce_sum(tf.gather(out, class_idx, axis=1, batch_dims=1))
        grads = tape.gradient(score, feats)
        return feats.numpy(), grads.numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        # The output as a function of the input and the feature map (given, not recomputed), so
        # that branches which bypass the layer (mlrfnet's multi-level heads) stay connected; the
        # gradient in the feature map is then the one TensorFlow's tape gives.
        head = keras.Model([model.input, layer.output], model.outputs[0])
        feats = keras.Model(model.input, layer.output)(images, training=False)
        idx, x = jnp.asarray(class_idx), jnp.asarray(images)

        def score(f):
            out = head([x, f], training=False)
            return jnp.sum(jnp.take_along_axis(out, idx[:, None], axis=1))

        grads = jax.grad(score)(feats)
        return np.asarray(feats), np.asarray(grads)
    raise NotImplementedError(f"grad_cam supports the tensorflow and jax backends, not {backend}")


def grad_cam(model, images, class_index, layer_name="relu"):
    """Grad-CAM heatmaps in [0, 1] at the input size, shape (N, H, W).

    Args:
        model: a functional Keras model (channels_last) whose first output holds the class scores
            (use the logits, as the paper's model outputs); ``layer_name`` must be reachable with
            ``model.get_layer`` (true for :func:`cxr_keras.models.densenet121_fzlpr`).
        images: (N, H, W, C) batch, already preprocessed as the model expects.
        class_index: one class for all images, or a sequence of N classes.
        layer_name: the convolutional feature layer (default DenseNet121's ``relu``).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"grad_cam expects a 4-D batch, got shape {images.shape}")
    n, h, w = images.shape[:3]
    class_idx = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (n,)).copy()
    feats, grads = _gradients(model, layer_name, images, class_idx)
    weights = grads.mean(axis=(1, 2), keepdims=True)          # alpha_k, (N, 1, 1, K)
    cam = np.maximum((weights * feats).sum(axis=-1), 0.0)     # (N, h, w)
    cam = ops.convert_to_numpy(ops.image.resize(cam[..., None].astype(np.float32), (h, w),
                                                interpolation="bilinear",
                                                data_format="channels_last"))[..., 0]
    cam = np.maximum(cam, 0.0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def overlay(image, heatmap, alpha=0.4):
    """Blend a [0, 1] heatmap (JET colormap, red = high) over a uint8 grey or RGB image.

    ``image``: (H, W), (H, W, 1) or (H, W, 3) uint8 (RGB). ``heatmap``: (h, w) in [0, 1], resized
    to the image size if needed. Returns (H, W, 3) uint8 RGB = (1 - alpha) image + alpha colour.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"overlay expects a uint8 image, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"overlay expects a grey or RGB image, got shape {np.shape(image)}")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != img.shape[:2]:
        heat = cv2.resize(heat, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat8 = np.uint8(np.round(255 * np.clip(heat, 0.0, 1.0)))
    colour = cv2.cvtColor(cv2.applyColorMap(heat8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blend = (1.0 - alpha) * img.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)
