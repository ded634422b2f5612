"""Res2Net-50 26w x 4s backbone and the PyTorch checkpoint converter (cxr_keras.convert).

The reference design is the authors' Res2Net-PretrainedModels ``res2net.py`` and timm's
``res2net50_26w_4s`` (same modules, same state-dict keys). Checks: exact structure and parameter
count of the full network, the Bottle2neck wiring against an independent NumPy forward pass in
PyTorch layout, the converter's key mapping and round trip through a .safetensors file, its
error messages, and (when torch and timm are installed) equality with timm's model.
"""

import re

import keras
import numpy as np
import pytest

from cxr_keras.convert import (
    convert_res2net50,
    read_state_dict,
    res2net50_from_state_dict,
    resnet50_from_state_dict,
    write_safetensors,
)
from cxr_keras.io import DataError
from cxr_keras.models.res2net import res2net50, resnet50, stage_outputs

# timm.create_model("res2net50_26w_4s") / ("resnet50"): sum(p.numel() for p in m.parameters()),
# measured with torch 2.14.1 + timm 1.0.31 (1000-class fc; BN running stats are buffers)
RES2NET50_PARAMS = 25_699_120
RESNET50_PARAMS = 25_557_032

SMALL = dict(blocks=(2, 1, 1, 1), planes=(8, 16, 32, 64), base_width=26, scale=4, stem_width=16)


def n_trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def formula_params(blocks, planes, base_width, scale, stem_width, classes=1000, in_ch=3):
    """Parameters of the PyTorch model (conv weights, BN weight + bias, fc), counted by hand."""
    n = in_ch * stem_width * 49 + 2 * stem_width
    c = stem_width
    for i, (b, p) in enumerate(zip(blocks, planes)):
        w, out, nums = p * base_width // 64, 4 * p, 1 if scale == 1 else scale - 1
        for j in range(b):
            n += c * w * scale + 2 * w * scale          # conv1 + bn1
            n += nums * (9 * w * w + 2 * w)            # convs + bns
            n += w * scale * out + 2 * out             # conv3 + bn3
            if j == 0 and (i > 0 or c != out):
                n += c * out + 2 * out                 # downsample conv + bn
            c = out
    return n + c * classes + classes


def torch_keys(blocks, scale, torchvision=False):
    """The state-dict keys of the official / timm model (num_batches_tracked left out)."""
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    for i, b in enumerate(blocks, start=1):
        for j in range(b):
            pre = f"layer{i}.{j}."
            mods = ["conv1", "bn1"]
            nums = 1 if scale == 1 else scale - 1
            for k in range(nums):
                mods += (["conv2", "bn2"] if torchvision else [f"convs.{k}", f"bns.{k}"])
            mods += ["conv3", "bn3"] + (["downsample.0", "downsample.1"] if j == 0 else [])
            for m in mods:
                is_conv = m.startswith("conv") or m == "downsample.0"
                keys += [pre + m + ".weight"] if is_conv else [pre + m + "." + s for s in bn]
    return set(keys + ["fc.weight", "fc.bias"])


# -- the test's own Keras -> PyTorch mapping (the inverse of the converter) --------------------

def _torch_module(name, torchvision=False):
    if name in ("conv1", "bn1", "fc"):
        return name
    stage, block, rest = re.fullmatch(r"layer(\d)_(\d+)_(\w+)", name).groups()
    rest = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(rest, rest)
    rest = rest.replace("convs_", "convs.").replace("bns_", "bns.")
    if torchvision:
        rest = {"convs.0": "conv2", "bns.0": "bn2"}.get(rest, rest)
    return f"layer{stage}.{block}.{rest}"


