"""count_flops against hand-computed MAC counts and TensorFlow's graph profiler (ResNet50);
Grad-CAM localisation (box mapping, pointing game, IoU) on hand-made heatmaps and boxes."""

import keras
import numpy as np
import pytest
from keras import layers

from cxr_keras.evaluation.flops import count_flops
from cxr_keras.evaluation.localization import heatmap_iou, localization_scores, map_box, pointing_game

# ----------------------------------------------------------------------------------- flops

class _Costly(layers.Layer):
    """Weightless custom layer with its own rule: 10 MACs per input element."""

    seen = []

    def call(self, x):
        return x

    def flops(self, input_shape):
        _Costly.seen.append(tuple(input_shape))
        return 10 * int(np.prod(input_shape[1:]))


class _Scaled(layers.Layer):
    """Custom layer with a weight and no rule: must be reported as uncounted."""

    def build(self, input_shape):
        self.s = self.add_weight(shape=(), initializer="ones")

    def call(self, x):
        return x * self.s


def _small_model():
    inp = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 3, strides=2, padding="same", name="c1")(inp)      # 4x4x4, bias
    b = layers.Conv2D(6, 3, padding="valid", use_bias=False, name="c2")(a)  # 2x2x6
    d = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(a)  # 4x4x8
    g = layers.Conv2D(8, 1, groups=2, name="grouped")(d)                    # 4x4x8, groups 2
    g = layers.BatchNormalization(name="bn")(g)
    c = _Costly(name="costly")(a)
    c = _Scaled(name="scaled")(c)

    s_in = keras.Input((2, 2, 6))
    s_out = layers.Conv2D(5, 1, name="sub_c")(s_in)
    sub = keras.Model(s_in, s_out, name="sub")
    s1 = layers.GlobalAveragePooling2D()(sub(b))                             # nested model, twice
    s2 = layers.GlobalAveragePooling2D()(sub(b))

    shared = layers.Dense(7, name="shared")                                  # shared layer, twice
    h1 = shared(s1)
    h2 = shared(layers.Add()([s2, layers.Dense(5, name="fc")(layers.GlobalAveragePooling2D()(g))]))
    seq = layers.Dense(2, name="seq")(layers.Reshape((16, 8))(g))           # Dense on rank 3
    out = layers.Concatenate()([h1, h2, layers.Flatten()(seq), layers.Flatten()(c)])
    return keras.Model(inp, out)


EXPECTED = {
    "c1": 4 * 4 * 4 * 9 * 3,            # out positions * filters * kernel * in channels
    "c2": 2 * 2 * 6 * 9 * 4,
    "dw": 4 * 4 * 8 * 9,
    "grouped": 4 * 4 * 8 * 1 * (8 // 2),
    "costly": 10 * 4 * 4 * 4,
    "sub/sub_c": 2 * 2 * 5 * 6,         # each of two calls
    "shared": 5 * 7,                    # each of two calls
    "fc": 8 * 5,
    "seq": 16 * 8 * 2,
}
CALLS = {"sub/sub_c": 2, "shared": 2}


def test_small_model_hand_counts():
    _Costly.seen.clear()
    res = count_flops(_small_model())
    total = sum(m * CALLS.get(n, 1) for n, m in EXPECTED.items())
    assert res["macs"] == total
    assert res["flops_2x"] == 2 * total and res["gflops"] == pytest.approx(total / 1e9)
    got = {}
    for name, _, macs in res["per_layer"]:
        got.setdefault(name, []).append(macs)
    assert got == {n: [m] * CALLS.get(n, 1) for n, m in EXPECTED.items()}
    classes = {n: c for n, c, _ in res["per_layer"]}
    assert classes["dw"] == "DepthwiseConv2D" and classes["costly"] == "_Costly"
    assert _Costly.seen == [(None, 4, 4, 4)]                 # full shape, batch None
    assert res["uncounted"] == ["_Scaled"]                   # BatchNormalization is free

    res4 = count_flops(_small_model(), batch_size=4)
    assert res4["macs"] == 4 * total
    assert sum(m for _, _, m in res4["per_layer"]) == 4 * total


def test_other_conv_kinds_and_sequential():
    inp = keras.Input((6, 6, 4))
    x = layers.SeparableConv2D(5, 3, depth_multiplier=2, name="sep")(inp)           # 4x4x5
    x = layers.Conv2DTranspose(3, 3, strides=2, padding="same", name="tr")(x)        # 8x8x3
    model = keras.Model(inp, x)
    got = {n: m for n, _, m in count_flops(model)["per_layer"]}
    assert got == {"sep": 4 * 4 * 8 * (9 + 5), "tr": 4 * 4 * 5 * 9 * 3}

    cf = keras.Input((3, 8, 8))
    model = keras.Model(cf, layers.Conv2D(4, 3, data_format="channels_first")(cf))
    assert count_flops(model)["macs"] == 6 * 6 * 4 * 9 * 3

    seq = keras.Sequential([keras.Input((10, 2)), layers.Conv1D(3, 4, strides=2, name="c"),
                            layers.Flatten(), layers.Dense(2, name="d")])
    res = count_flops(seq, batch_size=5)
    assert [(n, m) for n, _, m in res["per_layer"]] == [("c", 5 * 4 * 3 * 4 * 2),
                                                        ("d", 5 * 12 * 2)]

    outer_in = keras.Input((10, 2))
    outer = keras.Model(outer_in, layers.Dense(1, name="top")(seq(outer_in)))   # nested Sequential
    assert [(n, m) for n, _, m in count_flops(outer)["per_layer"]] == [
        (f"{seq.name}/c", 4 * 3 * 4 * 2), (f"{seq.name}/d", 12 * 2), ("top", 2)]

    v = keras.Input((4, 4, 4, 1))
    assert count_flops(keras.Model(v, layers.Conv3D(2, 3, padding="same")(v)))["macs"] \
        == 64 * 2 * 27

    e = keras.Input((4, 5))
    ed = layers.EinsumDense("abc,cd->abd", output_shape=(None, 6))(e)
    assert count_flops(keras.Model(e, ed))["macs"] == 4 * 6 * 5
    ed = layers.EinsumDense("...b,bc->...c", output_shape=(6,))(e)
    assert count_flops(keras.Model(e, ed))["macs"] == 4 * 6 * 5


def test_input_shape_override_and_errors():
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, layers.Conv2D(2, 3, padding="same", name="c")(inp))
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(model)
    assert count_flops(model, input_shape=(5, 5, 3))["macs"] == 25 * 2 * 9 * 3
    assert count_flops(layers.Dense(4), input_shape=(3,))["macs"] == 12
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(layers.Dense(4))
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(model, input_shape=(5, None, 3))
    with pytest.raises(ValueError, match="batch_size"):
        count_flops(model, batch_size=0)
    with pytest.raises(TypeError, match="model"):
        count_flops("resnet")


