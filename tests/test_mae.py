"""ViT-S, MAE and dual-MAE: parameter counts, masking, patch order, the loss terms and the EMA
update, each against an independent NumPy computation; TF and (when installed) JAX backends."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from cxr_keras.models.mae import (
    DualMaskedAutoencoder,
    MaskedAutoencoder,
    keep_count,
    patchify,
    random_masking,
    unpatchify,
)
from cxr_keras.models.vit import DropPath, TransformerBlock, sincos_2d, vit, vit_small

from _models import last_json, run_on_jax  # tests/ is on sys.path under pytest

TINY = dict(image_size=32, channels=1, patch_size=8, width=32, depth=2, num_heads=2,
            decoder_width=32, decoder_depth=1, decoder_heads=2, mask_ratio=0.75)
HAS_JAX = importlib.util.find_spec("jax") is not None


def _np(x):
    return keras.ops.convert_to_numpy(x)


def vit_params(width=384, depth=12, patch=16, channels=3, tokens=197, mlp_ratio=4, classes=0):
    """Parameter count of a ViT from its shapes (timm / MAE layout)."""
    hidden = width * mlp_ratio
    block = (2 * 2 * width + (width * 3 * width + 3 * width) + (width * width + width)
             + (width * hidden + hidden) + (hidden * width + width))
    head = width * classes + classes if classes else 0
    return (patch * patch * channels * width + width) + width + tokens * width + depth * block \
        + 2 * width + head


def test_vit_small_parameter_count():
    assert vit_params() == 21_665_664  # timm vit_small_patch16_224 without its head
    encoder = vit_small(include_top=False, pooling=None)
    assert encoder.count_params() == 21_665_664
    assert encoder.output_shape == (None, 197, 384)
    assert vit_small(num_classes=1000).count_params() == vit_params(classes=1000) == 22_050_664
    six = vit_small(num_classes=6)
    assert six.output_shape == (None, 6)
    assert sum(int(np.prod(v.shape)) for v in six.trainable_weights) == \
        vit_params(classes=6) - 197 * 384  # the sin-cos table is fixed


def test_sincos_matches_the_formula():
    width, gh, gw = 16, 3, 4
    emb = sincos_2d(width, (gh, gw))
    assert emb.shape == (1 + gh * gw, width) and not emb[0].any()
    quarter = width // 4
    for r in range(gh):
        for c in range(gw):
            row = emb[1 + r * gw + c]
            for k in range(quarter):
                w = 1.0 / 10000 ** (k / quarter)
                np.testing.assert_allclose(
                    [row[k], row[quarter + k], row[2 * quarter + k], row[3 * quarter + k]],
                    [np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)], atol=1e-6)


def test_random_masking_counts_disjointness_and_inverse():
    rng = np.random.default_rng(0)
    noise = rng.random((5, 49)).astype("float32")
    for ratio in (0.65, 0.75, 0.9, 0.95):
        ids_keep, mask, ids_restore = (_np(a) for a in random_masking(noise, ratio))
        k = int(49 * (1 - ratio))
        assert ids_keep.shape == (5, k) and k == keep_count(49, ratio)
        np.testing.assert_array_equal(mask.sum(1), 49 - k)
        for b in range(5):
            assert len(set(ids_keep[b])) == k
            assert not mask[b, ids_keep[b]].any()  # visible and masked sets are disjoint
            np.testing.assert_array_equal(np.sort(ids_keep[b]), np.sort(np.argsort(noise[b])[:k]))
            np.testing.assert_array_equal(np.argsort(noise[b])[ids_restore[b]], np.arange(49))


def test_masks_are_reproducible_with_a_seed_and_independent_in_dual_mae():
    x = np.zeros((4, 32, 32, 1), "float32")
    a, b = MaskedAutoencoder(seed=3, **TINY), MaskedAutoencoder(seed=3, **TINY)
    np.testing.assert_array_equal(_np(a(x)["mask"]), _np(b(x)["mask"]))
    assert not np.array_equal(_np(a(x)["mask"]), _np(MaskedAutoencoder(seed=4, **TINY)(x)["mask"]))
    dual = DualMaskedAutoencoder(seed=3, **TINY)
    out = dual(x)
    m1, m2 = _np(out["mask"]), _np(out["target_mask"])
    assert m1.sum() == m2.sum() == 4 * 12 and not np.array_equal(m1, m2)


def test_patchify_order_and_round_trip():
    rng = np.random.default_rng(1)
    x = rng.random((2, 16, 24, 3)).astype("float32")
    p = _np(patchify(x, 8))
    assert p.shape == (2, 6, 192)
    # MAE: imgs (N, C, H, W) -> 'nchpwq->nhwpqc'
    ref = x.transpose(0, 3, 1, 2).reshape(2, 3, 2, 8, 3, 8)
    ref = np.einsum("nchpwq->nhwpqc", ref).reshape(2, 6, 192)
    np.testing.assert_array_equal(p, ref)
    np.testing.assert_array_equal(_np(unpatchify(p, (2, 3), 8, 3)), x)


def _targets(x, patch, norm_pix):
    t = _np(patchify(x, patch)).astype(np.float64)
    if norm_pix:
        t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    return t


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_against_numpy(norm_pix):
    model = MaskedAutoencoder(seed=0, norm_pix_loss=norm_pix, **TINY)
    x = np.random.default_rng(2).random((3, 32, 32, 1)).astype("float32")
    out = model(x)
    pred, mask = _np(out["pred"]).astype(np.float64), _np(out["mask"])
    per_patch = ((pred - _targets(x, 8, norm_pix)) ** 2).mean(-1)
    expected = (per_patch * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(out["reconstruction"]), expected, rtol=1e-5)


def test_dual_mae_loss_terms_against_numpy():
    model = DualMaskedAutoencoder(seed=0, loss_weights=(1.0, 2.0, 0.5), **TINY)
    x = np.random.default_rng(3).random((3, 32, 32, 1)).astype("float32")
    out = model(x)
    y1, y2 = _np(out["pred"]).astype(np.float64), _np(out["target_pred"]).astype(np.float64)
    m1, m2 = _np(out["mask"]), _np(out["target_mask"])
    t = _targets(x, 8, False)
    l1 = ((y1 - y2) ** 2).mean()
    l2 = (((y1 - t) ** 2).mean(-1) * m1).sum() / m1.sum()
    l3 = (((y2 - t) ** 2).mean(-1) * m2).sum() / m2.sum()
    for k, v in dict(l1=l1, l2=l2, l3=l3, total=l1 + 2 * l2 + 0.5 * l3).items():
        np.testing.assert_allclose(float(out[k]), v, rtol=1e-5, err_msg=k)
    masked = DualMaskedAutoencoder(seed=0, l1_region="masked", **TINY)(x)
    d = ((_np(masked["pred"]) - _np(masked["target_pred"])).astype(np.float64) ** 2).mean(-1)
    mm = _np(masked["mask"])
    np.testing.assert_allclose(float(masked["l1"]), (d * mm).sum() / mm.sum(), rtol=1e-5)


def test_target_starts_as_a_copy_and_gets_no_gradient():
    model = DualMaskedAutoencoder(seed=0, **TINY)
    assert model.target.trainable_weights == []
    assert len(model.trainable_weights) == len(model.online.trainable_weights)
    for t, o in model._pairs:
        np.testing.assert_array_equal(_np(t), _np(o))


class _RecordOnline(keras.callbacks.Callback):
    def __init__(self, model):
        super().__init__()
        self.pairs, self.thetas = model._pairs, []

    def on_train_batch_end(self, batch, logs=None):
        self.thetas.append([_np(o).astype(np.float64) for _, o in self.pairs])


def test_ema_after_every_step_exact_against_numpy():
    model = DualMaskedAutoencoder(seed=0, tau=0.9, **TINY)
    rng = np.random.default_rng(4)
    for t, _ in model._pairs:  # start the target away from the online network
        t.assign(rng.normal(size=t.shape).astype("float32"))
    xi = [_np(t).astype(np.float64) for t, _ in model._pairs]
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    rec = _RecordOnline(model)
    x = rng.random((12, 32, 32, 1)).astype("float32")
    model.fit(x, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[rec])
    assert len(rec.thetas) == 3
    for theta in rec.thetas:  # xi <- tau xi + (1 - tau) theta, theta after the step
        xi = [0.9 * a + 0.1 * b for a, b in zip(xi, theta)]
    for (t, _), expected in zip(model._pairs, xi):
        np.testing.assert_allclose(_np(t), expected, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(rec.thetas[0], rec.thetas[-1])), \
        "the online network did not train"


def test_drop_path_drops_whole_samples():
    layer = DropPath(0.5, seed=0)
    x = np.ones((400, 3, 2), "float32")
    y = _np(layer(x, training=True))
    per_sample = y.reshape(400, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all() and 0.4 < (per_sample[:, 0] > 0).mean() < 0.6
    np.testing.assert_array_equal(_np(layer(x, training=False)), x)


def test_transformer_block_against_numpy():
    block = TransformerBlock(8, 2, mlp_ratio=2.0, name="b")
    x = np.random.default_rng(5).normal(size=(2, 5, 8)).astype("float32")
    y = _np(block(x))
    g1, b1, wqkv, bqkv, wp, bp, g2, b2, w1, c1, w2, c2 = (
        _np(v).astype(np.float64) for v in
        (block.norm1.gamma, block.norm1.beta, block.qkv.kernel, block.qkv.bias, block.proj.kernel,
         block.proj.bias, block.norm2.gamma, block.norm2.beta, block.fc1.kernel, block.fc1.bias,
         block.fc2.kernel, block.fc2.bias))

    def ln(a, g, b):
        return (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-6) * g + b

    from scipy.special import erf, softmax
    h = ln(x.astype(np.float64), g1, b1) @ wqkv + bqkv
    q, k, v = (h[..., i * 8:(i + 1) * 8].reshape(2, 5, 2, 4).transpose(0, 2, 1, 3) for i in range(3))
    att = softmax(q @ k.transpose(0, 1, 3, 2) / 2.0, axis=-1) @ v
    x1 = x + att.transpose(0, 2, 1, 3).reshape(2, 5, 8) @ wp + bp
    m = ln(x1, g2, b2) @ w1 + c1
    expected = x1 + (0.5 * m * (1 + erf(m / np.sqrt(2)))) @ w2 + c2
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_models_reload_with_safe_mode_in_a_fresh_process(tmp_path):
    dual = DualMaskedAutoencoder(seed=0, **TINY)
    classifier = vit(input_shape=(32, 32, 1), patch_size=8, width=32, depth=2, num_heads=2,
                     num_classes=3, drop_path_rate=0.1)
    x = np.random.default_rng(6).random((2, 32, 32, 1)).astype("float32")
    dual.save(tmp_path / "dual.keras")
    classifier.save(tmp_path / "vit.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "logits.npy", _np(classifier(x)))
    np.save(tmp_path / "noise.npy", np.random.default_rng(7).random((2, 16)).astype("float32"))
    np.save(tmp_path / "pred.npy", _np(dual.online.reconstruct(x, np.load(tmp_path / "noise.npy"))["pred"]))
    code = textwrap.dedent(f"""
        import numpy as np, keras
        import cxr_keras.models
        d = keras.saving.load_model(r"{tmp_path / 'dual.keras'}", safe_mode=True)
        v = keras.saving.load_model(r"{tmp_path / 'vit.keras'}", safe_mode=True)
        x, noise = np.load(r"{tmp_path / 'x.npy'}"), np.load(r"{tmp_path / 'noise.npy'}")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v(x)), np.load(r"{tmp_path / 'logits.npy'}"), atol=1e-5)
        p = keras.ops.convert_to_numpy(d.online.reconstruct(x, noise)["pred"])
        np.testing.assert_allclose(p, np.load(r"{tmp_path / 'pred.npy'}"), atol=1e-5)
        print(type(d).__name__, d.tau)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DualMaskedAutoencoder 0.99" in out.stdout


