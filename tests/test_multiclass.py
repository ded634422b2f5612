"""Multi-class metrics, binomial intervals for the MCC, McNemar's and one-vs-rest DeLong tests,
and the ``multiloss`` figures."""

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from cxr_keras.evaluation.delong import delong_test
from cxr_keras.evaluation.multiclass import (
    binomial_interval,
    delong_ovr,
    mcc_bootstrap_interval,
    mcc_interval,
    mcnemar_test,
    multiclass_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _data(seed=0, n=300, k=3, strength=1.5):
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=[0.5, 0.3, 0.2][:k] if k == 3 else None)
    proba = _softmax(strength * np.eye(k)[y] + rng.normal(0, 1, (n, k)))
    return y, proba


def _gorodkin_rk(cm):
    """Gorodkin's R_K from a confusion matrix (rows true, columns predicted), in NumPy."""
    cm = np.asarray(cm, dtype=np.float64)
    s, c = cm.sum(), np.trace(cm)
    t, p = cm.sum(axis=1), cm.sum(axis=0)
    return (c * s - t @ p) / math.sqrt((s ** 2 - p @ p) * (s ** 2 - t @ t))


# ------------------------------------------------------------------------------------------------
# multiclass_metrics

def test_multiclass_metrics_match_sklearn():
    y, proba = _data()
    pred = proba.argmax(axis=1)
    m = multiclass_metrics(y, proba, labels=["normal", "bacterial", "viral"])
    onehot = np.eye(3)[y]
    assert m["n"] == 300
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr",
                                                     average="weighted"))
    assert m["auroc_macro"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr",
                                                           average="macro"))
    assert m["auprc"] == pytest.approx(average_precision_score(onehot, proba, average="weighted"))
    assert m["auprc_macro"] == pytest.approx(average_precision_score(onehot, proba,
                                                                     average="macro"))
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="weighted")
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
    assert m["recall"] == pytest.approx(m["accuracy"])        # weighted recall is accuracy
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    # independent: confusion matrix counted by hand and Gorodkin's R_K on it
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (y, pred), 1)
    assert m["confusion_matrix"] == cm.tolist()
    assert m["mcc"] == pytest.approx(_gorodkin_rk(cm), abs=1e-12)
    # per-class one-vs-rest
    for j, label in enumerate(["normal", "bacterial", "viral"]):
        pc = m["per_class"][label]
        assert pc["auroc"] == pytest.approx(roc_auc_score(y == j, proba[:, j]))
        assert pc["ap"] == pytest.approx(average_precision_score(y == j, proba[:, j]))
        assert pc["support"] == int(np.sum(y == j))
    weights = np.bincount(y, minlength=3) / len(y)
    aucs = [m["per_class"][lab]["auroc"] for lab in ["normal", "bacterial", "viral"]]
    assert m["auroc"] == pytest.approx(float(weights @ aucs))
    # intervals, labelled, and the whole dict survives JSON
    iv = m["mcc_interval"]
    assert iv["wald"] == pytest.approx(list(binomial_interval(m["mcc"], 300, method="wald")))
    assert iv["clopper-pearson"] == pytest.approx(list(binomial_interval(m["mcc"], 300)))
    assert "not a valid confidence interval" in iv["note"]
    assert json.loads(json.dumps(m))["per_class"]["viral"]["support"] == int(np.sum(y == 2))


def test_hand_made_confusion_matrix_and_mcc():
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 1, 4]])
    y, pred = [], []
    for i in range(3):
        for j in range(3):
            y += [i] * cm[i, j]
            pred += [j] * cm[i, j]
    y, pred = np.array(y), np.array(pred)
    proba = 0.1 + 0.7 * np.eye(3)[pred]
    m = multiclass_metrics(y, proba)
    assert m["confusion_matrix"] == cm.tolist()
    # R_K by hand: s = 17, c = 12, t = (6, 6, 5), p = (7, 5, 5)
    # (12 * 17 - 97) / sqrt((289 - 99) * (289 - 97)) = 107 / sqrt(190 * 192)
    assert m["mcc"] == pytest.approx(107 / math.sqrt(190 * 192), abs=1e-12)
    assert m["accuracy"] == pytest.approx(12 / 17)
    assert list(m["per_class"]) == [0, 1, 2]


def test_majority_vote_tie_rule_reaches_every_thresholded_entry():
    """Case 0: three members vote 0, 1, 2; class 2 has the most summed probability (1.4), so the
    vote's tie rule says 2 (correct) where argmax of the vote fractions says 0. Cases 1-3 are
    unanimous and correct."""
    from cxr_keras.ensemble import majority_vote, vote_proba

    y = np.array([2, 0, 1, 2])
    probas = np.tile(np.eye(3)[y] * 0.8 + 0.1, (3, 1, 1))
    probas[:, 0] = [[0.5, 0.2, 0.3], [0.1, 0.5, 0.4], [0.2, 0.1, 0.7]]
    m = multiclass_metrics(y, vote_proba(probas), pred=majority_vote(probas), n_boot=20)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert m["accuracy"] == 1.0 and m["mcc"] == 1.0
    assert m["per_class"][2]["recall"] == 1.0 and m["per_class"][0]["precision"] == 1.0
    assert m["mcc_interval"]["estimate"] == 1.0
    # Clopper-Pearson at k = n = 4: [(alpha / 2) ** (1 / n), 1]
    assert m["mcc_interval"]["clopper-pearson"] == pytest.approx([0.025 ** 0.25, 1.0])
    with pytest.raises(ValueError, match="class indices"):
        multiclass_metrics(y, vote_proba(probas), pred=[0, 1, 3, 0])


def test_absent_class_and_bad_input():
    y, proba = _data(n=60)
    y = np.where(y == 2, 0, y)                     # class 2 never occurs
    with pytest.warns(RuntimeWarning, match="absent"):
        m = multiclass_metrics(y, proba)
    assert math.isnan(m["per_class"][2]["auroc"])
    sup = np.array([np.sum(y == 0), np.sum(y == 1)])
    expected = (sup @ [roc_auc_score(y == 0, proba[:, 0]), roc_auc_score(y == 1, proba[:, 1])]
                / sup.sum())
    assert m["auroc"] == pytest.approx(expected)
    with pytest.raises(ValueError):
        multiclass_metrics(y[:-1], proba)
    with pytest.raises(ValueError):
        multiclass_metrics(np.full(60, 3), proba)
    with pytest.raises(ValueError):
        multiclass_metrics(y, proba, labels=["a", "b"])


def test_bootstrap_interval_option():
    y, proba = _data(n=200)
    m = multiclass_metrics(y, proba, n_boot=60, seed=1)
    lo, hi = m["mcc_interval"]["bootstrap"]
    # independent: the percentile bootstrap in NumPy + sklearn, rows drawn with default_rng(seed)
    rng = np.random.default_rng(1)
    stats = [matthews_corrcoef(y[idx], proba[idx].argmax(axis=1))
             for idx in (rng.integers(0, 200, 200) for _ in range(60))]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])), abs=1e-12)
    est, lo2, hi2 = mcc_bootstrap_interval(y, proba, n_boot=60, seed=1)
    assert (est, lo2, hi2) == pytest.approx((m["mcc"], lo, hi))


def test_bootstrap_interval_shrinks_like_one_over_root_n():
    """Four times the cases halve the interval's width (measured 1.66-2.47 over 20 seeds at 100
    resamples)."""
    width = {}
    for n in (200, 800):
        y, proba = _data(seed=1, n=n)
        _, lo, hi = mcc_bootstrap_interval(y, proba, n_boot=100, seed=1)
        width[n] = hi - lo
    assert 1.4 < width[200] / width[800] < 2.9, width


# ------------------------------------------------------------------------------------------------
# binomial intervals

@pytest.mark.parametrize("k,n", [(566, 624), (0, 20), (20, 20), (7, 31), (1, 5)])
def test_clopper_pearson_against_beta_quantiles(k, n):
    alpha = 0.05
    lo_ref = stats.beta.ppf(alpha / 2, k, n - k + 1) if k > 0 else 0.0
    hi_ref = stats.beta.ppf(1 - alpha / 2, k + 1, n - k) if k < n else 1.0
    lo, hi = binomial_interval(k / n, n, alpha=alpha, method="clopper-pearson")
    assert (lo, hi) == pytest.approx((lo_ref, hi_ref), abs=1e-9)


def test_wald_reproduces_paper_intervals():
    # Table 5, prior art (Rajaraman et al.): 0.87 (0.8436, 0.8964), n = 624 test images
    lo, hi = binomial_interval(0.87, 624, method="wald")
    assert (round(lo, 4), round(hi, 4)) == (0.8436, 0.8964)
    # Table 5, proposed: 0.9068 (0.8839, 0.9297); Wald from the rounded MCC gives
    # (0.88399, 0.92961), i.e. the paper's bounds to within 1e-4 (it presumably started from
    # the unrounded MCC)
    lo, hi = binomial_interval(0.9068, 624, method="wald")
    assert lo == pytest.approx(0.8839, abs=1.5e-4)
    assert hi == pytest.approx(0.9297, abs=1.5e-4)
    assert (lo + hi) / 2 == pytest.approx(0.9068)
    # the exact interval the paper names is asymmetric and does not give its numbers
    cp = binomial_interval(0.9068, 624, method="clopper-pearson")
    assert cp == pytest.approx((0.8815, 0.9287), abs=1e-4)
    assert 0.9068 - cp[0] > cp[1] - 0.9068


def test_wald_clipping_and_errors():
    assert binomial_interval(0.99, 10, method="wald")[1] == 1.0
    assert binomial_interval(0.99, 10, method="wald", clip=False)[1] > 1.0
    assert binomial_interval(0.0, 10, method="wald") == (0.0, 0.0)
    with pytest.raises(ValueError):
        binomial_interval(-0.1, 10)
    with pytest.raises(ValueError):
        binomial_interval(0.5, 10, method="wilson")
    iv = mcc_interval(-0.2, 100)
    assert all(math.isnan(v) for v in iv["wald"] + iv["clopper-pearson"])


# ------------------------------------------------------------------------------------------------
# McNemar

def _paired(b, c, both_right=40, both_wrong=10):
    """Targets and two prediction vectors with b (A right, B wrong) and c (A wrong, B right)."""
    n = both_right + both_wrong + b + c
    y = np.zeros(n, dtype=int)
    a_ok = np.r_[np.ones(both_right), np.zeros(both_wrong), np.ones(b), np.zeros(c)].astype(bool)
    b_ok = np.r_[np.ones(both_right), np.zeros(both_wrong), np.zeros(b), np.ones(c)].astype(bool)
    return y, np.where(a_ok, 0, 1), np.where(b_ok, 0, 2)


def test_mcnemar_chi2_with_continuity_correction():
    y, pa, pb = _paired(30, 12)
    r = mcnemar_test(y, pa, pb)
    stat = (abs(30 - 12) - 1) ** 2 / 42
    assert (r["b"], r["c"], r["method"]) == (30, 12, "chi2")
    assert r["statistic"] == pytest.approx(stat)
    assert r["p_value"] == pytest.approx(stats.chi2.sf(stat, 1))
    r = mcnemar_test(y, pa, pb, correction=False)
    assert r["statistic"] == pytest.approx(18 ** 2 / 42)
    assert r["p_value"] == pytest.approx(stats.chi2.sf(18 ** 2 / 42, 1))
    # swapping the models swaps b and c but not the p-value
    assert mcnemar_test(y, pb, pa)["p_value"] == pytest.approx(stats.chi2.sf(stat, 1))


