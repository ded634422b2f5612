"""Calibration: expected calibration error (ECE), reliability diagrams and the Brier score.

Do predicted probabilities mean what they say? Binary and multilabel predictions (one column per
class, NaN targets ignored) are judged per class, and ``overall`` is the mean over the classes
(as the papers' mean AUC). Multiclass predictions (integer or one-hot targets with an (N, K)
probability matrix) are judged per class one-vs-rest, and ``overall`` is the top label's ECE
(the confidence ``max_k p_k`` against "the argmax is right", Guo et al. 2017, Eq. 3) with the
Brier score summed over the classes (Brier 1950; ``sklearn.metrics.brier_score_loss`` with
``scale_by_half=False``). Matplotlib is imported only when a figure is drawn.

Bins as ``sklearn.calibration.calibration_curve``: ``"uniform"`` (equal width on [0, 1]) or
``"quantile"`` (equal mass: edges at the quantiles of the predictions); empty bins are dropped.

Example:

```python
from cxr_keras.evaluation.calibration import calibration_metrics, plot_reliability_diagram

m = calibration_metrics(y_test, prob_test, labels)       # {"per_class": ..., "overall": ...}
m["overall"]["ece"], m["overall"]["brier"]
plot_reliability_diagram(y_test, prob_test, labels)      # a Figure; path=... writes a PNG
```
"""

from __future__ import annotations

import numpy as np

STRATEGIES = ("uniform", "quantile")


def reliability_curve(y_true, prob, bins: int = 10, strategy: str = "uniform"):
    """``(fraction of positives, mean probability, count)`` per non-empty bin of one binary
    column; the bins and the first two arrays are ``sklearn.calibration.calibration_curve``'s.
    Rows with a NaN target are left out."""
    y, p = _valid(y_true, prob)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if len(p) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    else:
        edges = np.percentile(p, np.linspace(0.0, 100.0, bins + 1))
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=bins)
    keep = count > 0
    frac = np.bincount(ids, weights=y, minlength=bins)[keep] / count[keep]
    mean = np.bincount(ids, weights=p, minlength=bins)[keep] / count[keep]
    return frac, mean, count[keep]


def expected_calibration_error(y_true, prob, bins: int = 10, strategy: str = "uniform") -> float:
    """``sum_b n_b / N * |fraction of positives_b - mean probability_b|`` over the bins of
    :func:`reliability_curve` (Naeini et al. 2015); NaN with no valid row."""
    frac, mean, count = reliability_curve(y_true, prob, bins, strategy)
    return float(np.sum(count * np.abs(frac - mean)) / count.sum()) if count.sum() else float("nan")


def brier_score(y_true, prob) -> float:
    """Mean squared difference between probability and 0/1 target; NaN targets left out."""
    y, p = _valid(y_true, prob)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def calibration_metrics(y_true, prob, labels=None, bins: int = 10, multiclass: bool | None = None) -> dict:
    """ECE (equal-width and equal-mass bins) and Brier score per class and overall (module
    docstring): ``{"kind", "bins", "per_class": {label: {"ece", "ece_equal_mass", "brier", "n"}},
    "overall": {"ece", "ece_equal_mass", "brier", "n"}}``.

    ``prob``: (N,) or (N, K). ``y_true``: the same shape with 0/1/NaN (binary, multilabel), or
    (N,) class indices or one-hot (N, K) with probabilities over K classes (multiclass).
    ``multiclass``: None decides from the shapes (one-hot: every target row has a single 1 and
    every probability row sums to 1).
    """
    y, p, is_multiclass = _columns(y_true, prob, multiclass)
    labels = [str(k) for k in (labels if labels is not None else range(p.shape[1]))]
    if len(labels) != p.shape[1]:
        raise ValueError(f"{len(labels)} labels for {p.shape[1]} probability columns")
    per_class = {lab: _summary(y[:, j], p[:, j], bins) for j, lab in enumerate(labels)}
    if is_multiclass:
        right, confidence = _top_label(y, p)
        overall = _summary(right, confidence, bins)
        overall["brier"] = float(np.mean(np.sum((p - y) ** 2, axis=1))) if len(y) else float("nan")
    else:
        overall = {k: _nanmean([v[k] for v in per_class.values()])
                   for k in ("ece", "ece_equal_mass", "brier")}
        overall["n"] = int(np.isfinite(y).any(axis=1).sum())
    kind = "multiclass" if is_multiclass else "binary" if p.shape[1] == 1 else "multilabel"
    return {"kind": kind, "bins": bins, "per_class": per_class, "overall": overall}


