"""multiloss (Rajaraman, Zamzmi & Antani): EfficientNet-B0 U-Net lung segmentation, lung-cropped
pediatric CXRs, 12 classifiers trained with different losses, and their ensembles.

``cxr-keras run multiloss [--stage segment|classify|ensemble|all] [--quick] [--dataset phantom|real]``
or ``multiloss.run(multiloss.Config(...), out="runs", stage="all")`` (phantom data by default).

Stages (one run folder; each stage reads what the previous one wrote, and finished models are
kept, so a stage can be rerun or resumed; also :func:`segment`, :func:`classify`, :func:`ensemble`):

- ``segment``: a U-Net per segmentation loss (5) trained on a lung-mask set, evaluated on
  Montgomery (Table 1, Fig. 3); the top-3 masks are AND-ed; every Kermany image is lung-cropped
  (bounding box, 512x512, 1%/99% contrast stretch).
- ``classify``: the best U-Net's encoder truncated at block5c_add + classification top, trained
  once per classification loss (12) on the crops (Table 2, Figs. 4-5).
- ``ensemble``: top-K (K = 3, 5) by MCC: majority vote, average, SLSQP-weighted average and
  stacking (Table 3, Figs. 6-7); model-level ensembles and their SLSQP-weighted average (Tables
  4-5, Fig. 8); McNemar / DeLong tests; Grad-CAM (Fig. 9); ``report.md`` beside the paper.

Data: ``--dataset phantom`` (default) writes synthetic copies of the three datasets;
``--dataset real`` reads ``--data-root`` (Kermany ``chest_xray``), ``--lungmask-root`` (Kaggle
"Chest X-ray Masks and Labels"; ``--root lungmasks=DIR``) and ``--montgomery-root``
(MontgomerySet; ``--root montgomery=DIR``).

``--distributed``: the networks train data-parallel (their pipelines split the rows); every
process makes the predictions the next stage is built from; process 0 alone the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np

from .. import ensemble as E
from .._argtypes import nonnegative_float
from ..data.augment import get_preset
from ..data.cache import Cache, build_cache
from ..data.images import read_image
from ..data.lung_crop import and_ensemble, lung_crop_table
from ..data.pipeline import make_dataset
from ..data.tables import sources_for_training
from ..evaluation.calibration import compare_calibration, comparison_calibration_table
from ..evaluation.multiclass import delong_ovr, mcnemar_test, multiclass_metrics
from ..evaluation.multiclass_plots import plot_confusion_roc_pr, plot_mask_overlay, plot_polar
from ..evaluation.plots import plot_image_rows
from ..evaluation.report import metrics_table, phantom_note
from ..evaluation.segmentation import segmentation_metrics, wilcoxon_paired
from ..explain.figures import models_gradcam
from ..export import load_keras_model as _load  # sub-models predict or lend weights
from ..inference.batches import predict_dataset
from ..io import DataError
from ..losses.calibrated import get_classification_loss
from ..losses.segmentation import SEGMENTATION_LOSSES as SEGMENTATION_LOSS_FNS
from ..models import efficientnet_classifier, efficientnet_unet, model_level_ensemble
from ..models.batchnorm import set_bn_momentum
from ..models.efficientnet_unet import DEEPEST_CONV
from ..training import RunFolder, fit_stage, multihost
from . import lifecycle
from . import multiloss_paper as paper
from .common import cache_of, complete_cache, phantom_or_real_root
from .lifecycle import RecipeConfig, RunOptions, config_from_args, options_from_args

SEGMENTATION_LOSSES = ("bce", "bce_dice", "focal", "tversky", "focal_tversky")
CLASSIFICATION_LOSSES = ("cce", "focal", "kld", "hinge", "ls_cce", "ls_focal", "cal_cce",
                         "cce_entropy", "cal_neg_entropy", "cal_kld", "cal_focal", "cal_hinge")
STAGES = ("segment", "classify", "ensemble")
CLASSES = paper.CLASSES


@dataclass
class Config(RecipeConfig):
    """Every setting of a run; defaults are the paper's (Secs. 2.2-2.3) unless marked CHOICE."""
    weights: str | None = "imagenet"        # encoder of the U-Nets: "imagenet", None or a file
    width_coefficient: float = 1.0          # EfficientNet-B0; --quick uses a narrower one
    depth_coefficient: float = 1.0          # B0 depth; --quick uses 10 blocks instead of 16
    decoder_filters: tuple = (256, 128, 64, 32, 16)  # segmentation_models' U-Net decoder
    truncate_at: str = "block5c_add"        # classifier's cut (Sec. 2.3); block5b_add at depth 0.5
    bn_momentum: float | None = None        # None: Keras' 0.99; quick runs 0.9 (a few dozen
                                            # steps would leave the moving statistics unsettled)
    seg_losses: tuple = SEGMENTATION_LOSSES
    seg_size: int = 512                     # masks predicted at 512x512 (Sec. 2.2.1)
    seg_batch: int = 8                      # CHOICE (paper silent)
    seg_epochs: int = 40                    # CHOICE (paper silent), best by validation loss
    seg_lr: float = 1e-3                    # Adam 1e-3, reduced when validation loss plateaus
    seg_plateau: tuple = (0.5, 3)           # CHOICE: factor, patience (epochs)
    seg_val_fraction: float = 0.1           # 10% of the training masks, fixed seed
    seg_train_sources: tuple = ("shenzhen",)  # CHOICE: Montgomery is the test set, so its
                                              # images are kept out of the lung-mask training set
    seg_top: int = 3                        # AND of the top-3 masks
    seg_rank_by: str = "IoU"                # top-3 by IoU ...
    seg_select_on: str = "val"              # ... on validation (CHOICE; paper: on Montgomery)
    crop_size: int = 512                    # lung crops resized to 512x512 (Sec. 2.2.3)
    crop_margin: float = 0.0                # original code: 0.05 per side
    stretch: tuple = (1.0, 99.0)            # saturate the darkest / brightest 1%
    cls_size: int = 256                     # classifier input (block5c_add = 16x16; CHOICE)
    cls_losses: tuple = CLASSIFICATION_LOSSES
    cls_batch: int = 16                     # original code's batch (paper silent)
    cls_epochs: int = 30                    # CHOICE (paper silent), best by validation loss
    cls_lr: float = 1e-3                    # SGD 1e-3, momentum 0.9 (original code: 1e-4, Nesterov)
    cls_momentum: float = 0.9
    cls_nesterov: bool = False
    cls_augment: str = "multiloss"          # CHOICE: the segmentation augmentation (paper silent)
    val_fraction: float = 0.1               # 10% of Kermany train, fixed seed
    encoder_from: str = "best"              # U-Net whose encoder starts the classifiers: the
                                            # best by the ranking above, or a loss name
    top_k: tuple = (3, 5)
    select_on: str = "val"                  # top-K by MCC on validation (CHOICE; paper: test)
    slsqp_starts: int = 10                  # random starts (+ uniform); original code: 50
    stacking_epochs: int = 300
    ensemble_epochs: int = 10               # model-level ensembles: CHOICE (paper silent)
    gradcam_images: int = 4
    phantom_lungmasks: int = 800            # phantom set sizes (real: 800, 138, 5856)
    phantom_montgomery: int = 138
    phantom_kermany: int = 1200
    phantom_size: int = 512


