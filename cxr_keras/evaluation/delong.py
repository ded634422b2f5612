"""DeLong's test for two correlated ROC AUCs on the same cases (DeLong et al. 1988).

Fast O(n log n) computation of the placement values through midranks (Sun & Xu 2014, "Fast
implementation of DeLong's algorithm for comparing the areas under correlated receiver operating
characteristic curves", IEEE SPL 21(11)).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata


def _placements(y_true, scores):
    """AUCs and placement values of each score row (Sun & Xu 2014, eqs. for V10 and V01).

    ``scores`` is (k, n). Returns ``auc`` (k,), ``v10`` (k, m) for the m positives and ``v01``
    (k, n_neg) for the negatives, with AUC = mean(v10) = mean(v01).
    """
    pos = y_true >= 0.5
    m, n = int(pos.sum()), int((~pos).sum())
    x, y = scores[:, pos], scores[:, ~pos]
    tx = rankdata(x, axis=1)                              # midranks among positives
    ty = rankdata(y, axis=1)                              # midranks among negatives
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)  # midranks among all
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    auc = v10.mean(axis=1)
    return auc, v10, v01


def delong_covariance(y_true, *scores):
    """AUCs (k,) and their DeLong covariance matrix (k, k) for k score vectors on the same cases."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.vstack([np.asarray(v, dtype=np.float64).ravel() for v in scores])
    if s.shape[1] != y_true.size:
        raise ValueError(f"{y_true.size} targets but scores of length {s.shape[1]}")
    keep = ~np.isnan(y_true)
    y_true, s = y_true[keep], s[:, keep]
    pos = y_true >= 0.5
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    auc, v10, v01 = _placements(y_true, s)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auc, cov


def delong_test(y_true, score_a, score_b):
    """DeLong's paired two-sided test of AUC(a) = AUC(b). Returns ``(auc_a, auc_b, z, p)``.

    z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab); p = 2 * (1 - Phi(|z|)). Rows with a NaN
    target are dropped. If the variance of the difference is 0 (e.g. identical scores), z = 0 and
    p = 1 when the AUCs are equal, else z = +-inf and p = 0.
    """
    auc, cov = delong_covariance(y_true, score_a, score_b)
    diff = auc[0] - auc[1]
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    if var <= 1e-15:
        if abs(diff) <= 1e-12:
            return float(auc[0]), float(auc[1]), 0.0, 1.0
        return float(auc[0]), float(auc[1]), float(np.sign(diff) * np.inf), 0.0
    z = diff / np.sqrt(var)
    p = 2.0 * norm.sf(abs(z))
    return float(auc[0]), float(auc[1]), float(z), float(p)


def delong_table(reference: str, predictions: dict, labels, score: str = "prob") -> list:
    """Markdown lines: per label (column j), the p-value (3 significant digits) of DeLong's
    paired test of ``predictions[reference]`` against every other entry (name -> ``{"y_true",
    score}`` arrays, as saved predictions of one test set), on the rows whose label is known;
    "-" where the two label columns differ or one class is missing."""
    ref = predictions[reference]
    others = [k for k in predictions if k != reference]
    lines = ["| label | " + " | ".join(others) + " |", "|---|" + "---:|" * len(others)]
    for j, label in enumerate(labels):
        cells = []
        for name in others:
            p = predictions[name]
            y = ref["y_true"][:, j]
            keep = ~np.isnan(y)
            if not np.array_equal(p["y_true"][:, j][keep], y[keep]) or len(set(y[keep])) < 2:
                cells.append("-")
                continue
            *_, pval = delong_test(y[keep], ref[score][keep, j], p[score][keep, j])
            cells.append(f"{pval:.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines
