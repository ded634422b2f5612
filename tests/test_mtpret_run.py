"""mtpret recipe on phantom data, all three stages, in a smoke configuration (64 px, small phantom
sets, one multitask round, short fine-tunes): MD-MoCo pretraining on the union of the
pretraining sets, one round of MTPret continual learning over the four multitask datasets, then
fine-tuning where the lung segmentation and the TB detector beat what a model that ignores the
image scores on the same test images (the mean training mask, a centred disc, box priors).

Measured on a 2-core CPU, three runs of this module with fine-tune seeds 0-2 and four more
fine-tune seeds (3-6) on one of them (the earlier stages always run with seed 0):
test lung Dice 0.949-0.957 (14 images) against a best prior of 0.901 (the mean training mask);
test active-TB AP 0.34-0.62 (17 images, 18 boxes) against a best box prior of 0.130 (the 32 usual
positions); MoCo top-1 contrast accuracy 0.117 against chance 0.004. About 170 s of CPU time.
"""

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from cxr_keras.recipes import mtpret
from cxr_keras.recipes import mtpret_paper as paper

from _baselines import (  # tests/ is on sys.path under pytest
    box_prior_predictions,
    centred_disc_dice,
    dice,
    kmeans_centres,
    mean_mask_dice,
    mean_mask_image_dice,
)

SEED = 0  # fine-tuning seed (pretraining and the multitask round always run with seed 0)

# The smoke configuration, on top of --quick. Detection: one 10 px square anchor per cell of the
# stride-8 map (64 anchors; the phantom's TB boxes are 8-10 px at 64 px), every anchor kept as a
# proposal, batch 4. With the --quick detector (9 anchors, the 32 best proposals) at 64 px the
# validation loss -- the recipe's detection checkpoint criterion -- is lowest after the first
# epoch or two and then rises while AP improves (more proposals land on lesions, so the RoI box
# loss grows), so the tested checkpoint had AP 0.00-0.06; with every anchor a proposal the
# validation loss falls to the last epochs.
SMOKE = dict(
    image_size=(64, 64), cache_size=64, phantom_size=64,
    phantom_n={"nih": 128, "kermany": 64, "mura": 64, "lungmasks": 160, "tbx11k": 2400,
               "chexpert": 64, "deepcovid": 48,
               "shenzhen": 8, "montgomery": 6, "indiana": 8, "rsna_boneage": 8},  # 30 images
    pretrain_epochs=3, pretrain_batch=32, queue_size=256,
    rounds=1, visit_epochs=1,
    finetune_epochs=10, finetune_batch=8,
    seg_level=0,  # DeepLab-V3 on C2 (stride 4): 16 x 16 logits at 64 px
    detection_epochs=10, detection_batch=4, det_level=1, anchor_sizes=(10,), anchor_ratios=(1.0,),
    proposals=64)

# Margins over the best baseline, below the smallest gap seen in the docstring's runs: lung Dice
# +0.047 (spread 0.008), active-TB AP +0.21 (spread 0.29).
DICE_MARGIN = 0.03
AP_MARGIN = 0.10
CONTRAST_FACTOR = 10  # final MoCo top-1 accuracy at least this many times chance


def _setup(out):
    """(Config, RunOptions) of the smoke configuration on top of --quick."""
    cfg, opts = mtpret.from_command_line(["--quick", "--out", str(out), "--verbose", "0",
                                          "--workers", "1", "--seed", str(SEED)])
    return replace(cfg, **SMOKE), opts


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mtpret")
    cfg, opts = _setup(out)
    lung = mtpret.finetune(replace(cfg, task="lung"), opts=opts)
    tbx = mtpret.finetune(replace(cfg, task="tbx"), opts=opts)
    return out, (cfg, opts), lung, tbx


