"""Prediction-level ensembles of K-class classifiers (``multiloss`` paper, Sec. 2.3.2).

Members' predictions are stacked as an (M, N, K) array: M members, N cases, K classes (a list
of (N, K) arrays or a dict name -> (N, K) array in member order is accepted everywhere).

- :func:`top_k`: the K best members by a score (the paper ranks by MCC).
- :func:`majority_vote` / :func:`vote_proba`: hard voting (tie rule documented there).
- :func:`average` / :func:`weighted_average`: soft voting.
- :func:`slsqp_weights`: weights minimising the log loss of the weighted average (SLSQP).
- :func:`stacking_model` / :func:`fit_stacking` / :func:`stacking_predict`: a small Keras
  meta-learner on the concatenated member probabilities.
- :func:`prediction_level`: the four at once, fitted on validation, applied to test.

NumPy/SciPy only, except the stacking functions, which import Keras when called.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.optimize import minimize


def _stack(probas) -> np.ndarray:
    """(M, N, K) float64 array from an array, a list of (N, K) arrays or a dict of them."""
    if isinstance(probas, dict):
        probas = list(probas.values())
    p = np.asarray(probas, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"member predictions must be (M, N, K), got shape {p.shape}")
    if p.shape[0] < 1 or p.shape[1] < 1 or p.shape[2] < 2:
        raise ValueError(f"need at least 1 member, 1 case and 2 classes, got shape {p.shape}")
    return p


def _labels_1d(y_true, n, k):
    y = np.asarray(y_true)
    if y.shape != (n,):
        raise ValueError(f"y_true must be (N,) = ({n},), got shape {y.shape}")
    if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true must hold class indices in [0, {k - 1}]")
    return y.astype(np.int64)


def top_k(scores: dict, k: int) -> list:
    """Names of the ``k`` highest scores, best first (e.g. members ranked by test MCC).

    Ties keep the order of ``scores`` (Python's stable sort); NaN scores rank last. ``k`` larger
    than the number of members returns them all.
    """
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")

    def key(name):
        s = float(scores[name])
        return (math.isnan(s), -s if not math.isnan(s) else 0.0)

    return sorted(scores, key=key)[:int(k)]


def vote_counts(probas) -> np.ndarray:
    """(N, K) number of members whose argmax is each class."""
    p = _stack(probas)
    m, n, k = p.shape
    votes = np.argmax(p, axis=2)                                  # (M, N)
    counts = np.zeros((n, k), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(n), (m, n)), votes), 1)
    return counts


def majority_vote(probas, tie_break="probability") -> np.ndarray:
    """Hard-voting ensemble: each member votes for its argmax class; the most voted class wins.

    TIE RULE (the paper leaves it undefined): with ``tie_break="probability"`` (default), among
    the classes tied for the most votes the one with the highest probability summed over all
    members wins, and if that too is tied, the lowest class index. ``tie_break="lowest"``
    takes the lowest tied class index (what ``scipy.stats.mode`` or ``argmax`` of the vote
    counts does). Returns class indices (N,).
    """
    p = _stack(probas)
    counts = vote_counts(p)
    tied = counts == counts.max(axis=1, keepdims=True)
    if tie_break == "lowest":
        return np.argmax(tied, axis=1)
    if tie_break != "probability":
        raise ValueError(f"tie_break must be 'probability' or 'lowest', got {tie_break!r}")
    summed = p.sum(axis=0)                                        # (N, K)
    return np.argmax(np.where(tied, summed, -np.inf), axis=1)     # argmax: first on ties


def vote_proba(probas) -> np.ndarray:
    """Fraction of members voting for each class, (N, K); rows sum to 1.

    Usable as the score of the voting ensemble for AUROC/AUPRC, with the caveat that it takes
    only M + 1 distinct values per class, so its ROC curve is coarse (many ties) and its AUC is
    usually lower than that of the averaged probabilities. ``argmax(vote_proba)`` breaks ties by
    the lowest index, unlike :func:`majority_vote`'s default rule.
    """
    p = _stack(probas)
    return vote_counts(p) / float(p.shape[0])


def weighted_average(probas, weights) -> np.ndarray:
    """``sum_m w_m p_m / sum_m w_m``, (N, K). Weights must be non-negative with a positive sum
    (they are normalised, so weights that sum to 1 up to rounding give a proper average)."""
    p = _stack(probas)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != (p.shape[0],):
        raise ValueError(f"{w.size} weights for {p.shape[0]} members")
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and sum > 0, got {w}")
    return np.tensordot(w, p, axes=1) / w.sum()


def average(probas, weights=None) -> np.ndarray:
    """Simple average of the members' probabilities, or :func:`weighted_average` if weighted."""
    if weights is not None:
        return weighted_average(probas, weights)
    return _stack(probas).mean(axis=0)


def _true_class_probs(p, y):
    return p[:, np.arange(p.shape[1]), y]                         # (M, N)


def ensemble_log_loss(probas, y_true, weights=None, eps=1e-15) -> float:
    """Mean negative log probability of the true class under the (weighted) average,
    probabilities clipped to [eps, 1] (the quantity :func:`slsqp_weights` minimises)."""
    p = _stack(probas)
    y = _labels_1d(y_true, p.shape[1], p.shape[2])
    q = average(p, weights)[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(q, eps, 1.0))))


