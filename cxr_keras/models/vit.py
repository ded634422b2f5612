"""Vision Transformer (Dosovitskiy et al., ICLR 2021) as used by dual-MAE: ViT-S/16 (patch 16, width
384, depth 12, 6 heads, MLP ratio 4, CLS token, pre-norm blocks, LayerNorm epsilon 1e-6, exact GELU),
the encoder of the masked autoencoders in :mod:`cxr_keras.models.mae`.

Layers (keras.ops only, registered serializable):

- :class:`PatchEmbedding` (``patch_embed``): a patch x patch convolution with stride patch, flattened
  to (batch, patches, width); initialised Xavier-uniform on the kernel viewed as a matrix (MAE).
- :class:`ViTEmbedding` (``embedding``): the CLS token and the positional embedding of the
  1 + patches positions, fixed 2-D sin-cos (MAE's, non-trainable) or learned (timm/DeiT); it can keep
  only some patches (``ids_keep``), which is how the MAE encoder sees visible tokens only.
- :class:`TransformerBlock` (``block_i``): x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))),
  Xavier-uniform linear layers (MAE's ``_init_weights``).
- :class:`DropPath`: per-sample stochastic depth.

:func:`vit` builds one functional model; :func:`vit_small` is ViT-S/16, 21,665,664 parameters
without a head (positional embedding included), as timm's ``vit_small_patch16_224`` / MAE's ViT-S.
Variable paths start with the layer names above, which :func:`cxr_keras.training.vit_layer_multipliers`
uses for layer-wise learning-rate decay.
"""

from __future__ import annotations

import math

import cv2
import keras
import numpy as np
from keras import layers, ops

from .. import weights as pretrained
from ..integrity import verify
from ..io import DataError
from ..state_dict import assign, read_state_dict

LN_EPSILON = 1e-6
SMALL = {"width": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0, "patch_size": 16}


def sincos_2d(width: int, grid_hw, cls_token: bool = True) -> np.ndarray:
    """MAE's fixed 2-D sin-cos positional embedding, (1 + h*w, width) with a zero row for the CLS
    token: the first half of the channels encodes the column, the second the row, each as
    [sin(pos * omega), cos(pos * omega)] with omega_k = 1 / 10000^(k / (width / 4))."""
    gh, gw = (grid_hw, grid_hw) if np.isscalar(grid_hw) else grid_hw
    if width % 4:
        raise ValueError(f"sincos_2d: width must be a multiple of 4, got {width}")
    omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4))
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64),
                             indexing="ij")

    def one_d(pos):
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(cols), one_d(rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, width)), emb], axis=0)
    return emb.astype(np.float32)