def test_mcnemar_exact_for_few_discordant_pairs():
    y, pa, pb = _paired(7, 2)
    r = mcnemar_test(y, pa, pb)
    # independent: two-sided exact binomial p = 2 * P(X <= 2), X ~ Bin(9, 1/2)
    p_ref = 2 * sum(math.comb(9, i) for i in range(3)) / 2 ** 9
    assert (r["method"], r["statistic"]) == ("exact", 2.0)
    assert r["p_value"] == pytest.approx(p_ref)
    assert r["p_value"] == pytest.approx(stats.binomtest(7, 9).pvalue)
    # forced exact on many discordant pairs; scores (N, K) are accepted too
    y, pa, pb = _paired(30, 12)
    r = mcnemar_test(y, np.eye(3)[pa], np.eye(3)[pb], exact=True)
    assert r["method"] == "exact"
    assert r["p_value"] == pytest.approx(stats.binomtest(30, 42).pvalue)
    # no discordant pair
    r = mcnemar_test(y, pa, pa)
    assert (r["statistic"], r["p_value"]) == (0.0, 1.0)
    with pytest.raises(ValueError):
        mcnemar_test(y, pa[:-1], pb)


def test_delong_ovr_matches_binary_delong():
    y, pa = _data(seed=1, n=200)
    _, pb = _data(seed=2, n=200)
    out = delong_ovr(y, pa, pb, labels=["n", "b", "v"])
    for j, label in enumerate(["n", "b", "v"]):
        ref = delong_test((y == j).astype(float), pa[:, j], pb[:, j])
        r = out[label]
        assert (r["auc_a"], r["auc_b"], r["z"], r["p_value"]) == pytest.approx(ref)
        assert r["p_bonferroni"] == pytest.approx(min(1.0, 3 * ref[3]))
    same = delong_ovr(y, pa, pa)
    assert all(v["p_value"] == 1.0 for v in same.values())


# ------------------------------------------------------------------------------------------------
# figures

def _drawn(fig, path):
    """A figure was returned and written to ``path``."""
    from matplotlib.figure import Figure

    return isinstance(fig, Figure) and path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png(tmp_path):
    from cxr_keras.evaluation.multiclass_plots import plot_confusion_matrix, plot_mask_overlay, plot_polar, plot_roc_pr

    labels = ["normal", "bacterial", "viral"]
    y, proba = _data(n=120)
    m = multiclass_metrics(y, proba, labels=labels)
    cm, cmn, roc_pr = tmp_path / "cm.png", tmp_path / "cmn.png", tmp_path / "sub" / "roc_pr.png"
    assert _drawn(plot_confusion_matrix(m["confusion_matrix"], labels, cm), cm)
    assert _drawn(plot_confusion_matrix(m["confusion_matrix"], labels, cmn, normalize=True), cmn)
    assert _drawn(plot_roc_pr(y, proba, labels, roc_pr, title="x"), roc_pr)
    _, proba2 = _data(seed=3, n=120)
    values = {"CCE": m, "calibrated CCE": multiclass_metrics(y, proba2),
              "focal": {"F-score": 0.91, "MCC": 0.86}}
    # "F-score" / "MCC" find the "f1" / "mcc" entries of multiclass_metrics
    polar, polar2 = tmp_path / "polar.png", tmp_path / "polar2.png"
    assert _drawn(plot_polar(values, ("F-score", "MCC"), polar, title="x"), polar)
    two = {"a": {"f_score": 0.9, "IoU": 0.8}, "b": {"F1": 0.8, "iou": 0.7}}
    assert _drawn(plot_polar(two, metrics=("F-score", "IoU"), path=polar2), polar2)
    with pytest.raises(KeyError):
        plot_polar(values, ("Dice",), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    yy, xx = np.mgrid[:64, :64]
    image = np.random.default_rng(0).random((64, 64))
    mask_t = ((yy - 32) ** 2 + (xx - 20) ** 2 < 150).astype(float)
    mask_p = ((yy - 30) ** 2 + (xx - 22) ** 2 < 140).astype(float)[..., None]
    ov, ov2 = tmp_path / "overlay.png", tmp_path / "ov2.png"
    assert _drawn(plot_mask_overlay(image, mask_t, mask_p, ov), ov)
    assert _drawn(plot_mask_overlay(image[..., None], None, mask_p, ov2), ov2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
