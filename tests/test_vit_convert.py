"""ViT checkpoints: a timm / DeiT / MAE state dict (PyTorch layouts) loads into our ViT and gives the
logits of an independent NumPy forward pass written in PyTorch's conventions; bad checkpoints and
weight files are refused by name."""

import numpy as np
import pytest
from scipy.special import erf, softmax

from cxr_keras.convert import convert_checkpoint, vit_from_state_dict, write_safetensors
from cxr_keras.io import DataError
from cxr_keras.models.vit import encoder_layers, load_vit_weights, vit

CFG = dict(patch_size=8, width=16, depth=2, num_heads=2)


def _state_dict(side=32, classes=5, seed=0):
    """Random weights in timm's names and PyTorch's layouts."""
    rng = np.random.default_rng(seed)
    d, p, n = CFG["width"], CFG["patch_size"], (side // CFG["patch_size"]) ** 2

    def r(*shape, s=0.2):
        return (rng.normal(size=shape) * s).astype("float32")

    sd = {"cls_token": r(1, 1, d), "pos_embed": r(1, 1 + n, d),
          "patch_embed.proj.weight": r(d, 3, p, p, s=0.05), "patch_embed.proj.bias": r(d),
          "norm.weight": 1 + r(d), "norm.bias": r(d), "head.weight": r(classes, d),
          "head.bias": r(classes)}
    for i in range(CFG["depth"]):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(d), b + "norm1.bias": r(d),
                   b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d),
                   b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
                   b + "norm2.weight": 1 + r(d), b + "norm2.bias": r(d),
                   b + "mlp.fc1.weight": r(4 * d, d), b + "mlp.fc1.bias": r(4 * d),
                   b + "mlp.fc2.weight": r(d, 4 * d), b + "mlp.fc2.bias": r(d)})
    return sd


