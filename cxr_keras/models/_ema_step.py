"""Exponential-moving-average target networks (dual-MAE Eq. (2), MoCo's momentum encoder): a
training step followed by ``target <- tau * target + (1 - tau) * online`` on both backends."""

import keras
from keras import ops


def ema(target, online, tau: float):
    """Eq. (2): tau * target + (1 - tau) * online."""
    return tau * target + (1.0 - tau) * online


def train_step_then_ema(model, step, pairs, tau: float, *args, **kwargs):
    """Run ``step`` (a Keras ``train_step``), then ``target <- ema(target, source, tau)`` for every
    ``(target, source)`` variable pair, with the sources' post-step values: in place on
    TensorFlow; on JAX, where the step is a pure function of the state, in the returned state
    (each target must be a non-trainable variable of ``model``)."""
    if keras.backend.backend() != "jax":
        logs = step(*args, **kwargs)
        for t, o in pairs:
            t.assign(ema(t, ops.cast(o, t.dtype), tau))
        return logs
    logs, (trainable, non_trainable, opt_vars, metric_vars) = step(*args, **kwargs)
    values = {id(v): x for v, x in zip(model.trainable_variables, trainable)}
    values.update({id(v): x for v, x in zip(model.non_trainable_variables, non_trainable)})
    index = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    non_trainable = list(non_trainable)
    for t, o in pairs:
        i = index[id(t)]
        non_trainable[i] = ema(non_trainable[i], values[id(o)].astype(non_trainable[i].dtype), tau)
    return logs, (trainable, non_trainable, opt_vars, metric_vars)