QUICK = dict(weights=None, width_coefficient=0.25, depth_coefficient=0.5,
             truncate_at="block5b_add", decoder_filters=(64, 32, 16, 16, 8), bn_momentum=0.9,
             seg_size=64, seg_batch=16, seg_epochs=5, seg_lr=2e-3, crop_size=128, cls_size=112,
             cls_batch=16, cls_epochs=5, cls_lr=1e-2, stacking_epochs=150, ensemble_epochs=2,
             gradcam_images=3, phantom_lungmasks=160, phantom_montgomery=32,
             phantom_kermany=500, phantom_size=256)


# ------------------------------------------------------------------------------- command line

SHORTCUTS = {  # command-line options of their own; --set FIELD=VALUE reaches every field
    "weights": "U-Net encoder: 'imagenet' (default), 'none', or a local weights file",
    "seg_losses": "comma-separated subset of: " + ", ".join(SEGMENTATION_LOSSES),
    "cls_losses": "comma-separated subset of: " + ", ".join(CLASSIFICATION_LOSSES),
    "seg_epochs": "U-Net training epochs",
    "cls_epochs": "classifier training epochs",
    "select_on": dict(choices=["val", "test"], help="pick the top-K (and the AND-ed masks) on validation "
                      "(default) or on test as the paper did (select_on and seg_select_on)"),
    "crop_margin": dict(type=nonnegative_float, help="widen the lung box by this fraction per side "
                        "(original code: 0.05)"),
}


def build_parser():
    p = lifecycle.parser("multiloss", __doc__, "real", Config, SHORTCUTS)
    p.add_argument("--stage", choices=STAGES + ("all",), default="all",
                   help="segment, classify, ensemble, or all in turn (default)")
    p.add_argument("--lungmask-root", default=None,
                   help="Kaggle 'Chest X-ray Masks and Labels' (= --root lungmasks=DIR)")
    p.add_argument("--montgomery-root", default=None,
                   help="the folder holding MontgomerySet (= --root montgomery=DIR)")
    p.add_argument("--original-optimizer", action="store_true", default=None,
                   help="the original code's SGD: lr 1e-4, Nesterov momentum 0.9 (cls_lr, "
                        "cls_nesterov)")
    return p


def _shortcut_settings(args) -> dict:
    """The Config settings of the options that set other fields than their own."""
    given = {"seg_select_on": args.select_on} if args.select_on is not None else {}
    return dict(given, **(dict(cls_lr=1e-4, cls_nesterov=True) if args.original_optimizer else {}))