def slsqp_weights(probabilities, y_true, starts=10, seed=0, eps=1e-15, maxiter=1000,
                  ftol=1e-12):
    """Ensemble weights minimising the log loss of the weighted average (paper Sec. 2.3.2).

    Minimises ``L(w) = -mean_i log(clip(sum_m w_m p_m[i, y_i], eps, 1))`` with
    ``scipy.optimize.minimize(method="SLSQP")`` (analytic gradient), bounds 0 <= w_m <= 1 and the
    equality constraint ``sum_m w_m = 1``, from the uniform start and ``starts`` random starts
    drawn from a flat Dirichlet with ``numpy.random.default_rng(seed)``; the lowest loss wins.
    (The loss is convex in w, so the starts only guard against a solver failure.) The winner is
    clipped to [0, 1] and renormalised to sum exactly to 1, and its loss recomputed.

    Fit these weights on VALIDATION predictions: the original code fitted them on the TEST
    predictions with 50 random starts and kept the weights with the best test accuracy, which
    leaks the test labels into the reported test numbers.

    ``probabilities`` is (M, N, K), ``y_true`` class indices (N,). Returns ``(weights (M,),
    loss)``.
    """
    p = _stack(probabilities)
    m, n, k = p.shape
    y = _labels_1d(y_true, n, k)
    pt = _true_class_probs(p, y)                                  # (M, N)

    def loss(w):
        q = w @ pt
        return float(-np.mean(np.log(np.clip(q, eps, 1.0))))

    def grad(w):
        q = w @ pt
        inside = (q > eps) & (q < 1.0)
        return -(pt * (inside / np.clip(q, eps, None))).mean(axis=1)

    rng = np.random.default_rng(seed)
    x0s = [np.full(m, 1.0 / m)] + [rng.dirichlet(np.ones(m)) for _ in range(int(starts))]
    constraint = {"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": lambda w: np.ones(m)}
    runs = []                                             # (not converged, loss, weights)
    for x0 in x0s:
        res = minimize(loss, x0, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                       constraints=[constraint], options={"maxiter": maxiter, "ftol": ftol})
        w = np.clip(res.x, 0.0, 1.0)
        if not np.isfinite(w).all() or w.sum() <= 0:
            continue
        w = w / w.sum()
        runs.append((not res.success, loss(w), w))
    if not runs:
        raise RuntimeError("slsqp_weights: every SLSQP run failed")
    failed, best_loss, best_w = min(runs, key=lambda r: (r[0], r[1]))   # converged runs first
    if failed:
        warnings.warn("slsqp_weights: no SLSQP run reported convergence; returning the best "
                      "point found", RuntimeWarning, stacklevel=2)
    return best_w, float(best_loss)


# ------------------------------------------------------------------------------------------------
# Stacking (Keras meta-learner)