def reliability_curves(y_true, prob, labels=None, bins: int = 10, strategy: str = "uniform",
                       multiclass: bool | None = None, overall_only: bool = False) -> dict:
    """``{name: reliability_curve(...)}``: one per class, or for multiclass the top label's
    ("top label"); ``overall_only`` keeps one curve (multilabel: every class's rows pooled)."""
    y, p, is_multiclass = _columns(y_true, prob, multiclass)
    labels = [str(k) for k in (labels if labels is not None else range(p.shape[1]))]
    if is_multiclass:
        return {"top label": reliability_curve(*_top_label(y, p), bins, strategy)}
    if overall_only and p.shape[1] > 1:
        return {"pooled": reliability_curve(y.ravel(), p.ravel(), bins, strategy)}
    return {lab: reliability_curve(y[:, j], p[:, j], bins, strategy) for j, lab in enumerate(labels)}


def plot_reliability(curves: dict, path=None, title="Reliability diagram", top_label: bool = False):
    """Reliability diagram of ``{name: (fraction of positives, mean probability, count)}``
    (as :func:`reliability_curve` returns): the curves against the diagonal of perfect
    calibration, and below them how many predictions fell in each bin; ``top_label``: the
    curves are multiclass top-label ones (confidence against accuracy). Returns the Figure,
    written to ``path`` when one is given."""
    import matplotlib
    from matplotlib.figure import Figure

    from cxr_keras.evaluation.plots import finish_figure

    fig = Figure(figsize=(6, 7))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    cmap = matplotlib.colormaps["tab20" if len(curves) > 10 else "tab10"]
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    for i, (name, (frac, mean, count)) in enumerate(curves.items()):
        color = cmap(i % cmap.N)
        ax.plot(mean, frac, "-o", ms=3, lw=1.2, color=color, label=str(name))
        ax_n.plot(mean, count, "-o", ms=2, lw=0.8, color=color)
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), title=title,
           ylabel="accuracy" if top_label else "fraction of positives")
    ax.legend(loc="upper left", fontsize=7)
    ax_n.set(xlim=(0, 1), ylabel="predictions per bin",
             xlabel="confidence (top-label probability)" if top_label else "predicted probability")
    return finish_figure(fig, path)


def plot_reliability_diagram(y_true, prob, labels=None, path=None, bins: int = 10,
                             strategy: str = "uniform", title=None, multiclass: bool | None = None):
    """Reliability diagram of one model: a curve per class (binary, multilabel) or the top
    label's (multiclass: confidence against accuracy). Returns the Figure, written to ``path``
    when one is given."""
    curves = reliability_curves(y_true, prob, labels, bins, strategy, multiclass)
    title = title or f"Reliability diagram ({'equal-width' if strategy == 'uniform' else 'equal-mass'} bins)"
    return plot_reliability(curves, path, title=title, top_label=list(curves) == ["top label"])


def calibration_table(metrics: dict, title="Calibration") -> list:
    """Markdown lines: one row per class and the overall row of :func:`calibration_metrics`."""
    multiclass = metrics["kind"] == "multiclass"
    overall = "overall (top label; Brier summed over classes)" if multiclass else "overall (mean of classes)"
    rows = dict(metrics["per_class"], **{overall: metrics["overall"]})
    return _table(rows, "class", title, metrics["bins"])


def comparison_calibration_table(by_model: dict, title="Calibration") -> list:
    """Markdown lines: the overall calibration of several models (``{model: calibration_metrics}``);
    none for no model."""
    if not by_model:
        return []
    bins = next(iter(by_model.values()))["bins"]
    return _table({k: v["overall"] for k, v in by_model.items()}, "model", title, bins)


def calibration_section(y_true, prob, labels, run_dir, name: str = "test", bins: int = 10,
                        multiclass: bool | None = None):
    """A run's calibration of one model's ``name`` predictions: ``(metrics, markdown lines)``;
    the reliability diagram is written to ``plots/reliability_<name>.png`` of ``run_dir`` (a
    :class:`cxr_keras.training.RunFolder`)."""
    metrics = calibration_metrics(y_true, prob, labels, bins, multiclass)
    plot_reliability_diagram(y_true, prob, labels, run_dir.file("plots", f"reliability_{name}.png"),
                             bins, multiclass=multiclass, title=f"Reliability diagram, {name}")
    lines = calibration_table(metrics, title=f"Calibration ({name})")
    return metrics, lines + [f"Reliability diagram: `plots/reliability_{name}.png`.", ""]


