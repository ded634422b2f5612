"""Metrics, DeLong's test, bootstrap intervals, plots and report tables."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from cxr_keras.evaluation import bootstrap_ci, comparison_table, delong_test, mean_auc, per_class_auc, threshold_metrics
from cxr_keras.evaluation.delong import delong_covariance


def _scores(seed=0, n=300, c=4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(float)
    s = y * rng.uniform(0.2, 1.5, c) + rng.normal(0, 1, (n, c))
    return y, s


def test_per_class_auc_matches_sklearn_and_skips_nan():
    y, s = _scores()
    y[:40, 1] = np.nan
    y[:, 3] = 0.0                                  # one class only -> NaN
    aucs = per_class_auc(y, s, labels=["a", "b", "c", "d"])
    assert list(aucs) == ["a", "b", "c", "d"]
    assert aucs["a"] == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))
    assert aucs["b"] == pytest.approx(roc_auc_score(y[40:, 1], s[40:, 1]))
    assert np.isnan(aucs["d"])
    assert mean_auc(y, s) == pytest.approx(np.mean([aucs["a"], aucs["b"], aucs["c"]]))
    with pytest.raises(ValueError):
        per_class_auc(y, s[:, :3])


def test_threshold_metrics_by_hand():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, np.nan]])
    s = np.array([[0.3, -1.0], [-0.2, 2.0], [0.1, 0.0], [-3.0, 0.5], [2.0, 9.0]])
    m = threshold_metrics(y, s, threshold=0.0, labels=["A", "B"])
    # A: pred [1,0,1,0,1] vs true [1,1,0,0,1] -> tp 2, fn 1, fp 1, tn 1
    a = m["per_class"]["A"]
    assert (a["tp"], a["fn"], a["fp"], a["tn"]) == (2, 1, 1, 1)
    assert a["sensitivity"] == pytest.approx(2 / 3) and a["specificity"] == pytest.approx(1 / 2)
    assert a["precision"] == pytest.approx(2 / 3) and a["f1"] == pytest.approx(2 / 3)
    assert a["accuracy"] == pytest.approx(3 / 5)
    # B (NaN row dropped; 0.0 is not > 0): pred [0,1,0,1] vs true [0,1,0,1] -> perfect
    b = m["per_class"]["B"]
    assert (b["tp"], b["fn"], b["fp"], b["tn"]) == (2, 0, 0, 2)
    assert m["mean"]["sensitivity"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["mean"]["accuracy"] == pytest.approx((3 / 5 + 1) / 2)
    # A different threshold changes the decisions.
    assert threshold_metrics(y, s, threshold=0.5)["per_class"][0]["tp"] == 1
    # Undefined precision (nothing predicted positive) is NaN, not 0.
    assert np.isnan(threshold_metrics(y, s, threshold=100.0)["per_class"][0]["precision"])


def slow_delong(y, a, b):
    """DeLong et al. 1988 from the placement-value definition, O(m n)."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()

    def psi(x, z):
        return (x > z) + 0.5 * (x == z)

    v10, v01, aucs = [], [], []
    for s in (a, b):
        P = psi(s[pos][:, None], s[neg][None, :])     # (m, n)
        aucs.append(P.mean())
        v10.append(P.mean(axis=1))
        v01.append(P.mean(axis=0))
    s10 = np.cov(np.array(v10))
    s01 = np.cov(np.array(v01))
    cov = s10 / m + s01 / n
    z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return aucs[0], aucs[1], z, 2 * stats.norm.sf(abs(z)), cov


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_slow_reference(ties):
    rng = np.random.default_rng(7)
    y = (rng.random(200) < 0.35).astype(float)
    a = y + rng.normal(0, 1.0, 200)
    b = 0.6 * a + y * 0.3 + rng.normal(0, 0.8, 200)
    if ties:
        a, b = np.round(a, 1), np.round(b, 0)
    auc_a, auc_b, z, p = delong_test(y, a, b)
    ra, rb, rz, rp, rcov = slow_delong(y, a, b)
    assert auc_a == pytest.approx(roc_auc_score(y, a)) and auc_b == pytest.approx(roc_auc_score(y, b))
    assert (auc_a, auc_b) == pytest.approx((ra, rb))
    assert z == pytest.approx(rz, rel=1e-9) and p == pytest.approx(rp, rel=1e-9)
    np.testing.assert_allclose(delong_covariance(y, a, b)[1], rcov, rtol=1e-9)


def test_delong_identical_scores_and_nan_rows():
    y, s = _scores(1, n=100, c=1)
    assert delong_test(y[:, 0], s[:, 0], s[:, 0])[2:] == (0.0, 1.0)
    y2 = y[:, 0].copy()
    y2[:5] = np.nan
    other = s[:, 0] + np.random.default_rng(0).normal(0, 1, 100)
    np.testing.assert_allclose(delong_test(y2, s[:, 0], other),
                               delong_test(y[5:, 0], s[5:, 0], other[5:]))
    with pytest.raises(ValueError):
        delong_test(np.array([1, 0, 0]), np.arange(3.0), np.arange(3.0))