@keras.saving.register_keras_serializable(package="cxr_keras")
class FlatGlorotUniform(keras.initializers.Initializer):
    """Xavier-uniform of a kernel viewed as a (prod(shape[:-1]), shape[-1]) matrix (MAE initialises
    the patch projection this way; Keras' GlorotUniform would count the receptive field twice)."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = math.prod(shape[:-1]), shape[-1]
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return keras.random.uniform(shape, -limit, limit, dtype=dtype, seed=self.seed)

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="cxr_keras")
class PatchEmbedding(layers.Layer):
    """(B, H, W, C) -> (B, H/p * W/p, width): non-overlapping p x p patches, linearly projected."""

    def __init__(self, width: int, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.width, self.patch_size = int(width), int(patch_size)
        self.proj = layers.Conv2D(self.width, self.patch_size, strides=self.patch_size,
                                  kernel_initializer=FlatGlorotUniform(), name="proj")

    def build(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if h is not None and (h % self.patch_size or w % self.patch_size):
            raise ValueError(f"{self.name}: image size {h}x{w} is not a multiple of the patch "
                             f"size {self.patch_size}")
        self.proj.build(input_shape)

    def call(self, images):
        x = self.proj(images)
        return ops.reshape(x, (ops.shape(x)[0], -1, self.width))

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        n = None if h is None or w is None else (h // self.patch_size) * (w // self.patch_size)
        return (input_shape[0], n, self.width)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "patch_size": self.patch_size}


def gather_tokens(x, ids):
    """x[b, ids[b, k], :] for a (B, N, D) sequence and (B, K) integer indices."""
    idx = ops.repeat(ops.expand_dims(ops.cast(ids, "int32"), -1), ops.shape(x)[-1], axis=-1)
    return ops.take_along_axis(x, idx, axis=1)


@keras.saving.register_keras_serializable(package="cxr_keras")
class ViTEmbedding(layers.Layer):
    """Add the positional embedding to the patch tokens, keep ``ids_keep`` of them (all when None),
    prepend the CLS token (plus its own position). ``positional``: "sincos" (fixed, MAE) or
    "learned" (timm/DeiT; initialised N(0, 0.02))."""

    def __init__(self, grid_hw, positional: str = "sincos", **kwargs):
        super().__init__(**kwargs)
        if positional not in ("sincos", "learned"):
            raise ValueError(f"positional must be 'sincos' or 'learned', got {positional!r}")
        self.grid_hw = tuple(int(g) for g in grid_hw)
        self.positional = positional

    def build(self, input_shape):
        width = input_shape[-1]
        n = self.grid_hw[0] * self.grid_hw[1]
        self.cls_token = self.add_weight((1, 1, width), keras.initializers.RandomNormal(stddev=0.02),
                                         name="cls_token")
        if self.positional == "sincos":
            init = keras.initializers.Constant(sincos_2d(width, self.grid_hw)[None])
        else:
            init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.pos_embed = self.add_weight((1, 1 + n, width), init, name="pos_embed",
                                         trainable=self.positional == "learned")

    def call(self, tokens, ids_keep=None):
        pos = ops.cast(self.pos_embed, tokens.dtype)
        x = tokens + pos[:, 1:]
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        cls = ops.cast(self.cls_token, tokens.dtype) + pos[:, :1]
        cls = ops.broadcast_to(cls, (ops.shape(x)[0], 1, ops.shape(x)[-1]))
        return ops.concatenate([cls, x], axis=1)

    def compute_output_shape(self, tokens_shape, ids_keep_shape=None):
        n = tokens_shape[1] if ids_keep_shape is None else ids_keep_shape[1]
        return (tokens_shape[0], None if n is None else n + 1, tokens_shape[-1])

    def get_config(self):
        return {**super().get_config(), "grid_hw": list(self.grid_hw),
                "positional": self.positional}


@keras.saving.register_keras_serializable(package="cxr_keras")
class DropPath(layers.Layer):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``rate``
    during training, scaling the kept ones by 1 / (1 - rate)."""

    def __init__(self, rate: float = 0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate}")
        self.rate, self.seed = float(rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x / keep * mask

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _dense(units, name):
    return layers.Dense(units, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                        name=name)


def scaled_dot_product_attention(q, k, v, scale):
    """``softmax(q k^T scale) v`` per head, for ``(B, T, heads, head_dim)`` tensors.

    On TensorFlow: two batched matmuls over ``(B, heads, T, head_dim)``, logits and softmax in
    float32 under mixed precision, as ``keras.ops.dot_product_attention`` (its einsums), and 1.4x
    faster forward and backward on a CPU (a ViT-S/16 training step: 5%). Elsewhere Keras' op,
    which can pick a fused kernel (cuDNN flash attention on a GPU with JAX)."""
    if keras.backend.backend() != "tensorflow":
        return ops.dot_product_attention(q, k, v, scale=scale)
    q, k, v = (ops.transpose(x, (0, 2, 1, 3)) for x in (q, k, v))
    logits = ops.matmul(q, ops.swapaxes(k, -1, -2))  # (B, heads, T, T)
    logits = ops.cast(logits, keras.backend.result_type(logits.dtype, "float32")) * scale
    weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)  # float32 softmax, as Keras
    return ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))


