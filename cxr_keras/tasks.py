"""Task kinds on a shared multi-scale backbone, and what each kind needs, once: its tf.data
pipelines, its head (FC, DeepLab-V3 or Faster R-CNN), its loss and training metrics, its number
of outputs, and its test metrics with their predictions and plots.

Kinds: ``binary`` (one sigmoid output), ``multilabel`` (one per label), ``segmentation`` (a mask)
and ``detection`` (boxes). mtpret's multitask continual learning and its per-task fine-tuning both
build on these (:mod:`cxr_keras.recipes.mtpret`); a recipe names its tasks and their readers.

Example::

    kind = "segmentation"
    model = head_model(kind, backbone, num_outputs(kind, cache), "lung", aspp_filters=64)
    loss, metrics, monitor, mode = loss_and_metrics(kind, 1)
    ds = task_datasets(kind, cache, 16, preset="mtpret", normalization="mtpret",
                       image_size=(128, 96), seed=0, splits=("train", "val"))
"""

from __future__ import annotations

import keras
import numpy as np
from scipy.special import expit

from .data.detection_inputs import faster_rcnn_inputs, to_xyxy
from .data.pipeline import make_dataset
from .evaluation import metrics as M
from .evaluation.calibration import calibration_section
from .evaluation.detection import detection_ap
from .evaluation.segmentation import segmentation_metrics
from .inference.batches import predict_dataset
from .losses.segmentation import DiceLoss
from .models import FasterRCNN, task_model

KINDS = ("binary", "multilabel", "segmentation", "detection")
MAIN_METRIC = {"binary": "auc", "multilabel": "mauc", "segmentation": "dice", "detection": "map"}
# head_model's options (a recipe's Config fields of the same names)
HEAD_OPTIONS = ("aspp_rates", "aspp_filters", "seg_level", "det_level", "anchor_sizes",
                "anchor_ratios", "rpn_channels", "proposals", "head_units")


def task_datasets(kind: str, cache, batch: int, *, preset, normalization, image_size, seed: int,
                  model=None, splits=("train", "val", "test")) -> dict:
    """tf.data pipelines of one task: {split: dataset}, resized to ``image_size``, augmented with
    ``preset`` in training (full batches only there). Detection batches become the Faster R-CNN
    dict when ``model`` is given; ``.raw`` keeps the (image, boxes) batches."""
    out = {}
    for split in splits:
        training = split == "train"
        kw = dict(preset=preset, training=training, batch_size=batch, seed=seed,
                  normalization=normalization, output_size=tuple(image_size),
                  drop_remainder=training)
        if kind == "binary":
            y = cache.targets(cache.rows(split)).astype("float32").reshape(-1, 1)
            ds = make_dataset(cache, split, targets=y, **kw)
        elif kind == "multilabel":
            ds = make_dataset(cache, split, **kw)
        elif kind == "segmentation":
            ds = make_dataset(cache, split, target="mask", **kw)
        else:
            raw = make_dataset(cache, split, target="boxes", **kw)
            ds = faster_rcnn_inputs(raw, model, seed=seed) if model is not None else raw
            ds.epoch_state, ds.num_rows, ds.raw = raw.epoch_state, raw.num_rows, raw
        out[split] = ds
    return out


def num_outputs(kind: str, cache) -> int:
    """Outputs of a task's head: one per label (multi-label), per box class (detection), else 1."""
    return (len(cache.labels) if kind == "multilabel" else
            len(cache.box_classes) if kind == "detection" else 1)


def head_model(kind: str, backbone, num_outputs: int, name: str, *, aspp_rates=None,
               aspp_filters: int = 256, seg_level: int = 3, det_level: int = 2,
               anchor_sizes=(32, 64, 128), anchor_ratios=(0.5, 1.0, 2.0), rpn_channels: int = 256,
               proposals: int = 64, head_units: int = 256):
    """FC (classification), DeepLab-V3 (segmentation, ASPP on map ``seg_level``; ``aspp_rates``
    None: DeepLab-V3's scaled to its stride) or Faster R-CNN (detection, on map ``det_level``) on
    ``backbone``; a detection model is built, so that weights can be loaded."""
    if kind in ("binary", "multilabel"):
        return task_model(backbone, "classification", num_outputs, name)
    if kind == "segmentation":
        rates = None if aspp_rates is None else tuple(aspp_rates)
        return task_model(backbone, "segmentation", 1, name, rates=rates, filters=aspp_filters,
                          level=seg_level)
    model = FasterRCNN(backbone, num_outputs, level=det_level, stride=4 * 2 ** det_level,
                       anchor_sizes=anchor_sizes, anchor_ratios=anchor_ratios,
                       rpn_channels=rpn_channels, proposals=proposals, head_units=head_units,
                       name=name)
    model(np.zeros((1, *backbone.input.shape[1:]), "float32"))
    return model