def test_resnet50_matches_tensorflow_profiler():
    """Keras ResNet50 at 224: our MACs x 2 equal the profiler's Conv2D + MatMul float ops."""
    tf = pytest.importorskip("tensorflow")
    model = keras.applications.ResNet50(weights=None)
    res = count_flops(model)
    assert res["uncounted"] == []
    assert 3.8 < res["gflops"] < 3.9          # Keras ResNet50 (stride on the 1x1): 3.86 G MACs

    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, 224, 224, 3), tf.float32))
    prof = tf.compat.v1.profiler
    opts = prof.ProfileOptionBuilder(prof.ProfileOptionBuilder.float_operation()) \
        .with_empty_output().build()
    tree = prof.profile(fn.graph, cmd="graph", options=opts)
    types = {op.name: op.type for op in fn.graph.get_operations()}
    ops, stack = {}, [tree]
    while stack:
        node = stack.pop()
        ops[node.name] = node.float_ops
        stack.extend(node.children)
    conv_matmul = sum(v for k, v in ops.items() if types.get(k) in ("Conv2D", "MatMul"))
    assert sum(types.get(k) == "Conv2D" for k in ops) == 53
    assert conv_matmul == res["flops_2x"]
    assert tree.total_float_ops > conv_matmul   # the profiler also counts biases, BN, adds


# ---------------------------------------------------------------------------- localization

def test_map_box():
    # 1000 x 2000 (h, w) image -> 256 x 256 -> centre crop 224 (offset 16).
    assert map_box((500, 250, 200, 100), (1000, 2000), 256, 224) == pytest.approx(
        (500 * 0.128 - 16, 250 * 0.256 - 16, 200 * 0.128, 100 * 0.256))
    assert map_box((10, 20, 30, 40), (224, 224), 224, 224) == pytest.approx((10, 20, 30, 40))
    # Clipped at the top-left, outside the crop, and at the bottom-right.
    assert map_box((0, 0, 100, 100), (1024, 1024), 256, 224) == pytest.approx((0, 0, 9, 9))
    assert map_box((0, 0, 40, 40), (1024, 1024), 256, 224) == pytest.approx((0, 0, 0, 0))
    assert map_box((900, 1000, 124, 24), (1024, 1024), 256, 224) == pytest.approx(
        (225 - 16, 224, 224 - 209, 0))
    with pytest.raises(ValueError, match="crop_size"):
        map_box((0, 0, 1, 1), (10, 10), 224, 256)
    with pytest.raises(ValueError, match="box_xywh"):
        map_box((0, 0, -1, 1), (10, 10), 256, 224)
    with pytest.raises(ValueError, match="original_hw"):
        map_box((0, 0, 1, 1), (0, 10), 256, 224)
    with pytest.raises(ValueError, match="cache_size"):
        map_box((0, 0, 1, 1), (10, 10), 256.0, 224)


