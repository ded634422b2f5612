"""Baselines that a learning assertion is set against, computed inside the test from the test's own
data: what a model that learned nothing would score.

- classification: :func:`auc_permutation_null` (the metric with the label rows shuffled across
  images, at the test's sample size) and :func:`permutation_p`;
- segmentation: :func:`mean_mask_dice` (the thresholded mean training mask) and
  :func:`centred_disc_dice` (a fixed centred disc fitted on the training masks);
- detection: :func:`box_prior_predictions` (mean training boxes at every test image, constant
  score).
"""

import numpy as np
from sklearn.metrics import roc_auc_score


def mean_auc(y_true, scores) -> float:
    """Mean of sklearn's ROC AUC over the columns of ``(N, C)`` labels (NaN = unlabelled, skipped)
    that hold both classes; NaN when none does."""
    y_true, scores = np.asarray(y_true, np.float64), np.asarray(scores, np.float64)
    if y_true.ndim == 1:
        y_true, scores = y_true[:, None], scores[:, None]
    aucs = []
    for j in range(y_true.shape[1]):
        keep = ~np.isnan(y_true[:, j])
        t = y_true[keep, j]
        if 0 < t.sum() < len(t):
            aucs.append(roc_auc_score(t, scores[keep, j]))
    return float(np.mean(aucs)) if aucs else float("nan")