def _numpy_vit(sd, images):
    """timm's VisionTransformer forward (CLS pooling), in NumPy float64."""
    w = {k: v.astype(np.float64) for k, v in sd.items()}
    x = images.astype(np.float64).transpose(0, 3, 1, 2)  # NCHW
    b, c, hh, ww = x.shape
    p, d, heads = CFG["patch_size"], CFG["width"], CFG["num_heads"]
    patches = x.reshape(b, c, hh // p, p, ww // p, p).transpose(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b, -1, c * p * p)
    t = patches @ w["patch_embed.proj.weight"].reshape(d, -1).T + w["patch_embed.proj.bias"]
    t = np.concatenate([np.repeat(w["cls_token"], b, 0), t], 1) + w["pos_embed"]

    def ln(a, name):
        a = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-6)
        return a * w[name + ".weight"] + w[name + ".bias"]

    def lin(a, name):
        return a @ w[name + ".weight"].T + w[name + ".bias"]

    for i in range(CFG["depth"]):
        pre = f"blocks.{i}."
        qkv = lin(ln(t, pre + "norm1"), pre + "attn.qkv").reshape(b, -1, 3, heads, d // heads)
        q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
        att = softmax(q @ k.transpose(0, 1, 3, 2) * (d // heads) ** -0.5, -1) @ v
        t = t + lin(att.transpose(0, 2, 1, 3).reshape(b, -1, d), pre + "attn.proj")
        h = lin(ln(t, pre + "norm2"), pre + "mlp.fc1")
        t = t + lin(0.5 * h * (1 + erf(h / np.sqrt(2))), pre + "mlp.fc2")
    return lin(ln(t, "norm")[:, 0], "head")


def test_timm_state_dict_gives_the_numpy_logits(tmp_path):
    sd = _state_dict()
    images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    model = vit(input_shape=(32, 32, 3), num_classes=5, positional="learned", **CFG)
    vit_from_state_dict(sd, model)
    np.testing.assert_allclose(model.predict(images, verbose=0), _numpy_vit(sd, images), atol=1e-4)
    # the same through a file: vit(weights=...) and the converter (headless file -> classifier)
    path = write_safetensors(sd, tmp_path / "timm.safetensors")
    again = vit(input_shape=(32, 32, 3), num_classes=5, positional="learned", weights=path, **CFG)
    np.testing.assert_allclose(again.predict(images, verbose=0), _numpy_vit(sd, images), atol=1e-4)


def test_mae_checkpoint_decoder_is_ignored_and_positions_are_resized():
    sd = _state_dict()
    sd.update({"mask_token": np.zeros((1, 1, 8), "float32"),
               "decoder_embed.weight": np.zeros((8, 16), "float32")})
    model = vit(input_shape=(48, 48, 3), include_top=False, pooling="cls", **CFG)
    vit_from_state_dict(sd, model)  # head.* ignored without a head; 4x4 grid -> 6x6
    pos = np.asarray(model.get_layer("embedding").pos_embed)
    assert pos.shape == (1, 37, 16)
    np.testing.assert_array_equal(pos[:, 0], sd["pos_embed"][:, 0])  # CLS position kept
    # a constant grid stays constant under bicubic resizing
    sd["pos_embed"][:, 1:] = 0.25
    vit_from_state_dict(sd, model)
    np.testing.assert_allclose(np.asarray(model.get_layer("embedding").pos_embed)[:, 1:], 0.25,
                               atol=1e-6)


def test_bad_checkpoints_are_refused_by_name(tmp_path):
    model = vit(input_shape=(32, 32, 3), num_classes=5, **CFG)
    sd = _state_dict()
    del sd["blocks.1.mlp.fc2.bias"]
    sd["blocks.7.norm1.weight"] = np.ones(16, "float32")
    sd["head.weight"] = np.zeros((4, 16), "float32")
    with pytest.raises(DataError) as e:
        vit_from_state_dict(sd, model, source="ckpt.pth")
    msg = str(e.value)
    assert "ckpt.pth" in msg and "blocks.1.mlp.fc2.bias" in msg and "blocks.7.norm1.weight" in msg
    assert "head.weight: checkpoint (4, 16)" in msg


def test_weight_files_load_strictly(tmp_path):
    shape = dict(input_shape=(32, 32, 3), **CFG)
    enc = vit(include_top=False, pooling=None, seed=3, **shape)
    enc.save_weights(tmp_path / "enc.weights.h5")
    clf = vit(num_classes=6, **shape)
    load_vit_weights(clf, tmp_path / "enc.weights.h5")  # encoder into a classifier
    for a, b in zip(encoder_layers(enc), encoder_layers(clf)):
        for x, y in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(x, y)
    deeper = vit(include_top=False, pooling=None, **dict(shape, depth=3))
    deeper.save_weights(tmp_path / "deep.weights.h5")
    with pytest.raises(DataError, match="3 blocks, the model has 2"):
        load_vit_weights(vit(num_classes=6, **shape), tmp_path / "deep.weights.h5")
    wider = vit(include_top=False, pooling=None, **dict(shape, width=32))
    wider.save_weights(tmp_path / "wide.weights.h5")
    with pytest.raises(DataError, match="cannot load"):
        load_vit_weights(vit(num_classes=6, **shape), tmp_path / "wide.weights.h5")


def test_cli_converter_writes_a_loadable_vit_small_file(tmp_path):
    # the full ViT-S/16 layout (random weights): convert with the head, reload, same logits
    rng = np.random.default_rng(0)
    ref = vit(num_classes=3, positional="learned", input_shape=(224, 224, 3))
    sd = {}
    for key, var, transform in _keras_to_timm(ref):
        sd[key] = transform(np.asarray(var)) if transform else np.asarray(var)
    sd = {k: (v + rng.normal(size=v.shape) * 0.01).astype("float32") for k, v in sd.items()}
    src = write_safetensors(sd, tmp_path / "vit_s.safetensors")
    out = convert_checkpoint("vit_small", src, tmp_path / "vit_s.weights.h5", include_top=True)
    model = vit(num_classes=3, input_shape=(224, 224, 3), weights=out)
    np.testing.assert_array_equal(np.asarray(model.get_layer("head").kernel), sd["head.weight"].T)
    np.testing.assert_array_equal(np.asarray(model.get_layer("block_11").fc2.bias),
                                  sd["blocks.11.mlp.fc2.bias"])


def _keras_to_timm(model):
    """(timm key, variable, Keras -> PyTorch layout) for the ViT-S shapes of ``model``."""
    emb, pe = model.get_layer("embedding"), model.get_layer("patch_embed")
    out = [("cls_token", emb.cls_token, None), ("pos_embed", emb.pos_embed, None),
           ("patch_embed.proj.weight", pe.proj.kernel, lambda a: a.transpose(3, 2, 0, 1)),
           ("patch_embed.proj.bias", pe.proj.bias, None)]
    for i in range(12):
        blk = model.get_layer(f"block_{i}")
        for sub, key in ((blk.norm1, "norm1"), (blk.norm2, "norm2")):
            out += [(f"blocks.{i}.{key}.weight", sub.gamma, None),
                    (f"blocks.{i}.{key}.bias", sub.beta, None)]
        for sub, key in ((blk.qkv, "attn.qkv"), (blk.proj, "attn.proj"), (blk.fc1, "mlp.fc1"),
                         (blk.fc2, "mlp.fc2")):
            out += [(f"blocks.{i}.{key}.weight", sub.kernel, lambda a: a.T),
                    (f"blocks.{i}.{key}.bias", sub.bias, None)]
    norm, head = model.get_layer("norm"), model.get_layer("head")
    return out + [("norm.weight", norm.gamma, None), ("norm.bias", norm.beta, None),
                  ("head.weight", head.kernel, lambda a: a.T), ("head.bias", head.bias, None)]
