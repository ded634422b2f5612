"""Testing a multi-label model on another dataset's test split, on the findings the two share once
their labels are harmonised onto torchxrayvision's vocabulary (:func:`cxr_keras.data.harmonise`,
docs/LABELS.md): which model outputs map onto which shared finding, the AUC there beside the same
findings on the model's own test set, and the report's table. Several outputs onto one finding
are OR-ed: their largest logit, and the three-valued OR of their labels (:func:`kleene_or`).

Example (an NIH model tested on CheXpert's valid.csv)::

    findings, columns, targets = shared_findings(chexpert_test_rows, "chexpert", "nih", labels)
    scores = onto_findings(model_logits_on_chexpert, columns)
    c = cross_dataset_scores(scores, targets, own_logits, own_y, findings, columns)
    lines = cross_dataset_table("nih", dict(c, dataset="chexpert"))
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..data.findings import canonical_names, harmonise, kleene_or
from ..io import DataError
from . import metrics as M


def shared_findings(rows, dataset: str, source: str, model_labels) -> tuple[list, list, np.ndarray]:
    """(findings, columns, targets) of ``dataset``'s test ``rows`` (a cache's rows, its label
    columns ``rows.attrs["labels"]``) for a model whose outputs are ``source``'s labels
    ``model_labels``: the findings both label once harmonised, in vocabulary order; per finding,
    the model outputs that map onto it; the rows' labels of those findings (float32)."""
    table = harmonise(rows)
    model = canonical_names(source, model_labels)
    findings = [v for v in table.attrs["labels"]
                if v in table.attrs["harmonised"]["sources"] and v in model.values()]
    if not findings:
        raise DataError(f"{source} and {dataset} share no finding once harmonised")
    columns = [[j for j, c in enumerate(model_labels) if model[c] == v] for v in findings]
    return findings, columns, table[findings].to_numpy(np.float32)


def cross_test_set(cache, dataset: str, source: str, model_labels, **make_kw) -> dict:
    """``dataset``'s test split in ``cache`` (labels harmonised, :func:`shared_findings`) as a
    pipeline (``make_kw``: :func:`~cxr_keras.data.pipeline.make_dataset`'s) whose targets are the
    findings shared with a ``source`` model's outputs ``model_labels``: ``dataset``,
    ``findings``, ``columns`` (per finding, the outputs that map onto it) and ``data``."""
    from ..data.pipeline import make_dataset

    rows = cache.rows("test").copy()
    rows.attrs = {"dataset": dataset, "labels": list(cache.labels)}
    findings, columns, targets = shared_findings(rows, dataset, source, model_labels)
    return dict(dataset=dataset, findings=findings, columns=columns,
                data=make_dataset(cache, "test", training=False, targets=targets, **make_kw))


def onto_findings(logits, columns) -> np.ndarray:
    """Model outputs (N, K) onto the shared findings (N, F): per finding, the largest logit of the
    outputs in ``columns``."""
    return np.stack([np.asarray(logits)[:, cols].max(axis=1) for cols in columns], axis=1)


def cross_dataset_scores(scores, y, own_logits, own_y, findings, columns) -> dict:
    """Per-finding AUC on the other dataset (``scores`` from :func:`onto_findings`, labels ``y``)
    and on the model's own test set (its outputs ``own_logits`` and labels ``own_y``, folded onto
    the findings the same way): images, findings, positives, auc, mean_auc, source_auc,
    source_mean_auc."""
    own_y = np.stack([kleene_or(own_y[:, cols]) for cols in columns], axis=1)
    auc = M.per_class_auc(y, expit(scores), findings)
    own_auc = M.per_class_auc(own_y, expit(onto_findings(own_logits, columns)), findings)
    return dict(images=int(len(y)), findings=findings,
                positives={f: int(np.nansum(y[:, j])) for j, f in enumerate(findings)},
                auc=auc, mean_auc=M.mean_of(auc), source_auc=own_auc,
                source_mean_auc=M.mean_of(own_auc))


WHERE = {"chexpert": "CheXpert valid.csv", "nih": "the NIH test list"}


def cross_dataset_table(source: str, c: dict) -> list:
    """The report's lines: per shared finding (and their mean), its positives and the AUC on the
    training dataset's test set and on the other dataset's (4 decimals; difference = other -
    own). ``c``: :func:`cross_dataset_scores` with the other ``dataset``'s name."""
    f4 = "{:.4f}".format
    lines = [f"### Cross-dataset test (not in the paper): trained on {source}, tested on "
             f"{WHERE.get(c['dataset'], c['dataset'])} ({c['images']} images)", "",
             f"| finding | positives | AUC, {source} test | AUC, {c['dataset']} | difference |",
             "|---|---:|---:|---:|---:|"]
    rows = [(f, str(c["positives"][f]), c["source_auc"][f], c["auc"][f]) for f in c["findings"]]
    rows.append(("Mean", "", c["source_mean_auc"], c["mean_auc"]))
    for name, pos, own, other in rows:
        cells = ["-" if v != v else f4(v) for v in (own, other, other - own)]
        lines.append(f"| {name} | {pos} | " + " | ".join(cells) + " |")
    return lines + ["", "Findings named as torchxrayvision names them, after "
                    "`cxr_keras.data.harmonise` (docs/LABELS.md); only findings both datasets "
                    "label are scored.", ""]
