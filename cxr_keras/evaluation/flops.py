"""Cost of one forward pass of a Keras model, counted from its layers (any Keras 3 backend).

Conventions. One multiply-accumulate (MAC) is ``a * b + c``. Papers and the PyTorch counters thop
and ptflops report MACs under the name "FLOPs": ResNet-50 is "4.1 GFLOPs" (4.1e9 MACs),
Res2Net-50 26w4s "4.2 G", and MLRFNet's Table 8 gives 4.29 G for its Res2Net-50 model at 224x224
-- all MAC counts. Counting a multiply and an add separately doubles the figure (``flops_2x``; what
TensorFlow's profiler reports for Conv2D / MatMul). Here ``gflops = macs / 1e9``.

Counted: the weight products of convolutions (Conv1D/2D/3D with groups, their transposes,
DepthwiseConv1D/2D, SeparableConv1D/2D), Dense on inputs of any rank, EinsumDense, and any layer
that defines ``flops(self, input_shape)`` (MACs per example for the full input shape, batch
dimension ``None``; e.g. :class:`cxr_keras.layers.ECA`, :class:`cxr_keras.layers.CSRA`). Biases,
activations, pooling, element-wise ops and normalisation layers count zero, as in the papers'
figures. Nested models are walked layer by layer and a layer called several times counts every
call. A layer with weights and no rule (an RNN, attention, a subclassed block) is listed in
``uncounted`` and counts zero.
"""

from __future__ import annotations

import math
import numbers

import keras

_CONV = tuple(getattr(keras.layers, n) for n in ("Conv1D", "Conv2D", "Conv3D"))
_CONV_T = tuple(getattr(keras.layers, n) for n in ("Conv1DTranspose", "Conv2DTranspose",
                                                   "Conv3DTranspose"))
_DEPTHWISE = tuple(getattr(keras.layers, n) for n in ("DepthwiseConv1D", "DepthwiseConv2D"))
_SEPARABLE = tuple(getattr(keras.layers, n) for n in ("SeparableConv1D", "SeparableConv2D"))
# Layers with weights that cost no MACs by convention (normalisation, look-ups, PReLU).
_FREE = tuple(c for c in (getattr(keras.layers, n, None) for n in (
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization",
    "Normalization", "Embedding", "PReLU")) if c is not None)


def _split(shape, data_format):
    """(spatial dims, channels) of a conv input/output shape with its batch dimension."""
    shape = tuple(shape)
    if data_format == "channels_first":
        return shape[2:], shape[1]
    return shape[1:-1], shape[-1]


def _known(layer, *dims):
    if any(d is None for d in dims):
        raise ValueError(f"count_flops: layer {layer.name!r} has an unknown dimension; "
                         "pass input_shape with every non-batch dimension known")
    return dims


