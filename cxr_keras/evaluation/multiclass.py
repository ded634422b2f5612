"""Single-label multi-class metrics and paired significance tests (``multiloss`` paper, Sec. 3.2).

Conventions: ``y_true`` holds class indices 0..K-1, shape (N,); ``proba`` is an (N, K) array of
class probabilities (rows summing to 1, e.g. softmax outputs or an ensemble's average); the
predicted class is ``argmax(proba, axis=1)`` (first maximum on ties, NumPy's rule).

The paper reports accuracy, AUROC, AUPRC, precision, recall, F-score and the multi-class MCC, and
"the 95% CI measured as the exact Clopper-Pearson interval for the MCC metric". Its intervals are
symmetric (0.9068 (0.8839, 0.9297) at n = 624 test images), i.e. a normal-approximation (Wald)
binomial interval, not Clopper-Pearson; :func:`multiclass_metrics` reports both, labelled, and a
percentile bootstrap on request. The paper names no significance test: :func:`mcnemar_test`
compares two classifiers' decisions on the same cases, :func:`delong_ovr` their one-vs-rest AUCs.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import binomtest, chi2, norm
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from cxr_keras.evaluation.delong import delong_test
from cxr_keras.evaluation.metrics import bootstrap_ci, column_names

INTERVAL_METHODS = ("clopper-pearson", "wald")

MCC_INTERVAL_NOTE = (
    "binomial interval applied to the MCC as if it were a proportion of n cases (the paper's "
    "practice); the MCC is not a proportion, so this is not a valid confidence interval for it. "
    "'wald' (normal approximation, symmetric) reproduces the paper's numbers although the paper "
    "calls them exact Clopper-Pearson; 'bootstrap' (percentile, resampling cases) is the "
    "statistically sound alternative.")


def _check(y_true, proba):
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise ValueError(f"proba must be (N, K), got shape {proba.shape}")
    if y_true.ndim != 1 or len(y_true) != len(proba):
        raise ValueError(f"y_true must be (N,) with N = {len(proba)}, got shape {y_true.shape}")
    if not np.issubdtype(y_true.dtype, np.integer):
        if not np.all(np.equal(np.mod(y_true, 1), 0)):
            raise ValueError("y_true must hold class indices, got non-integer values")
        y_true = y_true.astype(np.int64)
    k = proba.shape[1]
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= k):
        raise ValueError(f"class indices must lie in [0, {k - 1}], got "
                         f"[{y_true.min()}, {y_true.max()}]")
    return y_true, proba


def _predictions(pred):
    """Class indices from either class indices (N,) or scores (N, K) (argmax)."""
    pred = np.asarray(pred)
    if pred.ndim == 2:
        return np.argmax(pred, axis=1)
    if pred.ndim != 1:
        raise ValueError(f"predictions must be (N,) indices or (N, K) scores, got {pred.shape}")
    return pred.astype(np.int64)


def _interval_pair(lo, hi):
    return [float(lo), float(hi)]


def binomial_interval(p, n, alpha=0.05, method="clopper-pearson", clip=True):
    """Two-sided ``1 - alpha`` binomial interval for a proportion ``p`` observed on ``n`` cases.

    ``method="clopper-pearson"``: the exact interval of
    ``scipy.stats.binomtest(k=round(p * n), n).proportion_ci(method="exact")`` (asymmetric; the
    count is rounded to an integer). ``method="wald"``: the normal approximation
    ``p +- z_{1-alpha/2} * sqrt(p (1 - p) / n)``, clipped to [0, 1] when ``clip`` (the default).

    The ``multiloss`` paper applies this to the MCC ("exact Clopper-Pearson interval for the MCC")
    with n = 624 test images, but its published intervals are the Wald ones:
    ``binomial_interval(0.9068, 624, method="wald")`` gives (0.8840, 0.9296) against the paper's
    (0.8839, 0.9297) (the paper presumably started from the unrounded MCC), and
    ``binomial_interval(0.87, 624, method="wald")`` gives the paper's (0.8436, 0.8964) for the
    prior art exactly; Clopper-Pearson gives (0.8815, 0.9287) for 0.9068. Note that the MCC is
    not a proportion of successes, so a binomial interval around it is the paper's practice, not
    a statistically sound confidence interval for the MCC: use :func:`mcc_bootstrap_interval`
    (percentile bootstrap over cases) for that.

    ``p`` must lie in [0, 1] (a negative MCC has no binomial interval: ValueError). Returns
    ``(lower, upper)`` as floats.
    """
    p = float(p)
    n = int(n)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1] for a binomial interval, got {p}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if method == "clopper-pearson":
        k = int(round(p * n))
        ci = binomtest(k, n).proportion_ci(confidence_level=1.0 - alpha, method="exact")
        return float(ci.low), float(ci.high)
    if method == "wald":
        half = norm.ppf(1.0 - alpha / 2.0) * np.sqrt(p * (1.0 - p) / n)
        lo, hi = p - half, p + half
        if clip:
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        return float(lo), float(hi)
    raise ValueError(f"method must be one of {INTERVAL_METHODS}, got {method!r}")


def _mcc_from_scores(y_true, proba):
    return matthews_corrcoef(y_true, np.argmax(proba, axis=1))


def mcc_bootstrap_interval(y_true, proba, n_boot=1000, alpha=0.05, seed=0):
    """Percentile bootstrap interval of the multi-class MCC, resampling cases.

    Uses :func:`cxr_keras.evaluation.metrics.bootstrap_ci`; returns ``(mcc, lower, upper)``.
    """
    y_true, proba = _check(y_true, proba)
    return bootstrap_ci(_mcc_from_scores, y_true, proba, n_boot=n_boot, alpha=alpha, seed=seed)


def mcc_interval(mcc, n, alpha=0.05, clip=True) -> dict:
    """Both binomial intervals of an MCC value, labelled (see :func:`binomial_interval`).

    Returns ``{"estimate", "n", "alpha", "clopper-pearson": [lo, hi], "wald": [lo, hi], "note"}``;
    the intervals are NaN when the MCC is negative or NaN (no binomial interval exists).
    """
    out = {"estimate": float(mcc), "n": int(n), "alpha": float(alpha)}
    for method in INTERVAL_METHODS:
        if np.isfinite(mcc) and 0.0 <= mcc <= 1.0:
            out[method] = _interval_pair(*binomial_interval(mcc, n, alpha, method, clip=clip))
        else:
            out[method] = [float("nan"), float("nan")]
    out["note"] = MCC_INTERVAL_NOTE
    return out


def _per_class_auc(onehot, proba):
    aucs, aps = [], []
    for j in range(proba.shape[1]):
        t = onehot[:, j]
        if t.all() or not t.any():
            aucs.append(float("nan"))
            aps.append(float("nan"))
        else:
            aucs.append(float(roc_auc_score(t, proba[:, j])))
            aps.append(float(average_precision_score(t, proba[:, j])))
    return aucs, aps


def _weighted_nanmean(values, weights):
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    keep = ~np.isnan(values) & (weights > 0)
    if not keep.any():
        return float("nan")
    return float(np.sum(values[keep] * weights[keep]) / np.sum(weights[keep]))


def multiclass_metrics(y_true, proba, labels=None, alpha=0.05, n_boot=0, seed=0,
                       pred=None) -> dict:
    """The paper's classification metrics for single-label K-class predictions (Tables 2-5).

    ``pred``: the predicted classes (N,) when they are not ``argmax(proba)`` (a majority vote
    with its tie rule, :func:`cxr_keras.ensemble.majority_vote`); every thresholded entry below
    (accuracy to per-class values, the MCC interval and the confusion matrix) then uses them,
    the AUROC / AUPRC still ``proba``.

    - ``accuracy``: fraction of ``argmax(proba) == y_true`` (``accuracy_score``).
    - ``auroc``: one-vs-rest ROC AUC averaged with class-support weights
      (``roc_auc_score(multi_class="ovr", average="weighted")``); ``auroc_macro``: unweighted.
    - ``auprc``: average precision of the one-hot targets, support-weighted
      (``average_precision_score(average="weighted")``); ``auprc_macro``: unweighted.
    - ``precision``, ``recall``, ``f1`` (the F-score): support-weighted averages
      (``precision_recall_fscore_support(average="weighted")``; weighted averages match the
      paper's numbers: its recall always equals its accuracy). Undefined ratios count as 0.
    - ``mcc``: multi-class Matthews correlation (Gorodkin's R_K, ``matthews_corrcoef``).
    - ``mcc_interval``: :func:`mcc_interval` (Clopper-Pearson and Wald, labelled; with
      ``n_boot > 0`` also ``"bootstrap"``, a percentile bootstrap over ``n_boot`` resamples).
    - ``confusion_matrix``: K x K counts, rows = true class, columns = predicted class.
    - ``per_class``: ``{label: {auroc, ap, precision, recall, f1, support}}``.

    A class absent from ``y_true`` has NaN AUROC/AP and weight 0 (a warning is issued); rows of
    ``proba`` must sum to 1 for sklearn's multi-class AUROC. The result is JSON-serialisable
    (``json.dumps``; NaN is written as ``NaN``).
    """
    y_true, proba = _check(y_true, proba)
    n, k = proba.shape
    labels = column_names(labels, k)
    classes = np.arange(k)
    if pred is None:
        pred = np.argmax(proba, axis=1)
    else:
        pred = np.asarray(pred)
        if pred.shape != (n,) or not np.all((pred >= 0) & (pred < k)):
            raise ValueError(f"pred must hold {n} class indices in [0, {k}), got shape "
                             f"{pred.shape}")
    onehot = y_true[:, None] == classes[None, :]
    support = onehot.sum(axis=0)

    aucs, aps = _per_class_auc(onehot, proba)
    if np.all(support > 0) and k > 2:
        auroc = float(roc_auc_score(y_true, proba, multi_class="ovr", average="weighted",
                                    labels=classes))
    elif np.all(support > 0):                      # binary: sklearn wants the positive column
        auroc = aucs[1]
    else:
        warnings.warn(f"multiclass_metrics: class(es) {np.flatnonzero(support == 0).tolist()} "
                      "absent from y_true; their AUROC/AP are NaN and weigh 0", RuntimeWarning,
                      stacklevel=2)
        auroc = _weighted_nanmean(aucs, support)
    if np.all(support > 0):
        auprc = float(average_precision_score(onehot.astype(np.int64), proba, average="weighted"))
    else:
        auprc = _weighted_nanmean(aps, support)

    prec, rec, f, _ = precision_recall_fscore_support(
        y_true, pred, labels=classes, average="weighted", zero_division=0)
    pc_prec, pc_rec, pc_f, pc_sup = precision_recall_fscore_support(
        y_true, pred, labels=classes, average=None, zero_division=0)
    mcc = float(matthews_corrcoef(y_true, pred))
    interval = mcc_interval(mcc, n, alpha)
    if n_boot:
        _, lo, hi = bootstrap_ci(matthews_corrcoef, y_true, pred, n_boot=n_boot, alpha=alpha,
                                 seed=seed)
        interval["bootstrap"] = _interval_pair(lo, hi)
        interval["n_boot"] = int(n_boot)
    cm = confusion_matrix(y_true, pred, labels=classes)

    return {
        "n": int(n),
        "labels": labels,
        "accuracy": float(accuracy_score(y_true, pred)),
        "auroc": auroc,
        "auroc_macro": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
        "auprc": auprc,
        "auprc_macro": float(np.nanmean(aps)) if not np.all(np.isnan(aps)) else float("nan"),
        "precision": float(prec),
        "recall": float(rec),
        "f1": float(f),
        "mcc": mcc,
        "mcc_interval": interval,
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": {
            label: {"auroc": aucs[j], "ap": aps[j], "precision": float(pc_prec[j]),
                    "recall": float(pc_rec[j]), "f1": float(pc_f[j]),
                    "support": int(pc_sup[j])}
            for j, label in enumerate(labels)
        },
    }


def mcnemar_test(y_true, pred_a, pred_b, exact=None, correction=True) -> dict:
    """McNemar's test of two classifiers' accuracies on the same cases (paired).

    ``pred_a`` / ``pred_b`` are class indices (N,) or scores (N, K) (argmax taken). With
    ``b`` = cases A gets right and B wrong and ``c`` = cases A gets wrong and B right:

    - exact (``exact=True``, or ``exact=None`` and ``b + c < 25``): two-sided binomial test of
      ``b`` successes in ``b + c`` trials with p = 0.5 (``scipy.stats.binomtest``);
      ``statistic`` = min(b, c).
    - otherwise the chi-square statistic with 1 degree of freedom,
      ``max(|b - c| - 1, 0)^2 / (b + c)`` with Edwards' continuity correction (``correction``;
      clamped at 0 so that b = c gives p = 1), ``(b - c)^2 / (b + c)`` without;
      p = ``scipy.stats.chi2.sf``.

    With no discordant case (b = c = 0) the statistic is 0 and p = 1. Returns
    ``{"statistic", "p_value", "b", "c", "n", "method"}`` with method ``"exact"`` or
    ``"chi2"`` / ``"chi2-uncorrected"``.
    """
    y_true = np.asarray(y_true).astype(np.int64)
    a = _predictions(pred_a)
    b_ = _predictions(pred_b)
    if not (len(y_true) == len(a) == len(b_)):
        raise ValueError(f"lengths differ: y_true {len(y_true)}, pred_a {len(a)}, "
                         f"pred_b {len(b_)}")
    ok_a, ok_b = a == y_true, b_ == y_true
    b = int(np.sum(ok_a & ~ok_b))
    c = int(np.sum(~ok_a & ok_b))
    disc = b + c
    use_exact = (disc < 25) if exact is None else bool(exact)
    if disc == 0:
        stat, p, method = 0.0, 1.0, "exact" if use_exact else "chi2"
    elif use_exact:
        stat = float(min(b, c))
        p = float(binomtest(b, disc, 0.5, alternative="two-sided").pvalue)
        method = "exact"
    else:
        diff = abs(b - c)
        if correction:
            stat = max(diff - 1.0, 0.0) ** 2 / disc
            method = "chi2"
        else:
            stat = float(diff) ** 2 / disc
            method = "chi2-uncorrected"
        p = float(chi2.sf(stat, df=1))
    return {"statistic": float(stat), "p_value": min(float(p), 1.0), "b": b, "c": c,
            "n": int(len(y_true)), "method": method}


def delong_ovr(y_true, proba_a, proba_b, labels=None) -> dict:
    """DeLong's paired test of the one-vs-rest AUCs of two models, class by class.

    For each class k, :func:`cxr_keras.evaluation.delong.delong_test` on the targets
    ``y_true == k`` and the scores ``proba_a[:, k]``, ``proba_b[:, k]``. Returns
    ``{label: {"auc_a", "auc_b", "z", "p_value", "p_bonferroni"}}`` where ``p_bonferroni`` =
    min(1, K * p) corrects for the K tests (no correction is applied to ``p_value``). A class
    with fewer than 2 positives or negatives gets NaN entries.
    """
    y_true, proba_a = _check(y_true, proba_a)
    _, proba_b = _check(y_true, proba_b)
    if proba_a.shape != proba_b.shape:
        raise ValueError(f"proba_a {proba_a.shape} and proba_b {proba_b.shape} differ in shape")
    k = proba_a.shape[1]
    out = {}
    for j, label in enumerate(column_names(labels, k)):
        t = (y_true == j).astype(np.float64)
        if min(t.sum(), len(t) - t.sum()) < 2:
            nan = float("nan")
            out[label] = {"auc_a": nan, "auc_b": nan, "z": nan, "p_value": nan,
                          "p_bonferroni": nan}
            continue
        auc_a, auc_b, z, p = delong_test(t, proba_a[:, j], proba_b[:, j])
        out[label] = {"auc_a": auc_a, "auc_b": auc_b, "z": z, "p_value": p,
                      "p_bonferroni": min(1.0, k * p)}
    return out