def loss_and_metrics(kind: str, n_out: int, dice_smooth: float = 1.0):
    """(loss, metrics, monitor, mode) of a task kind; detection computes its own loss."""
    if kind == "binary":
        return (keras.losses.BinaryCrossentropy(from_logits=True),
                [keras.metrics.AUC(from_logits=True, name="auc"),
                 keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")], "val_auc", "max")
    if kind == "multilabel":
        return (keras.losses.BinaryCrossentropy(from_logits=True),
                [keras.metrics.AUC(multi_label=True, num_labels=n_out, from_logits=True,
                                   name="auc")], "val_auc", "max")
    if kind == "segmentation":
        # mtpret eq. 7: 1 / N_Seg * sum_i (1 - Dice_i), one Dice per image (not pooled)
        return (DiceLoss(smooth=dice_smooth, per_image=True, from_logits=True),
                [keras.metrics.BinaryIoU(target_class_ids=[0, 1], threshold=0.0, name="miou")],
                "val_miou", "max")
    return None, [], "val_loss", "min"


def evaluate_task(kind: str, model, test, cache, run_dir, title: str) -> tuple[dict, list]:
    """Test metrics of one task -- AUC + accuracy / sensitivity / specificity at probability 0.5
    (binary), mean and per-class AUC (multi-label), Dice + IoU + mean IoU (segmentation), mAP and
    per-class AP at IoU 0.5 (detection) -- with ``predictions/test.npz`` and a plot
    (``plots/roc_test.png`` titled ``title``, or ``plots/example_test.png``, ``title`` + its
    Dice). Returns (metrics, calibration report lines)."""
    result, calibration_md = {}, []
    if kind in ("binary", "multilabel"):
        from .evaluation.plots import plot_roc_curves

        logits, y = predict_dataset(model, test, np.float64)
        labels = ["abnormal"] if kind == "binary" else list(cache.labels)
        run_dir.save_predictions("test", y_true=y, logits=logits, labels=np.array(labels))
        p = expit(logits)
        auc = M.per_class_auc(y, p, labels)
        result.update(per_class_auc=auc, mauc=M.mean_of(auc))
        if kind == "binary":
            t = M.threshold_metrics(y, p, 0.5, labels)["mean"]
            result.update(auc=auc[labels[0]], accuracy=t.get("accuracy"),
                          sensitivity=t.get("sensitivity"), specificity=t.get("specificity"))
        else:
            result["auc"] = result["mauc"]
        plot_roc_curves(y, p, labels, run_dir.file("plots", "roc_test.png"), title=title)
        result["calibration"], calibration_md = calibration_section(y, p, labels, run_dir)
    elif kind == "segmentation":
        from .evaluation.multiclass_plots import plot_mask_overlay

        logits, y = predict_dataset(model, test, np.float32)
        p = expit(logits)
        run_dir.save_predictions("test", y_true=y.astype(np.uint8),
                                 prob=(p * 255).round().astype(np.uint8))
        seg = segmentation_metrics(y, p)
        result.update(dice=seg["dice"]["mean"], miou=seg["mean_iou"]["mean"],
                      iou=seg["iou"]["mean"], dice_std=seg["dice"]["std"])
        x0 = next(iter(test))[0][0]
        plot_mask_overlay(np.asarray(x0), y[0], p[0], run_dir.file("plots", "example_test.png"),
                          title=f"{title}, Dice {seg['per_image']['dice'][0]:.3f}")
    else:
        preds, gts = [], []
        for images, boxes in test.raw:
            preds += model.detect(np.asarray(images))
            for b in np.asarray(boxes):
                keep = b[:, 4] >= 0
                gts.append({"boxes": to_xyxy(b[keep, :4]), "labels": b[keep, 4].astype(int)})
        classes = list(cache.box_classes)
        ap = detection_ap(preds, gts, classes)
        flat = {f"pred_{k}": np.concatenate([p_[k] for p_ in preds]) for k in ("boxes", "scores",
                                                                             "labels")}
        flat["pred_image"] = np.concatenate([np.full(len(p_["scores"]), i)
                                             for i, p_ in enumerate(preds)])
        run_dir.save_predictions("test", **flat)
        result.update(map=ap["mAP"], per_class_ap=ap["per_class"], n_gt=ap["n_gt"],
                      ap_active=ap["per_class"][classes[0]],
                      ap_latent=ap["per_class"][classes[1]] if len(classes) > 1 else None)
    return result, calibration_md
