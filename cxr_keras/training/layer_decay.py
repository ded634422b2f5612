"""AdamW with a learning rate per variable: layer-wise learning-rate decay (BEiT; MAE's
``param_groups_lrd``), the fine-tuning recipe dual-MAE follows (decay 0.55).

Variable i gets ``lr_i = lr(step) * m_i``; decoupled weight decay is applied per variable with its
own rate, ``v <- v - v * weight_decay * lr_i``, before the Adam update (PyTorch's AdamW on a
parameter group; the Adam step itself is Keras's, epsilon added to the uncorrected ``sqrt(v)``),
and skipped for vectors (biases, norms: MAE puts every 1-D parameter in its no-decay group) and for
paths matching ``no_decay``. keras.ops only: the same optimizer runs on the TensorFlow and JAX
backends.
"""

from __future__ import annotations

import re

import keras


def _multiplier(path: str, table: dict, default: float) -> float:
    """The multiplier of the longest key of ``table`` that ``path`` starts with."""
    best, value = -1, default
    for key, m in table.items():
        if (path == key or path.startswith(key.rstrip("/") + "/")) and len(key) > best:
            best, value = len(key), float(m)
    return value


def warmup_cosine(lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: int):
    """MAE's per-step schedule: linear warm-up from 0 to ``lr`` over ``warmup_epochs`` (at most
    every step but one), then cosine to 0 over the rest of ``epochs``."""
    total = max(1, steps_per_epoch * epochs)
    warm = min(total - 1, steps_per_epoch * warmup_epochs)
    return keras.optimizers.schedules.CosineDecay(0.0, max(1, total - warm), alpha=0.0,
                                                  warmup_target=lr, warmup_steps=warm)


@keras.saving.register_keras_serializable(package="cxr_keras")
class LayerDecayAdamW(keras.optimizers.Adam):
    """AdamW whose learning rate and weight decay are scaled per variable.

    lr_multipliers: ``{path prefix: multiplier}`` matched against each variable's ``.path``
    (longest prefix wins; ``default_multiplier`` otherwise), e.g. from
    :func:`vit_layer_multipliers`. no_decay: regular expressions of paths without weight decay;
    decay_vectors: also decay 1-D variables (off, as MAE).
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=0.05, lr_multipliers=None, no_decay=(), decay_vectors=False,
                 default_multiplier=1.0, **kwargs):
        kwargs.pop("amsgrad", None)
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **kwargs)
        self.decoupled_weight_decay = float(weight_decay)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        self.no_decay = tuple(no_decay)
        self.decay_vectors = bool(decay_vectors)
        self.default_multiplier = float(default_multiplier)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._scales = [_multiplier(v.path, self.lr_multipliers, self.default_multiplier)
                        for v in var_list]
        self._decays = [(self.decay_vectors or len(v.shape) > 1)
                        and not any(re.search(p, v.path) for p in self.no_decay)
                        for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        lr = keras.ops.cast(learning_rate, variable.dtype) * self._scales[i]
        if self._decays[i] and self.decoupled_weight_decay:
            self.assign(variable, variable - variable * (self.decoupled_weight_decay * lr))
        super().update_step(gradient, variable, lr)

    def multiplier_of(self, variable) -> float:
        return self._scales[self._get_variable_index(variable)]

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        config.update(weight_decay=self.decoupled_weight_decay,
                      lr_multipliers=dict(self.lr_multipliers), no_decay=list(self.no_decay),
                      decay_vectors=self.decay_vectors,
                      default_multiplier=self.default_multiplier)
        return config


def vit_layer_multipliers(model_or_paths, num_layers: int, decay: float,
                          block_pattern=r"(?:^|/)block_(\d+)(?:/|$)",
                          embed_patterns=("patch_embed", "embedding", "cls_token",
                                          "pos_embed")) -> dict:
    """``{variable path: decay ** (num_layers + 1 - layer_id)}`` with layer id 0 for the patch and
    position embeddings and the CLS token (a path component in ``embed_patterns``), i + 1 for
    block i (``block_pattern``'s group 1, searched in the path), num_layers + 1 for the rest (final
    norm, head): MAE's ``param_groups_lrd``. Takes a model (its trainable variables' paths) or
    a list of paths."""
    paths = ([v.path for v in model_or_paths.trainable_variables]
             if hasattr(model_or_paths, "trainable_variables") else list(model_or_paths))
    out = {}
    for path in paths:
        found = re.search(block_pattern, path)
        if set(path.split("/")) & set(embed_patterns):
            layer_id = 0
        elif found:
            layer_id = int(found.group(1)) + 1
        else:
            layer_id = num_layers + 1
        out[path] = float(decay) ** (num_layers + 1 - layer_id)
    return out