def from_command_line(argv=None, with_stage=False) -> tuple:
    """(Config, RunOptions) of a ``cxr-keras run multiloss`` command line, and its ``--stage``
    third with ``with_stage``."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(Config, args, QUICK, SHORTCUTS, translate=_shortcut_settings)
    opts = options_from_args(args, {"lungmasks": "lungmask_root", "montgomery": "montgomery_root"})
    return (resolve(cfg), opts) + ((args.stage,) if with_stage else ())


def resolve(cfg: Config) -> Config:
    """The configuration as it runs: loss names checked, the AND of at most as many masks as
    there are U-Nets, top-K ensembles only for K up to the number of classifiers."""
    for what, names, known in (("seg_losses", cfg.seg_losses, SEGMENTATION_LOSSES),
                               ("cls_losses", cfg.cls_losses, CLASSIFICATION_LOSSES)):
        bad = [n for n in names if n not in known]
        if bad or not names:
            raise DataError(f"{what}: unknown name(s) {bad}; known: {', '.join(known)}")
    lifecycle.check_choices(cfg, select_on=("val", "test"), seg_select_on=("val", "test"))
    return replace(cfg, seg_losses=tuple(cfg.seg_losses), cls_losses=tuple(cfg.cls_losses),
                   seg_top=min(cfg.seg_top, len(cfg.seg_losses)),
                   top_k=tuple(k for k in cfg.top_k if k <= len(cfg.cls_losses)))


def main(argv=None) -> int:
    cfg, opts, stage = from_command_line(argv, with_stage=True)
    run(cfg, stage=stage, opts=opts)
    return 0


# ---------------------------------------------------------------------------------------- run

def run(cfg: Config | None = None, out="runs", data_root=None, *, stage: str = "all",
        opts: RunOptions | None = None, **options) -> RunFolder:
    """Run ``stage`` (or all three in turn) of one configuration (phantom data when
    ``data_root`` is None; the lung-mask set and Montgomery from ``roots={"lungmasks": ...,
    "montgomery": ...}``); returns its run folder, a finished one as it is unless a single stage
    is asked (it is rerun on what is there). ``options``: see :class:`RunOptions`."""
    cfg, opts = lifecycle.setup(cfg or Config(), resolve, ("real", "kermany"), out, data_root, opts,
                                options)
    if stage not in STAGES + ("all",):
        raise DataError(f"stage must be one of {', '.join(STAGES)} or 'all', got {stage!r}")
    if opts.cache is not None:
        raise DataError("cache: multiloss builds its three caches under out/_data")
    return _execute(cfg, opts, STAGES if stage == "all" else (stage,))


segment, classify, ensemble = (lifecycle.stage_function(run, name) for name in STAGES)


def _execute(cfg: Config, opts: RunOptions, stages: tuple) -> RunFolder:
    """The stages asked, in one run folder (:func:`lifecycle.execute_stages`); ``force`` empties
    the first stage asked and every later one."""
    def folders(path, stage):
        return [path / "segment", path / "crops", *path.glob("crops_cache_*")] \
            if stage == "segment" else [path / stage]

    return lifecycle.execute_stages(
        "multiloss", cfg, opts, STAGES, stages, folders=folders, train=_train, evaluate=_evaluate,
        prepare=lambda cfg, opts: prepare_data(cfg, opts) if "segment" in stages else None)


def _train(cfg, run_dir, data, rt, opts, stages) -> dict:
    """Every process: the networks of the stages asked, and the predictions each next stage is
    built from; returns what :func:`_evaluate` reports."""
    state = {"t0": time.perf_counter()}
    crops = None if "segment" in stages else _crops_cache(cfg, run_dir)
    for s in stages:
        t0 = time.perf_counter()
        if s == "segment":
            state["segment"] = _train_segmenters(cfg, run_dir, data, rt, opts)
        crops = crops or _crops_cache(cfg, run_dir)
        if s == "classify":
            _train_classifiers(cfg, run_dir, crops, rt, opts)
        elif s == "ensemble":
            state["ranking"] = _train_model_level(cfg, run_dir, crops, rt, opts)
        state[f"{s}_seconds"] = time.perf_counter() - t0
    state["crops"] = crops
    return state


def _evaluate(cfg, run_dir, data, state, opts, stages):
    """Process 0: every table, figure and the report of the stages that ran."""
    if "segment" in stages:
        _segment_results(cfg, run_dir, data, state["segment"], state["segment_seconds"])
    if "classify" in stages:
        _classify_results(cfg, run_dir, state["crops"], state["classify_seconds"])
    if "ensemble" in stages:
        _ensemble_results(cfg, run_dir, state["crops"], state["ranking"])
    m = run_dir.update_metrics(**{f"seconds_{'_'.join(stages)}": time.perf_counter() - state["t0"]})
    run_dir.write_text("report.md", report(cfg, m))


def _crops_cache(cfg, run_dir) -> Path:
    path = run_dir.file(f"crops_cache_{cfg.cls_size}")
    if not complete_cache(path):
        raise DataError(f"{run_dir.path}: no lung crops yet; run the segment stage first "
                        "(--stage segment)")
    return path


# ---------------------------------------------------------------------------------------- data

def _preset(size: int, name: str = "multiloss"):
    """The augmentation preset with the +-2 pixel shift expressed for ``size``."""
    base = get_preset(name)
    return replace(base, translate=2.0 / size) if base.translate else base


def prepare_data(cfg: Config, opts: RunOptions) -> SimpleNamespace:
    """The paper's three datasets as caches (built once under ``out/_data``): ``seg`` (lung
    masks of ``seg_train_sources``, train + validation), ``montgomery`` (test) and ``kermany``."""
    size = cfg.phantom_size
    roots = {name: phantom_or_real_root(name, cfg, opts, phantom_n=n, phantom_size=size)
             for name, n in (("lungmasks", cfg.phantom_lungmasks),
                             ("montgomery", cfg.phantom_montgomery),
                             ("kermany", cfg.phantom_kermany))}
    sources = tuple(cfg.seg_train_sources)
    seg_table = partial(sources_for_training, sources=sources, val_fraction=cfg.seg_val_fraction,
                        seed=cfg.seed, by="patient", where=f"{roots['lungmasks']} (lung masks)")
    return SimpleNamespace(
        seg=cache_of("lungmasks", roots["lungmasks"], opts, cache_size=cfg.seg_size,
                     table_fn=seg_table,
                     tag=f"multiloss-seg {sources} {cfg.seg_val_fraction} {cfg.seed}"),
        montgomery=cache_of("montgomery", roots["montgomery"], opts, cache_size=cfg.seg_size,
                            table_options={"split": "test"}),
        kermany=cache_of("kermany", roots["kermany"], opts, cache_size=cfg.seg_size,
                         table_options={"classes": "three", "val_fraction": cfg.val_fraction,
                                        "seed": cfg.seed}))


def _sub(run_dir, *parts, **describe):
    """A sub-model's folder; ``describe`` goes to its ``config.json`` (what ``cxr-keras export``
    records as the model's preprocessing)."""
    return run_dir.sub(*parts, config=describe and dict(describe, paper="multiloss",
                                                        normalization="none"))