JAX_CHECK = textwrap.dedent("""
    import json, numpy as np, keras
    from cxr_keras.models.mae import DualMaskedAutoencoder, MaskedAutoencoder
    tiny = json.loads('TINY')
    rng = np.random.default_rng(0)
    x = rng.random((16, 32, 32, 1)).astype("float32")
    dual = DualMaskedAutoencoder(seed=0, tau=0.9, **tiny)
    theta = [np.array(o) for _, o in dual._pairs]
    xi0 = [rng.normal(size=t.shape).astype("float32") for t, _ in dual._pairs]
    for (t, _), v in zip(dual._pairs, xi0):
        t.assign(v)
    dual.compile(optimizer=keras.optimizers.SGD(0.0))  # theta stays theta_0: closed form
    logs = dual.fit(x, batch_size=4, epochs=1, verbose=0).history
    for (t, _), a, b in zip(dual._pairs, xi0, theta):
        np.testing.assert_allclose(np.array(t), 0.9 ** 4 * a + (1 - 0.9 ** 4) * b, rtol=1e-5, atol=1e-6)
    mae = MaskedAutoencoder(seed=0, **tiny)
    mae.compile(optimizer=keras.optimizers.AdamW(3e-3))
    hist = mae.fit(x, batch_size=4, epochs=6, verbose=0).history["reconstruction"]
    assert hist[-1] < hist[0], hist
    print(json.dumps({"backend": keras.backend.backend(), "dual_logs": sorted(logs)}))
""")


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_dual_mae_trains_on_the_jax_backend():
    code = JAX_CHECK.replace("TINY", json.dumps(TINY))
    info = last_json(run_on_jax(code))
    assert info["backend"] == "jax" and info["dual_logs"] == ["l1", "l2", "l3", "loss"]
