"""EfficientNet-B0 U-Net, encoder-transfer classifier and model-level ensemble (``multiloss``).

Rajaraman et al., "multiloss" paper, Sec. 2.2 (segmentation), 2.3 (classification, ensembles);
SPEC section 2.

* :func:`efficientnet_unet` - the topology of qubvel/segmentation_models ``Unet('efficientnetb0')``
  (same layer names, 10,071,501 trainable parameters at 256x256x3) on
  ``keras.applications.EfficientNetB0``. segmentation_models is not a dependency.
* :func:`efficientnet_classifier` - the trained U-Net's encoder truncated at ``block5c_add``
  + ZeroPadding2D -> Conv2D(512, 3x3, ReLU) -> GAP -> Dense(softmax) (paper Sec. 2.3, Fig. 2).
* :func:`model_level_ensemble` - top-K classifiers truncated at their deepest conv, frozen,
  concatenated -> Conv2D(512, 1x1) -> GAP -> Dense(softmax) (paper Sec. 2.3, Table 4).

Inputs: Keras' EfficientNet contains its own ``Rescaling(1/255)`` + ``Normalization`` layers, so
every model here expects RGB pixel values in **[0, 255]** (not [0, 1]).

Every model is one functional graph of stock Keras layers, so it saves as ``.keras`` and reloads
with ``keras.saving.load_model(path, safe_mode=True)``. The classifier and the ensemble hold
*copies* of their source models' layers (fresh layers, weights copied by layer name), so training
or freezing them never changes the source U-Net or classifiers.
"""

from __future__ import annotations

import os

import keras
from keras import layers

from ..integrity import verify
from ..layers.batch_norm import FusedBatchNormalization
from ._efficientnet import efficientnet
from .batchnorm import with_fused_batch_norm

# segmentation_models' default EfficientNet-B0 feature layers, deepest first (1/16, 1/8, 1/4, 1/2)
SKIP_LAYERS = (
    "block6a_expand_activation",
    "block4a_expand_activation",
    "block3a_expand_activation",
    "block2a_expand_activation",
)
ENCODER_OUTPUT = "top_activation"  # 1/32
DECODER_FILTERS = (256, 128, 64, 32, 16)
TRUNCATE_AT = "block5c_add"  # paper Sec. 2.3: 16x16 (x112 channels in B0) at 256x256 input
DEEPEST_CONV = "deepest_conv"  # the classifier's appended 512-filter conv (paper Fig. 2 "DCL")
ENSEMBLE_CONV = "ensemble_conv"  # the model-level ensemble's 1x1 conv (its Grad-CAM target)


def encoder_layer_names():
    """The U-Net's encoder layers it reads: ``(SKIP_LAYERS, ENCODER_OUTPUT)``."""
    return SKIP_LAYERS, ENCODER_OUTPUT


def efficientnet_encoder(input_shape=(256, 256, 3), weights="imagenet", width_coefficient=1.0,
                         depth_coefficient=1.0):
    """EfficientNet-B0 without top (both coefficients 1) or a reduced variant for quick runs.

    ``width_coefficient < 1`` scales every channel count (Keras' ``round_filters``), keeping all
    layer names (``block5c_add`` ...). ``depth_coefficient < 1`` repeats each stage's block
    fewer times (Keras' ``round_repeats``: at 0.5, 10 blocks instead of 16, so ``block5c_add``
    no longer exists: truncate the classifier at ``block5b_add``); the skip layers of the U-Net
    (``block{2,3,4,6}a_expand_activation``) remain.

    ``weights``: ``"imagenet"`` (B0 only; Keras downloads ``efficientnetb0_notop.h5``, or finds it
    in ``~/.keras/models/`` offline), ``None``, or a path to an encoder weights file (e.g. a
    ``.weights.h5`` from ``encoder.save_weights``), loaded with ``encoder.load_weights(path)``
    into the ``weights=None`` architecture. As in ``keras.applications`` itself, that
    architecture lacks the weightless ``Rescaling(1/sqrt(stddev))`` Keras inserts only for
    ``"imagenet"`` (its fix of the original ImageNet normalisation), so ImageNet weights loaded
    from a path see inputs ~2x smaller after normalisation; prefer the cached-file route.
    """
    is_path = isinstance(weights, (str, os.PathLike)) and weights != "imagenet"
    if not (weights is None or weights == "imagenet" or (is_path and os.path.exists(weights))):
        raise ValueError("`weights` must be 'imagenet', None or the path to an existing encoder "
                         f"weights file (e.g. '*.weights.h5'); got weights={weights!r}")
    if weights == "imagenet" and (width_coefficient, depth_coefficient) != (1.0, 1.0):
        raise ValueError("`weights='imagenet'` exists only for EfficientNet-B0 (both coefficients "
                         f"1.0); got width_coefficient={width_coefficient}, "
                         f"depth_coefficient={depth_coefficient}")
    keras_weights = "imagenet" if weights == "imagenet" else None
    if (width_coefficient, depth_coefficient) == (1.0, 1.0):
        encoder = keras.applications.EfficientNetB0(
            include_top=False, weights=keras_weights, input_shape=tuple(input_shape))
    else:
        encoder = efficientnet(width_coefficient, depth_coefficient, input_shape=input_shape,
                               name=f"efficientnet_w{width_coefficient:g}_d{depth_coefficient:g}")
    if is_path:
        encoder.load_weights(os.fspath(verify(weights)))
    return with_fused_batch_norm(encoder)