def test_bootstrap_ci_contains_estimate_and_matches_scipy():
    y, s = _scores(2, n=200, c=3)
    est, lo, hi = bootstrap_ci(mean_auc, y, s, n_boot=100, seed=0)
    assert est == pytest.approx(mean_auc(y, s))
    assert lo < est < hi and hi - lo < 0.2
    assert bootstrap_ci(mean_auc, y, s, n_boot=100, seed=0) == (est, lo, hi)   # seeded
    # Percentile interval of a mean agrees with scipy's percentile bootstrap (different RNG).
    x = np.random.default_rng(3).exponential(size=150)
    est, lo, hi = bootstrap_ci(lambda t, _: t.mean(), x, x, n_boot=2000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=2000, method="percentile",
                          random_state=5).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.03) and hi == pytest.approx(ref.high, abs=0.03)


def test_bootstrap_drops_nan_resamples():
    y = np.zeros((30, 1))
    y[0] = 1                                        # rare class: often absent from a resample
    s = np.linspace(0, 1, 30)[:, None]
    with pytest.warns(RuntimeWarning, match="NaN"):
        est, lo, hi = bootstrap_ci(mean_auc, y, s, n_boot=50, seed=0)
    assert np.isfinite(lo) and np.isfinite(hi)


def test_comparison_table():
    text = comparison_table({"mean AUC": 0.81234, "extra": 1.0}, {"mean AUC": 0.8045, "Hernia": 0.9},
                            "Table 2")
    lines = text.strip().splitlines()
    assert lines[0] == "### Table 2"
    assert lines[2] == "| item | paper | ours | difference |"
    assert "| mean AUC | 0.8045 | 0.8123 | +0.0078 |" in lines
    assert "| Hernia | 0.9000 | - | - |" in lines
    assert "| extra | - | 1.0000 | - |" in lines


def test_plots_write_png_files(tmp_path):
    from matplotlib.figure import Figure

    from cxr_keras.evaluation.plots import plot_auc_differences, plot_roc_curves, plot_training_curves

    y, s = _scores(3, n=80, c=3)
    p1 = plot_roc_curves(y, s, ["A", "B", "C"], tmp_path / "roc.png", "ROC")
    aucs = {tau: {"A": 0.8 + tau / 10, "B": 0.7, "C": 0.75 - tau / 20} for tau in (0.2, 0.5, 1.0)}
    p2 = plot_auc_differences(aucs, tmp_path / "diff.png", reference_tau=1.0)
    hist = {"loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.85], "auc": [0.6, 0.7, 0.75]}
    p3 = plot_training_curves(hist, tmp_path / "curves.png")
    csv = tmp_path / "log.csv"
    csv.write_text("epoch,loss,val_loss\n0,1.0,1.1\n1,0.8,0.9\n")
    p4 = plot_training_curves(csv, tmp_path / "curves_csv.png")
    for fig in (p1, p2, p3, p4):
        assert isinstance(fig, Figure) and fig.axes
    for name in ("roc.png", "diff.png", "curves.png", "curves_csv.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "curves.png", "curves_csv.png", "diff.png", "log.csv", "roc.png"]   # no temp files left
    with pytest.raises(ValueError):
        plot_auc_differences(aucs, tmp_path / "bad.png", reference_tau=0.1)


def test_metrics_table_puts_paper_values_in_parentheses():
    from cxr_keras.evaluation.report import metrics_table

    text = metrics_table({"cce": {"MCC": 0.5, "CI": "(0.1, 0.9)"}},
                         {"cce": {"MCC": 0.8996}, "prior": {"MCC": (0.87, 0.01)}},
                         ("MCC", "CI"), title="Table 2", names={"cce": "CCE"})
    lines = text.splitlines()
    assert lines[0] == "### Table 2"
    assert "| CCE | 0.5000 (0.8996) | (0.1, 0.9) |" in lines
    assert "| prior | - (0.8700 ± 0.0100) | - |" in lines


def test_multilabel_summary_by_hand():
    """Youden thresholds chosen on validation, applied as prob >= threshold on test; AUCs as
    sklearn's; the 0.5 rule strict."""
    from cxr_keras.evaluation.metrics import multilabel_summary

    val_y = np.array([[0], [0], [1], [1]], float)
    val_p = np.array([[0.1], [0.3], [0.3], [0.8]])   # J is 1/2 at 0.8 and at 0.3: roc_curve's first, 0.8
    test_y = np.array([[0], [1], [1], [0]], float)
    test_p = np.array([[0.2], [0.8], [0.5], [0.9]])
    s = multilabel_summary(val_y, val_p, test_y, test_p, ["x"])
    assert s["thresholds"] == {"x": 0.8}
    assert s["val_auc"]["x"] == pytest.approx(roc_auc_score(val_y[:, 0], val_p[:, 0]))
    assert s["test_mean_auc"] == pytest.approx(roc_auc_score(test_y[:, 0], test_p[:, 0]))
    youden = s["test_threshold_metrics"]["youden_val"]["per_class"]["x"]   # 0.8 and 0.9 positive
    assert (youden["tp"], youden["fp"], youden["fn"], youden["tn"]) == (1, 1, 1, 1)
    half = s["test_threshold_metrics"]["p0.5"]["per_class"]["x"]          # 0.5 itself negative
    assert (half["tp"], half["fp"], half["fn"], half["tn"]) == (1, 1, 1, 1)
    assert "test_mean_auc_ci95" not in s
    lo, hi = multilabel_summary(val_y, val_p, test_y, test_p, ["x"], n_boot=50)["test_mean_auc_ci95"]
    assert 0 <= lo <= hi <= 1