# ------------------------------------------------------------------------------------ segment

def train_segmenter(cfg, run_dir, data, loss_name, rt, opts):
    """One U-Net trained with ``loss_name`` (Sec. 2.2.1); returns its sub-run folder."""
    sub = _sub(run_dir, "segment", loss_name, model=f"U-Net ({loss_name} loss)", crop=cfg.seg_size,
               cache_size=cfg.seg_size, input="whole CXR, RGB on 0-255")
    if (sub.checkpoints / "train.weights.h5").exists():
        return sub
    kw = dict(batch_size=cfg.seg_batch, seed=cfg.seed, normalization="none", target="mask")
    # full batches only: a last short batch would trace the train step a second time (seconds
    # per model on a CPU); the order changes every epoch, so every image is still seen
    train = make_dataset(data.seg, "train", preset=_preset(cfg.seg_size), training=True,
                         drop_remainder=True, **kw)
    val = make_dataset(data.seg, "val", **kw)
    model = efficientnet_unet((cfg.seg_size, cfg.seg_size, 3), weights=cfg.weights,
                              width_coefficient=cfg.width_coefficient,
                              decoder_filters=tuple(cfg.decoder_filters),
                              depth_coefficient=cfg.depth_coefficient)
    set_bn_momentum(model, cfg.bn_momentum)
    factor, patience = cfg.seg_plateau
    fit_stage(model, train, val, sub, "train", epochs=cfg.seg_epochs,
              optimizer=keras.optimizers.Adam(cfg.seg_lr), loss=SEGMENTATION_LOSS_FNS[loss_name](),
              metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], name="iou")],
              monitor="val_loss", mode="min", **lifecycle.fit_options(rt, opts, cfg.seed),
              callbacks=[keras.callbacks.ReduceLROnPlateau(factor=factor, patience=patience,
                                                           min_lr=1e-6)])
    return sub


def predict_masks(sub, cache, split, cfg, name, model=None):
    """Mask probabilities (uint8, p * 255) of a U-Net on a cache split, stored once."""
    f = sub.file("predictions", f"{name}.npz")
    if f.exists():
        return sub.load_predictions(name)["proba"]
    ds = make_dataset(cache, split, batch_size=cfg.seg_batch, normalization="none",
                      target="none")
    model = model or _load(sub.checkpoints / "best.keras")
    proba, _ = predict_dataset(model, ds)
    proba = np.round(proba[..., 0] * 255).astype(np.uint8)
    sub.save_predictions(name, proba=proba)
    return proba


def _true_masks(cache, split):
    c = Cache(cache)
    return c.load(c.rows(split))[1]


def _train_segmenters(cfg, run_dir, data, rt, opts) -> dict:
    """Stage 1, every process: a U-Net per loss, ranked on their masks; the AND of the top ones
    lung-crops Kermany (Sec. 2.2.3); the best (or ``encoder_from``) starts the classifiers."""
    val_true, test_true = _true_masks(data.seg, "val"), _true_masks(data.montgomery, None)
    per_loss = {}
    for name in cfg.seg_losses:
        print(f"[segment] U-Net with the {name} loss")
        sub = train_segmenter(cfg, run_dir, data, name, rt, opts)
        with multihost.local():
            best = _load(sub.checkpoints / "best.keras")
            val_p = predict_masks(sub, data.seg, "val", cfg, "val", best)
            test_p = predict_masks(sub, data.montgomery, None, cfg, "montgomery", best)
        per_loss[name] = {"val": segmentation_metrics(val_true, val_p / 255.0),
                          "test": segmentation_metrics(test_true, test_p / 255.0)}
    ranked = _rank_segmenters(per_loss, cfg)
    top = ranked[:cfg.seg_top]
    encoder = ranked[0] if cfg.encoder_from == "best" else cfg.encoder_from
    if encoder not in cfg.seg_losses:
        raise DataError(f"encoder_from={cfg.encoder_from!r} is not one of the trained U-Nets "
                        f"{cfg.seg_losses}")
    run_dir.update_metrics(encoder_from=encoder)
    with multihost.local():
        crop_kermany(cfg, run_dir, data, top)
    return {"per_loss": per_loss, "ranked": ranked, "top": top, "test_true": test_true}


def _segment_results(cfg, run_dir, data, state, seconds) -> dict:
    """Table 1 (with the AND of the top masks), Wilcoxon tests, Figs. 1 and 3."""
    per_loss, top, test_true = state["per_loss"], state["top"], state["test_true"]
    masks = [predict_masks(_sub(run_dir, "segment", n), data.montgomery, None, cfg, "montgomery")
             for n in top]
    ensemble_mask = and_ensemble([m / 255.0 for m in masks])
    per_loss = dict(per_loss, ensemble={"test": segmentation_metrics(test_true, ensemble_mask)})
    seg = {"table1": {k: _seg_summary(v["test"]) for k, v in per_loss.items()},
           "ranking": state["ranked"], "top": top, "ranked_on": cfg.seg_select_on,
           "val": {k: _seg_summary(v["val"]) for k, v in per_loss.items() if "val" in v},
           "wilcoxon_iou_vs_ensemble": _seg_tests(per_loss, top), "seconds": seconds}
    run_dir.update_metrics(segmentation=seg)
    _segment_figures(cfg, run_dir, data, per_loss, test_true, ensemble_mask)
    _crop_figure(cfg, run_dir, data, top)
    return seg