def _rule(layer, in_shape, out_shape):
    """MACs per example of a built-in layer, or None when there is no rule for it."""
    if isinstance(layer, _CONV_T):
        spatial, c_in = _split(in_shape, layer.data_format)
        _, c_out = _split(out_shape, layer.data_format)
        _known(layer, *spatial, c_in, c_out)
        return math.prod(spatial) * c_in * math.prod(layer.kernel_size) * c_out
    if isinstance(layer, _DEPTHWISE):
        spatial, c_out = _split(out_shape, layer.data_format)
        _known(layer, *spatial, c_out)
        return math.prod(spatial) * c_out * math.prod(layer.kernel_size)
    if isinstance(layer, _SEPARABLE):
        spatial, c_out = _split(out_shape, layer.data_format)
        _, c_in = _split(in_shape, layer.data_format)
        _known(layer, *spatial, c_in, c_out)
        mid = c_in * layer.depth_multiplier
        return math.prod(spatial) * mid * (math.prod(layer.kernel_size) + c_out)
    if isinstance(layer, _CONV):
        spatial, c_out = _split(out_shape, layer.data_format)
        _, c_in = _split(in_shape, layer.data_format)
        _known(layer, *spatial, c_in, c_out)
        return math.prod(spatial) * c_out * math.prod(layer.kernel_size) * (c_in // layer.groups)
    if isinstance(layer, keras.layers.Dense):
        dims = _known(layer, *tuple(in_shape)[1:])
        return math.prod(dims[:-1]) * dims[-1] * layer.units
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_macs(layer, in_shape)
    return None


def _einsum_macs(layer, in_shape):
    """Product of the sizes of every index of the equation (batch as 1, ellipsis dims included)."""
    lhs, _ = layer.equation.split("->")
    inp, kern = lhs.split(",")
    dims = [1] + list(tuple(in_shape)[1:])
    letters = inp.replace("...", "")
    n_ell = len(dims) - len(letters)
    if inp.startswith("..."):
        ellipsis, named = dims[:n_ell], dims[n_ell:]
    else:
        named, ellipsis = dims[:len(letters)], dims[len(letters):]
    sizes = dict(zip(letters, named))
    sizes.update(zip(kern, tuple(layer.kernel.shape)))
    return math.prod(_known(layer, *ellipsis, *sizes.values()))


def _shape_of(x):
    """Shape (tuple) of a spec, or a list of shapes for a list of specs (Keras' build convention)."""
    if isinstance(x, (list, tuple)):
        return [_shape_of(v) for v in x]
    if isinstance(x, dict):
        return {k: _shape_of(v) for k, v in x.items()}
    return tuple(x.shape)


def _is_functional(layer):
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth") \
        and hasattr(layer, "_run_through_graph")


class _Counter:
    def __init__(self):
        self.per_layer = []
        self.uncounted = []

    def visit(self, layer, args, kwargs, prefix):
        """Count one call of ``layer`` on symbolic ``args``; return its output spec."""
        name = prefix + layer.name
        in_x = args[0] if args else next(iter(kwargs.values()))   # the main input
        custom = getattr(layer, "flops", None)
        if callable(custom):
            out = layer.compute_output_spec(*args, **kwargs)
            self.per_layer.append((name, type(layer).__name__, int(custom(_shape_of(in_x)))))
            return out
        if isinstance(layer, keras.Sequential):
            return self.walk_sequential(layer, in_x, name + "/")
        if _is_functional(layer):
            return self.walk_functional(layer, in_x, name + "/")
        out = layer.compute_output_spec(*args, **kwargs)
        macs = None
        if not isinstance(in_x, (list, tuple, dict)) and not isinstance(out, (list, tuple, dict)):
            macs = _rule(layer, in_x.shape, out.shape)
        if macs is not None:
            self.per_layer.append((name, type(layer).__name__, int(macs)))
        elif layer.weights and not isinstance(layer, _FREE):
            cls = type(layer).__name__
            if cls not in self.uncounted:
                self.uncounted.append(cls)
        return out

    def walk_functional(self, model, inputs, prefix):
        def operation_fn(op):
            return lambda *a, **k: self.visit(op, a, k, prefix)
        # Runs the graph node by node (depth order), so a shared layer is visited once per call.
        return model._run_through_graph(keras.tree.flatten(inputs), operation_fn=operation_fn)

    def walk_sequential(self, model, x, prefix):
        for layer in model.layers:
            x = self.visit(layer, (x,), {}, prefix)
        return x


def _input_specs(model, input_shape):
    if input_shape is None:
        try:
            inputs = model.inputs
        except Exception:  # a plain layer, or a model that was never built on symbolic inputs
            inputs = None
        if not inputs:
            raise ValueError("count_flops: model has no symbolic inputs; pass input_shape "
                             "(per example, without the batch dimension)")
        specs = [keras.KerasTensor((None,) + tuple(x.shape)[1:], dtype=x.dtype) for x in inputs]
        return specs[0] if len(specs) == 1 else specs
    bad = ValueError("count_flops: input_shape must be a tuple of positive ints per example (no "
                     f"batch dimension) or a list of such tuples, got {input_shape!r}")
    if not isinstance(input_shape, (list, tuple)) or not input_shape:
        raise bad
    one = all(isinstance(d, numbers.Integral) for d in input_shape)
    shapes = [input_shape] if one else list(input_shape)
    for s in shapes:
        if not isinstance(s, (list, tuple)) or not all(
                isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in s):
            raise bad
    specs = [keras.KerasTensor((None,) + tuple(int(d) for d in s), dtype="float32")
             for s in shapes]
    return specs[0] if len(specs) == 1 else specs


def count_flops(model, batch_size=1, input_shape=None) -> dict:
    """MACs of one forward pass of ``batch_size`` examples (conventions: module docstring).

    ``model``: a functional or Sequential keras.Model (nested models are walked), or any layer
    when ``input_shape`` is given. ``input_shape``: per-example shape (or list of shapes) to use
    instead of the model's own inputs, e.g. for a model built with ``(None, None, 3)``.
    Returns ``{"macs", "gflops" (= macs / 1e9), "flops_2x" (= 2 * macs), "per_layer": [(name,
    class, macs), ...] (one entry per counted call, nested names joined by "/"), "uncounted":
    [class names of layers with weights and no rule]}``.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"count_flops: model must be a keras Model or Layer, got {type(model)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"count_flops: batch_size must be a positive int, got {batch_size!r}")
    specs = _input_specs(model, input_shape)
    counter = _Counter()
    if callable(getattr(model, "flops", None)):
        counter.visit(model, (specs,), {}, "")
    elif isinstance(model, keras.Sequential):
        counter.walk_sequential(model, specs, "")
    elif _is_functional(model):
        counter.walk_functional(model, specs, "")
    else:
        counter.visit(model, (specs,), {}, "")
    per_layer = [(n, c, m * batch_size) for n, c, m in counter.per_layer]
    macs = sum(m for _, _, m in per_layer)
    return {"macs": macs, "gflops": macs / 1e9, "flops_2x": 2 * macs,
            "per_layer": per_layer, "uncounted": counter.uncounted}


def seconds_per_image(model, n: int = 20, input_shape=None) -> float:
    """Measured seconds of one forward pass at batch 1 (mean of ``n`` after a first, traced one),
    on random input of the model's input shape."""
    import time

    import numpy as np

    shape = tuple(input_shape or model.input_shape[1:])
    x = np.random.default_rng(0).normal(size=(1,) + shape).astype(np.float32)
    model.predict_on_batch(x)
    t0 = time.perf_counter()
    for _ in range(n):
        model.predict_on_batch(x)
    return (time.perf_counter() - t0) / max(n, 1)


def model_cost(model, latency_images: int = 20) -> dict:
    """One image's cost, as papers tabulate it: the input shape, GMACs (:func:`count_flops`'s
    ``gflops``), the parameters and the measured seconds per image at batch 1 (mean of
    ``latency_images``, :func:`seconds_per_image`)."""
    return {"input": list(model.input_shape[1:]), "gmacs": count_flops(model)["gflops"],
            "params": int(model.count_params()),
            "seconds_per_image": seconds_per_image(model, latency_images)}
