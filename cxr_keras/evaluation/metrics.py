"""Multi-label classification metrics: per-class ROC AUC, threshold metrics, bootstrap intervals.

Conventions: ``y_true`` is an (N, C) multi-hot array where NaN marks an unknown label (skipped per
column); ``y_score`` is an (N, C) array of scores (logits or probabilities: AUC is rank based).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import roc_auc_score


def _as_2d(y_true, y_score):
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_score.ndim == 1:
        y_score = y_score[:, None]
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} differ in shape")
    return y_true, y_score


def column_names(labels, n):
    """``labels`` checked to name ``n`` columns, or 0..n-1 when None."""
    if labels is None:
        return list(range(n))
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels given for {n} columns")
    return labels


def per_class_auc(y_true, y_score, labels=None) -> dict:
    """ROC AUC of every column (sklearn ``roc_auc_score``), the paper's metric (Sec. 4.1).

    Rows whose target is NaN are skipped for that column; a column with only one class left
    gets NaN. Returns ``{label: auc}`` (labels default to column indices).
    """
    y_true, y_score = _as_2d(y_true, y_score)
    out = {}
    for j, label in enumerate(column_names(labels, y_true.shape[1])):
        keep = ~np.isnan(y_true[:, j])
        t = y_true[keep, j] >= 0.5
        if t.all() or not t.any():
            out[label] = float("nan")
        else:
            out[label] = float(roc_auc_score(t, y_score[keep, j]))
    return out


def mean_auc(y_true, y_score) -> float:
    """Mean of :func:`per_class_auc` over the columns whose AUC is defined (NaN ones skipped)."""
    vals = np.array(list(per_class_auc(y_true, y_score).values()), dtype=np.float64)
    if np.isnan(vals).all():
        return float("nan")
    return float(np.nanmean(vals))


def mean_of(per_class: dict) -> float:
    """Mean of a ``{label: value}`` dict ignoring NaN (NaN when every value is NaN)."""
    vals = np.array(list(per_class.values()), np.float64)
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")


def _ratio(num, den):
    return float(num / den) if den > 0 else float("nan")


def threshold_metrics(y_true, y_score, threshold, labels=None) -> dict:
    """Sensitivity, specificity, precision, F1 and accuracy per class at a fixed score threshold.

    A label is predicted positive when ``y_score > threshold`` (strict). Pass ``threshold=0.0``
    for logits (FZLPR/ZLPR decide at s = 0, paper Sec. 4.6, i.e. probability 0.5) and
    ``threshold=0.5`` for probabilities. NaN targets are skipped per column. An undefined ratio
    (e.g. precision with no predicted positive) is NaN and skipped by the means.

    Returns ``{"per_class": {label: {sensitivity, specificity, precision, f1, accuracy, tp, fp,
    tn, fn}}, "mean": {sensitivity, specificity, precision, f1, accuracy}}``.
    """
    y_true, y_score = _as_2d(y_true, y_score)
    per_class = {}
    for j, label in enumerate(column_names(labels, y_true.shape[1])):
        keep = ~np.isnan(y_true[:, j])
        t = y_true[keep, j] >= 0.5
        p = y_score[keep, j] > threshold
        tp = int(np.sum(t & p))
        fp = int(np.sum(~t & p))
        tn = int(np.sum(~t & ~p))
        fn = int(np.sum(t & ~p))
        sens = _ratio(tp, tp + fn)
        prec = _ratio(tp, tp + fp)
        per_class[label] = dict(
            sensitivity=sens,
            specificity=_ratio(tn, tn + fp),
            precision=prec,
            f1=_ratio(2 * tp, 2 * tp + fp + fn),
            accuracy=_ratio(tp + tn, tp + tn + fp + fn),
            tp=tp, fp=fp, tn=tn, fn=fn,
        )
    mean = {}
    for key in ("sensitivity", "specificity", "precision", "f1", "accuracy"):
        vals = np.array([m[key] for m in per_class.values()], dtype=np.float64)
        mean[key] = float(np.nanmean(vals)) if not np.isnan(vals).all() else float("nan")
    return {"per_class": per_class, "mean": mean}


def bootstrap_ci(metric_fn, y_true, y_score, n_boot=1000, alpha=0.05, seed=0):
    """Percentile bootstrap interval of ``metric_fn(y_true, y_score)``, resampling rows.

    Returns ``(estimate, lower, upper)`` with ``estimate`` the metric on the full data and
    (lower, upper) the ``alpha/2`` and ``1 - alpha/2`` percentiles over ``n_boot`` resamples drawn
    with ``numpy.random.default_rng(seed)``. Resamples where the metric is NaN (e.g. a rare class
    absent from the resample) are dropped; a warning says how many. (scipy.stats.bootstrap gives
    the same percentile interval but cannot skip such degenerate resamples.)
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    n = len(y_true)
    if len(y_score) != n:
        raise ValueError(f"y_true has {n} rows, y_score {len(y_score)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    estimate = float(metric_fn(y_true, y_score))
    rng = np.random.default_rng(seed)
    stats = np.empty(int(n_boot), dtype=np.float64)
    for b in range(int(n_boot)):
        idx = rng.integers(0, n, size=n)
        stats[b] = float(metric_fn(y_true[idx], y_score[idx]))
    good = stats[~np.isnan(stats)]
    if len(good) < len(stats):
        warnings.warn(f"bootstrap_ci: {len(stats) - len(good)} of {len(stats)} resamples gave "
                      "NaN and were dropped", RuntimeWarning, stacklevel=2)
    if len(good) == 0:
        return estimate, float("nan"), float("nan")
    lower, upper = np.percentile(good, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return estimate, float(lower), float(upper)


def youden_thresholds(y_true, prob) -> np.ndarray:
    """Per-class probability threshold maximising Youden's J = sensitivity + specificity - 1
    (0.5 where a class has a single value)."""
    from sklearn.metrics import roc_curve

    out = np.full(y_true.shape[1], 0.5)
    for j in range(y_true.shape[1]):
        keep = ~np.isnan(y_true[:, j])
        t = y_true[keep, j]
        if len(np.unique(t)) < 2:
            continue
        fpr, tpr, thr = roc_curve(t, prob[keep, j])
        k = int(np.argmax(tpr - fpr))
        out[j] = min(float(thr[k]), 1.0)
    return out


def multilabel_summary(val_y, val_prob, test_y, test_prob, labels, *, n_boot: int = 0,
                       seed: int = 0) -> dict:
    """The numbers of a multi-label report: per-class and mean AUC on validation and test (and a
    bootstrap 95% interval of the test mean with ``n_boot`` resamples), per-class Youden
    thresholds chosen on validation, and the test metrics at them (``"youden_val"``: positive
    when prob >= threshold, as ``roc_curve`` counts) and at probability 0.5 (``"p0.5"``)."""
    val_auc, test_auc = per_class_auc(val_y, val_prob, labels), per_class_auc(test_y, test_prob, labels)
    thr = youden_thresholds(val_y, val_prob)
    just_below = np.nextafter(thr, -np.inf)[None, :]  # threshold_metrics counts score > threshold
    out = dict(val_auc=val_auc, val_mean_auc=mean_of(val_auc), test_auc=test_auc,
               test_mean_auc=mean_of(test_auc), thresholds=dict(zip(labels, map(float, thr))),
               test_threshold_metrics={"youden_val": threshold_metrics(test_y, test_prob - just_below, 0.0, labels),
                                       "p0.5": threshold_metrics(test_y, test_prob, 0.5, labels)})
    if n_boot:
        _, lo, hi = bootstrap_ci(mean_auc, test_y, test_prob, n_boot=n_boot, seed=seed)
        out["test_mean_auc_ci95"] = [lo, hi]
    return out