def compare_calibration(y_true, probs: dict, labels, run_dir, name: str, bins: int = 10,
                        multiclass: bool | None = None):
    """Several models' predictions of the same targets (``{model: prob}``): ``({model:
    metrics}, markdown lines)``, with one reliability diagram (a curve per model: the top label,
    or every class pooled) in ``plots/reliability_<name>.png``."""
    metrics = {k: calibration_metrics(y_true, p, labels, bins, multiclass) for k, p in probs.items()}
    curves = {k: next(iter(reliability_curves(y_true, p, labels, bins, multiclass=multiclass,
                                              overall_only=True).values()))
              for k, p in probs.items()}
    plot_reliability(curves, run_dir.file("plots", f"reliability_{name}.png"),
                     title=f"Reliability diagram, {name}",
                     top_label=any(m["kind"] == "multiclass" for m in metrics.values()))
    lines = comparison_calibration_table(metrics, title=f"Calibration ({name})")
    return metrics, lines + [f"Reliability diagram: `plots/reliability_{name}.png`.", ""]


# ----------------------------------------------------------------------------------- helpers

def _valid(y_true, prob):
    y = np.asarray(y_true, np.float64).ravel()
    p = np.asarray(prob, np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true {np.shape(y_true)} and prob {np.shape(prob)} differ")
    keep = ~np.isnan(y)
    return y[keep], p[keep]


def _columns(y_true, prob, multiclass):
    """(targets (N, K) with NaN for unknown, probabilities (N, K), multiclass?)."""
    p = np.asarray(prob, np.float64)
    y = np.asarray(y_true, np.float64)
    p = p[:, None] if p.ndim == 1 else p
    if p.ndim != 2:
        raise ValueError(f"prob must be (N,) or (N, K), got {p.shape}")
    if y.ndim == 1 and p.shape[1] > 1:   # class indices
        if multiclass is False:
            raise ValueError(f"class indices y_true {y.shape} need multiclass=True for prob {p.shape}")
        if len(y) != len(p) or np.any((y < 0) | (y >= p.shape[1]) | (y != np.round(y))):
            raise ValueError(f"y_true must hold class indices 0..{p.shape[1] - 1} for prob {p.shape}")
        return np.eye(p.shape[1])[y.astype(np.int64)], p, True
    y = y[:, None] if y.ndim == 1 else y
    if y.shape != p.shape:
        raise ValueError(f"y_true {np.shape(y_true)} does not match prob {np.shape(prob)}")
    if multiclass is None:
        multiclass = (p.shape[1] > 1 and len(y) > 0 and np.all(np.isin(y, (0.0, 1.0)))
                      and np.all(y.sum(axis=1) == 1) and np.allclose(p.sum(axis=1), 1.0, atol=1e-4))
    return y, p, bool(multiclass)


def _top_label(y, p):
    """(1 where the most probable class is the true one, that class's probability)."""
    top = np.argmax(p, axis=1)
    rows = np.arange(len(p))
    return y[rows, top], p[rows, top]


def _summary(y, p, bins):
    return {"ece": expected_calibration_error(y, p, bins, "uniform"),
            "ece_equal_mass": expected_calibration_error(y, p, bins, "quantile"),
            "brier": brier_score(y, p), "n": int(np.sum(~np.isnan(np.asarray(y, np.float64))))}


def _nanmean(values):
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _table(rows: dict, first: str, title: str, bins: int) -> list:
    def cell(v):
        return "-" if v is None or not np.isfinite(v) else f"{v:.4f}"

    lines = [f"### {title}", "",
             f"Expected calibration error with {bins} equal-width and {bins} equal-mass bins, and "
             "the Brier score (lower is better for all three).", "",
             f"| {first} | ECE | ECE (equal mass) | Brier | n |", "|---|---:|---:|---:|---:|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {cell(m['ece'])} | {cell(m['ece_equal_mass'])} | "
                     f"{cell(m['brier'])} | {m['n']} |")
    return lines + [""]