def _conv_bn_relu(x, filters, name):
    """segmentation_models' ``Conv3x3BnReLU``: Conv 3x3 'same' (no bias) -> BN -> ReLU."""
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_initializer="he_uniform", name=f"{name}_conv")(x)
    x = FusedBatchNormalization(axis=-1, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def efficientnet_unet(input_shape=(256, 256, 3), weights="imagenet", classes=1,
                      activation="sigmoid", encoder=None, width_coefficient=1.0,
                      decoder_filters=DECODER_FILTERS, name="efficientnetb0_unet",
                      depth_coefficient=1.0):
    """U-Net with an EfficientNet-B0 encoder (paper Sec. 2.2, Fig. 1; SPEC section 2).

    Mirrors segmentation_models ``Unet('efficientnetb0')``: decoder stage ``i`` =
    ``UpSampling2D(2)`` -> ``Concatenate`` with skip ``SKIP_LAYERS[i]`` (none for the last stage)
    -> 2 x [Conv 3x3 (no bias) -> BN -> ReLU], named ``decoder_stage{i}{a,b}_{conv,bn,relu}``;
    head ``final_conv`` (3x3, bias) + ``Activation(activation)`` named after the activation and
    kept float32 under mixed precision. At 256x256x3: 10,071,501 trainable parameters
    (encoder 4,007,548 + decoder 6,063,808 + head 145), as segmentation_models builds.

    Inputs are RGB in [0, 255] (the encoder rescales and normalises itself). Spatial dims must be
    multiples of 32; ``input_shape=(None, None, 3)`` builds a size-agnostic model.

    Args:
        weights: encoder weights: ``"imagenet"``, ``None`` or a path (see
            :func:`efficientnet_encoder`). Ignored when ``encoder`` is given.
        encoder: optional prebuilt EfficientNet-style model with the B0 layer names; its layers
            become part of the U-Net (shared); ``input_shape`` and ``width_coefficient`` are
            then ignored.
        width_coefficient, depth_coefficient: < 1 build a narrower / shallower encoder (quick
            CPU runs; no ImageNet weights); see :func:`efficientnet_encoder`.
        decoder_filters: per-stage filters; default (256, 128, 64, 32, 16) as in the paper's
            library. Not scaled with ``width_coefficient``; pass smaller ones for speed.
    """
    if encoder is None:
        encoder = efficientnet_encoder(input_shape, weights, width_coefficient, depth_coefficient)
    if len(decoder_filters) != 5:
        raise ValueError(f"`decoder_filters` needs 5 entries; got {decoder_filters!r}")
    skips = [encoder.get_layer(n).output for n in SKIP_LAYERS]
    x = encoder.get_layer(ENCODER_OUTPUT).output
    for i, filters in enumerate(decoder_filters):
        x = layers.UpSampling2D(2, name=f"decoder_stage{i}_upsampling")(x)
        if i < len(skips):
            x = layers.Concatenate(axis=-1, name=f"decoder_stage{i}_concat")([x, skips[i]])
        x = _conv_bn_relu(x, filters, f"decoder_stage{i}a")
        x = _conv_bn_relu(x, filters, f"decoder_stage{i}b")
    x = layers.Conv2D(classes, 3, padding="same", use_bias=True,
                      kernel_initializer="glorot_uniform", name="final_conv")(x)
    act_name = activation if isinstance(activation, str) else getattr(
        activation, "__name__", "final_activation")
    x = layers.Activation(activation, name=act_name, dtype="float32")(x)
    return keras.Model(encoder.input, x, name=name)


def _copy_truncated(source, layer_name, input_shape=None, name=None):
    """A fresh copy of ``source`` from its input up to layer ``layer_name``.

    The sub-graph is cloned (same layer configs and names) on a new ``Input(input_shape)``
    (default: ``source``'s input shape) and every layer's weights are copied by name, so the
    copy shares no layer with ``source`` and may have a different spatial size.
    """
    truncated = keras.Model(source.input, source.get_layer(layer_name).output)
    if input_shape is None:
        input_shape = tuple(source.input.shape[1:])
    clone = keras.models.clone_model(truncated, input_tensors=keras.Input(tuple(input_shape)))
    for layer in clone.layers:
        if layer.weights:
            layer.set_weights(truncated.get_layer(layer.name).get_weights())
    return keras.Model(clone.input, clone.output, name=name)


def efficientnet_classifier(encoder_source, num_classes=3, input_shape=None,
                            truncate_at=TRUNCATE_AT, conv_filters=512, output_regularizer=None,
                            name="efficientnet_classifier"):
    """Classifier on the trained U-Net's encoder (paper Sec. 2.3, Fig. 2; SPEC section 2).

    ``encoder_source`` (a U-Net from :func:`efficientnet_unet` or a bare EfficientNet) is truncated
    at ``truncate_at`` (``block5c_add``: 16x16 at 256x256 input) and extended with
    ``ZeroPadding2D`` (``zero_padding``) -> ``Conv2D(conv_filters, 3x3, ReLU)`` (``deepest_conv``,
    :data:`DEEPEST_CONV`) -> ``GlobalAveragePooling2D`` -> ``Dense(num_classes, softmax)``
    (``predictions``, float32). The encoder layers are fresh copies holding the source's trained
    weights (copied by layer name), so the result saves/reloads cleanly and training it leaves
    the U-Net untouched; the graph is flat (``get_layer("block5c_add")`` works).

    Args:
        input_shape: e.g. ``(256, 256, 3)`` (paper) when the U-Net was trained at another size;
            default: the source's input shape. Inputs are RGB in [0, 255].
        output_regularizer: optional activity regulariser on the softmax output (the "CCE +
            entropy regulariser" loss variant); must be a serialisable Keras regulariser.
    """
    encoder = _copy_truncated(encoder_source, truncate_at, input_shape)
    x = layers.ZeroPadding2D(name="zero_padding")(encoder.output)
    x = layers.Conv2D(conv_filters, 3, activation="relu", name=DEEPEST_CONV)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(num_classes, activation="softmax", activity_regularizer=output_regularizer,
                     dtype="float32", name="predictions")(x)
    return keras.Model(encoder.input, x, name=name)


def model_level_ensemble(members, num_classes=3, filters=512, activation="relu",
                         name="model_level_ensemble"):
    """Model-level ensemble of trained classifiers (paper Sec. 2.3 and Table 4; SPEC section 2).

    Each member (from :func:`efficientnet_classifier`, all with the same input shape) is copied
    up to its deepest conv (:data:`DEEPEST_CONV`), frozen, and wrapped as a nested model named
    ``member_{i}`` (so the members' identical layer names do not collide). One shared input
    feeds all members; their feature maps are concatenated (``ensemble_concat``, 16x16x(512 K) at
    256 input) -> ``Conv2D(filters, 1x1)`` (``ensemble_conv``, :data:`ENSEMBLE_CONV`, the
    Grad-CAM target) -> GAP -> ``Dense(num_classes, softmax)`` (``predictions``, float32).

    CHOICE ``activation="relu"`` for the 1x1 conv: the paper only says "1x1 conv to reduce feature
    dimensions". ReLU matches the classifiers' own appended conv, and a linear 1x1 conv followed by
    GAP and Dense would collapse into a single linear map of the pooled features (the conv would
    add parameters but no capacity). Pass ``activation=None`` for a linear conv.
    """
    members = list(members)
    if not members:
        raise ValueError("`members` must hold at least one classifier")
    shape = tuple(members[0].input.shape[1:])
    for m in members[1:]:
        if tuple(m.input.shape[1:]) != shape:
            raise ValueError(f"all members need the same input shape; got {shape} and "
                             f"{tuple(m.input.shape[1:])}")
    inputs = keras.Input(shape, name="image")
    features = []
    for i, member in enumerate(members):
        sub = _copy_truncated(member, DEEPEST_CONV, name=f"member_{i}")
        sub.trainable = False
        features.append(sub(inputs))
    x = layers.Concatenate(axis=-1, name="ensemble_concat")(features) if len(features) > 1 \
        else features[0]
    x = layers.Conv2D(filters, 1, activation=activation, name=ENSEMBLE_CONV)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, x, name=name)
