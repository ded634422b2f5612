"""tf.data pipelines over the cache: determinism, augmentation of image+mask+boxes together,
normalisation, model.fit under a MirroredStrategy."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from cxr_keras.data import augment, load_table, write_phantom  # noqa: E402
from cxr_keras.data.cache import Cache, build_cache  # noqa: E402
from cxr_keras.data.images import write_image  # noqa: E402
from cxr_keras.data.pipeline import IMAGENET_MEAN, IMAGENET_STD, EpochCallback, make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def nih_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    write_phantom("nih", root, n=48, size=64, seed=3, workers=1, progress=False)
    table = load_table("nih", root)
    return Cache(build_cache(table, root / "cache", size=48, shard_size=16, workers=1, progress=False))


@pytest.fixture(scope="module")
def box_cache(tmp_path_factory):
    """Images with one bright square, its mask and its box: the three must stay aligned."""
    root = tmp_path_factory.mktemp("boxes")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        img = np.full((64, 64), 20, np.uint8)
        x, y, s = int(rng.integers(8, 36)), int(rng.integers(8, 36)), int(rng.integers(10, 20))
        img[y:y + s, x:x + s] = 230
        mask = (img > 128).astype(np.uint8) * 255
        write_image(root / f"im{i}.png", img)
        write_image(root / f"m{i}.png", mask)
        rows.append(dict(path=str(root / f"im{i}.png"), split="train", mask=str(root / f"m{i}.png"),
                         boxes=[[x, y, s, s, 0]], label=0))
    df = pd.DataFrame(rows)
    df.attrs = {"dataset": "toy", "classes": ["a"], "mask_columns": ["mask"], "box_classes": ["sq"]}
    return Cache(build_cache(df, root / "cache", size=64, shard_size=8, workers=1, progress=False))


def _batches(ds):
    return [(np.asarray(x), np.asarray(y)) for x, y in ds]


def test_same_seed_same_batches_and_reshuffle_per_epoch(nih_cache):
    kw = dict(preset="fzlpr", training=True, batch_size=8, seed=5)
    a = make_dataset(nih_cache, "train", **kw)
    b = make_dataset(nih_cache, "train", **kw)
    ea0, eb0 = _batches(a), _batches(b)
    for (xa, ya), (xb, yb) in zip(ea0, eb0):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    ea1 = _batches(a)  # second pass = epoch 1: another order
    assert not np.array_equal(ea0[0][1], ea1[0][1]) or not np.array_equal(ea0[0][0], ea1[0][0])
    # a fresh pipeline told "epoch 1" (what a resumed run does) reproduces epoch 1 exactly
    c = make_dataset(nih_cache, "train", **kw)
    EpochCallback(c).on_epoch_begin(1)
    for (x1, y1), (xc, yc) in zip(ea1, _batches(c)):
        np.testing.assert_array_equal(x1, xc)
        np.testing.assert_array_equal(y1, yc)
    d = make_dataset(nih_cache, "train", **{**kw, "seed": 6})
    assert not np.array_equal(_batches(d)[0][0], ea0[0][0])


def test_eval_is_centre_crop_with_imagenet_normalisation(nih_cache):
    ds = make_dataset(nih_cache, "test", preset="fzlpr", training=False, batch_size=64)
    x, y = next(iter(ds))
    rows = nih_cache.rows("test")
    imgs, _ = nih_cache.load(rows)
    crop = round(48 * 224 / 256)
    off = (48 - crop) // 2
    ref = imgs[:, off:off + crop, off:off + crop].astype(np.float32)[..., None] / 255.0
    ref = (np.repeat(ref, 3, axis=-1) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(x), ref, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(y), nih_cache.targets(rows))
    assert x.shape == (len(rows), crop, crop, 3)


def test_labels_subset_and_unknown_label(nih_cache):
    ds = make_dataset(nih_cache, "val", batch_size=4, labels=["Cardiomegaly", "Hernia"])
    _, y = next(iter(ds))
    assert y.shape[1] == 2
    with pytest.raises(ValueError, match="Pneumothoraxx"):
        make_dataset(nih_cache, "val", labels=["Pneumothoraxx"])
    with pytest.raises(ValueError, match="preset"):
        make_dataset(nih_cache, "val", preset="nope")


@pytest.mark.parametrize("preset", ["fzlpr", "mlrfnet", "mtpret", "dual_mae_pretrain"])
def test_image_mask_boxes_stay_aligned(box_cache, preset):
    seg = make_dataset(box_cache, "train", preset=preset, training=True, batch_size=12,
                       target="mask", normalization="unit", seed=1)
    det = make_dataset(box_cache, "train", preset=preset, training=True, batch_size=12,
                       target="boxes", normalization="unit", seed=1)
    (x, m), (x2, boxes) = next(iter(seg)), next(iter(det))
    x, m, x2, boxes = (np.asarray(t) for t in (x, m, x2, boxes))
    np.testing.assert_array_equal(x, x2)  # same seed, same geometry whatever the target
    bright = x[..., 0] > 0.5
    for i in range(len(x)):
        if m[i].sum() < 10:
            continue
        agree = np.mean(bright[i] == (m[i, ..., 0] > 0.5))
        assert agree > 0.97, f"mask and image disagree on {1 - agree:.1%} of pixels"
        bx, by, bw, bh, c = boxes[i, 0]
        assert c == 0
        ys, xs = np.nonzero(m[i, ..., 0] > 0.5)
        # the box encloses the (transformed) square, and not much more
        assert xs.min() >= math.floor(bx) - 1 and xs.max() <= math.ceil(bx + bw) + 1
        assert ys.min() >= math.floor(by) - 1 and ys.max() <= math.ceil(by + bh) + 1
        assert bw * bh <= 2.2 * len(xs) + 40


def test_preset_values_match_the_papers():
    assert augment.PRESETS["fzlpr"].rotation == 0.4
    assert augment.PRESETS["fzlpr"].crop == 224 / 256
    assert augment.PRESETS["mlrfnet"].rotation == pytest.approx(math.radians(5))
    assert augment.PRESETS["dual_mae_pretrain"].resized_crop == (0.5, 1.0)
    mt = augment.PRESETS["mtpret"]
    assert mt.crop == 1.0 and mt.resized_crop is None and mt.contrast is None


def test_fit_on_pipeline(nih_cache):
    import keras

    ds = make_dataset(nih_cache, "train", preset="fzlpr", training=True, batch_size=8)
    inp = keras.Input(ds.element_spec[0].shape[1:])
    out = keras.layers.Dense(14)(keras.layers.GlobalAveragePooling2D()(inp))
    model = keras.Model(inp, out)
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True))
    hist = model.fit(ds, epochs=2, verbose=0, callbacks=[EpochCallback(ds)])
    assert len(hist.history["loss"]) == 2 and np.isfinite(hist.history["loss"]).all()
    assert ds.epoch_state["epoch"] == 2


def test_mirrored_strategy_two_logical_cpus(nih_cache):
    """A global batch is split over two replicas; fit runs and both replicas see data."""
    code = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, json
        from cxr_keras.data.pipeline import make_dataset
        from cxr_keras.training.distribute import mirrored_strategy
        strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
        ds = make_dataset({str(nih_cache.path)!r}, "train", preset="fzlpr", training=True, batch_size=8)
        with strategy.scope():
            inp = keras.Input(ds.element_spec[0].shape[1:])
            model = keras.Model(inp, keras.layers.Dense(14)(keras.layers.GlobalAveragePooling2D()(inp)))
            model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True))
        h = model.fit(ds, epochs=1, verbose=0)
        print(json.dumps({{"replicas": strategy.num_replicas_in_sync, "loss": h.history["loss"][0]}}))
    """)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and np.isfinite(out["loss"])