def mann_whitney_auc(y_true, scores) -> np.ndarray:
    """Per-column ROC AUC of fully labelled ``(N, C)`` 0/1 labels as the Mann-Whitney statistic
    ``(sum of positive ranks - n1 (n1 + 1) / 2) / (n1 n0)`` (mid-ranks for ties); NaN where a
    column holds one class. Vectorised: fast enough to run inside a bootstrap loop."""
    from scipy.stats import rankdata

    y_true, scores = np.asarray(y_true, np.float64), np.asarray(scores, np.float64)
    if np.isnan(y_true).any():
        raise ValueError("mann_whitney_auc needs fully labelled columns")
    n1 = y_true.sum(axis=0)
    n0 = len(y_true) - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((y_true * rankdata(scores, axis=0)).sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def auc_permutation_null(y_true, scores, n=200, seed=0) -> np.ndarray:
    """``n`` values of :func:`mean_auc` with the rows of ``y_true`` shuffled across images (each
    image keeps its scores, each label row keeps its co-occurrences): the mean AUC of scores that
    carry no information about the labels, at this sample size and prevalence.

    Shuffling labels leaves each column's score ranks and positive count unchanged, so a fully
    labelled column's AUC is the Mann-Whitney statistic ``(sum of positive ranks - n1 (n1 + 1) / 2)
    / (n1 n0)`` on the shuffled rows (checked against sklearn on the unshuffled labels); columns
    with NaN go through sklearn each time."""
    from scipy.stats import rankdata

    y_true, scores = np.asarray(y_true, np.float64), np.asarray(scores, np.float64)
    if y_true.ndim == 1:
        y_true, scores = y_true[:, None], scores[:, None]
    full = ~np.isnan(y_true).any(axis=0)
    ranks = rankdata(scores, axis=0)
    n1 = y_true.sum(axis=0)
    n0 = len(y_true) - n1
    usable = full & (n1 > 0) & (n0 > 0)

    def mean_of(y):
        aucs = list(((y[:, usable] * ranks[:, usable]).sum(0) - n1[usable] * (n1[usable] + 1) / 2)
                    / (n1[usable] * n0[usable]))
        for j in np.flatnonzero(~full):
            keep = ~np.isnan(y[:, j])
            if 0 < y[keep, j].sum() < keep.sum():
                aucs.append(roc_auc_score(y[keep, j], scores[keep, j]))
        return float(np.mean(aucs)) if aucs else float("nan")

    assert np.isclose(mean_of(y_true), mean_auc(y_true, scores), rtol=0, atol=1e-12)
    rng = np.random.default_rng(seed)
    return np.array([mean_of(y_true[rng.permutation(len(y_true))]) for _ in range(n)])


def permutation_p(observed: float, null) -> float:
    """One-sided permutation p-value ``(1 + #(null >= observed)) / (1 + len(null))``; below 0.01
    with 200 permutations means at most one null value reaches ``observed``."""
    null = np.asarray(null)
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


def null_summary(observed: float, null) -> str:
    """One line for an assertion message: observed, null mean and 99th percentile, p."""
    return (f"observed {observed:.4f} vs permutation null (n={len(null)}): mean "
            f"{np.mean(null):.4f}, 99th percentile {np.percentile(null, 99):.4f}, "
            f"p = {permutation_p(observed, null):.4f}")


def dice(pred, target) -> float:
    """Dice of two boolean arrays pooled over every pixel (1.0 when both are empty)."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * (pred & target).sum() / total)


def _best_on_train(candidates, train):
    """The candidate mask (H, W[, 1]) with the highest pooled Dice against every training mask."""
    return max(candidates, key=lambda m: dice(np.broadcast_to(m, train.shape), train))


def mean_mask_dice(train_masks, test_masks) -> float:
    """Dice on the test masks of the mean training mask, thresholded at the level (0.05 .. 0.95)
    that does best on the training masks: a model that outputs one mask whatever the image."""
    train, test = np.asarray(train_masks) > 0.5, np.asarray(test_masks) > 0.5
    mean = train.mean(axis=0)
    best = _best_on_train([mean > t for t in np.linspace(0.05, 0.95, 19)], train)
    return dice(np.broadcast_to(best, test.shape), test)


def centred_disc_dice(train_masks, test_masks) -> float:
    """Dice on the test masks of one disc at the image centre whose radius (0.5 px steps) does best
    on the training masks ``(N, H, W[, 1])``: a fixed-shape prior."""
    train, test = np.asarray(train_masks) > 0.5, np.asarray(test_masks) > 0.5
    h, w = train.shape[1:3]
    yy, xx = np.mgrid[:h, :w]
    r2 = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2
    shape = train.shape[1:]
    discs = [(r2 < r * r).reshape(shape) for r in np.arange(1, max(h, w) / 2, 0.5)]
    return dice(np.broadcast_to(_best_on_train(discs, train), test.shape), test)


def box_prior_predictions(train_boxes, train_labels, n_images, num_classes, centres=None,
                          shares=False):
    """Detections of a model that ignores the image: for every class, the mean of its training
    boxes (``centres=None``) or, with ``centres`` an ``(M, 2)`` array of (x, y) points, the mean
    of the training boxes whose centre is nearest to each point; every box at every test image with
    score 1, or with ``shares=True`` the share of the class's training boxes in its group (the
    usual positions rank first). ``train_boxes`` ``(N, G, 4)`` xyxy, ``train_labels`` ``(N, G)``
    with -1 padding."""
    boxes = np.asarray(train_boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(train_labels).reshape(-1)
    prior_boxes, prior_labels, prior_scores = [], [], []
    for c in range(num_classes):
        b = boxes[labels == c]
        if centres is None:
            groups = [b]
        else:
            mid = (b[:, :2] + b[:, 2:]) / 2
            near = np.argmin(((mid[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
            groups = [b[near == k] for k in range(len(centres)) if np.any(near == k)]
        for g in groups:
            prior_boxes.append(g.mean(axis=0))
            prior_labels.append(c)
            prior_scores.append(len(g) / max(len(b), 1) if shares else 1.0)
    one = {"boxes": np.array(prior_boxes, "float32"), "labels": np.array(prior_labels),
           "scores": np.array(prior_scores, "float32")}
    return [dict(one) for _ in range(n_images)]


def kmeans_centres(points, k: int, seed: int = 0, iterations: int = 25) -> np.ndarray:
    """``(k, D)`` centres of ``points`` ``(N, D)`` by Lloyd's k-means from a seeded k-means++
    start (plain NumPy, so the same on every SciPy); e.g. the usual positions of training boxes,
    for :func:`box_prior_predictions`."""
    x = np.asarray(points, np.float64)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, min(k, len(x))):
        d2 = np.min(((x[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[0])
    centres = np.array(centres)
    for _ in range(iterations):
        near = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        centres = np.array([x[near == j].mean(0) if np.any(near == j) else centres[j]
                            for j in range(len(centres))])
    return centres


def majority_accuracy(y_true) -> float:
    """Accuracy of always answering the most frequent class of ``y_true`` (integer classes)."""
    y = np.asarray(y_true, np.int64)
    return float(np.bincount(y).max() / len(y))


def accuracy_permutation_null(y_true, y_pred, n=1000, seed=0) -> np.ndarray:
    """``n`` accuracies of the fixed class predictions ``y_pred`` against the labels shuffled
    across images: what predictions that carry no information about the labels score, at this
    sample size and with these class and predicted-class counts."""
    y, pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    return np.array([np.mean(y[rng.permutation(len(y))] == pred) for _ in range(n)])


def multiclass_auc_permutation_null(y_true, proba, n=1000, seed=0, average="weighted"):
    """``n`` values of sklearn's ``roc_auc_score(y, proba, multi_class="ovr", average=average)``
    with the integer class labels ``y_true`` shuffled across images (each image keeps its row of
    ``proba``). Each one-vs-rest AUC is :func:`mann_whitney_auc` of that class's column;
    ``"weighted"`` weighs the classes by their counts (the ``auroc`` of
    ``cxr_keras.evaluation.multiclass_metrics``), ``"macro"`` equally. Checked against sklearn on
    the unshuffled labels."""
    y, proba = np.asarray(y_true, np.int64), np.asarray(proba, np.float64)
    classes = np.arange(proba.shape[1])
    counts = np.array([np.sum(y == c) for c in classes], np.float64)
    if np.any(counts == 0) or np.any(counts == len(y)):
        raise ValueError(f"every class needs positives and negatives; counts {counts.tolist()}")
    weights = counts / len(y) if average == "weighted" else np.full(len(classes), 1 / len(classes))

    def auc(labels):
        return float(np.sum(weights * mann_whitney_auc(labels[:, None] == classes, proba)))

    expected = roc_auc_score(y, proba, multi_class="ovr", average=average, labels=classes)
    assert np.isclose(auc(y), expected, rtol=0, atol=1e-9), (auc(y), expected)
    rng = np.random.default_rng(seed)
    return np.array([auc(y[rng.permutation(len(y))]) for _ in range(n)])


def mean_mask_image_dice(train_masks, test_masks, threshold=0.5) -> float:
    """Mean over the test images of the per-image :func:`dice` (a segmentation table's "Dice"
    column) of the mean training mask thresholded at ``threshold``: one fixed mask predicted for
    every image. Masks ``(N, H, W[, 1])``, lung where > 0.5."""
    train, test = np.asarray(train_masks) > 0.5, np.asarray(test_masks) > 0.5
    prior = train.mean(axis=0) > threshold
    return float(np.mean([dice(prior, t) for t in test]))