SEG_COLUMNS = {"IoU": "iou", "Dice": "dice", "Accuracy": "accuracy", "mean IoU": "mean_iou"}


def _seg_summary(m):
    """Table 1 cells (mean, std) from a segmentation_metrics result."""
    return {col: (m[key]["mean"], m[key]["std"]) for col, key in SEG_COLUMNS.items()}


def _rank_segmenters(per_loss, cfg):
    key = cfg.seg_rank_by
    where = "val" if cfg.seg_select_on == "val" else "test"
    score = {n: per_loss[n][where][SEG_COLUMNS[key]]["mean"] for n in cfg.seg_losses}
    return sorted(cfg.seg_losses, key=lambda n: -score[n])


def _seg_tests(per_loss, top):
    ens = per_loss["ensemble"]["test"]["per_image"]["iou"]
    return {n: wilcoxon_paired(per_loss[n]["test"]["per_image"]["iou"], ens) for n in top}


def _segment_figures(cfg, run_dir, data, per_loss, test_true, ensemble_mask):

    values = {paper.SEGMENTATION_TITLES[k]: {"IoU": v["test"]["iou"]["mean"],
                                            "Dice": v["test"]["dice"]["mean"]}
              for k, v in per_loss.items()}
    plot_polar(values, ("IoU", "Dice"), run_dir.file("plots", "fig3_segmentation_polar.png"),
               title="Fig. 3: IoU and Dice on Montgomery")
    c = Cache(data.montgomery)
    images = c.load(c.rows(None).iloc[:1])[0]
    plot_mask_overlay(images[0], test_true[0], ensemble_mask[0],
                      run_dir.file("plots", "segmentation_example.png"))


def _kermany_masks(cfg, run_dir, data, top):
    """The AND of the top U-Nets' masks on every Kermany image (predicted once)."""
    probs = [predict_masks(_sub(run_dir, "segment", n), data.kermany, None, cfg, "kermany")
             for n in top]
    return and_ensemble([p / 255.0 for p in probs])


def crop_kermany(cfg, run_dir, data, top) -> Path:
    """Lung-crop every Kermany image with the AND of the top U-Nets' masks (Sec. 2.2.3)."""
    out = run_dir.file("crops")
    cache_dir = run_dir.file(f"crops_cache_{cfg.cls_size}")
    if complete_cache(cache_dir):
        return cache_dir
    rows = Cache(data.kermany).rows(None)
    table, empty = lung_crop_table(rows, _kermany_masks(cfg, run_dir, data, top), out,
                                   dataset="kermany_lungcrop", classes=CLASSES, size=cfg.crop_size,
                                   margin=cfg.crop_margin, low=cfg.stretch[0], high=cfg.stretch[1])
    build_cache(table, cache_dir, size=cfg.cls_size, workers=1, progress=False)
    run_dir.update_metrics(crops={"images": len(rows), "empty_masks": empty})
    return cache_dir


def _crop_figure(cfg, run_dir, data, top, n=4):
    """Fig. 1: image, AND-ed mask, lung crop."""
    rows, out = Cache(data.kermany).rows(None), run_dir.file("crops")
    masks = _kermany_masks(cfg, run_dir, data, top)
    panels = [(read_image(rows.iloc[i]["path"]), masks[i],
               read_image(sorted(out.glob(f"{i:05d}_*.png"))[0])) for i in range(n)]
    plot_image_rows(panels, ("image", "AND-ed mask", "lung crop"),
                    run_dir.file("plots", "fig1_lung_crops.png"))


# ----------------------------------------------------------------------------------- classify

def _cls_describe(cfg, what):
    return dict(model=what, crop=cfg.cls_size, cache_size=cfg.cls_size,
                input="lung crop (box of the AND-ed U-Net masks, contrast-stretched 1%/99%), "
                      "RGB on 0-255")


def _cls_datasets(cfg, crops):
    kw = dict(batch_size=cfg.cls_batch, seed=cfg.seed, normalization="none", one_hot=True)
    train = make_dataset(crops, "train", preset=_preset(cfg.cls_size, cfg.cls_augment),
                         training=True, drop_remainder=True, **kw)
    return train, make_dataset(crops, "val", **kw), make_dataset(crops, "test", **kw)


def _sgd(cfg):
    return keras.optimizers.SGD(cfg.cls_lr, momentum=cfg.cls_momentum, nesterov=cfg.cls_nesterov)


def train_classifier(cfg, run_dir, crops, loss_name, encoder, rt, opts):
    """One classifier (Sec. 2.3) trained with ``loss_name`` from the trained U-Net ``encoder``
    (a model); returns its sub-run folder."""
    sub = _sub(run_dir, "classify", loss_name,
               **_cls_describe(cfg, f"classifier ({loss_name} loss)"))
    if not (sub.checkpoints / "train.weights.h5").exists():
        spec = get_classification_loss(loss_name)
        train, val, _ = _cls_datasets(cfg, crops)
        model = efficientnet_classifier(encoder, num_classes=len(CLASSES),
                                        truncate_at=cfg.truncate_at,
                                        input_shape=(cfg.cls_size, cfg.cls_size, 3),
                                        output_regularizer=spec.output_regularizer)
        fit_stage(model, train, val, sub, "train", epochs=cfg.cls_epochs, optimizer=_sgd(cfg),
                  loss=spec.make_loss(), metrics=["accuracy"], monitor="val_loss", mode="min",
                  **lifecycle.fit_options(rt, opts, cfg.seed))
    return sub


