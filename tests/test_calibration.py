"""``cxr_keras.evaluation.calibration`` against ``sklearn.calibration.calibration_curve``,
``sklearn.metrics.brier_score_loss``, hand-worked values and a NumPy ECE written here."""

import json

import numpy as np
import pytest
from _reports import markdown_tables
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from cxr_keras.evaluation.calibration import (
    brier_score,
    calibration_metrics,
    calibration_section,
    expected_calibration_error,
    reliability_curve,
)


def _ece(y, p, edges):
    """ECE written out: bins (lo, hi] (the first and last open-ended), the sum over bins of
    n_bin / N * |fraction of positives - mean probability|."""
    lows = np.r_[-np.inf, edges[1:-1]]
    highs = np.r_[edges[1:-1], np.inf]
    total = 0.0
    for lo, hi in zip(lows, highs):
        inside = (p > lo) & (p <= hi)
        if inside.any():
            total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return total / len(p)


def _binary(seed=0, n=300):
    rng = np.random.default_rng(seed)
    p = rng.random(n) ** 2
    p[:6] = [0.0, 0.1, 0.5, 0.9, 1.0, 0.3]     # values on the bin edges
    y = (rng.random(n) < p ** 0.7).astype(float)
    return y, p


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_is_sklearns(strategy):
    y, p = _binary()
    frac, mean, count = reliability_curve(y, p, bins=7, strategy=strategy)
    want_frac, want_mean = calibration_curve(y, p, n_bins=7, strategy=strategy)
    np.testing.assert_allclose(frac, want_frac)
    np.testing.assert_allclose(mean, want_mean)
    assert count.sum() == len(p) and (count > 0).all()


def test_ece_by_hand_and_by_a_numpy_formula():
    y = np.array([0, 0, 1, 1, 1, 0], float)
    p = np.array([0.1, 0.15, 0.8, 0.9, 0.65, 0.7])
    # 2 equal-width bins: {0.1, 0.15} mean 0.125 vs 0/2; {0.8, 0.9, 0.65, 0.7} mean 0.7625 vs 3/4
    assert expected_calibration_error(y, p, 2) == pytest.approx((2 * 0.125 + 4 * 0.0125) / 6)
    # 2 equal-mass bins split at the median 0.675: {0.1, 0.15, 0.65} vs 1/3, {0.7, 0.8, 0.9} vs 2/3
    assert expected_calibration_error(y, p, 2, "quantile") == pytest.approx(
        (abs(1 / 3 - 0.3) + abs(2 / 3 - 0.8)) / 2)
    yb, pb = _binary(seed=1)
    for bins in (5, 10, 15):
        assert expected_calibration_error(yb, pb, bins) == pytest.approx(
            _ece(yb, pb, np.linspace(0, 1, bins + 1)))
        assert expected_calibration_error(yb, pb, bins, "quantile") == pytest.approx(
            _ece(yb, pb, np.quantile(pb, np.linspace(0, 1, bins + 1))))
    assert expected_calibration_error([1.0, 0.0], [1.0, 0.0]) == 0.0      # perfectly calibrated


def test_multilabel_per_class_and_overall_ignore_nan_targets():
    rng = np.random.default_rng(2)
    p = rng.random((200, 3))
    y = (rng.random((200, 3)) < p).astype(float)
    y[:50, 1] = np.nan
    y[:, 2] = np.nan                           # a class nobody labelled
    m = calibration_metrics(y, p, ["a", "b", "c"], bins=5)
    assert m["kind"] == "multilabel" and m["bins"] == 5
    keep = ~np.isnan(y[:, 1])
    b = m["per_class"]["b"]
    assert b["n"] == 150
    assert b["brier"] == pytest.approx(brier_score_loss(y[keep, 1], p[keep, 1]))
    assert b["ece"] == pytest.approx(_ece(y[keep, 1], p[keep, 1], np.linspace(0, 1, 6)))
    assert np.isnan(m["per_class"]["c"]["ece"]) and np.isnan(m["per_class"]["c"]["brier"])
    for key in ("ece", "ece_equal_mass", "brier"):      # mean of the classes that have targets
        assert m["overall"][key] == pytest.approx((m["per_class"]["a"][key] + b[key]) / 2)
    assert brier_score(y[:, 0], p[:, 0]) == pytest.approx(brier_score_loss(y[:, 0], p[:, 0]))
    binary = calibration_metrics(y[:, 0], p[:, 0])
    assert binary["kind"] == "binary" and binary["overall"]["brier"] == pytest.approx(
        brier_score_loss(y[:, 0], p[:, 0]))


def test_multiclass_integer_or_one_hot_targets():
    rng = np.random.default_rng(3)
    proba = rng.dirichlet(np.ones(3) * 0.7, 240)
    y = np.array([rng.choice(3, p=row) for row in proba])
    by_index = calibration_metrics(y, proba, ["n", "b", "v"])
    by_one_hot = calibration_metrics(np.eye(3)[y], proba, ["n", "b", "v"])
    assert by_index == by_one_hot and by_index["kind"] == "multiclass"
    overall = by_index["overall"]
    assert overall["brier"] == pytest.approx(brier_score_loss(y, proba, scale_by_half=False))
    top = proba.argmax(1)
    correct, confidence = (top == y).astype(float), proba.max(1)
    assert overall["ece"] == pytest.approx(_ece(correct, confidence, np.linspace(0, 1, 11)))
    assert by_index["per_class"]["b"]["brier"] == pytest.approx(brier_score_loss(y == 1, proba[:, 1]))
    with pytest.raises(ValueError, match="class indices"):
        calibration_metrics(np.array([0, 3]), proba[:2])
    with pytest.raises(ValueError, match="labels"):
        calibration_metrics(y, proba, ["a", "b"])
    with pytest.raises(ValueError, match="strategy"):
        reliability_curve(y == 0, proba[:, 0], strategy="kmeans")


def test_calibration_section_writes_the_diagram_and_a_table(tmp_path):
    from cxr_keras.training import RunFolder

    run = RunFolder(tmp_path)
    rng = np.random.default_rng(4)
    p = rng.random((60, 2))
    y = (rng.random((60, 2)) < p).astype(float)
    m, lines = calibration_section(y, p, ["A", "B"], run)
    assert (tmp_path / "plots" / "reliability_test.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(m)                                          # ready for metrics.json
    rows = markdown_tables("\n".join(lines))["Calibration (test)"]
    assert [r["class"] for r in rows] == ["A", "B", "overall (mean of classes)"]
    assert float(rows[0]["Brier"]) == pytest.approx(brier_score_loss(y[:, 0], p[:, 0]), abs=5e-5)