def test_pointing_game_edges_and_tolerance():
    h = np.zeros((10, 10))
    h[5, 7] = 1.0                                   # row 5, column 7 (centre 7.5, 5.5)
    assert not pointing_game(h, (2, 3, 5, 4))       # columns 2..6, rows 3..6
    assert pointing_game(h, (2, 3, 5, 4), tolerance=1)
    assert not pointing_game(h, (2, 3, 5, 4), tolerance=0.4)
    assert pointing_game(h, (7, 5, 1, 1))           # exactly that pixel
    assert pointing_game(h, (0, 0, 7.5, 5.5))       # centre on the closed edge
    assert not pointing_game(h, (7.6, 5, 1, 1))
    assert pointing_game(h, (7.5, 5.5, 0, 0))       # degenerate box through the centre
    h[0, 0] = 1.0                                   # a tie: either maximum counts
    assert pointing_game(h, (0, 0, 1, 1)) and pointing_game(h, (7, 5, 1, 1))
    assert not pointing_game(h, (3, 3, 2, 2))
    assert not pointing_game(np.zeros((10, 10)), (0, 0, 10, 10))      # flat map: a miss
    assert not pointing_game(np.full((4, 4), 0.3), (0, 0, 4, 4))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(h, (0, 0, 1, 1), tolerance=-1)
    with pytest.raises(ValueError, match="heatmap"):
        pointing_game(np.zeros(5), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="heatmap"):
        pointing_game(np.full((2, 2), np.nan), (0, 0, 1, 1))


def _iou_reference(heatmap, x, y, w, h, threshold):
    box = np.zeros(heatmap.shape, dtype=bool)
    box[y:y + h, x:x + w] = True
    region = heatmap >= threshold * heatmap.max()
    return (region & box).sum() / (region | box).sum()


def test_heatmap_iou_against_numpy_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        hm = rng.random((16, 12))
        x, y = rng.integers(0, 10), rng.integers(0, 14)
        w, h = rng.integers(1, 12 - x + 3), rng.integers(1, 16 - y + 3)   # may pass the edge
        thr = float(rng.choice([0.2, 0.5, 0.8]))
        assert heatmap_iou(hm, (x, y, w, h), thr) == pytest.approx(
            _iou_reference(hm, x, y, w, h, thr))
    hm = np.zeros((6, 6))
    hm[1:3, 1:4] = 1.0                                   # 6 pixels
    assert heatmap_iou(hm, (1, 1, 3, 2)) == 1.0
    assert heatmap_iou(hm, (1, 1, 3, 4)) == pytest.approx(6 / 12)
    assert heatmap_iou(hm, (1.4, 1, 1.2, 2)) == pytest.approx(4 / 6)   # columns 1 and 2
    assert heatmap_iou(np.zeros((6, 6)), (0, 0, 3, 3)) == 0.0
    assert heatmap_iou(hm, (0, 0, 0.2, 0.2)) == 0.0                    # no pixel centre inside
    with pytest.raises(ValueError, match="threshold"):
        heatmap_iou(hm, (0, 0, 1, 1), threshold=1.5)


def test_localization_scores():
    a = np.zeros((8, 8))
    a[2, 2] = 1.0
    b = np.zeros((8, 8))
    b[6, 6] = 1.0
    boxes = [(2, 2, 1, 1), (0, 0, 4, 4), (0, 0, 2, 2)]
    out = localization_scores([a, b, a], boxes, ["Mass", "Mass", "Nodule"])
    assert list(out["per_label"]) == ["Mass", "Nodule"]
    mass = out["per_label"]["Mass"]
    assert mass["n"] == 2 and mass["pointing_accuracy"] == 0.5
    assert mass["mean_iou"] == pytest.approx((1.0 + 0.0) / 2)
    assert out["per_label"]["Nodule"] == {"n": 1, "pointing_accuracy": 0.0, "mean_iou": 0.0}
    assert out["overall"]["n"] == 3
    assert out["overall"]["pointing_accuracy"] == pytest.approx(1 / 3)
    tol = localization_scores([a, b, a], boxes, ["Mass", "Mass", "Nodule"], tolerance=1)
    assert tol["per_label"]["Nodule"]["pointing_accuracy"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        localization_scores([a], boxes, ["Mass"])
