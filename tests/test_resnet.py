"""ResNet-18/34 (torchvision BasicBlock): parameter counts from an independent formula, a converter
round trip on a generated checkpoint, and (where torch + timm are installed) outputs against timm."""

import importlib.util

import numpy as np
import pytest

from cxr_keras import convert
from cxr_keras.io import DataError
from cxr_keras.models import resnet18, resnet34

DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
HAS_TIMM = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("timm") is not None


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
    top = builder(include_top=True, input_shape=(64, 64, 3))
    assert sum(int(np.prod(v.shape)) for v in top.trainable_weights) == with_fc


def test_converter_round_trip_and_bad_keys(tmp_path):
    rng = np.random.default_rng(0)
    state = {k: rng.normal(size=s).astype("float32")
             for k, s in torchvision_state_shapes("resnet18", 5).items()}
    state["bn1.num_batches_tracked"] = np.array(3, np.int64)
    ckpt = convert.write_safetensors(state, tmp_path / "r18.safetensors")
    model = resnet18(include_top=True, classes=5, weights=str(ckpt), input_shape=(64, 64, 3))
    np.testing.assert_array_equal(model.get_layer("layer2_0_conv2").kernel.numpy(),
                                  state["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("layer3_0_downsample_bn").moving_variance.numpy(),
                                  state["layer3.0.downsample.1.running_var"])
    np.testing.assert_array_equal(model.get_layer("fc").kernel.numpy(), state["fc.weight"].T)
    out = convert.convert_checkpoint("resnet18", ckpt, tmp_path / "r18.weights.h5", include_top=True)
    again = resnet18(include_top=True, classes=5, weights=str(out), input_shape=(64, 64, 3))
    x = rng.random((1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    broken = dict(state)
    broken.pop("layer1.1.conv2.weight")
    broken["layer9.0.conv1.weight"] = np.zeros((1,), "float32")
    with pytest.raises(DataError, match=r"layer1\.1\.conv2\.weight.*layer9\.0\.conv1\.weight"):
        convert.resnet18_from_state_dict(broken, resnet18(include_top=True, classes=5,
                                                          input_shape=(64, 64, 3)))


@pytest.mark.skipif(not HAS_TIMM, reason="torch and timm are not installed")
def test_outputs_match_timm():
    import torch  # noqa: F401  (before TF's kernels are loaded is not needed here)
    import timm

    for arch, builder in (("resnet18", resnet18), ("resnet34", resnet34)):
        ref = timm.create_model(arch, pretrained=False, num_classes=7).eval()
        with torch.no_grad():
            for m in ref.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 1.5)
        state = {k: v.numpy() for k, v in ref.state_dict().items()}
        model = builder(include_top=True, classes=7, input_shape=(72, 72, 3))
        convert.FROM_STATE_DICT[arch](state, model)
        x = np.random.default_rng(1).random((2, 72, 72, 3)).astype("float32")
        with torch.no_grad():
            expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-4)