def stacking_features(probas) -> np.ndarray:
    """(N, M*K) concatenation of the members' probabilities, member by member
    (``[p_1(i, :), p_2(i, :), ...]`` for case i): the meta-learner's input."""
    p = _stack(probas)
    return np.concatenate(list(p), axis=1).astype(np.float32)


def stacking_model(num_members, num_classes=3, hidden=None, activation="relu", seed=0,
                   name="stacking_ensemble"):
    """Meta-learner of the stacking ensemble: Input(M*K) -> Dense(hidden, activation) ->
    Dense(K, softmax).

    The paper: "a meta-learner that consists of a single hidden layer with 9 and 15 neurons
    respectively, for the top-3 and top-5 performing models", i.e. ``hidden = M * K`` (the
    default). The hidden activation is not given: CHOICE ``relu`` (``activation`` changes it;
    ``"linear"`` makes the meta-learner a multinomial logistic regression). Weights are
    initialised with seeded Glorot-uniform initialisers.
    """
    import keras

    m, k = int(num_members), int(num_classes)
    if m < 1 or k < 2:
        raise ValueError(f"need num_members >= 1 and num_classes >= 2, got {m}, {k}")
    hidden = m * k if hidden is None else int(hidden)
    inputs = keras.Input(shape=(m * k,), name="member_probabilities")
    x = keras.layers.Dense(hidden, activation=activation, name="stacking_hidden",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(inputs)
    outputs = keras.layers.Dense(k, activation="softmax", name="stacking_output",
                                 kernel_initializer=keras.initializers.GlorotUniform(
                                     seed=None if seed is None else seed + 1))(x)
    return keras.Model(inputs, outputs, name=name)


def fit_stacking(val_probas, y_val, hidden=None, activation="relu", epochs=300, batch_size=32,
                 learning_rate=1e-3, seed=0, verbose=0):
    """Train :func:`stacking_model` on the members' VALIDATION predictions (members are frozen by
    construction: only their saved probabilities enter).

    Adam (``learning_rate``), sparse categorical cross-entropy, ``epochs`` full passes with
    shuffling, batches of ``batch_size``. ``seed`` (unless None) is passed to
    ``keras.utils.set_random_seed`` (which reseeds Python's, NumPy's and the backend's global
    generators) so that the shuffling, and hence the model, is reproducible. Returns the trained
    Keras model (its ``history`` attribute holds the training curve).
    """
    import keras

    p = _stack(val_probas)
    m, n, k = p.shape
    y = _labels_1d(y_val, n, k)
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    model = stacking_model(m, k, hidden=hidden, activation=activation, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(stacking_features(p), y, epochs=int(epochs), batch_size=int(batch_size),
              shuffle=True, verbose=verbose)
    return model


def stacking_predict(model, probas, batch_size=1024) -> np.ndarray:
    """Class probabilities (N, K) of a trained stacking model for members' predictions
    (M, N, K), members in the same order as at training time."""
    x = stacking_features(probas)
    expected = model.input_shape[-1]
    if x.shape[1] != expected:
        raise ValueError(f"stacking model expects {expected} inputs (M * K), got {x.shape[1]}")
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)


def prediction_level(val_probas, y_val, test_probas, *, starts: int = 10, seed: int = 0,
                     stacking_epochs: int = 300) -> tuple[dict, np.ndarray]:
    """The four prediction-level ensembles of the members' ``test_probas``, with the SLSQP
    weights and the stacking meta-learner fitted on ``val_probas`` / ``y_val``: ({"majority
    voting", "simple averaging", "weighted averaging", "stacking"} -> (N, K), the weights)."""
    w, _ = slsqp_weights(val_probas, y_val, starts=starts, seed=seed)
    stack = fit_stacking(val_probas, y_val, epochs=stacking_epochs, seed=seed)
    return {"majority voting": vote_proba(test_probas),
            "simple averaging": average(test_probas),
            "weighted averaging": weighted_average(test_probas, w),
            "stacking": stacking_predict(stack, test_probas)}, w