def test_two_views_for_contrastive_models(nih_cache):
    from cxr_keras.models import MoCo, resnet18

    kw = dict(preset="mtpret", training=True, batch_size=8, target="none", views=2, seed=4)
    (a, b), = next(iter(make_dataset(nih_cache, "train", **kw)))
    (a2, b2), = next(iter(make_dataset(nih_cache, "train", **kw)))
    assert a.shape == b.shape == (8, 48, 48, 3)
    assert not np.allclose(np.asarray(a), np.asarray(b))            # two augmentations
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))    # reproducible
    np.testing.assert_array_equal(np.asarray(b), np.asarray(b2))
    with pytest.raises(ValueError, match="views"):
        make_dataset(nih_cache, "train", views=2)
    enc = resnet18(input_shape=(48, 48, 3), pooling="avg", widths=(4, 8, 8, 8))
    moco = MoCo(enc, dim=8, hidden=16, queue_size=16)
    moco.compile(keras.optimizers.SGD(0.01))
    hist = moco.fit(make_dataset(nih_cache, "train", **kw), epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0]) and int(moco.queue_ptr) > 0


def test_faster_rcnn_inputs_from_a_box_cache(box_cache):
    from cxr_keras.data.detection_inputs import faster_rcnn_inputs
    from cxr_keras.models import FasterRCNN, multiscale_backbone

    backbone = multiscale_backbone("resnet18", input_shape=(64, 64, 3), widths=(4, 8, 8, 8))
    model = FasterRCNN(backbone, 1, anchor_sizes=(16, 24), anchor_ratios=(1.0,), rpn_channels=8,
                       proposals=8, head_units=16)
    ds = faster_rcnn_inputs(make_dataset(box_cache, "train", target="boxes", batch_size=4,
                                         max_boxes=3, normalization="unit"), model)
    (x,), = list(ds.take(1))
    assert set(x) == {"image", "gt_boxes", "gt_labels", "rpn_labels", "rpn_targets"}
    assert x["rpn_labels"].shape == (4, len(model.anchors)) and x["gt_boxes"].shape == (4, 3, 4)
    assert (np.asarray(x["rpn_labels"]) == 1).sum(axis=1).min() >= 1   # each square has anchors
    labels = np.asarray(x["gt_labels"])
    assert (labels[:, 0] == 0).all() and (labels[:, 1:] == -1).all()
    model.compile(keras.optimizers.Adam(1e-3))
    hist = model.fit(ds, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0])