def class_predictions(sub, crops, cfg):
    """{split: (y_true, proba)} of a trained classifier on val and test, stored once."""
    out = {}
    _, val, test = _cls_datasets(cfg, crops)
    model = None
    for split, ds in (("val", val), ("test", test)):
        if not sub.file("predictions", f"{split}.npz").exists():
            model = model or _load(sub.checkpoints / "best.keras")
            proba, y = predict_dataset(model, ds)
            sub.save_predictions(split, y_true=np.argmax(y, axis=1), proba=proba,
                                 labels=np.array(CLASSES))
        p = sub.load_predictions(split)
        out[split] = (p["y_true"], p["proba"].astype(np.float64))
    return out


def _train_classifiers(cfg, run_dir, crops, rt, opts):
    """Stage 2, every process: a classifier per loss from the chosen U-Net's encoder, and its
    validation and test predictions."""
    encoder = run_dir.metrics().get("encoder_from")
    if encoder is None:
        raise DataError(f"{run_dir.path}: run the segment stage first (--stage segment)")
    with multihost.local():
        unet = _load(run_dir.file("segment", encoder, "checkpoints", "best.keras"))
    for name in cfg.cls_losses:
        print(f"[classify] classifier with the {name} loss")
        sub = train_classifier(cfg, run_dir, crops, name, unet, rt, opts)
        with multihost.local():
            class_predictions(sub, crops, cfg)


def _classifier_results(cfg, run_dir, crops) -> tuple[dict, dict]:
    """({loss: {split: (y, proba)}}, {loss: {split: metrics}}) of the trained classifiers."""
    preds = {}
    for n in cfg.cls_losses:
        sub = _sub(run_dir, "classify", n)
        if not sub.file("checkpoints", "best.keras").exists():
            raise DataError(f"{run_dir.path}: run the classify stage first (--stage classify)")
        preds[n] = class_predictions(sub, crops, cfg)
    results = {n: {split: multiclass_metrics(y, p, labels=CLASSES) for split, (y, p) in v.items()}
               for n, v in preds.items()}
    return preds, results


def _classify_results(cfg, run_dir, crops, seconds) -> dict:
    """Table 2, Figs. 4-5, and how well each loss calibrates."""
    preds, results = _classifier_results(cfg, run_dir, crops)
    y_test = next(iter(preds.values()))["test"][0]
    calibration, _ = compare_calibration(y_test, {n: v["test"][1] for n, v in preds.items()}, CLASSES,
                                         run_dir, "classifiers")
    run_dir.update_metrics(classification=results, classify_seconds=seconds,
                           classification_calibration=calibration)
    _classify_figures(cfg, run_dir, results, crops)
    return results


def _row(m):
    """The paper's seven metrics from a multiclass_metrics dict."""
    return {"Accuracy": m["accuracy"], "AUROC": m["auroc"], "AUPRC": m["auprc"],
            "Precision": m["precision"], "Recall": m["recall"], "F-score": m["f1"],
            "MCC": m["mcc"]}


def _classify_figures(cfg, run_dir, results, crops):

    titles = _loss_titles()
    plot_polar({titles[k]: {"F-score": v["test"]["f1"], "MCC": v["test"]["mcc"]}
                for k, v in results.items()}, ("F-score", "MCC"),
               run_dir.file("plots", "fig4_classifiers_polar.png"),
               title="Fig. 4: F-score and MCC of the classifiers (test)")
    best = max(results, key=lambda k: results[k][cfg.select_on]["mcc"])
    y, p = class_predictions(_sub(run_dir, "classify", best), crops, cfg)["test"]
    plot_confusion_roc_pr(y, p, CLASSES, run_dir.file("plots", "fig5_best_single"),
                          f"{titles[best]} (best single model)")


def _loss_titles():
    return {n: get_classification_loss(n).title for n in CLASSIFICATION_LOSSES}


# ----------------------------------------------------------------------------------- ensemble

def _train_model_level(cfg, run_dir, crops, rt, opts) -> list:
    """Stage 3, every process: the classifiers ranked by MCC on ``select_on``, and a model-level
    ensemble of the top K trained for each K (Sec. 2.3.2); returns the ranking."""
    with multihost.local():
        _, results = _classifier_results(cfg, run_dir, crops)
    ranking = E.top_k({n: results[n][cfg.select_on]["mcc"] for n in cfg.cls_losses},
                      len(cfg.cls_losses))
    for k in cfg.top_k:
        # the random state the stacking meta-learner of the top K (fitted on process 0 alone,
        # E.fit_stacking reseeds) leaves behind: every process builds the same ensemble
        keras.utils.set_random_seed(cfg.seed)
        _model_level_ensemble(cfg, run_dir, crops, ranking[:k], rt, opts)
    return ranking


def _model_level_ensemble(cfg, run_dir, crops, members, rt, opts):
    """A model-level ensemble of ``members`` (frozen), trained on the train split."""
    sub = _sub(run_dir, "ensemble", f"model_level_top{len(members)}",
               **_cls_describe(cfg, f"model-level ensemble of {', '.join(members)}"))
    train, val, _ = _cls_datasets(cfg, crops)
    if not (sub.checkpoints / "train.weights.h5").exists():
        with multihost.local():
            sources = [_load(run_dir.file("classify", n, "checkpoints", "best.keras"))
                       for n in members]
        model = model_level_ensemble(sources, num_classes=len(CLASSES))
        fit_stage(model, train, val, sub, "train", epochs=cfg.ensemble_epochs,
                  optimizer=_sgd(cfg), loss=keras.losses.CategoricalCrossentropy(),
                  metrics=["accuracy"], monitor="val_loss", mode="min", seed=cfg.seed,
                  jit_compile=rt.jit_compile, verbose=opts.verbose)
    return sub


