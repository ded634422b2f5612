"""Masked autoencoders: MAE (He et al., CVPR 2022) and dual-MAE (Yoon & Kang, IEEE Access 2024).

:class:`MaskedAutoencoder`: the image is cut into patches; each sample keeps a random subset of
``1 - mask_ratio`` of them (argsort of uniform noise, :func:`random_masking`); the ViT encoder
(:func:`cxr_keras.models.vit.vit`, ``model.encoder``) sees the visible tokens only; a light decoder
(default 512 wide, 2 blocks, 16 heads: CHOICE, SPEC section 4) gets the encoded tokens plus a learned
mask token at every masked position, with a fixed sin-cos position embedding, and predicts every
patch's pixels. The loss is the mean squared error on the masked patches, optionally against
per-patch normalised pixels (``norm_pix_loss``).

:class:`DualMaskedAutoencoder` (dual-MAE, Fig. 1a): an online MAE (theta) and a target MAE (xi), each
with its own random mask, reconstruct y1 and y2. Eq. (1): L_total = l1 L1 + l2 L2 + l3 L3 with
L1 = MSE(y1, y2) (y2 without gradient), L2 = MSE(x, y1) and L3 = MSE(x, y2) (as MAE's loss, on the
masked patches of each network). Eq. (2): after every optimiser step xi <- tau xi + (1 - tau) theta
(tau 0.99), no gradient reaches the target, so L3 only monitors its reconstruction.

Both are ``keras.Model`` subclasses trained with ``model.fit(images)`` on the TensorFlow and JAX
backends (``compile(optimizer)`` without a loss); every loss term is logged.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
from keras import layers, ops

from ._ema_step import train_step_then_ema
from ._loss_terms_model import LossTermsModel
from .vit import LN_EPSILON, TransformerBlock, encoder_layers, gather_tokens, sincos_2d, vit

L1_REGIONS = ("all", "masked")


def random_masking(noise, mask_ratio: float):
    """Per-sample random masking by sorting noise (MAE): the ``len_keep = int(N (1 - ratio))``
    patches with the smallest noise stay visible.

    noise: (B, N). Returns ``ids_keep`` (B, len_keep) visible patch indices, ``mask`` (B, N) with
    1 = masked, 0 = visible, and ``ids_restore`` (B, N), the inverse permutation.
    """
    n = noise.shape[1]
    len_keep = keep_count(n, mask_ratio)
    ids_shuffle = ops.argsort(noise, axis=1)
    ids_restore = ops.argsort(ids_shuffle, axis=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = ops.cast(ids_restore >= len_keep, "float32")
    return ids_keep, mask, ids_restore


def keep_count(num_patches: int, mask_ratio: float) -> int:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1 - mask_ratio)))


def patchify(images, patch_size: int):
    """(B, H, W, C) -> (B, H/p * W/p, p*p*C), each patch flattened row by row, channels last
    (MAE's order)."""
    b, h, w, c = ops.shape(images)[0], images.shape[1], images.shape[2], images.shape[3]
    p = patch_size
    x = ops.reshape(images, (b, h // p, p, w // p, p, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (b, (h // p) * (w // p), p * p * c))


def unpatchify(patches, grid_hw, patch_size: int, channels: int):
    """Inverse of :func:`patchify`."""
    gh, gw = grid_hw
    p = patch_size
    x = ops.reshape(patches, (ops.shape(patches)[0], gh, gw, p, p, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (ops.shape(patches)[0], gh * p, gw * p, channels))


def patch_targets(images, patch_size: int, norm_pix: bool):
    """The reconstruction target: patches, normalised per patch to zero mean and unit variance
    (unbiased variance + 1e-6, as MAE's ``target.var``) when ``norm_pix``."""
    target = ops.cast(patchify(images, patch_size), "float32")
    if norm_pix:
        n = target.shape[-1]
        mean = ops.mean(target, axis=-1, keepdims=True)
        var = ops.sum((target - mean) ** 2, axis=-1, keepdims=True) / (n - 1)
        target = (target - mean) / ops.sqrt(var + 1e-6)
    return target


def masked_mse(pred, target, mask):
    """Mean over the masked patches (mask = 1) of the per-patch mean squared error."""
    per_patch = ops.mean((ops.cast(pred, "float32") - target) ** 2, axis=-1)
    mask = ops.cast(mask, "float32")
    return ops.sum(per_patch * mask) / ops.maximum(ops.sum(mask), 1.0)


@keras.saving.register_keras_serializable(package="cxr_keras")
class MaskedAutoencoder(LossTermsModel):
    """MAE with a ViT encoder (``self.encoder``, a functional :func:`~cxr_keras.models.vit.vit`
    without head whose weights a classifier takes over) and a transformer decoder.

    ``call(images)`` returns ``{"pred": (B, N, p*p*C) predicted patches, "mask": (B, N)}`` with a
    fresh random mask (``mask_ratio``) per call, from the model's seed generator.
    """

    def __init__(self, image_size=224, channels=3, patch_size=16, width=384, depth=12, num_heads=6,
                 mlp_ratio=4.0, decoder_width=512, decoder_depth=2, decoder_heads=16,
                 mask_ratio=0.75, norm_pix_loss=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        size = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
        self.image_size, self.channels, self.patch_size = tuple(int(s) for s in size), int(channels), int(patch_size)
        self.width, self.depth, self.num_heads = int(width), int(depth), int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.decoder_width, self.decoder_depth = int(decoder_width), int(decoder_depth)
        self.decoder_heads = int(decoder_heads)
        self.mask_ratio, self.norm_pix_loss, self.seed = float(mask_ratio), bool(norm_pix_loss), seed
        keep_count(1, self.mask_ratio)  # validates the ratio
        self.grid = (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.encoder = vit(input_shape=self.image_size + (self.channels,), patch_size=self.patch_size,
                           width=self.width, depth=self.depth, num_heads=self.num_heads,
                           mlp_ratio=self.mlp_ratio, include_top=False, pooling=None,
                           positional="sincos", name="encoder")
        self.decoder_embed = layers.Dense(self.decoder_width, kernel_initializer="glorot_uniform",
                                          name="decoder_embed")
        self.decoder_blocks = [TransformerBlock(self.decoder_width, self.decoder_heads, mlp_ratio,
                                                name=f"decoder_block_{i}")
                               for i in range(self.decoder_depth)]
        self.decoder_norm = layers.LayerNormalization(epsilon=LN_EPSILON, name="decoder_norm")
        self.decoder_pred = layers.Dense(self.patch_size ** 2 * self.channels,
                                         kernel_initializer="glorot_uniform", name="decoder_pred")
        self.mask_generator = keras.random.SeedGenerator(seed)
        self.loss_trackers = {k: keras.metrics.Mean(name=k) for k in self.loss_terms()}
        self.build((None,) + self.image_size + (self.channels,))

    total_key = "reconstruction"

    def loss_terms(self):
        return ("reconstruction",)

    def build(self, input_shape):
        if self.built:
            return
        self.mask_token = self.add_weight((1, 1, self.decoder_width),
                                          keras.initializers.RandomNormal(stddev=0.02),
                                          name="mask_token")
        self.decoder_pos = self.add_weight(
            (1, 1 + self.num_patches, self.decoder_width),
            keras.initializers.Constant(sincos_2d(self.decoder_width, self.grid)[None]),
            name="decoder_pos", trainable=False)
        seq = (None, 1 + self.num_patches)
        self.decoder_embed.build(seq + (self.width,))
        for block in self.decoder_blocks:
            block.build(seq + (self.decoder_width,))
        self.decoder_norm.build(seq + (self.decoder_width,))
        self.decoder_pred.build(seq + (self.decoder_width,))
        self.built = True

    # ------------------------------------------------------------------------------ forward
    def sample_noise(self, batch):
        return keras.random.uniform((batch, self.num_patches), seed=self.mask_generator)

    def encode(self, images, noise, training=False):
        """Encode the visible patches; returns (latent (B, 1 + K, width), mask, ids_restore)."""
        patch_embed, embedding, *blocks, norm = encoder_layers(self.encoder)
        ids_keep, mask, ids_restore = random_masking(noise, self.mask_ratio)
        x = embedding(patch_embed(images), ids_keep=ids_keep)
        for block in blocks:
            x = block(x, training=training)
        return norm(x), mask, ids_restore

    def decode(self, latent, ids_restore, training=False):
        """Predict every patch (B, N, p*p*C) from the encoded visible tokens."""
        x = self.decoder_embed(latent)
        b = ops.shape(x)[0]
        n_masked = self.num_patches + 1 - ops.shape(x)[1]
        tokens = ops.concatenate(
            [x[:, 1:], ops.broadcast_to(ops.cast(self.mask_token, x.dtype),
                                        (b, n_masked, self.decoder_width))], axis=1)
        tokens = gather_tokens(tokens, ids_restore)  # back to patch order
        x = ops.concatenate([x[:, :1], tokens], axis=1) + ops.cast(self.decoder_pos, x.dtype)
        for block in self.decoder_blocks:
            x = block(x, training=training)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def reconstruct(self, images, noise=None, training=False):
        """``{"pred", "mask"}`` for ``images`` with the given noise (a fresh draw when None)."""
        if noise is None:
            noise = self.sample_noise(ops.shape(images)[0])
        latent, mask, ids_restore = self.encode(images, noise, training=training)
        return {"pred": self.decode(latent, ids_restore, training=training), "mask": mask}

    def call(self, images, training=False):
        out = self.reconstruct(images, training=training)
        out["reconstruction"] = self.loss_of(images, out["pred"], out["mask"])
        return out

    # --------------------------------------------------------------------------------- loss
    def loss_of(self, images, pred, mask):
        return masked_mse(pred, patch_targets(images, self.patch_size, self.norm_pix_loss), mask)

    def images_from_patches(self, patches):
        return unpatchify(patches, self.grid, self.patch_size, self.channels)

    def get_config(self):
        return {**super().get_config(), "image_size": list(self.image_size),
                "channels": self.channels, "patch_size": self.patch_size, "width": self.width,
                "depth": self.depth, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "decoder_width": self.decoder_width, "decoder_depth": self.decoder_depth,
                "decoder_heads": self.decoder_heads, "mask_ratio": self.mask_ratio,
                "norm_pix_loss": self.norm_pix_loss, "seed": self.seed}


@keras.saving.register_keras_serializable(package="cxr_keras")
class DualMaskedAutoencoder(LossTermsModel):
    """Dual-MAE: an online and a target :class:`MaskedAutoencoder` with independent masks.

    ``self.online`` is trained by gradient; ``self.target`` (not trainable) starts as a copy of the
    online network (CHOICE: the paper does not say; BYOL, which eq. (2) follows, copies) and follows
    it by eq. (2) after every step. ``loss_weights`` are lambda_1..3 of eq. (1) (all 1 in the paper);
    ``l1_region``: "all" compares the two reconstructions over every patch (the paper: "between the
    reconstructed images"; CHOICE) or "masked" only where the online network's patches are masked.
    Logged: loss, l1, l2, l3.
    """

    def __init__(self, tau=0.99, loss_weights=(1.0, 1.0, 1.0), l1_region="all", seed=None,
                 **kwargs):
        mae_args = set(inspect.signature(MaskedAutoencoder.__init__).parameters) - {"self", "seed",
                                                                                    "kwargs"}
        mae_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in mae_args}
        kwargs.setdefault("name", "dual_mae")
        super().__init__(**kwargs)
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        if l1_region not in L1_REGIONS:
            raise ValueError(f"l1_region must be one of {L1_REGIONS}, got {l1_region!r}")
        if len(loss_weights) != 3:
            raise ValueError(f"loss_weights needs three values (lambda_1..3), got {loss_weights}")
        self.tau, self.loss_weights = float(tau), tuple(float(w) for w in loss_weights)
        self.l1_region, self.seed, self.mae_kwargs = l1_region, seed, dict(mae_kwargs)
        seeds = (None, None) if seed is None else (seed, seed + 1)
        self.online = MaskedAutoencoder(seed=seeds[0], name="online", **mae_kwargs)
        self.target = MaskedAutoencoder(seed=seeds[1], name="target", **mae_kwargs)
        self.target.trainable = False
        self.loss_trackers = {k: keras.metrics.Mean(name=k) for k in ("l1", "l2", "l3")}
        self._pairs = [(t, o) for t, o in zip(self.target.weights, self.online.weights)
                       if o.trainable]
        for t, o in self._pairs:
            if t.name != o.name or t.shape != o.shape:
                raise RuntimeError(f"dual-MAE: target {t.path} does not mirror online {o.path}")
            t.assign(o)
        self.built = True

    @property
    def encoder(self):
        """The online encoder, which fine-tuning takes over (Fig. 1b)."""
        return self.online.encoder

    def call(self, images, training=False):
        y1 = self.online.reconstruct(images, training=training)
        y2 = self.target.reconstruct(images, training=False)
        pred2 = ops.stop_gradient(y2["pred"])
        target = patch_targets(images, self.online.patch_size, self.online.norm_pix_loss)
        diff = ops.mean((ops.cast(y1["pred"], "float32") - ops.cast(pred2, "float32")) ** 2, axis=-1)
        if self.l1_region == "all":
            l1 = ops.mean(diff)
        else:
            l1 = ops.sum(diff * y1["mask"]) / ops.maximum(ops.sum(y1["mask"]), 1.0)
        l2 = masked_mse(y1["pred"], target, y1["mask"])
        l3 = masked_mse(pred2, target, y2["mask"])
        w1, w2, w3 = self.loss_weights
        return {"pred": y1["pred"], "mask": y1["mask"], "target_pred": pred2,
                "target_mask": y2["mask"], "l1": l1, "l2": l2, "l3": l3,
                "total": w1 * l1 + w2 * l2 + w3 * l3}

    # ------------------------------------------------------------------ eq. (2), every step
    def train_step(self, *args, **kwargs):
        """The optimiser step, then xi <- tau xi + (1 - tau) theta on every trainable weight of
        the online network."""
        return train_step_then_ema(self, super().train_step, self._pairs, self.tau, *args,
                                   **kwargs)

    def get_config(self):
        return {**super().get_config(), "tau": self.tau, "loss_weights": list(self.loss_weights),
                "l1_region": self.l1_region, "seed": self.seed, **self.mae_kwargs}