def export_state_dict(model, torchvision=False):
    sd = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        m = _torch_module(layer.name, torchvision)
        if isinstance(layer, keras.layers.Conv2D):
            sd[m + ".weight"] = np.transpose(layer.kernel.numpy(), (3, 2, 0, 1))
        elif isinstance(layer, keras.layers.BatchNormalization):
            sd[m + ".weight"], sd[m + ".bias"] = layer.gamma.numpy(), layer.beta.numpy()
            sd[m + ".running_mean"] = layer.moving_mean.numpy()
            sd[m + ".running_var"] = layer.moving_variance.numpy()
            sd[m + ".num_batches_tracked"] = np.array(7, np.int64)
        elif isinstance(layer, keras.layers.Dense):
            sd[m + ".weight"], sd[m + ".bias"] = layer.kernel.numpy().T, layer.bias.numpy()
        else:
            raise AssertionError(layer.name)
    return sd


def randomize_bn(model, seed):
    """Non-trivial BN statistics and affine parameters (fresh BN is the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
    return model


# -- an independent NumPy forward pass in PyTorch layout (NCHW, OIHW) ---------------------------

def np_conv(x, w, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    o, c, kh, kw = w.shape
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    cols = np.stack([x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                     for i in range(kh) for j in range(kw)], axis=2)
    return np.einsum("nckhw,ock->nohw", cols, w.reshape(o, c, kh * kw))


def np_bn(x, sd, m):
    s = lambda k: sd[f"{m}.{k}"][None, :, None, None]  # noqa: E731
    return (x - s("running_mean")) / np.sqrt(s("running_var") + 1e-5) * s("weight") + s("bias")


def np_pool(x, stride, op, pad_value):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad_value)
    oh, ow = (x.shape[2] - 3) // stride + 1, (x.shape[3] - 3) // stride + 1
    win = np.stack([x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                    for i in range(3) for j in range(3)])
    return op(win, axis=0)


def relu(x):
    return np.maximum(x, 0)


def np_bottle2neck(x, sd, pre, stride, stage, scale):
    out = relu(np_bn(np_conv(x, sd[pre + "conv1.weight"]), sd, pre + "bn1"))
    spx = np.split(out, scale, axis=1)
    outs, sp = [], None
    for k in range(scale - 1):
        sp = spx[k] if (k == 0 or stage) else sp + spx[k]
        sp = relu(np_bn(np_conv(sp, sd[f"{pre}convs.{k}.weight"], stride, 1), sd, f"{pre}bns.{k}"))
        outs.append(sp)
    outs.append(np_pool(spx[-1], stride, np.mean, 0.0) if stage else spx[-1])
    out = np_bn(np_conv(np.concatenate(outs, axis=1), sd[pre + "conv3.weight"]), sd, pre + "bn3")
    if pre + "downsample.0.weight" in sd:
        x = np_bn(np_conv(x, sd[pre + "downsample.0.weight"], stride), sd, pre + "downsample.1")
    return relu(out + x)


def np_res2net(x_nhwc, sd, blocks, scale):
    x = np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float64)
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = relu(np_bn(np_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1"))
    x = np_pool(x, 2, np.max, -np.inf)
    feats = {}
    for i, b in enumerate(blocks, start=1):
        for j in range(b):
            x = np_bottle2neck(x, sd, f"layer{i}.{j}.", 2 if (i > 1 and j == 0) else 1, j == 0,
                               scale)
        feats[i] = np.transpose(x, (0, 2, 3, 1))
    logits = x.mean(axis=(2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]
    return feats, logits


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_model():
    keras.utils.set_random_seed(0)
    return res2net50(include_top=True, weights=None)


@pytest.fixture(scope="module")
def small():
    """(model with random BN, its torch-style state dict, an input batch, its outputs)."""
    keras.utils.set_random_seed(1)
    model = randomize_bn(res2net50(include_top=True, classes=5, input_shape=(64, 64, 3),
                                   **SMALL), seed=1)
    x = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype("float32")
    return model, export_state_dict(model), x, model.predict_on_batch(x)


# -- (a) the full network ---------------------------------------------------------------------

def test_full_res2net50_structure_and_parameter_count(full_model):
    """25,699,120 trainable parameters = timm's res2net50_26w_4s with its 1000-class fc
    (``sum(p.numel() for p in timm.create_model('res2net50_26w_4s').parameters())``, torch 2.14.1,
    timm 1.0.31), also derived by :func:`formula_params`."""
    assert n_trainable(full_model) == RES2NET50_PARAMS
    assert formula_params((3, 4, 6, 3), (64, 128, 256, 512), 26, 4, 64) == RES2NET50_PARAMS
    names = stage_outputs(full_model)
    assert names == {1: "layer1_2_out", 2: "layer2_3_out", 3: "layer3_5_out", 4: "layer4_2_out"}
    shapes = [tuple(full_model.get_layer(names[i]).output.shape[1:]) for i in (1, 2, 3, 4)]
    assert shapes == [(56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]
    assert full_model.output.shape == (None, 1000)
    assert full_model.get_layer("fc").activation is keras.activations.linear
    # Bottle2neck of the standard net: width 26 * 4 groups in layer1, 208 (=52*4) in layer2
    assert full_model.get_layer("layer1_0_conv1").filters == 104
    assert full_model.get_layer("layer2_1_convs_2").filters == 52
    assert full_model.get_layer("layer2_0_convs_0").strides == (2, 2)
    assert full_model.get_layer("layer2_0_pool").strides == (2, 2)
    bn = full_model.get_layer("layer3_0_bns_1")
    assert (bn.epsilon, bn.momentum) == (1e-5, 0.9)
    # its weights export to exactly the official / timm key set
    keys = {k for k in export_state_dict(full_model) if not k.endswith("num_batches_tracked")}
    assert keys == torch_keys((3, 4, 6, 3), 4)


def test_resnet50_parameter_count_and_no_top_pooling():
    """25,557,032 = timm / torchvision resnet50 (same measurement as above)."""
    model = resnet50(include_top=True)
    assert n_trainable(model) == RESNET50_PARAMS
    assert formula_params((3, 4, 6, 3), (64, 128, 256, 512), 64, 1, 64) == RESNET50_PARAMS
    assert {k for k in export_state_dict(model, torchvision=True)
            if not k.endswith("num_batches_tracked")} == torch_keys((3, 4, 6, 3), 1, True)
    pooled = res2net50(pooling="max", input_shape=(64, 64, 3), **SMALL)
    assert pooled.output.shape == (None, 256)
    assert "fc" not in {layer.name for layer in pooled.layers}


# -- (b) wiring against NumPy, (c) converter round trip ----------------------------------------

def test_small_model_matches_numpy_reference(small):
    model, sd, x, logits = small
    assert n_trainable(model) == formula_params(**SMALL, classes=5)
    feats, ref_logits = np_res2net(x, sd, SMALL["blocks"], SMALL["scale"])
    names = stage_outputs(model)
    sub = keras.Model(model.input, [model.get_layer(names[i]).output for i in (1, 2, 3, 4)])
    for i, out in enumerate(sub.predict_on_batch(x), start=1):
        assert out.shape == feats[i].shape
        np.testing.assert_allclose(out, feats[i], atol=1e-4, rtol=1e-4, err_msg=f"stage {i}")
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_converter_round_trip_through_safetensors(small, tmp_path):
    model, sd, x, logits = small
    path = write_safetensors(sd, tmp_path / "small.safetensors")
    back = read_state_dict(path)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k
    keras.utils.set_random_seed(5)
    fresh = res2net50(include_top=True, classes=5, input_shape=(64, 64, 3), **SMALL)
    assert not np.allclose(fresh.predict_on_batch(x), logits)
    res2net50_from_state_dict(back, fresh)
    np.testing.assert_array_equal(fresh.predict_on_batch(x), logits)
    # a checkpoint given as weights= is converted on the fly; the no-top model ignores fc.*
    notop = res2net50(weights=str(path), input_shape=(64, 64, 3), **SMALL)
    np.testing.assert_array_equal(notop.get_layer("layer4_0_conv3").kernel.numpy(),
                                  model.get_layer("layer4_0_conv3").kernel.numpy())
    # a .weights.h5 of the no-top model loads into a no-top model
    notop.save_weights(tmp_path / "notop.weights.h5")
    again = res2net50(weights=tmp_path / "notop.weights.h5", input_shape=(64, 64, 3), **SMALL)
    np.testing.assert_array_equal(again.predict_on_batch(x), notop.predict_on_batch(x))
    # the whole model round-trips through .keras in safe mode (ChannelSplit is registered)
    fresh.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras", safe_mode=True, compile=False)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), logits)


def test_safetensors_dtypes(tmp_path):
    import json
    import struct

    arrays = {"f16": np.array([1.5, -2.0], np.float16), "i64": np.arange(3, dtype=np.int64),
              "i32": np.arange(4, dtype=np.int32).reshape(2, 2)}
    back = read_state_dict(write_safetensors(arrays, tmp_path / "a.safetensors"))
    assert back["f16"].dtype == np.float32 and back["f16"].tolist() == [1.5, -2.0]
    assert back["i64"].dtype == np.int64 and back["i32"].shape == (2, 2)
    # bfloat16 (written by hand: NumPy has no such dtype) and a "module." prefix
    bf16 = (np.array([1.0, -3.5, 0.15625], np.float32).view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"__metadata__": {"format": "pt"}, "module.w": {
        "dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                             + bf16.tobytes())
    back = read_state_dict(tmp_path / "b.safetensors")
    assert list(back) == ["w"] and back["w"].dtype == np.float32
    assert back["w"].tolist() == [1.0, -3.5, 0.15625]
    (tmp_path / "c.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(DataError, match="c.safetensors"):
        read_state_dict(tmp_path / "c.safetensors")


def test_converter_names_missing_unexpected_and_mismatched_keys(small):
    model, sd, _, _ = small
    bad = dict(sd)
    del bad["layer1.1.bns.2.running_var"]
    bad["layer2.0.convs.1.weight"] = bad["layer2.0.convs.1.weight"][:, :-1]
    bad["layer9.0.conv1.weight"] = np.zeros(1, np.float32)
    keras.utils.set_random_seed(3)
    fresh = res2net50(include_top=True, classes=5, input_shape=(64, 64, 3), **SMALL)
    before = fresh.get_layer("conv1").kernel.numpy()
    with pytest.raises(DataError) as e:
        res2net50_from_state_dict(bad, fresh, source="ckpt.safetensors")
    msg = str(e.value)
    assert "ckpt.safetensors" in msg and "missing keys (1): layer1.1.bns.2.running_var" in msg
    assert "unexpected keys (1): layer9.0.conv1.weight" in msg
    assert "layer2.0.convs.1.weight: checkpoint (6, 5, 3, 3), model expects (6, 6, 3, 3)" in msg
    # nothing was assigned
    np.testing.assert_array_equal(fresh.get_layer("conv1").kernel.numpy(), before)
    with pytest.raises(DataError, match="missing keys .*fc.weight"):
        res2net50_from_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")}, fresh)


def test_weights_argument_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="standard configuration"):
        res2net50(weights="imagenet", input_shape=(64, 64, 3), **SMALL)
    with pytest.raises(DataError, match="not found: .*nope.weights.h5"):
        res2net50(weights=tmp_path / "nope.weights.h5", input_shape=(64, 64, 3), **SMALL)

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(DataError, match="cxr-keras convert res2net50 CHECKPOINT --out"):
        res2net50(weights="imagenet", input_shape=(64, 64, 3))


def test_cli_convert_and_imagenet_loading(tmp_path, capsys, monkeypatch):
    from cxr_keras import cli

    keras.utils.set_random_seed(4)
    ref = randomize_bn(res2net50(weights=None), seed=4)
    sd = export_state_dict(ref)
    sd["fc.weight"] = np.zeros((1000, 2048), np.float32)  # a full checkpoint; fc is dropped
    sd["fc.bias"] = np.zeros(1000, np.float32)
    ckpt = write_safetensors(sd, tmp_path / "r2n.safetensors")
    out = tmp_path / "r2n.weights.h5"
    assert cli.main(["convert", "res2net50", str(ckpt), "--out", str(out)]) == 0
    assert "r2n.weights.h5" in capsys.readouterr().out
    model = res2net50(weights=out)
    for name in ("conv1", "layer3_4_bns_2", "layer4_0_downsample_conv"):
        for a, b in zip(model.get_layer(name).weights, ref.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    assert cli.main(["convert", "res2net50", str(ckpt), "--out", str(tmp_path / "x.h5")]) == 2
    assert ".weights.h5" in capsys.readouterr().err
    with pytest.raises(DataError, match="checkpoint not found"):
        convert_res2net50(tmp_path / "missing.safetensors", out)
    # weights="imagenet": timm's safetensors through keras.utils.get_file, converted in memory
    calls = []

    def fake_get_file(fname, origin, cache_subdir):
        calls.append((origin, cache_subdir))
        return str(ckpt)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    model = res2net50(weights="imagenet")
    assert calls == [("https://huggingface.co/timm/res2net50_26w_4s.in1k/resolve/main/"
                      "model.safetensors", "cxr_keras")]
    np.testing.assert_array_equal(model.get_layer("layer2_1_convs_1").kernel.numpy(),
                                  ref.get_layer("layer2_1_convs_1").kernel.numpy())


def test_reads_torch_pickle(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module.a": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
                               "module.b": torch.arange(3)}, "epoch": 3}, path)
    sd = read_state_dict(path)
    assert sorted(sd) == ["a", "b"] and sd["a"].dtype == np.float32
    assert sd["a"].tolist() == [1.5, -2.0] and sd["b"].tolist() == [0, 1, 2]


# -- (d) against timm itself --------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["res2net50_26w_4s", "resnet50"])
def test_matches_timm(arch):
    """The converted model equals timm's (random init, eval mode). Measured with torch 2.14.1 +
    timm 1.0.31 at 72x72 input: max |difference| 1.3e-6 on the stage-4 features (max |value|
    1.37) and 2.7e-7 on the logits for res2net50_26w_4s (resnet50: 9.5e-7, 3.3e-7), i.e.
    float32 rounding: timm in float32 differs from timm in float64 by as much."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model(arch, pretrained=False).eval()
    with torch.no_grad():
        for mod in ref.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):  # timm zero-inits bn3.weight
                mod.weight.uniform_(0.3, 0.8)
                mod.bias.normal_(0, 0.1)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        x = torch.randn(2, 3, 72, 72)  # odd sizes from stage 3 on (9 -> 5 -> 3)
        want_feats = ref.forward_features(x).permute(0, 2, 3, 1).numpy()
        want = ref(x).numpy()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    if arch == "resnet50":
        model = resnet50_from_state_dict(sd, resnet50(include_top=True, input_shape=(72, 72, 3)))
    else:
        model = res2net50_from_state_dict(sd, res2net50(include_top=True, input_shape=(72, 72, 3)))
    sub = keras.Model(model.input, [model.get_layer(stage_outputs(model)[4]).output, model.output])
    feats, logits = sub.predict_on_batch(x.permute(0, 2, 3, 1).numpy())
    print(f"{arch}: max |keras - timm| stage 4 {np.abs(feats - want_feats).max():.3g} "
          f"(max |value| {np.abs(want_feats).max():.3g}), logits {np.abs(logits - want).max():.3g}")
    np.testing.assert_allclose(feats, want_feats, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=1e-4)


def test_channel_split_is_numpys_split_in_the_compute_dtype():
    """One split for the Bottle2neck's four channel groups (the four ChannelSlice layers it
    replaces cost 12% of a training step in gradients); same values, any policy."""
    from cxr_keras.models.res2net import ChannelSplit

    x = np.random.default_rng(0).normal(size=(2, 3, 3, 8)).astype("float32")
    parts = ChannelSplit(4)(x)
    assert len(parts) == 4
    for got, want in zip(parts, np.split(x, 4, axis=-1)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)
    half = ChannelSplit(2, dtype="mixed_bfloat16")(x)
    assert all(keras.backend.standardize_dtype(p.dtype) == "bfloat16" for p in half)
    again = ChannelSplit.from_config(ChannelSplit(4, name="s").get_config())
    assert (again.parts, again.name) == (4, "s")
    with pytest.raises(ValueError, match="parts"):
        ChannelSplit(1)
    with pytest.raises(ValueError, match="equal parts"):
        ChannelSplit(3).compute_output_shape((None, 4, 4, 8))
