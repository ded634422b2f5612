"""Segmentation metrics of the multi-loss paper (sec. 2.2.2, eqs. 10-12), NumPy only.

Masks are binarised as ``x > threshold`` (predictions at ``threshold``, default 0.5; targets at
0.5, so {0, 1}, bool and {0, 255} targets all work). Every metric is computed **per image** and
then summarised as mean and sample standard deviation (ddof = 1) over the images, as the paper's
"mean +- std" table rows.

Empty-class convention: a ratio whose denominator is zero (the class is absent from both the target
and the prediction) is 1.0 -- e.g. Dice and lung IoU of an image with no lung in either mask.
"""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "dice", "iou", "iou_background", "mean_iou")


def _as_batch(a, name):
    a = np.asarray(a)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name}: expected (H, W), (N, H, W) or (N, H, W, 1), got {a.shape}")
    return a


def _ratio(num, den):
    """num / den with 0 / 0 -> 1.0 (class absent from both masks)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.ones_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_counts(y_true, y_pred, threshold=0.5):
    """Per-image pixel counts (TP, FP, FN, TN) of the lung class, each of shape (N,)."""
    t = _as_batch(y_true, "y_true") > 0.5
    p = _as_batch(y_pred, "y_pred") > threshold
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: y_true {t.shape} vs y_pred {p.shape}")
    tp = np.sum(t & p, axis=(1, 2))
    fp = np.sum(~t & p, axis=(1, 2))
    fn = np.sum(t & ~p, axis=(1, 2))
    tn = np.sum(~t & ~p, axis=(1, 2))
    return tp, fp, fn, tn


def per_image_metrics(y_true, y_pred, threshold=0.5):
    """Per-image metric arrays, shape (N,) each.

    accuracy (eq. 10) = (TP + TN) / all; dice (eq. 11) = 2TP / (2TP + FP + FN); iou (eq. 12, lung)
    = TP / (TP + FP + FN); iou_background = TN / (TN + FN + FP); mean_iou = mean of the two IoUs
    (the paper's "averaging over both the classes"). 0/0 -> 1.0.
    """
    tp, fp, fn, tn = confusion_counts(y_true, y_pred, threshold)
    iou = _ratio(tp, tp + fp + fn)
    iou_bg = _ratio(tn, tn + fn + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": iou,
        "iou_background": iou_bg,
        "mean_iou": 0.5 * (iou + iou_bg),
    }


def summarise(per_image, ddof=1):
    """{metric: {"mean", "std", "n"}} from per-image arrays (std nan for fewer than ddof+1)."""
    out = {}
    for name, values in per_image.items():
        v = np.asarray(values, np.float64)
        std = float(np.std(v, ddof=ddof)) if v.size > ddof else float("nan")
        out[name] = {"mean": float(np.mean(v)) if v.size else float("nan"), "std": std,
                     "n": int(v.size)}
    return out


def segmentation_metrics(y_true, y_pred, threshold=0.5, ddof=1):
    """Pixel accuracy, Dice, lung IoU, background IoU and mean IoU (eqs. 10-12) of a mask set.

    ``y_true``: binary masks (H, W), (N, H, W) or (N, H, W, 1); ``y_pred``: probabilities or
    binary masks of the same shape, binarised as ``y_pred > threshold``. Returns
    ``{metric: {"mean", "std", "n"}, ..., "per_image": {metric: array (N,)}}``.
    """
    per = per_image_metrics(y_true, y_pred, threshold)
    out = summarise(per, ddof=ddof)
    out["per_image"] = per
    return out


def _scores(x, metric):
    if isinstance(x, dict):
        x = x.get("per_image", x)[metric]
    return np.asarray(x, np.float64).ravel()


def wilcoxon_paired(scores_a, scores_b, alternative="two-sided"):
    """Wilcoxon signed-rank test between two models' per-image scores on the same images.

    Returns {"statistic", "pvalue", "n", "median_diff"} (median of a - b). Identical score
    vectors give p = 1.0 (scipy is undefined there). For the paper's "no significant difference
    (p > 0.05)" claims between segmentation models (the paper names no test).
    """
    from scipy.stats import wilcoxon

    a = np.asarray(scores_a, np.float64).ravel()
    b = np.asarray(scores_b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same length, got {a.size} and {b.size}")
    d = a - b
    result = {"n": int(a.size), "median_diff": float(np.median(d)) if d.size else float("nan")}
    if not np.any(d != 0):
        return {"statistic": 0.0, "pvalue": 1.0, **result}
    res = wilcoxon(a, b, alternative=alternative)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), **result}


def compare_segmentations(result_a, result_b, metrics=METRICS, alternative="two-sided"):
    """{metric: wilcoxon_paired(...)} between two :func:`segmentation_metrics` results (or their
    ``per_image`` dicts) of two models on the same images."""
    return {m: wilcoxon_paired(_scores(result_a, m), _scores(result_b, m), alternative)
            for m in metrics}