def _ensemble_results(cfg, run_dir, crops, ranking) -> dict:
    """Tables 3-5, Figs. 6-9, significance tests; ensemble weights and the stacking
    meta-learner are fitted on validation predictions."""
    preds, _ = _classifier_results(cfg, run_dir, crops)
    y_val, y_test = preds[cfg.cls_losses[0]]["val"][0], preds[cfg.cls_losses[0]]["test"][0]
    table3, weights, model_level = {}, {}, {}
    for k in cfg.top_k:
        members = ranking[:k]
        pv = np.stack([preds[n]["val"][1] for n in members])
        pt = np.stack([preds[n]["test"][1] for n in members])
        outputs, w = E.prediction_level(pv, y_val, pt, starts=cfg.slsqp_starts, seed=cfg.seed,
                                        stacking_epochs=cfg.stacking_epochs)
        weights[f"top-{k}"] = dict(zip(members, map(float, w)))
        for method, proba in outputs.items():
            # the vote's classes with its tie rule, in every thresholded entry
            pred = E.majority_vote(pt) if method == "majority voting" else None
            table3[f"{method}, top-{k}"] = multiclass_metrics(y_test, proba, labels=CLASSES,
                                                              pred=pred)
        sub = _sub(run_dir, "ensemble", f"model_level_top{k}")
        model_level[k] = {split: p[1] for split, p in class_predictions(sub, crops, cfg).items()}
        if k == max(cfg.top_k):
            plot_confusion_roc_pr(y_test, outputs["weighted averaging"], CLASSES,
                                  run_dir.file("plots", f"fig7_weighted_top{k}"),
                                  f"weighted averaging, top-{k}")
    table4 = {f"model-level top-{k}": multiclass_metrics(y_test, v["test"], labels=CLASSES)
              for k, v in model_level.items()}
    ks = sorted(model_level)
    pv = np.stack([model_level[k]["val"] for k in ks])
    pt = np.stack([model_level[k]["test"] for k in ks])
    w_final, _ = E.slsqp_weights(pv, y_val, starts=cfg.slsqp_starts, seed=cfg.seed)
    final = E.weighted_average(pt, w_final)
    final_m = multiclass_metrics(y_test, final, labels=CLASSES)
    best = ranking[0]
    best_p = preds[best]["test"][1]
    tests = {"mcnemar_final_vs_best_single": mcnemar_test(y_test, np.argmax(final, 1),
                                                          np.argmax(best_p, 1)),
             "mcnemar_best_vs_members": {n: mcnemar_test(y_test, np.argmax(best_p, 1),
                                                         np.argmax(preds[n]["test"][1], 1))
                                         for n in ranking[1:]}}
    tests["delong_final_vs_best_single"] = delong_ovr(y_test, final, best_p)
    calibrated = {f"model-level top-{k}": v["test"] for k, v in model_level.items()}
    calibration, _ = compare_calibration(y_test, dict(calibrated, **{"final ensemble": final}), CLASSES,
                                         run_dir, "ensembles")
    out = {"ranking": ranking, "ranked_on": cfg.select_on, "table3": table3,
           "slsqp_weights": weights, "table4": table4,
           "final": {"weights": dict(zip([f"model-level top-{k}" for k in ks], map(float, w_final))),
                     "metrics": final_m},
           "tests": tests, "fitted_on": "validation predictions", "calibration": calibration}
    run_dir.update_metrics(ensembles=out)
    _ensemble_figures(cfg, run_dir, table3, y_test, final, crops, ranking, ks)
    return out


def _ensemble_figures(cfg, run_dir, table3, y_test, final, crops, ranking, ks):

    plot_polar({k: {"F-score": v["f1"], "MCC": v["mcc"]} for k, v in table3.items()},
               ("F-score", "MCC"), run_dir.file("plots", "fig6_prediction_level_polar.png"),
               title="Fig. 6: prediction-level ensembles (test)")
    plot_confusion_roc_pr(y_test, final, CLASSES, run_dir.file("plots", "fig8_final_ensemble"),
                          "weighted average of the model-level ensembles")
    gradcam_figure(cfg, run_dir, crops, ranking[:min(3, len(ranking))], max(ks))


def gradcam_figure(cfg, run_dir, crops, members, k, n=None):
    """Fig. 9: Grad-CAM of the top members (their deepest conv) and of the model-level
    ensemble (its 1x1 conv) on test images."""
    n = n or cfg.gradcam_images
    _, _, test = _cls_datasets(cfg, crops)
    xs, ys = next(iter(test.unbatch().batch(n)))
    xs, ys = np.asarray(xs), np.argmax(np.asarray(ys), axis=1)
    models = [(m, _load(run_dir.file("classify", m, "checkpoints", "best.keras")), DEEPEST_CONV)
              for m in members]
    models.append((f"model-level top-{k}",
                   _load(run_dir.file("ensemble", f"model_level_top{k}", "checkpoints",
                                      "best.keras")),
                   "ensemble_conv"))
    models_gradcam(models, xs, ys, CLASSES, run_dir.file("plots", "fig9_gradcam.png"))


# ------------------------------------------------------------------------------------- report

