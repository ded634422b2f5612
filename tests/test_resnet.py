"""ResNet-18/34 (torchvision BasicBlock): parameter counts from an independent formula, a converter
round trip on a generated checkpoint, and (where torch + torchvision or timm are installed)
outputs against the PyTorch model."""

import importlib.util
import re

import keras
import numpy as np
import pytest

from cxr_keras import convert
from cxr_keras.io import DataError
from cxr_keras.models import resnet18, resnet34, stage_outputs

DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
HAS_TORCH = importlib.util.find_spec("torch") is not None and any(
    importlib.util.find_spec(m) is not None for m in ("torchvision", "timm"))


def torchvision_state_shapes(arch, classes=0):
    """{key: shape} of torchvision's ResNet state dict (running stats included, num_batches
    excluded), built from the architecture's description."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(name, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{k}"] = (c,)

    bn("bn1", 64)
    cin = 64
    for i, (n, planes) in enumerate(zip(DEPTHS[arch], (64, 128, 256, 512)), start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if cin != planes:
                shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                bn(f"{p}.downsample.1", planes)
            cin = planes
    if classes:
        shapes["fc.weight"], shapes["fc.bias"] = (classes, 512), (classes,)
    return shapes


def trainable(shapes):
    return sum(int(np.prod(s)) for k, s in shapes.items() if "running" not in k)


@pytest.mark.parametrize("builder,expected,with_fc", [(resnet18, 11_176_512, 11_689_512),
                                                      (resnet34, 21_284_672, 21_797_672)])
def test_parameter_counts_are_torchvisions(builder, expected, with_fc):
    arch = builder.__name__
    assert trainable(torchvision_state_shapes(arch)) == expected
    assert trainable(torchvision_state_shapes(arch, 1000)) == with_fc
    model = builder(include_top=False, pooling="avg", input_shape=(64, 64, 3))
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == expected
    assert model.output_shape == (None, 512)
    top = builder(include_top=True, input_shape=(64, 64, 3))
    assert sum(int(np.prod(v.shape)) for v in top.trainable_weights) == with_fc
    assert top.name == arch and top.get_layer("fc").units == 1000


def _torch_key(layer_name):
    """``layer3_0_downsample_bn`` -> ``layer3.0.downsample.1`` (written out independently of
    cxr_keras.convert)."""
    name = layer_name.replace("downsample_conv", "downsample.0").replace("downsample_bn",
                                                                          "downsample.1")
    return re.sub(r"^layer(\d)_(\d+)_", r"layer\1.\2.", name)


def test_converter_round_trip_and_bad_keys(tmp_path):
    rng = np.random.default_rng(0)
    state = {k: rng.normal(size=s).astype("float32")
             for k, s in torchvision_state_shapes("resnet18", 5).items()}
    state["bn1.num_batches_tracked"] = np.array(3, np.int64)
    ckpt = convert.write_safetensors(state, tmp_path / "r18.safetensors")
    model = resnet18(include_top=True, classes=5, weights=str(ckpt), input_shape=(64, 64, 3))
    seen = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        key = _torch_key(layer.name)
        if isinstance(layer, keras.layers.Conv2D):
            pairs = [(layer.kernel, state[f"{key}.weight"].transpose(2, 3, 1, 0))]
            seen.add(f"{key}.weight")
        elif isinstance(layer, keras.layers.BatchNormalization):
            names = ("weight", "bias", "running_mean", "running_var")
            pairs = list(zip((layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance),
                             (state[f"{key}.{n}"] for n in names)))
            seen |= {f"{key}.{n}" for n in names}
        else:
            assert isinstance(layer, keras.layers.Dense) and key == "fc"
            pairs = [(layer.kernel, state["fc.weight"].T), (layer.bias, state["fc.bias"])]
            seen |= {"fc.weight", "fc.bias"}
        for var, expected in pairs:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(var), expected)
    assert seen == set(state) - {"bn1.num_batches_tracked"}
    assert stage_outputs(model)[4] == "layer4_1_out"

    out = convert.convert_checkpoint("resnet18", ckpt, tmp_path / "r18.weights.h5",
                                     include_top=True)
    again = resnet18(include_top=True, classes=5, weights=str(out), input_shape=(64, 64, 3))
    x = rng.random((1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)

    broken = dict(state)
    broken.pop("layer1.1.conv2.weight")
    broken["layer9.0.conv1.weight"] = np.zeros((1,), "float32")
    broken["layer2.0.bn1.weight"] = np.zeros((3,), "float32")
    with pytest.raises(DataError, match=r"missing keys \(1\): layer1\.1\.conv2\.weight.*"
                                        r"unexpected keys \(1\): layer9\.0\.conv1\.weight.*"
                                        r"shape mismatches \(1\): layer2\.0\.bn1\.weight"):
        convert.resnet18_from_state_dict(broken, resnet18(include_top=True, classes=5,
                                                          input_shape=(64, 64, 3)))
    r34 = {k: np.zeros(s, "float32") for k, s in torchvision_state_shapes("resnet34").items()}
    with pytest.raises(DataError, match=r"unexpected keys.*layer4\.2\.conv1\.weight"):
        convert.resnet18_from_state_dict(r34, resnet18(input_shape=(64, 64, 3)))


def _reference(arch, classes):
    try:
        import torchvision

        return getattr(torchvision.models, arch)(num_classes=classes)
    except ImportError:
        import timm  # same key names and architecture as torchvision

        return timm.create_model(arch, pretrained=False, num_classes=classes)


@pytest.mark.skipif(not HAS_TORCH, reason="torch and torchvision (or timm) are not installed")
def test_outputs_match_torch():
    import torch

    for arch, builder in (("resnet18", resnet18), ("resnet34", resnet34)):
        torch.manual_seed(0)
        ref = _reference(arch, 7).eval()
        with torch.no_grad():  # non-trivial BatchNorms (timm zero-inits each block's last gamma)
            for m in ref.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.2, 0.6)
                    m.bias.uniform_(-0.2, 0.2)
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 1.5)
        state = {k: v.numpy() for k, v in ref.state_dict().items()}
        model = builder(include_top=True, classes=7, input_shape=(72, 72, 3))
        convert.FROM_STATE_DICT[arch](state, model)
        x = np.random.default_rng(1).random((2, 72, 72, 3)).astype("float32")
        with torch.no_grad():
            expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-4)


# -- a torch-free reference: the BasicBlock network in plain NumPy (float64, NHWC / HWIO) -------
# Written from torchvision's ``resnet.py`` (``conv3x3``: padding=1, ``conv1``: 7x7 stride 2
# padding 3, ``maxpool``: 3x3 stride 2 padding 1, ``BasicBlock``: relu(bn2(conv2(relu(bn1(conv1(x)))))
# + downsample(x)), downsample = 1x1 conv with the block's stride + BN when stride or channels
# change), reading the Keras weights by layer name.

def _np_conv(x, w, stride, pad):
    """Cross-correlation of an NHWC batch with an HWIO kernel, zero padding ``pad`` on every
    side (PyTorch's ``Conv2d(padding=pad)``), accumulated tap by tap."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out += patch @ w[i, j]
    return out


def _np_maxpool(x):
    """``nn.MaxPool2d(3, stride=2, padding=1)``: the padding never wins the max."""
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    return np.max([x[:, i:i + 2 * oh - 1:2, j:j + 2 * ow - 1:2] for i in range(3)
                   for j in range(3)], axis=0)


def _np_resnet(model, x, arch):
    """Stage outputs {1..4} and logits of ``model`` (include_top) recomputed from its weights."""
    w = {v.path: keras.ops.convert_to_numpy(v).astype(np.float64) for v in model.weights}

    def conv(h, name, stride, pad):
        return _np_conv(h, w[f"{name}/kernel"], stride, pad)

    def bn(h, name):  # inference: moving statistics, PyTorch's epsilon 1e-5
        return ((h - w[f"{name}/moving_mean"]) / np.sqrt(w[f"{name}/moving_variance"] + 1e-5)
                * w[f"{name}/gamma"] + w[f"{name}/beta"])

    def relu(h):
        return np.maximum(h, 0.0)
    h = relu(bn(conv(x.astype(np.float64), "conv1", 2, 3), "bn1"))
    h = _np_maxpool(h)
    feats = {}
    for i, n in enumerate(DEPTHS[arch], start=1):
        for j in range(n):
            p = f"layer{i}_{j}_"
            stride = 2 if (i > 1 and j == 0) else 1
            y = relu(bn(conv(h, p + "conv1", stride, 1), p + "bn1"))
            y = bn(conv(y, p + "conv2", 1, 1), p + "bn2")
            planes = w[p + "conv1/kernel"].shape[-1]
            if stride != 1 or h.shape[-1] != planes:
                assert f"{p}downsample_conv/kernel" in w, f"{p}: projection shortcut missing"
                shortcut = bn(conv(h, p + "downsample_conv", stride, 0), p + "downsample_bn")
            else:
                assert f"{p}downsample_conv/kernel" not in w, f"{p}: unexpected projection"
                shortcut = h
            h = relu(y + shortcut)
        feats[i] = h
    logits = h.mean(axis=(1, 2)) @ w["fc/kernel"] + w["fc/bias"]
    return feats, logits


@pytest.mark.parametrize("builder,widths", [(resnet18, (8, 8, 16, 16)),
                                            (resnet34, (4, 8, 8, 16))])
def test_reduced_network_matches_numpy_basic_blocks(builder, widths):
    """Both builders at reduced width (layer1 keeps the stem's width for resnet18, changes it
    for resnet34: projection in layer1_0) against the NumPy BasicBlock network above, in
    inference mode with random BN statistics, at an odd input size (37) where the padding
    convention decides every spatial size and border value."""
    arch = builder.__name__
    keras.utils.set_random_seed(3)
    model = builder(include_top=True, classes=3, widths=widths, input_shape=(37, 37, 3))
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
    x = rng.normal(size=(2, 37, 37, 3)).astype("float32")
    feats, logits = _np_resnet(model, x, arch)
    assert [feats[i].shape[1] for i in (1, 2, 3, 4)] == [10, 5, 3, 2]  # torchvision's sizes
    names = stage_outputs(model)
    sub = keras.Model(model.input, [model.get_layer(names[i]).output for i in (1, 2, 3, 4)]
                      + [model.output])
    *outs, got = sub.predict_on_batch(x)
    for i, out in enumerate(outs, start=1):
        assert out.shape == feats[i].shape, f"stage {i}"
        np.testing.assert_allclose(out, feats[i], rtol=1e-4, atol=1e-4, err_msg=f"stage {i}")
    np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)
    assert np.abs(logits).max() > 1e-2 and np.ptp(logits) > 1e-3  # not a degenerate output