@keras.saving.register_keras_serializable(package="cxr_keras")
class TransformerBlock(layers.Layer):
    """Pre-norm transformer block: multi-head self-attention (fused qkv with bias) and a GELU MLP,
    each in a residual branch with DropPath."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 epsilon: float = LN_EPSILON, seed=None, **kwargs):
        super().__init__(**kwargs)
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.width, self.num_heads, self.mlp_ratio = int(width), int(num_heads), float(mlp_ratio)
        self.drop_path_rate, self.epsilon, self.seed = float(drop_path), float(epsilon), seed
        hidden = int(self.width * self.mlp_ratio)
        self.norm1 = layers.LayerNormalization(epsilon=self.epsilon, name="norm1")
        self.qkv = _dense(3 * self.width, "attn_qkv")
        self.proj = _dense(self.width, "attn_proj")
        self.norm2 = layers.LayerNormalization(epsilon=self.epsilon, name="norm2")
        self.fc1 = _dense(hidden, "mlp_fc1")
        self.fc2 = _dense(self.width, "mlp_fc2")
        self.drop_path = DropPath(self.drop_path_rate, seed=seed, name="drop_path")

    def build(self, input_shape):
        hidden_shape = tuple(input_shape[:-1]) + (int(self.width * self.mlp_ratio),)
        for layer, shape in ((self.norm1, input_shape), (self.qkv, input_shape),
                             (self.proj, input_shape), (self.norm2, input_shape),
                             (self.fc1, input_shape), (self.fc2, hidden_shape)):
            layer.build(shape)

    def attention(self, x):
        b, t = ops.shape(x)[0], ops.shape(x)[1]
        head = self.width // self.num_heads
        qkv = ops.reshape(self.qkv(x), (b, t, 3, self.num_heads, head))
        # one unstack, not three slices: its gradient is one stack, where each slice's gradient
        # writes a zero-padded tensor of the full qkv width (11% of a ViT-S training step)
        q, k, v = ops.unstack(qkv, num=3, axis=2)
        out = scaled_dot_product_attention(q, k, v, scale=head ** -0.5)
        return self.proj(ops.reshape(out, (b, t, self.width)))

    def call(self, x, training=None):
        x = x + self.drop_path(self.attention(self.norm1(x)), training=training)
        h = keras.activations.gelu(self.fc1(self.norm2(x)), approximate=False)
        return x + self.drop_path(self.fc2(h), training=training)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "drop_path": self.drop_path_rate,
                "epsilon": self.epsilon, "seed": self.seed}


@keras.saving.register_keras_serializable(package="cxr_keras")
class TokenPooling(layers.Layer):
    """(B, T, D) -> (B, D): the CLS token (``"cls"``, ViT / dual-MAE) or the mean of the patch
    tokens (``"avg"``, MAE's global pooling)."""

    def __init__(self, mode: str = "cls", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("cls", "avg"):
            raise ValueError(f"TokenPooling mode must be 'cls' or 'avg', got {mode!r}")
        self.mode = mode

    def call(self, x):
        return x[:, 0] if self.mode == "cls" else ops.mean(x[:, 1:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def vit(input_shape=(224, 224, 3), patch_size=16, width=384, depth=12, num_heads=6, mlp_ratio=4.0,
        include_top=True, num_classes=1000, pooling="cls", positional="sincos",
        drop_path_rate=0.0, classifier_activation=None, weights=None, seed=None, name="vit"):
    """A ViT as one functional model.

    include_top: a linear ``head`` on the pooled token (MAE fine-tuning initialises it
    N(0, 2e-5)); pooling: "cls", "avg" or None (the normalised token sequence (B, 1 + N, width),
    the MAE encoder's output; needs include_top=False); drop_path_rate: stochastic depth rising
    linearly from 0 to the rate over the blocks; weights: None, a ``.weights.h5`` file saved from a
    model of this configuration (a headless encoder's file loads into a model with a head), or a
    checkpoint :mod:`cxr_keras.convert` reads ("imagenet" where the configuration has one).
    """
    if pooling is None and include_top:
        raise ValueError("vit: include_top=True needs pooling='cls' or 'avg'")
    h, w = input_shape[0], input_shape[1]
    if h % patch_size or w % patch_size:
        raise ValueError(f"vit: input {h}x{w} is not a multiple of the patch size {patch_size}")
    inp = keras.Input(input_shape, name="image")
    x = PatchEmbedding(width, patch_size, name="patch_embed")(inp)
    x = ViTEmbedding((h // patch_size, w // patch_size), positional, name="embedding")(x)
    rates = np.linspace(0.0, drop_path_rate, depth) if depth > 1 else [drop_path_rate]
    for i in range(depth):
        x = TransformerBlock(width, num_heads, mlp_ratio, drop_path=float(rates[i]),
                             seed=None if seed is None else seed + i, name=f"block_{i}")(x)
    x = layers.LayerNormalization(epsilon=LN_EPSILON, name="norm")(x)
    if pooling is not None:
        x = TokenPooling(pooling, name="pool")(x)
    if include_top:
        x = layers.Dense(num_classes, activation=classifier_activation,
                         kernel_initializer=keras.initializers.TruncatedNormal(stddev=2e-5),
                         name="head")(x)
    model = keras.Model(inp, x, name=name)
    if weights is not None:
        load_vit_weights(model, weights)
    return model


def vit_small(**kwargs):
    """ViT-S/16: width 384, depth 12, 6 heads (see :func:`vit` for the arguments)."""
    for k, v in SMALL.items():
        kwargs.setdefault(k, v)
    kwargs.setdefault("name", "vit_small")
    return vit(**kwargs)


def encoder_layers(model):
    """The encoder's layers in order (patch_embed, embedding, blocks, norm), by name."""
    names = ["patch_embed", "embedding"]
    names += sorted((l.name for l in model.layers if l.name.startswith("block_")),
                    key=lambda s: int(s.split("_")[1]))
    return [model.get_layer(n) for n in names + ["norm"]]


def copy_encoder(source, target) -> None:
    """Copy the encoder weights (patch embedding, embedding, blocks, final norm) of one ViT into
    another of the same width and depth, e.g. a pretrained MAE encoder into a classifier."""
    src, dst = encoder_layers(source), encoder_layers(target)
    if len(src) != len(dst):
        raise ValueError(f"copy_encoder: {source.name} has {len(src) - 3} blocks, {target.name} "
                         f"{len(dst) - 3}")
    for a, b in zip(src, dst):
        wa, wb = a.get_weights(), b.get_weights()
        if [x.shape for x in wa] != [x.shape for x in wb]:
            raise ValueError(f"copy_encoder: layer {a.name} shapes {[x.shape for x in wa]} differ "
                             f"from {[x.shape for x in wb]} in {target.name}")
        b.set_weights(wa)


def load_vit_weights(model, weights):
    """Load ``weights`` (see :func:`vit`) into ``model``. A ``.weights.h5`` file must hold as many
    blocks as the model; a headless encoder's file (or a classifier's with another head) loads the
    encoder and leaves the model's head as initialised."""
    from pathlib import Path

    path = Path(weights) if not (isinstance(weights, str) and weights == "imagenet") else None
    if path is None:
        return vit_imagenet(model)
    if not path.is_file():
        raise DataError(f"{model.name}: weights file not found: {path}")
    if not path.name.endswith(".weights.h5"):
        return vit_from_state_dict(read_state_dict(path), model, source=path)
    verify(path)
    blocks, file_has_head = _weights_file_layout(path)
    depth = sum(isinstance(l, TransformerBlock) for l in model.layers)
    if blocks != depth:
        raise DataError(f"{model.name}: {path} holds a ViT of {blocks} blocks, the model has {depth}")
    if file_has_head and any(l.name == "head" for l in model.layers):
        try:
            model.load_weights(path)
            return model
        except Exception:  # another head (class count): load the encoder only
            pass
    twin = _headless_twin(model)
    try:
        twin.load_weights(path)
    except Exception as e:
        raise DataError(f"{model.name}: cannot load {path}: {e}") from e
    copy_encoder(twin, model)
    return model


def _weights_file_layout(path) -> tuple[int, bool]:
    """(number of transformer blocks, has a dense head) of a ViT ``.weights.h5`` file (Keras
    names its groups by layer class: ``transformer_block_<i>``, ``dense``)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names = list(f["layers"]) if "layers" in f else []
    except OSError as e:
        raise DataError(f"{path}: not a readable Keras weights file ({e})") from e
    if "patch_embedding" not in names:
        raise DataError(f"{path}: not the weights of a cxr_keras ViT (no patch embedding; "
                        f"groups: {', '.join(names[:8])})")
    return sum(n.startswith("transformer_block") for n in names), any(n.startswith("dense") for n in names)


def _headless_twin(model):
    """A model with ``model``'s encoder configuration, without pooling or head."""
    pe, emb = model.get_layer("patch_embed"), model.get_layer("embedding")
    blocks = [l for l in encoder_layers(model) if isinstance(l, TransformerBlock)]
    return vit(input_shape=tuple(model.input_shape[1:]), patch_size=pe.patch_size, width=pe.width,
               depth=len(blocks), num_heads=blocks[0].num_heads, mlp_ratio=blocks[0].mlp_ratio,
               include_top=False, pooling=None, positional=emb.positional)


# ---------------------------------------------------- PyTorch checkpoints (timm / DeiT / MAE keys)

# keys of an MAE pretraining checkpoint that a classifier does not use
_VIT_IGNORED = ("decoder_", "mask_token")


def _resize_positions(pos, grid_hw, source):
    """(1, 1 + n, D) positional embedding -> (1, 1 + gh * gw, D), bicubic over the patch grid
    (the CLS position is kept), for a model at another input size than the checkpoint."""
    n = pos.shape[1] - 1
    side = int(round(n ** 0.5))
    if side * side != n:
        raise DataError(f"{source}: pos_embed has {n} patch positions, not a square grid")
    grid = pos[0, 1:].reshape(side, side, -1).astype(np.float32)
    out = cv2.resize(grid, (grid_hw[1], grid_hw[0]), interpolation=cv2.INTER_CUBIC)
    return np.concatenate([pos[:, :1], out.reshape(1, -1, pos.shape[-1])], axis=1)


def vit_from_state_dict(state_dict, model, source=None):
    """Load a timm / DeiT / MAE ViT state dict into a :func:`cxr_keras.models.vit` model (in place).

    Keys: ``cls_token``, ``pos_embed`` (resized bicubic when the model's patch grid differs),
    ``patch_embed.proj``, ``blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2``,
    ``norm`` and ``head`` (used only when the model has one). An MAE pretraining checkpoint's
    decoder and mask token are ignored. Every missing key, unexpected key and shape mismatch is
    named in one DataError. Returns ``model``.
    """

    where = f"{source}: " if source is not None else ""
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    targets = []  # (key, variable, transform)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name == "patch_embed":
            targets += [("patch_embed.proj.weight", layer.proj.kernel, lambda a: a.transpose(2, 3, 1, 0)),
                        ("patch_embed.proj.bias", layer.proj.bias, None)]
        elif layer.name == "embedding":
            if "pos_embed" in sd and sd["pos_embed"].shape != tuple(layer.pos_embed.shape):
                sd["pos_embed"] = _resize_positions(sd["pos_embed"], layer.grid_hw, source)
            targets += [("cls_token", layer.cls_token, None), ("pos_embed", layer.pos_embed, None)]
        elif isinstance(layer, TransformerBlock) and layer.name.startswith("block_"):
            i = layer.name.split("_")[1]
            for sub, key in ((layer.norm1, "norm1"), (layer.qkv, "attn.qkv"),
                             (layer.proj, "attn.proj"), (layer.norm2, "norm2"),
                             (layer.fc1, "mlp.fc1"), (layer.fc2, "mlp.fc2")):
                targets += _vit_targets(sub, f"blocks.{i}.{key}")
        elif layer.name in ("norm", "head"):
            targets += _vit_targets(layer, layer.name)
        else:
            raise DataError(f"{where}vit: model {model.name!r} has layer {layer.name!r} with "
                            "weights that is not part of a ViT")
    ignored = {k for k in sd if k.startswith(_VIT_IGNORED)}
    if not any(layer.name == "head" for layer in model.layers):
        ignored |= {"head.weight", "head.bias"}
    return assign(sd, targets, model, "vit", source, ignored)

def _vit_targets(layer, module):
    if isinstance(layer, keras.layers.LayerNormalization):
        return [(f"{module}.weight", layer.gamma, None), (f"{module}.bias", layer.beta, None)]
    return [(f"{module}.weight", layer.kernel, lambda a: a.T), (f"{module}.bias", layer.bias, None)]


def vit_imagenet(model):
    """Download DeiT-S (timm's ``deit_small_patch16_224.fb_in1k``, ImageNet-1k supervised, the
    "ImageNet" ViT-S) and load it into ``model`` (ViT-S/16 configuration, any input size)."""
    blocks = [l for l in model.layers if isinstance(l, TransformerBlock)]
    pe = model.get_layer("patch_embed")
    config = {"width": pe.width, "depth": len(blocks), "num_heads": blocks[0].num_heads,
              "mlp_ratio": blocks[0].mlp_ratio, "patch_size": pe.patch_size}
    if config != SMALL:
        raise ValueError(f"{model.name}: weights='imagenet' needs the ViT-S/16 configuration "
                         f"{SMALL}, got {config}; use weights=None for a reduced network")
    path = pretrained.download("vit_small", " and pass weights='FILE.safetensors'")
    return vit_from_state_dict(read_state_dict(path), model, source=path)
