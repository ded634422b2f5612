"""mtpret backbones and heads: multi-scale shapes, parameter counts, shared weights between
task models, and a segmentation head that learns phantom-like lung masks."""

import keras
import numpy as np
import pytest

from cxr_keras.models.backbones import multiscale_backbone
from cxr_keras.models.task_heads import task_model


def test_multiscale_shapes_and_torchvision_parameter_counts():
    for name, trainable in (("resnet18", 11_176_512), ("resnet34", 21_284_672)):
        b = multiscale_backbone(name, input_shape=(224, 224, 3))
        assert [tuple(o.shape[1:]) for o in b.outputs] == [(56, 56, 64), (28, 28, 128),
                                                          (14, 14, 256), (7, 7, 512)]
        assert sum(int(np.prod(w.shape)) for w in b.trainable_weights) == trainable
    k = multiscale_backbone("keras_resnet50", input_shape=(64, 64, 3))
    assert [o.shape[-1] for o in k.outputs] == [256, 512, 1024, 2048]
    with pytest.raises(ValueError, match="backbone must be"):
        multiscale_backbone("vgg16")


def _deeplab_params(c_in, f=256, rates=3, classes=1):
    bn = 2 * f  # trainable gamma, beta
    aspp = (c_in * f + bn) + rates * (9 * c_in * f + bn) + (c_in * f + bn)
    return aspp + (5 * f * f + bn) + (9 * f * f + bn) + (f * classes + classes)


def test_heads_parameter_counts_and_shapes():
    b = multiscale_backbone("resnet18", input_shape=(128, 128, 3))
    seg = task_model(b, "segmentation", 1, "lung")
    cls = task_model(b, "classification", 14, "nih")
    assert seg.output.shape[1:] == (128, 128, 1) and cls.output.shape[1:] == (14,)
    backbone = sum(int(np.prod(w.shape)) for w in b.trainable_weights)
    head = sum(int(np.prod(w.shape)) for w in seg.trainable_weights) - backbone
    assert head == _deeplab_params(512)
    assert sum(int(np.prod(w.shape)) for w in cls.trainable_weights) - backbone == 512 * 14 + 14


def test_aspp_rates_follow_the_output_stride():
    """DeepLab-V3's 6/12/18 belong to output stride 16: 3/6/9 on C5 (stride 32), 6/12/18 on C4."""
    from cxr_keras.models.task_heads import aspp_rates

    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)
    b = multiscale_backbone("resnet18", input_shape=(128, 64, 3), widths=(4, 8, 8, 8))
    for level, stride, rates in ((-1, 32, (3, 6, 9)), (2, 16, (6, 12, 18))):
        seg = task_model(b, "segmentation", 1, f"seg{stride}", filters=4, level=level)
        assert seg.get_layer(f"seg{stride}_deeplab_aspp0_conv").input.shape[1:3] == (
            128 // stride, 64 // stride)
        got = tuple(seg.get_layer(f"seg{stride}_deeplab_aspp{i}_conv").dilation_rate[0]
                    for i in (1, 2, 3))
        assert got == rates


def test_task_models_share_the_backbone():
    b = multiscale_backbone("resnet18", input_shape=(32, 32, 3), widths=(4, 8, 8, 8))
    a = task_model(b, "classification", 2, "a")
    c = task_model(b, "classification", 3, "c")
    a.compile(keras.optimizers.SGD(0.5), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    before = np.asarray(c.predict(x, verbose=0))
    a.train_on_batch(x, np.eye(2, dtype="float32")[[0, 1, 0, 1]])
    assert not np.allclose(np.asarray(c.predict(x, verbose=0)), before)  # c sees a's update


def test_deeplab_learns_a_disc_mask():
    """Discs placed and sized at random: a model must find each one. The baselines, fitted on the
    training masks, ignore the image: the thresholded mean training mask and the best centred
    disc (on the earlier, centred version of this task the disc prior scored 0.71 Dice)."""
    from cxr_keras.losses.segmentation import dice_loss

    from _baselines import centred_disc_dice, dice, mean_mask_dice

    rng = np.random.default_rng(0)
    n, n_train, s = 56, 40, 128  # radius 14-30 px: the logits come at stride 32 (4 x 4)
    yy, xx = np.mgrid[:s, :s]
    x = rng.normal(scale=0.3, size=(n, s, s, 3)).astype("float32")
    y = np.zeros((n, s, s, 1), "float32")
    for i in range(n):
        cy, cx, r = rng.uniform(30, 98), rng.uniform(30, 98), rng.uniform(14, 30)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        y[i, ..., 0] = disc
        x[i][disc] += 1.0
    keras.utils.set_random_seed(0)
    b = multiscale_backbone("resnet18", input_shape=(s, s, 3), widths=(8, 16, 32, 32))
    seg = task_model(b, "segmentation", 1, "seg", filters=32)
    seg.compile(keras.optimizers.Adam(3e-3),
                loss=lambda t, logits: dice_loss(t, keras.ops.sigmoid(logits)))
    seg.fit(x[:n_train], y[:n_train], epochs=25, batch_size=8, verbose=0)
    observed = dice(np.asarray(seg.predict(x[n_train:], verbose=0)) > 0, y[n_train:] > 0.5)
    priors = {"mean training mask": mean_mask_dice(y[:n_train], y[n_train:]),
              "centred disc": centred_disc_dice(y[:n_train], y[n_train:])}
    margin = 0.3
    assert observed > max(priors.values()) + margin, (
        f"Dice {observed:.3f} on {n - n_train} test masks, not {margin} above the image-blind "
        f"priors fitted on the training masks: {priors}")