def _split(task, setup, split, target):
    """Masks (N, H, W) or per-image xyxy boxes / labels of ``split`` as the recipe evaluates them
    (its cache, resized to image_size, no augmentation)."""
    from cxr_keras.data.cache import Cache
    from cxr_keras.data.pipeline import make_dataset

    cfg, opts = setup
    cache = Cache(mtpret.task_cache(task, cfg, opts))
    ds = make_dataset(cache, split, preset="mtpret", target=target, normalization="mtpret",
                      batch_size=64, output_size=tuple(cfg.image_size))
    ys = np.concatenate([np.asarray(y) for _, y in ds])
    if target == "mask":
        return ys[..., 0]
    images = []
    for b in ys:
        b = b[b[:, 4] >= 0]  # padding rows have class -1
        images.append({"boxes": np.c_[b[:, :2], b[:, :2] + b[:, 2:4]], "labels": b[:, 4].astype(int)})
    return images, list(cache.box_classes)


def _table(text, header):
    """Rows (lists of cells) of the Markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return [c.strip() for c in lines[start].strip().strip("|").split("|")], rows


def test_pretraining_on_the_union_of_the_pretraining_sets(runs):
    out, _, _, _ = runs
    (pre,) = list(out.glob("mtpret-pretrain-md_moco-*"))
    m = json.loads((pre / "metrics.json").read_text())
    from cxr_keras.data.cache import Cache

    n_train = {}
    for task in mtpret.MULTITASK_TASKS:
        (cache,) = (out / "_data").glob(f"cache-phantom-{mtpret.TASKS[task].reader}-*")
        n_train[task] = len(Cache(cache).rows("train"))
    n_nih = SMOKE["phantom_n"]["nih"]
    # Table I's pretraining-only sets in full (RSNA Bone Age: its training set, all 8 images of a
    # phantom under 10 images), all of NIH, the multitask datasets' training splits
    n_only = 8 + 6 + 8 + 8
    assert m["images"] == n_only + n_nih + sum(n_train.values()), (m["images"], n_nih, n_train)
    assert "Shenzhen, Montgomery, Indiana, RSNA Bone Age" in (pre / "report.md").read_text()
    assert m["epochs"] == SMOKE["pretrain_epochs"] and np.isfinite(m["final"]["loss"])
    # the positive key among queue_size + 1 candidates, far above chance
    chance = 1 / (SMOKE["queue_size"] + 1)
    assert m["final"]["contrast_acc"] > CONTRAST_FACTOR * chance, (
        f"MoCo top-1 contrast accuracy {m['final']['contrast_acc']:.4f} vs chance {chance:.4f} "
        f"(1 / (queue {SMOKE['queue_size']} + 1)); needs > {CONTRAST_FACTOR} x chance")
    for name in ("backbone.weights.h5", "report.md", "DONE", "plots/pretraining_curves.png"):
        assert (pre / name).exists(), name


def test_multitask_round_visits_every_task_under_l2sp(runs):
    out, (cfg, opts), _, _ = runs
    (pre,) = list(out.glob("mtpret-pretrain-md_moco-*"))
    (mt,) = list(out.glob("mtpret-multitask-mtpret-*"))
    m = json.loads((mt / "metrics.json").read_text())
    visits = m["visits"]
    assert sorted(v["task"] for v in visits) == sorted(mtpret.MULTITASK_TASKS)
    assert all(v["round"] == 1 and v["distance_to_anchor"] is not None for v in visits)
    assert all(np.isfinite(v["history"]["loss"][-1]) for v in visits)
    for task in mtpret.MULTITASK_TASKS:
        assert (mt / "checkpoints" / f"{task}.weights.h5").exists()
    assert (mt / "backbone.weights.h5").exists() and "L2-SP" in (mt / "report.md").read_text()

    # L2-SP's anchor in round 1 is the MD-MoCo backbone, and the shared weights after the last
    # visit are the saved multitask backbone: the logged distance is ||w - w0|| of those files
    weights = []
    for run in (pre, mt):
        backbone = mtpret.build_backbone(cfg)
        backbone.load_weights(run / "backbone.weights.h5")
        weights.append([v.numpy().astype(np.float64) for v in backbone.trainable_variables])
    distance = np.sqrt(sum(np.sum((w - w0) ** 2) for w, w0 in zip(weights[1], weights[0])))
    logged = visits[-1]["distance_to_anchor"]
    assert distance > 0 and np.isclose(logged, distance, rtol=1e-4, atol=0), (
        f"last visit's logged L2-SP distance {logged} vs ||w_multitask - w_md_moco|| = {distance} "
        "from the saved backbones")

    stamp = (mt / "metrics.json").stat().st_mtime_ns
    again = mtpret.multitask(cfg, opts=opts)  # finished: returned as it is, not retrained
    assert again.path == mt and again.finished
    assert (mt / "metrics.json").stat().st_mtime_ns == stamp
    # either file of a stage's folder, given back on the command line, names that folder
    for name in ("config.json", "recipe_config.json"):
        back, back_opts = mtpret.from_command_line(["--config", str(mt / name), "--out", str(out)])
        assert mtpret.multitask(back, opts=back_opts).path == mt
    assert (mt / "metrics.json").stat().st_mtime_ns == stamp


def test_lung_segmentation_beats_the_mean_training_mask(runs):
    _, setup, lung, _ = runs
    m = lung.metrics()
    assert m["main_metric"] == "dice" and "MTPret" in m["start"]
    assert 0 < m["test"]["miou"] <= 1
    pred = lung.load_predictions("test")
    assert pred["prob"].shape == pred["y_true"].shape
    assert pred["prob"].shape[1:3] == SMOKE["image_size"]
    assert (lung.path / "plots" / "example_test.png").exists()
    assert "0.9537" in lung.file("report.md").read_text()  # the paper's MTPret Dice beside ours

    test = _split("lung", setup, "test", "mask") > 0.5
    train = _split("lung", setup, "train", "mask") > 0.5
    truth, hit = pred["y_true"][..., 0] > 0, pred["prob"][..., 0] > 127.5  # prob: 0-255
    assert np.array_equal(truth, test)  # the recipe scored the test split's masks
    per_image = np.mean([dice(p, t) for p, t in zip(hit, truth)])
    assert np.isclose(m["test"]["dice"], per_image, rtol=0, atol=1e-3), (m["test"], per_image)

    # one mask whatever the image: the mean training mask (thresholded at 0.5, per-image Dice as
    # the recipe's; at the best threshold on the training masks, pooled Dice) or a centred disc
    priors = {"mean training mask, per image": mean_mask_image_dice(train, test),
              "mean training mask, pooled": mean_mask_dice(train, test),
              "centred disc, pooled": centred_disc_dice(train, test)}
    best = max(priors, key=priors.get)
    assert m["test"]["dice"] > priors[best] + DICE_MARGIN, (
        f"lung Dice {m['test']['dice']:.4f} (pooled {dice(hit, truth):.4f}) vs best prior "
        f"{priors[best]:.4f} ({best}; all: { {k: round(v, 4) for k, v in priors.items()} }); "
        f"margin {DICE_MARGIN}")


def test_detector_beats_box_priors(runs):
    _, setup, _, tbx = runs
    from cxr_keras.evaluation.detection import detection_ap

    m = tbx.metrics()
    assert m["main_metric"] == "map"
    assert m["test"]["n_gt"]["ActiveTuberculosis"] > 5
    pred = tbx.load_predictions("test")
    assert pred["pred_boxes"].shape[1] == 4 and len(pred["pred_scores"]) == len(pred["pred_image"])

    test, classes = _split("tbx", setup, "test", "boxes")
    train, _ = _split("tbx", setup, "train", "boxes")
    # the saved detections, scored on these boxes, give the reported AP
    preds = [{k: pred[f"pred_{k}"][pred["pred_image"] == i] for k in ("boxes", "scores", "labels")}
             for i in range(len(test))]
    ap = detection_ap(preds, test, classes)["per_class"][classes[0]]
    assert np.isclose(ap, m["test"]["ap_active"], rtol=0, atol=1e-9), (ap, m["test"])

    # priors that ignore the image: the mean training box of each class, or the mean boxes of the
    # k-means clusters of the training boxes' centres (k = 2 .. 32) scored by their share of the
    # training boxes, at every test image; the best on the test set is the baseline (a
    # nothing-found detector scores 0)
    g = max(len(t["labels"]) for t in train)
    boxes = np.zeros((len(train), g, 4))
    labels = np.full((len(train), g), -1)
    for i, t in enumerate(train):
        boxes[i, :len(t["labels"])], labels[i, :len(t["labels"])] = t["boxes"], t["labels"]
    active = boxes[labels == 0]
    centres = (active[:, :2] + active[:, 2:]) / 2
    priors = {"mean box": None}
    for k in (2, 4, 8, 16, 32):
        priors[f"{k} k-means centres"] = kmeans_centres(centres, k)
    prior_ap = {name: detection_ap(box_prior_predictions(boxes, labels, len(test), len(classes), c,
                                                         shares=True),
                                   test, classes)["per_class"][classes[0]]
                for name, c in priors.items()}
    best = max(prior_ap, key=prior_ap.get)
    assert m["test"]["ap_active"] > prior_ap[best] + AP_MARGIN, (
        f"active TB AP {m['test']['ap_active']:.4f} vs best box prior {prior_ap[best]:.4f} "
        f"({best}; all: { {k: round(v, 4) for k, v in prior_ap.items()} }); margin {AP_MARGIN}")
    text = mtpret.grid_report([tbx])
    assert "Table III" in text and "(0.6484)" in text


def test_report_cells_equal_metrics(runs):
    """Our numbers in every report table are metrics.json's, to 4 decimals; the paper's beside
    them are the transcribed tables."""
    _, _, lung, tbx = runs
    ours = {"lung": lung.metrics()["test"], "tbx": tbx.metrics()["test"]}
    ref = paper.TABLE3["resnet18"]["MTPret"]

    def fmt(v):
        return "-" if v is None or np.isnan(v) else f"{v:.4f}"

    seen = 0
    for task, run in (("lung", lung), ("tbx", tbx)):
        header, rows = _table(run.file("report.md").read_text(), "item")
        assert header == ["item", "paper", "ours", "difference"], header
        for item, p, o, diff in rows:
            assert o == fmt(ours[task][item]), (task, item, o, ours[task][item])
            assert p == fmt(ref[item]), (task, item, p, ref[item])
            want = "-" if o == "-" else f"{ours[task][item] - ref[item]:+.4f}"
            assert diff == want, (task, item, diff, want)
            seen += 1
    assert seen == 5  # dice, miou; map, ap_active, ap_latent

    text = mtpret.grid_report([lung, tbx])
    cell = re.compile(r"^(\S+) \((\S+)\)$")
    header, rows = _table(text.split("### Table III")[1], "model")
    (row,) = [r for r in rows if r[0] == "MTPret"]
    for name, value in zip(header[1:], row[1:]):
        o, p = cell.match(value).groups()
        assert o == fmt(ours["lung" if name in ("dice", "miou") else "tbx"][name]), (name, value)
        assert p == fmt(ref[name]), (name, value)
    header, rows = _table(text.split("### Table II:")[1], "model")
    (row,) = [r for r in rows if r[0] == "MTPret"]
    main = {paper.TASK_NAMES["lung"]: ours["lung"]["dice"],
            paper.TASK_NAMES["tbx"]: ours["tbx"]["map"]}
    for name, value in zip(header[1:], row[1:]):
        if name in main:
            assert cell.match(value).group(1) == fmt(main[name]), (name, value)
        else:
            assert value.startswith("- ("), (name, value)  # a task we did not run


def test_a_classification_task_exports_raw_pixels_in_every_format(tmp_path):
    """mtpret's FC task model (binary pneumonia) in a run folder as the recipe writes it: the
    square cache resized to image_size (bilinear), the paper's Z-score, sigmoid of the logit."""
    from dataclasses import asdict

    from _exports import assert_exports_answer_raw_pixels, spec

    from cxr_keras.training import RunFolder

    cfg, _ = _setup(tmp_path)
    cfg = replace(cfg, task="pneumonia")
    run = RunFolder(tmp_path / "run")
    run.write_json("config.json", asdict(cfg))
    model = mtpret.build_task_model("pneumonia", mtpret.build_backbone(cfg), cfg, 1)
    model.save(run.checkpoints / "best.keras")
    meta = assert_exports_answer_raw_pixels(
        run.path, tmp_path / "export",
        spec(cfg.cache_size, output_size=cfg.image_size, normalization="mtpret"))
    assert meta["output_shape"] == [None, 1] and meta["activation"] == "sigmoid"