def report(cfg: Config, m: dict) -> str:
    lines = ["# multiloss run", ""]
    lines += phantom_note(cfg.dataset, "lung-mask, Montgomery and Kermany sets", "Paper values are in "
                          "parentheses; `-` where the paper's table did not survive in its text.")
    lines += [f"U-Net: EfficientNet-B0 (width x{cfg.width_coefficient:g}), weights {cfg.weights}, "
              f"{cfg.seg_size}px, {cfg.seg_epochs} epochs; classifiers {cfg.cls_size}px, "
              f"{cfg.cls_epochs} epochs, SGD lr {cfg.cls_lr:g}.", ""]
    seg = m.get("segmentation")
    if seg:
        lines.append(metrics_table(seg["table1"], paper.TABLE1, ("IoU", "Dice", "Accuracy",
                                                                "mean IoU"),
                                   title="Table 1: segmentation on Montgomery (mean ± std)",
                                   names=paper.SEGMENTATION_TITLES))
        lines += [f"Top-{cfg.seg_top} by {cfg.seg_rank_by} on {seg['ranked_on']}: "
                  f"{', '.join(seg['top'])} (paper: {', '.join(paper.TABLE1_TOP3)}). "
                  "IoU is the lung class's; mean IoU averages lung and background (the "
                  "paper's IoU column may be either). Wilcoxon signed-rank p-values, IoU of each "
                  "top model vs the AND ensemble: " + ", ".join(
                      f"{k} {v['pvalue']:.3g}" for k, v in seg["wilcoxon_iou_vs_ensemble"].items())
                  + ".", ""]
        if "crops" in m:
            lines += [f"Lung crops: {m['crops']['images']} Kermany images "
                      f"({m['crops']['empty_masks']} with an empty mask, kept whole).", ""]
    cls = m.get("classification")
    titles = _loss_titles()
    metrics = paper.METRICS
    if cls:
        ours = {titles[k]: _row(v["test"]) for k, v in cls.items()}
        ref = {titles[k]: v for k, v in paper.TABLE2.items()}
        lines.append(metrics_table(ours, ref, metrics, title="Table 2: classifiers (test)"))
        lines += [_mcc_intervals({titles[k]: v["test"] for k, v in cls.items()}), ""]
        calibration = {titles[k]: v for k, v in m.get("classification_calibration", {}).items()}
        lines += comparison_calibration_table(calibration, title="Calibration of the classifiers (test)")
    ens = m.get("ensembles")
    if ens:
        lines += [f"Members ranked by MCC on **{ens['ranked_on']}**: " + ", ".join(ens["ranking"])
                  + f" (paper, on test: {', '.join(paper.TOP5)}). Ensemble weights and the "
                  "stacking meta-learner were fitted on **validation** predictions (the original "
                  "code fitted its weights on the test predictions).", ""]
        lines.append(metrics_table({k: _row(v) for k, v in ens["table3"].items()}, paper.TABLE3,
                                   metrics, title="Table 3: prediction-level ensembles (test)"))
        for k, w in ens["slsqp_weights"].items():
            lines.append(f"SLSQP weights, {k}: " + ", ".join(f"{n} {v:.4f}" for n, v in w.items()))
        lines += [f"(paper, top-5: {list(paper.TABLE3_TOP5_WEIGHTS)})", ""]
        lines.append(metrics_table({k: _row(v) for k, v in ens["table4"].items()}, paper.TABLE4,
                                   metrics, title="Table 4: model-level ensembles (test)"))
        fw = ens["final"]["weights"]
        lines += ["Weights of the final average: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                              fw.items())
                  + f" (paper: {list(paper.TABLE4_WEIGHTS)})", ""]
        final = ens["final"]["metrics"]
        ours5 = {"This run (weighted model-level ensembles)": dict(
            _row(final), **{"MCC 95% CI": _interval(final["mcc_interval"]["wald"])})}
        ref5 = {k: dict(v, **{"MCC 95% CI": _interval(v["MCC 95% CI"])})
                for k, v in paper.TABLE5.items()}
        lines.append(metrics_table(ours5, ref5, metrics + ("MCC 95% CI",),
                                   title="Table 5: final ensemble and the literature (MCC "
                                         "interval: normal approximation, as the paper's)"))
        lines += [_mcc_intervals({"final ensemble": final}), ""]
        lines += comparison_calibration_table(ens.get("calibration", {}), title="Calibration of the ensembles (test)")
        t = ens["tests"]
        mc = t["mcnemar_final_vs_best_single"]
        lines += [f"McNemar, final ensemble vs best single model: p = {mc['p_value']:.3g} "
                  f"({mc['method']}, b = {mc['b']}, c = {mc['c']})."]
        lines += ["McNemar, best single model vs each other member: " + ", ".join(
            f"{n} p = {v['p_value']:.3g}" for n, v in t["mcnemar_best_vs_members"].items()), ""]
    lines += ["Plots: `plots/fig1_lung_crops.png`, `fig3_segmentation_polar.png`, "
              "`fig4_classifiers_polar.png`, `fig5_best_single_*`, "
              "`fig6_prediction_level_polar.png`, `fig7_weighted_top*`, `fig8_final_ensemble_*`, "
              "`fig9_gradcam.png`, `reliability_classifiers.png`, `reliability_ensembles.png`.", ""]
    return "\n".join(lines)


def _interval(pair) -> str:
    lo, hi = pair
    return f"[{lo:.4f}, {hi:.4f}]"


def _mcc_intervals(rows: dict) -> str:
    parts = []
    for name, m in rows.items():
        cp, wald = m["mcc_interval"]["clopper-pearson"], m["mcc_interval"]["wald"]
        parts.append(f"{name}: Clopper-Pearson ({cp[0]:.4f}, {cp[1]:.4f}), "
                     f"normal approximation ({wald[0]:.4f}, {wald[1]:.4f})")
    return ("MCC 95% intervals (the paper calls its intervals exact Clopper-Pearson; its numbers "
            "are the normal approximation): " + "; ".join(parts) + ".")

if __name__ == "__main__":
    raise SystemExit(main())
