"""Prediction-level ensembles: top-K selection, voting, (weighted) averaging, SLSQP weights,
stacking."""

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, minimize
from sklearn.metrics import log_loss

from cxr_keras.ensemble import (
    average,
    ensemble_log_loss,
    fit_stacking,
    majority_vote,
    slsqp_weights,
    stacking_features,
    stacking_model,
    stacking_predict,
    top_k,
    vote_counts,
    vote_proba,
    weighted_average,
)


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _members(strengths, n=600, k=3, seed=1):
    """Members with independent noise: logits = s * onehot(y) + N(0, 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    onehot = np.eye(k)[y]
    return np.stack([_softmax(s * onehot + rng.normal(0, 1, (n, k))) for s in strengths]), y


def test_top_k_is_stable_and_puts_nan_last():
    scores = {"cce": 0.85, "focal": 0.80, "cal_cce": 0.8996, "hinge": 0.85, "kl": float("nan"),
              "ent": 0.88}
    assert top_k(scores, 3) == ["cal_cce", "ent", "cce"]      # cce before hinge: given order
    assert top_k(scores, 4) == ["cal_cce", "ent", "cce", "hinge"]
    assert top_k(scores, 10)[-1] == "kl"
    with pytest.raises(ValueError):
        top_k(scores, 0)


def test_majority_vote_tie_rule_by_hand():
    # 3 members x 4 cases x 3 classes
    probas = np.array([
        [[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.5, 0.25, 0.25], [0.2, 0.7, 0.1]],
        [[0.5, 0.4, 0.1], [0.2, 0.5, 0.3], [0.25, 0.5, 0.25], [0.1, 0.2, 0.7]],
        [[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.25, 0.25, 0.5], [0.6, 0.2, 0.2]],
    ])
    # case 0: votes 0, 0, 1 -> 0 (a clear majority, whatever the probabilities)
    # case 1: votes 0, 1, 2 tie; summed probabilities (0.8, 0.9, 1.3) -> 2
    # case 2: votes 0, 1, 2 tie; sums (1, 1, 1) exactly tied too (dyadic) -> lowest index 0
    # case 3: votes 1, 2, 0 tie; sums (0.9, 1.1, 1.0) -> 1
    np.testing.assert_array_equal(vote_counts(probas), [[2, 1, 0], [1, 1, 1], [1, 1, 1],
                                                        [1, 1, 1]])
    np.testing.assert_array_equal(majority_vote(probas), [0, 2, 0, 1])
    np.testing.assert_array_equal(majority_vote(probas, tie_break="lowest"), [0, 0, 0, 0])
    # a two-way tie with 4 members: classes 1 and 2 get two votes each, class 2 more mass
    four = np.array([[[0.1, 0.5, 0.4]], [[0.1, 0.6, 0.3]], [[0.0, 0.3, 0.7]], [[0.1, 0.1, 0.8]]])
    assert majority_vote(four)[0] == 2
    assert majority_vote(list(four), tie_break="lowest")[0] == 1
    np.testing.assert_allclose(vote_proba(four), [[0.0, 0.5, 0.5]])
    np.testing.assert_allclose(vote_proba(probas).sum(axis=1), 1.0)
    with pytest.raises(ValueError):
        majority_vote(probas, tie_break="random")


def test_average_and_weighted_average():
    probas, _ = _members((1.0, 2.0, 3.0), n=50)
    np.testing.assert_allclose(average(probas), probas.mean(axis=0))
    w = np.array([0.2, 0.3, 0.5])
    ref = 0.2 * probas[0] + 0.3 * probas[1] + 0.5 * probas[2]
    np.testing.assert_allclose(weighted_average(probas, w), ref)
    np.testing.assert_allclose(average(list(probas), 10 * w), ref)      # weights normalised
    np.testing.assert_allclose(average({"a": probas[0], "b": probas[1]}, [1, 0]), probas[0])
    with pytest.raises(ValueError):
        weighted_average(probas, [0.5, -0.1, 0.6])
    with pytest.raises(ValueError):
        weighted_average(probas, [0.5, 0.5])


def _reference_weights(probas, y):
    """Independent solves of the same problem: trust-constr on the simplex and a
    softmax-parametrised unconstrained L-BFGS-B."""
    pt = probas[:, np.arange(len(y)), y]
    m = len(probas)

    def f(w):
        return -np.mean(np.log(w @ pt))

    tc = minimize(f, np.full(m, 1.0 / m), method="trust-constr", bounds=Bounds(0.0, 1.0),
                  constraints=[LinearConstraint(np.ones((1, m)), 1.0, 1.0)],
                  options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000})
    lb = minimize(lambda z: f(_softmax(z)), np.zeros(m), method="L-BFGS-B",
                  options={"ftol": 1e-15, "gtol": 1e-12})
    return (tc.x, tc.fun), (_softmax(lb.x), lb.fun)


@pytest.mark.filterwarnings("ignore:delta_grad")
def test_slsqp_weights_against_independent_solvers():
    probas, y = _members((1.8, 1.6, 1.5))              # optimum inside the simplex
    w, loss = slsqp_weights(probas, y, starts=5, seed=0)
    assert w.shape == (3,)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all((w >= 0) & (w <= 1))
    assert np.argmax(w) == 0 and np.all(w > 0.01)        # the best member weighs most
    for w_ref, loss_ref in _reference_weights(probas, y):
        np.testing.assert_allclose(w, w_ref, atol=1e-3)
        assert loss == pytest.approx(loss_ref, abs=1e-6)
        assert loss <= loss_ref + 1e-9
    # the minimised loss is sklearn's log loss of the weighted average
    assert loss == pytest.approx(log_loss(y, weighted_average(probas, w), labels=[0, 1, 2]),
                                 abs=1e-12)
    assert loss == pytest.approx(ensemble_log_loss(probas, y, w), abs=1e-12)
    assert loss < min(ensemble_log_loss(probas[i:i + 1], y) for i in range(3))
    assert loss <= ensemble_log_loss(probas, y) + 1e-12           # not worse than uniform
    w2, loss2 = slsqp_weights(probas, y, starts=5, seed=0)
    np.testing.assert_array_equal(w, w2)


def test_slsqp_weights_at_a_vertex_satisfy_kkt():
    probas, y = _members((2.5, 1.5, 1.0))              # the strong member takes all the weight
    w, loss = slsqp_weights(probas, y, starts=3, seed=1)
    assert w == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    assert loss == pytest.approx(ensemble_log_loss(probas[:1], y), abs=1e-9)
    # KKT on the simplex: at w = e_0 every other coordinate's partial derivative is >= that of
    # coordinate 0 (moving mass away from member 0 cannot decrease the loss)
    pt = probas[:, np.arange(len(y)), y]
    grad = -(pt / (w @ pt)).mean(axis=1)
    assert np.all(grad[1:] >= grad[0] - 1e-9)


def test_slsqp_weights_input_checks():
    probas, y = _members((1.0, 1.0), n=30)
    with pytest.raises(ValueError):
        slsqp_weights(probas, y[:-1])
    with pytest.raises(ValueError):
        slsqp_weights(probas, np.full(30, 3))
    with pytest.raises(ValueError):
        slsqp_weights(probas[0], y)


def _shifted_members(n, rng):
    """Member m reports the classes cyclically shifted by m: only member 0 is right on its own
    and averaging destroys the signal, but a meta-learner can undo the shifts and pool them."""
    y = rng.integers(0, 3, n)
    onehot = np.eye(3)[y]
    return np.stack([_softmax(np.roll(1.5 * onehot + rng.normal(0, 1, (n, 3)), m, axis=1))
                     for m in range(3)]), y


def test_stacking_model_shapes():
    for m, hidden in ((3, 9), (5, 15)):                # the paper's 9 and 15 hidden neurons
        model = stacking_model(m, 3)
        assert model.input_shape == (None, 3 * m)
        assert model.get_layer("stacking_hidden").units == hidden
        assert model.output_shape == (None, 3)
        assert model.count_params() == (3 * m + 1) * hidden + (hidden + 1) * 3
    assert stacking_model(3, 3, hidden=4).get_layer("stacking_hidden").units == 4
    probas = np.arange(2 * 4 * 3, dtype=float).reshape(2, 4, 3)
    np.testing.assert_array_equal(stacking_features(probas)[1], [3, 4, 5, 15, 16, 17])


def test_stacking_learns_beyond_its_members():
    rng = np.random.default_rng(0)
    p_val, y_val = _shifted_members(600, rng)
    p_test, y_test = _shifted_members(600, rng)
    model = fit_stacking(p_val, y_val, epochs=40, batch_size=128, learning_rate=3e-2, seed=0)
    q = stacking_predict(model, p_test)
    assert q.shape == (600, 3)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-5)
    acc = np.mean(q.argmax(axis=1) == y_test)
    # baselines on the same test cases: each member, their average, their vote, the majority class
    baselines = {f"member {i}": np.mean(p.argmax(axis=1) == y_test) for i, p in enumerate(p_test)}
    baselines["average"] = np.mean(average(p_test).argmax(axis=1) == y_test)
    baselines["majority vote"] = np.mean(majority_vote(p_test) == y_test)
    baselines["majority class"] = np.mean(y_test == np.bincount(y_val).argmax())
    margin = 0.05
    assert acc > max(baselines.values()) + margin, (f"stacking accuracy {acc:.3f}, not {margin} "
                                                    f"above the baselines {baselines}")
    with pytest.raises(ValueError):
        stacking_predict(model, p_test[:2])
