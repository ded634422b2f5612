"""mtpret recipe on phantom data, all three stages: MD-MoCo pretraining on the union of the
pretraining sets, one round of MTPret continual learning over the four multitask datasets, then
fine-tuning where the lung segmentation reaches a high Dice and the detector finds the phantom TB
boxes well above chance (a detector that finds nothing has AP 0)."""

import json

import numpy as np
import pytest

from cxr_keras.recipes import mtpret

SMALL = dict(pretrain_epochs=3, rounds=1, visit_epochs=1, finetune_epochs=8)


def _args(out, *extra):
    return mtpret.build_parser().parse_args(["--quick", "--out", str(out), "--verbose", "0",
                                             *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mtpret")
    args = _args(out)
    lung = mtpret.finetune(mtpret.config_from_args(args, task="lung", **SMALL), args)
    tbx = mtpret.finetune(mtpret.config_from_args(args, task="tbx", **SMALL), args)
    return out, args, lung, tbx


def test_pretraining_on_the_union_of_the_pretraining_sets(runs):
    out, _, _, _ = runs
    (pre,) = list(out.glob("mtpret-pretrain-md_moco-*"))
    m = json.loads((pre / "metrics.json").read_text())
    from cxr_keras.data.cache import Cache

    n_train = {}
    for task in mtpret.MULTITASK_TASKS:
        (cache,) = (out / "_data").glob(f"cache-phantom-{mtpret.TASKS[task].reader}-*")
        n_train[task] = len(Cache(cache).rows("train"))
    assert m["images"] == 600 + sum(n_train.values()), (m["images"], n_train)  # all NIH phantoms
    assert m["epochs"] == 3 and np.isfinite(m["final"]["loss"])
    # the positive key is found among the 1,025 candidates far above chance (0.001)
    assert m["final"]["contrast_acc"] > 0.05, m
    for name in ("backbone.weights.h5", "report.md", "DONE", "plots/pretraining_curves.png"):
        assert (pre / name).exists(), name


def test_multitask_round_visits_every_task_under_l2sp(runs):
    out, args, _, _ = runs
    (mt,) = list(out.glob("mtpret-multitask-mtpret-*"))
    m = json.loads((mt / "metrics.json").read_text())
    visits = m["visits"]
    assert sorted(v["task"] for v in visits) == sorted(mtpret.MULTITASK_TASKS)
    assert all(v["round"] == 1 and v["distance_to_anchor"] > 0 for v in visits)
    assert all(np.isfinite(v["history"]["loss"][-1]) for v in visits)
    for task in mtpret.MULTITASK_TASKS:
        assert (mt / "checkpoints" / f"{task}.weights.h5").exists()
    assert (mt / "backbone.weights.h5").exists() and "L2-SP" in (mt / "report.md").read_text()
    cfg = mtpret.config_from_args(args, **SMALL)
    assert mtpret.multitask(cfg, args, "mtpret").path == mt  # finished: reused, not retrained


def test_lung_segmentation_dice_is_high(runs):
    _, _, lung, _ = runs
    m = lung.metrics()
    assert m["main_metric"] == "dice" and "MTPret" in m["start"]
    assert m["test"]["dice"] > 0.85, m["test"]       # 0.95 on this CPU
    assert 0 < m["test"]["miou"] <= 1
    pred = lung.load_predictions("test")
    assert pred["prob"].shape == pred["y_true"].shape and pred["prob"].shape[1:3] == (128, 96)
    assert (lung.path / "plots" / "example_test.png").exists()
    assert "0.9537" in lung.file("report.md").read_text()  # the paper's MTPret Dice beside ours


def test_detector_finds_phantom_tb_boxes(runs):
    _, _, _, tbx = runs
    m = tbx.metrics()
    assert m["main_metric"] == "map"
    assert m["test"]["ap_active"] > 0.3, m["test"]   # 0.7 on this CPU; nothing found = 0
    assert m["test"]["n_gt"]["ActiveTuberculosis"] > 5
    pred = tbx.load_predictions("test")
    assert pred["pred_boxes"].shape[1] == 4 and len(pred["pred_scores"]) == len(pred["pred_image"])
    text = mtpret.grid_report([tbx])
    assert "Table III" in text and "(0.6484)" in text
