"""A reduced ``cxr-keras run multiloss --quick`` on phantom data, end to end through the three
stages: the U-Nets must segment the lungs, the classifiers must beat chance, and the report must
hold Tables 1-5 beside the paper's numbers."""

import json

import numpy as np
import pytest

from cxr_keras.io import DataError
from cxr_keras.recipes import multiloss

ARGS = ["--dataset", "phantom", "--quick", "--verbose", "0",
        "--seg-losses", "bce_dice,tversky", "--seg-epochs", "4",
        "--cls-losses", "kld,ls_focal,cal_focal", "--cls-epochs", "5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiloss")
    assert multiloss.main(ARGS + ["--out", str(out)]) == 0
    (folder,) = out.glob("multiloss-*")
    return folder, out


def test_segmentation_is_good(run):
    folder, _ = run
    m = json.loads((folder / "metrics.json").read_text())
    table1 = m["segmentation"]["table1"]
    assert set(table1) == {"bce_dice", "tversky", "ensemble"}
    best = max(v["Dice"][0] for v in table1.values())
    assert best > 0.8, table1  # lungs on Montgomery phantoms, never seen in training
    assert m["crops"]["images"] > 0


def test_classifiers_beat_chance(run):
    folder, _ = run
    m = json.loads((folder / "metrics.json").read_text())
    cls = m["classification"]
    assert set(cls) == {"kld", "ls_focal", "cal_focal"}
    y = np.load(folder / "classify" / "kld" / "predictions" / "test.npz")["y_true"]
    majority = np.bincount(y).max() / len(y)
    best_auc = max(v["test"]["auroc"] for v in cls.values())
    best_acc = max(v["test"]["accuracy"] for v in cls.values())
    assert best_auc > 0.7, {k: v["test"]["auroc"] for k, v in cls.items()}
    assert best_acc > majority + 0.05


def test_ensembles_and_report(run):
    folder, _ = run
    m = json.loads((folder / "metrics.json").read_text())
    ens = m["ensembles"]
    assert ens["fitted_on"] == "validation predictions"
    assert set(ens["table3"]) == {f"{k}, top-3" for k in
                                  ("majority voting", "simple averaging", "weighted averaging",
                                   "stacking")}
    w = list(ens["slsqp_weights"]["top-3"].values())
    assert abs(sum(w) - 1) < 1e-6 and min(w) >= 0
    assert ens["final"]["metrics"]["auroc"] > 0.6
    report = (folder / "report.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5"):
        assert title in report
    assert "0.9068" in report and "0.9510" in report  # the paper's numbers sit beside ours
    for plot in ("fig1_lung_crops", "fig3_segmentation_polar", "fig4_classifiers_polar",
                 "fig6_prediction_level_polar", "fig8_final_ensemble_confusion", "fig9_gradcam"):
        assert (folder / "plots" / f"{plot}.png").stat().st_size > 1000
    with np.load(folder / "ensemble" / "model_level_top3" / "predictions" / "test.npz",
                 allow_pickle=False) as z:
        assert np.allclose(z["proba"].sum(axis=1), 1, atol=1e-4)
    assert (folder / "DONE").exists()


def test_finished_run_refuses_then_single_stage_reruns(run):
    folder, out = run
    with pytest.raises(DataError, match="--force"):
        multiloss.main(ARGS + ["--out", str(out)])
    # a later stage alone can be rerun on a finished run: nothing is retrained
    mtime = (folder / "classify" / "kld" / "checkpoints" / "best.keras").stat().st_mtime
    assert multiloss.main(ARGS + ["--out", str(out), "--stage", "ensemble"]) == 0
    assert (folder / "classify" / "kld" / "checkpoints" / "best.keras").stat().st_mtime == mtime
    assert (folder / "DONE").exists()


def test_stage_order_is_enforced(tmp_path):
    with pytest.raises(DataError, match="segment stage first"):
        multiloss.main(ARGS + ["--out", str(tmp_path), "--stage", "classify"])


def test_bad_loss_name_is_named():
    with pytest.raises(DataError, match="nope"):
        multiloss.config_from_args(multiloss.build_parser().parse_args(
            ["--cls-losses", "cce,nope"]))


def test_a_classifier_exports_with_its_preprocessing(run, tmp_path):
    import json as _json

    from cxr_keras.export import export_run

    folder, _ = run
    out = export_run(folder / "classify" / "kld", tmp_path / "sm")
    meta = _json.loads((out / "export.json").read_text())
    assert meta["normalization"] == "none"  # EfficientNet rescales 0-255 inputs itself
    assert meta["outputs"] == "probabilities" and meta["output_activation"] == "softmax"
    assert meta["labels"] == ["normal", "bacterial", "viral"]
