"""Layer-wise lr decay AdamW against a NumPy AdamW with per-group learning rates (MAE's
param_groups_lrd), on the TF backend and (when installed) JAX."""

import importlib.util
import textwrap

import keras
import numpy as np
import pytest

from cxr_keras.training.layer_decay import LayerDecayAdamW, vit_layer_multipliers

from _models import run_on_jax  # tests/ is on sys.path under pytest

HAS_JAX = importlib.util.find_spec("jax") is not None

CHECK = textwrap.dedent("""
    import numpy as np, keras
    from cxr_keras.training.layer_decay import LayerDecayAdamW

    def numpy_adamw(params, grads_seq, lrs, scales, decays, b1=0.9, b2=0.95, eps=1e-8, wd=0.05):
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        params = [p.copy() for p in params]
        for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
            for i, g in enumerate(grads):
                a = lr * scales[i]
                if decays[i]:
                    params[i] = params[i] - params[i] * wd * a
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                alpha = a * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                params[i] = params[i] - alpha * m[i] / (np.sqrt(v[i]) + eps)
        return params

    rng = np.random.default_rng(0)
    inp = keras.Input((4,))
    x = keras.layers.Dense(3, name="block_0")(inp)
    x = keras.layers.Dense(3, name="block_1")(x)
    out = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inp, out)
    variables = model.trainable_variables
    start = [np.array(keras.ops.convert_to_numpy(v), np.float64) for v in variables]
    mult = {"block_0": 0.25, "block_1": 0.5}
    schedule = keras.optimizers.schedules.CosineDecay(0.0, 4, warmup_target=0.1, warmup_steps=2)
    opt = LayerDecayAdamW(schedule, beta_1=0.9, beta_2=0.95, weight_decay=0.05, lr_multipliers=mult,
                          no_decay=(r"^block_1/kernel",))
    grads_seq = [[rng.normal(size=v.shape) for v in variables] for _ in range(5)]
    for grads in grads_seq:
        opt.apply([keras.ops.convert_to_tensor(g.astype("float32")) for g in grads], variables)
    scales = [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    decays = [True, False, False, False, True, False]  # kernels only; block_1's excluded
    lrs = [float(keras.ops.convert_to_numpy(schedule(s))) for s in range(5)]
    expected = numpy_adamw(start, grads_seq, lrs, scales, decays)
    for v, e in zip(variables, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), e, rtol=0, atol=1e-6)
    assert [opt.multiplier_of(v) for v in variables] == scales
    print("OK", keras.backend.backend())
""")


def test_matches_numpy_adamw_with_per_group_lr():
    exec(compile(CHECK, "check", "exec"), {})


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_matches_numpy_adamw_on_jax():
    assert "OK jax" in run_on_jax(CHECK, timeout=240)


def test_vit_multipliers_follow_mae_layer_ids():
    paths = ["patch_embed/proj/kernel", "embedding/cls_token", "embedding/pos_embed"]
    paths += [f"block_{i}/attn_qkv/kernel" for i in range(12)] + ["norm/gamma", "head/kernel"]
    ids = [0, 0, 0] + list(range(1, 13)) + [13, 13]
    m = vit_layer_multipliers(paths, 12, 0.55)
    assert list(m) == paths
    for path, layer_id in zip(paths, ids):
        assert m[path] == pytest.approx(0.55 ** (13 - layer_id), rel=1e-12)
    nested = vit_layer_multipliers(["vit/cls_token", "vit/block_3/mlp/kernel", "vit/head/bias"],
                                   12, 0.5)
    assert list(nested.values()) == [0.5 ** 13, 0.5 ** 9, 1.0]


def test_vit_multipliers_from_model():
    from cxr_keras.models.vit import vit

    model = vit((32, 32, 3), patch_size=16, width=8, depth=2, num_heads=2, num_classes=3,
                positional="learned")
    m = vit_layer_multipliers(model, 2, 0.5)
    assert set(m) == {v.path for v in model.trainable_variables}
    for path, value in m.items():
        top = path.split("/")[0]
        want = {"patch_embed": 0.125, "embedding": 0.125, "block_0": 0.25, "block_1": 0.5}
        assert value == want.get(top, 1.0), path


def test_config_round_trip_and_fit():
    schedule = keras.optimizers.schedules.CosineDecay(0.0, 8, warmup_target=1e-2, warmup_steps=2)
    opt = LayerDecayAdamW(schedule, weight_decay=0.1, lr_multipliers={"net/a": 0.5},
                          no_decay=("x",))
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is LayerDecayAdamW and again.get_config() == opt.get_config()
    assert again.lr_multipliers == {"net/a": 0.5} and again.decoupled_weight_decay == 0.1
    assert again.no_decay == ("x",) and again.weight_decay is None
    assert isinstance(again.learning_rate, float) or again._learning_rate.get_config() == \
        schedule.get_config()
    # Sequential variable paths start with the model's name: "net/a/kernel"
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="a")], name="net")
    model.compile(optimizer=again, loss="mse")
    x = np.random.default_rng(1).normal(size=(16, 3)).astype("float32")
    hist = model.fit(x, x[:, :1] * 2, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.isfinite(hist).all() and int(again.iterations) == 4
    assert [again.multiplier_of(v) for v in model.trainable_variables] == [0.5, 0.5]
