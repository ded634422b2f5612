"""mlrfnet (Li et al. 2023): Res2Net50 + ECA + multi-level CSRA classifier + biased focal loss,
on NIH ChestX-ray14 and CheXpert.

``cxr-keras run mlrfnet [--dataset phantom|nih|chexpert|phantom-chexpert] [--ablation A]
[--uncertain mixed|ones|zeros] [--split official|random] [--test-dataset chexpert|nih] [--quick]``

One run = one configuration: training (Adam 1e-4, batch 32, 20 epochs, lr x 0.9 every 2 epochs,
early stop on validation loss; Sec. IV-C), then on the test set (NIH) or valid.csv (CheXpert):
per-class AUC with a bootstrap interval, mean accuracy / sensitivity / specificity / F1 (Table 7),
FLOPs counted from the model's layers and measured seconds per image (Table 8), Grad-CAM against
the NIH BBox_List_2017 boxes (pointing game and IoU, Fig. 11), ROC curves (Fig. 10), training
curves (Figs. 8-9) and a report beside the paper's tables. ``--test-dataset chexpert`` (not in
the paper) also tests the NIH model on CheXpert's valid.csv, per finding the two datasets share
once their labels are harmonised (:func:`cxr_keras.data.harmonise`); ``nih`` the other way.
``experiments/mlrfnet/`` runs the whole grid of Tables 5-11 through :func:`run_many` and :func:`grid_report`.

Python::

    from cxr_keras.recipes import mlrfnet
    run = mlrfnet.run(mlrfnet.Config(**mlrfnet.QUICK, ablation="no_eca"), out="runs")  # phantom
    run.metrics()["test_mean_auc"]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial

import keras
import numpy as np
from scipy.special import expit

from .._argtypes import positive_int
from ..data.cache import Cache
from ..data.datasets.chexpert import COMPETITION_LABELS, LABEL_POLICIES, apply_uncertainty
from ..data.datasets.nih import load_boxes
from ..data.pipeline import imagenet_grey
from ..data.tables import only_split
from ..evaluation import cross_dataset
from ..evaluation import metrics as M
from ..evaluation.flops import model_cost
from ..evaluation.localization import boxes_on_rows, localization_scores, localization_table
from ..evaluation.report import comparison_table, metrics_table, phantom_note
from ..explain.figures import overlay_grid
from ..explain.gradcam import grad_cam
from ..inference.batches import gather_rows, predict_dataset
from ..integrity import verify
from ..io import DataError
from ..losses import BiasedFocalLoss, get_loss
from ..models.batchnorm import set_bn_momentum
from ..models.mlrfnet import gradcam_layers
from ..models.mlrfnet import mlrfnet as mlrfnet_model
from ..training import RunFolder, fit_stage
from . import common, lifecycle
from . import mlrfnet_paper as paper
from .lifecycle import RecipeConfig, RunOptions, config_from_args, execute, options_from_args

DATASETS = ("phantom", "phantom-nih", "phantom-chexpert", "nih", "chexpert")
PAPER_MODEL = {"backbone": "res2net50", "use_eca": True, "use_mrfc": True, "loss": "bfl"}
# ablation -> what it changes in the paper's model (Tables 9-11); "full" is the paper's model
ABLATIONS = {
    "full": {},
    "no_eca": {"use_eca": False},
    "no_mrfc": {"use_mrfc": False},
    "resnet50": {"backbone": "resnet50"},
    "densenet121": {"backbone": "densenet121"},
    "bce": {"loss": "bce"},
    "focal": {"loss": "focal"},
}
POLICIES = LABEL_POLICIES  # CheXpert uncertainty policies: mixed (U-O&U-Z), ones, zeros
SPLITS = ("official", "random")
TEST_DATASETS = ("nih", "chexpert")  # cross-dataset test sets (--test-dataset)


@dataclass
class Config(RecipeConfig):
    """Every setting of a run; defaults are the paper's (Sec. III-IV) unless marked CHOICE."""
    ablation: str = "full"             # Tables 9-11: sets the four fields below (resolve)
    backbone: str = "res2net50"
    use_eca: bool = True
    use_mrfc: bool = True
    loss: str = "bfl"                  # "bfl" (eq. 3), "bce" or "focal" (Table 11)
    lambdas: tuple = (0.5, 0.3, 0.1)   # CSRA lambda for U2, U3, U4
    temperature: object = 99           # CSRA T; "max" = CSRA code's max pooling
    csra_normalize: bool = False       # CSRA code divides scores by the weight norm
    eca_kernel: int = 3
    bfl_alpha: float = 0.4
    bfl_beta: float = 2.0              # CHOICE: the paper gives no value (focal default)
    bfl_shift: float = 0.2
    weights: str | None = "imagenet"
    backbone_options: dict = field(default_factory=dict)  # a reduced backbone (--quick)
    bn_momentum: float | None = None   # None: the backbone's own (Res2Net 0.9, DenseNet 0.99)
    cache_size: int = 256              # resize to 256 ...
    crop: int = 224                    # ... random crop 224 (train), centre crop (eval; CHOICE)
    batch_size: int = 32
    epochs: int = 20
    lr: float = 1e-4
    lr_decay: float = 0.9              # x 0.9 ...
    lr_decay_epochs: int = 2           # ... every 2 epochs
    patience: int = 3                  # CHOICE: "stopped when the val loss no longer decreases"
    split: str = "official"            # NIH: official lists, or "random" 70/10/20 (Table 2)
    val_fraction: float = 0.1          # NIH official / CheXpert: validation carved out of train
    val_by: str = "patient"            # CHOICE: no patient in two splits
    uncertain: str = "mixed"           # CheXpert: mixed (U-O&U-Z), ones, zeros
    train_labels: str = "all"          # CheXpert: train on all 14 observations (N = 14, eq. 3)
    threshold: str = "youden"          # CHOICE for Table 7: per-class Youden threshold on val
    bootstrap: int = 1000
    gradcam_images: int = 6
    max_boxes: int | None = None       # boxes scored in the pointing game (None = all)
    pointing_tolerance: int = 0        # pixels of slack around a box (CHOICE: none)
    latency_images: int = 20
    phantom_n: int = 2000
    phantom_size: int = 256
    test_dataset: str | None = None    # not in the paper: also test on the other dataset's test
                                       # split (CheXpert: valid.csv), on the shared findings

    @property
    def source(self) -> str:
        return "chexpert" if self.dataset.endswith("chexpert") else "nih"


def quick_backbone_options(backbone: str) -> dict:
    """A reduced backbone of the same design for CPU quick runs and tests."""
    if backbone == "densenet121":
        return {"blocks": (1, 2, 2, 1)}
    return {"blocks": (1, 1, 1, 1), "planes": (16, 32, 64, 128), "stem_width": 16}


# the reduced CPU preset (--quick); another ablation's backbone gets its own reduced form
QUICK = dict(weights=None, backbone_options=quick_backbone_options("res2net50"), bn_momentum=0.9,
             cache_size=128, crop=112, batch_size=32, epochs=8, lr=1e-3, bootstrap=200,
             gradcam_images=4, max_boxes=60, latency_images=10, phantom_n=600, phantom_size=256)

SHORTCUTS = {  # command-line options of their own; --set FIELD=VALUE reaches every field
    "dataset": dict(choices=DATASETS, help="'phantom' (= phantom-nih) or 'phantom-chexpert' (synthetic, "
                    "official layout), or 'nih' / 'chexpert' (the real data under --data-root)"),
    "ablation": dict(choices=list(ABLATIONS), help="Tables 9-11: no_eca, no_mrfc, resnet50, densenet121, "
                     "bce, focal (default: full, the paper's model)"),
    "uncertain": dict(choices=POLICIES, help="CheXpert uncertainty policy: mixed (U-O&U-Z, default), ones, zeros"),
    "split": dict(choices=SPLITS, help="NIH: official lists (default) or a 70/10/20 patient split (Table 2)"),
    "weights": "'imagenet' (default), 'none', or a local backbone weights file",
    "batch_size": dict(type=positive_int, help="global batch size"),
    "epochs": "training epochs",
    "phantom_n": dict(type=positive_int, help="images in the phantom dataset"),
    "test_dataset": dict(choices=TEST_DATASETS, help="also test on this dataset's test split "
                         "(CheXpert: valid.csv; phantom runs: its phantom), per finding the two "
                         "datasets share once harmonised (default: none)"),
}


def build_parser():
    return lifecycle.parser("mlrfnet", __doc__, "nih", Config, SHORTCUTS)


def set_ablation(cfg: Config, ablation: str) -> Config:
    """``cfg`` with ``ablation``'s model and loss (Tables 9-11) in place of its own; a reduced
    backbone stays reduced, in the new backbone's family."""
    if ablation not in ABLATIONS:
        raise DataError(f"unknown ablation {ablation!r}; known: {', '.join(ABLATIONS)}")
    new = replace(cfg, ablation=ablation, **dict(PAPER_MODEL, **ABLATIONS[ablation]))
    if cfg.backbone_options and new.backbone != cfg.backbone:
        new = replace(new, backbone_options=quick_backbone_options(new.backbone))
    return new


def resolve(cfg: Config) -> Config:
    """The configuration as it runs: the ablation's model and loss applied (a model field may
    only differ from the paper's model as the ablation says), the choices checked."""
    if cfg.ablation not in ABLATIONS:
        raise DataError(f"unknown ablation {cfg.ablation!r}; known: {', '.join(ABLATIONS)}")
    want = dict(PAPER_MODEL, **ABLATIONS[cfg.ablation])
    clash = [f"{k}={getattr(cfg, k)!r}" for k, v in want.items()
             if getattr(cfg, k) not in (PAPER_MODEL[k], v)]
    if clash:
        raise DataError(f"{', '.join(clash)} is not the ablation {cfg.ablation!r} (which sets "
                        f"{ABLATIONS[cfg.ablation] or PAPER_MODEL}): choose the ablation instead")
    lifecycle.check_choices(cfg, dataset=DATASETS, uncertain=POLICIES, split=SPLITS)
    if cfg.test_dataset not in (None, *TEST_DATASETS) or cfg.test_dataset == cfg.source:
        raise DataError(f"test_dataset must be None or a dataset other than the training one "
                        f"({cfg.source}): one of {', '.join(TEST_DATASETS)}; got {cfg.test_dataset!r}")
    if cfg.backbone_options and cfg.weights is not None:
        raise DataError("a reduced backbone (backbone_options, --quick) is trained from scratch: "
                        "it takes no weights")
    cfg = set_ablation(cfg, cfg.ablation)
    return replace(cfg, lambdas=tuple(cfg.lambdas), backbone_options={
        k: tuple(v) if isinstance(v, list) else v for k, v in cfg.backbone_options.items()})


def from_command_line(argv=None) -> tuple[Config, RunOptions]:
    """(Config, RunOptions) of a ``cxr-keras run mlrfnet`` command line."""
    args = build_parser().parse_args(argv)
    return resolve(config_from_args(Config, args, QUICK, SHORTCUTS)), options_from_args(args)


def run_tag(cfg: Config) -> str:
    tag = f"mlrfnet-{cfg.source}-{cfg.ablation}"
    if cfg.source == "chexpert":
        tag += f"-u{cfg.uncertain}"
    elif cfg.split != "official":
        tag += f"-{cfg.split}"
    if cfg.test_dataset:
        tag += f"-test-{cfg.test_dataset}"
    return tag


def build_model(cfg: Config, num_classes: int, full_size: bool = False):
    """The run's model; ``full_size`` builds the paper-size network at 224 (for its FLOPs)."""
    model = mlrfnet_model(num_classes, backbone=cfg.backbone, use_eca=cfg.use_eca,
                          use_mrfc=cfg.use_mrfc, lambdas=tuple(cfg.lambdas),
                          temperature=cfg.temperature, eca_kernel=cfg.eca_kernel,
                          csra_normalize=cfg.csra_normalize,
                          weights=None if full_size else cfg.weights,
                          input_shape=(224, 224, 3) if full_size else (cfg.crop, cfg.crop, 3),
                          backbone_options=None if full_size else cfg.backbone_options)
    return set_bn_momentum(model, None if full_size else cfg.bn_momentum)


def build_loss(cfg: Config):
    if cfg.loss == "bfl":
        return BiasedFocalLoss(alpha=cfg.bfl_alpha, beta=cfg.bfl_beta, shift=cfg.bfl_shift)
    if cfg.loss in ("bce", "focal"):
        return get_loss(cfg.loss)
    raise DataError(f"loss must be 'bfl', 'bce' or 'focal', got {cfg.loss!r}")


# ---------------------------------------------------------------------------------------- data

class Data:
    """The run's cache, label columns and datasets. CheXpert is cached once with uncertain
    entries kept as NaN, so the three policies share one cache."""
    def __init__(self, cfg: Config, opts: RunOptions):
        self.root = common.phantom_or_real_root(cfg.source, cfg, opts, phantom_n=cfg.phantom_n,
                                                phantom_size=cfg.phantom_size)
        options = {"val_fraction": cfg.val_fraction, "val_by": cfg.val_by, "seed": cfg.seed,
                   **({"split": cfg.split} if cfg.source == "nih"
                      else {"uncertain": "ignore", "blank": "zeros"})}
        cache_path = common.cache_of(cfg.source, self.root, opts, cache_size=cfg.cache_size,
                                     table_options=options, cache=opts.cache)
        self.cache = cache = Cache(cache_path)
        if cfg.source == "chexpert":
            self.labels = (list(COMPETITION_LABELS) if cfg.train_labels == "competition"
                           else list(cache.labels))
            self.eval_labels = list(COMPETITION_LABELS)
        else:
            self.labels = self.eval_labels = list(cache.labels)
        p = common.crop_pipelines(cache, "mlrfnet", cfg.crop, targets=partial(self.targets, cfg),
                                  drop_remainder=True, batch_size=cfg.batch_size, seed=cfg.seed,
                                  normalization="imagenet")
        self.train, self.val, self.test = p.train, p.val, p.test
        self.cross = cross_test_set(cfg, opts, self.labels, p.options) if cfg.test_dataset else None

    def targets(self, cfg: Config, split: str) -> np.ndarray:
        """Labels of ``split`` with the uncertainty policy applied (CheXpert's cache keeps
        uncertain entries as NaN)."""
        cache = self.cache
        y = cache.targets(cache.rows(split))
        if cfg.source == "chexpert":
            y = apply_uncertainty(y, cache.labels, cfg.uncertain)
        return y[:, [cache.labels.index(k) for k in self.labels]]


def cross_test_set(cfg: Config, opts: RunOptions, model_labels, kw: dict) -> dict:
    """``cfg.test_dataset``'s test split (NIH's test list, CheXpert's valid.csv; its phantom for
    a phantom run) cached on its own, labels harmonised onto torchxrayvision's vocabulary, and the
    findings it shares with the model's outputs (vocabulary order). Returns ``dataset``,
    ``findings``, ``columns`` (per finding, the model outputs that map onto it) and ``data``."""
    name = cfg.test_dataset
    phantom = cfg.dataset.startswith("phantom")
    if not phantom and name not in opts.roots:
        raise DataError(f"test_dataset {name!r} on real data needs its folder: --root {name}=DIR")
    root = common.phantom_or_real_root(name, cfg, opts, phantom_n=cfg.phantom_n,
                                       phantom_size=cfg.phantom_size, root=opts.roots.get(name))
    options = {"uncertain": "ignore", "blank": "zeros"} if name == "chexpert" else {}
    cache = Cache(common.cache_of(name, root, opts, cache_size=cfg.cache_size, table_options=options,
                                  table_fn=only_split("test"), tag="test split"))
    return cross_dataset.cross_test_set(cache, name, cfg.source, model_labels, **kw)


# ------------------------------------------------------------------------------------- running

def run(cfg: Config | None = None, out="runs", data_root=None, *, opts: RunOptions | None = None,
        **options) -> RunFolder:
    """Train and evaluate one configuration (phantom NIH when ``data_root`` is None); returns
    its run folder (a finished one as it is). ``options``: see :class:`RunOptions` (``roots``:
    e.g. ``{"chexpert": DIR}``)."""
    cfg, opts = lifecycle.setup(cfg or Config(), resolve, ("nih", "chexpert"), out, data_root, opts,
                                options)
    return execute(run_tag(cfg), cfg, opts, prepare=Data, train=_train, evaluate=_evaluate)


def _train(cfg: Config, run_dir: RunFolder, data: Data, runtime, opts: RunOptions):
    """Sec. IV-C: Adam, lr x ``lr_decay`` every ``lr_decay_epochs``, early stop on validation
    loss; returns the training seconds (None for a resumed run: no misleading rate)."""
    # per epoch, also when --distributed splits the rows
    steps = common.full_batches(data.train.num_rows, cfg.batch_size, "the training split")
    model = build_model(cfg, len(data.labels))
    schedule = keras.optimizers.schedules.ExponentialDecay(
        cfg.lr, decay_steps=steps * cfg.lr_decay_epochs, decay_rate=cfg.lr_decay, staircase=True)
    auc = common.auc_metric(len(data.labels))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience)
    t0 = time.perf_counter()
    resumed = any(run_dir.checkpoints.iterdir())
    fit_stage(model, data.train, data.val, run_dir, "train", epochs=cfg.epochs,
              optimizer=keras.optimizers.Adam(schedule), loss=build_loss(cfg), metrics=[auc],
              monitor="val_loss", mode="min", callbacks=[stop],
              **lifecycle.fit_options(runtime, opts, cfg.seed))
    return None if resumed else time.perf_counter() - t0


def _evaluate(cfg: Config, run_dir: RunFolder, data: Data, train_seconds, opts: RunOptions):
    best = keras.saving.load_model(verify(run_dir.checkpoints / "best.keras"), safe_mode=True)
    evaluate(best, cfg, run_dir, data, train_seconds=train_seconds)


def evaluate(model, cfg: Config, run_dir, data: Data, train_seconds=None):
    """Every number, plot and table of one run."""
    cols = [data.labels.index(k) for k in data.eval_labels]
    (val_logits, val_y), (test_logits, test_y) = common.predict_and_save(model, run_dir, data.labels,
                                                                         val=data.val, test=data.test)
    val_prob, test_prob = expit(val_logits[:, cols]), expit(test_logits[:, cols])
    val_y, test_y = val_y[:, cols], test_y[:, cols]
    names = data.eval_labels

    summary = M.multilabel_summary(val_y, val_prob, test_y, test_prob, names, n_boot=cfg.bootstrap,
                                   seed=cfg.seed)
    cost = cost_figures(model, cfg, data, len(data.labels))
    localization = None
    if cfg.source == "nih":
        localization = pointing_game(model, cfg, run_dir, data, test_prob)

    history, calibration, calibration_md = common.curves_and_calibration(
        run_dir, test_y, test_prob, names, stages=("train",), curves_title="Loss and AUC (Figs. 8-9)",
        roc_title=f"ROC, {'test' if cfg.source == 'nih' else 'valid.csv'} (Fig. 10)")
    cross = cross_dataset_test(model, cfg, run_dir, data) if data.cross else None
    metrics = run_dir.update_metrics(
        ablation=cfg.ablation, source=cfg.source, uncertain=cfg.uncertain if cfg.source ==
        "chexpert" else None,
        **summary, test_calibration=calibration, cost=cost, localization=localization,
        cross_dataset=cross,
        epochs_trained=len(history.get("loss", [])),
        train_seconds=train_seconds, train_images=data.train.num_rows)
    run_dir.write_text("report.md", report(cfg, metrics) + "\n".join(calibration_md))
    return metrics


def cross_dataset_test(model, cfg: Config, run_dir, data: Data) -> dict:
    """Per-finding AUC of the model on ``cfg.test_dataset``'s test split, for the findings the two
    datasets share, beside the same findings on its own test set (from ``predictions/test.npz``).
    Several outputs onto one finding would be OR-ed: their largest logit, and the three-valued OR
    of their labels. Saves ``predictions/test_<dataset>.npz``."""
    cross = data.cross
    logits, y = predict_dataset(model, cross["data"], np.float64)
    scores = cross_dataset.onto_findings(logits, cross["columns"])
    run_dir.save_predictions(f"test_{cross['dataset']}", y_true=y, logits=scores,
                             labels=np.array(cross["findings"]))
    own = run_dir.load_predictions("test")
    return dict(dataset=cross["dataset"], **cross_dataset.cross_dataset_scores(
        scores, y, own["logits"], own["y_true"], cross["findings"], cross["columns"]))


def cost_figures(model, cfg: Config, data: Data, num_classes: int) -> dict:
    """Table 8: FLOPs (multiply-accumulates, counted from the layers) and measured seconds per
    image at batch 1, for the trained model and (for a reduced model) the paper-size one."""
    out = {"trained": model_cost(model, cfg.latency_images)}
    if cfg.backbone_options or cfg.crop != 224:
        full = build_model(cfg, num_classes, full_size=True)
        out["paper_size"] = model_cost(full, max(1, cfg.latency_images // 4))
    else:
        out["paper_size"] = out["trained"]
    return out


def pointing_game(model, cfg: Config, run_dir, data: Data, test_prob) -> dict | None:
    """Grad-CAM of each BBox_List_2017 box's finding on the test images that have boxes, scored
    by the pointing game and the IoU of the thresholded map (Fig. 11), on each level's feature
    map (U4, the usual Grad-CAM layer, and the finer U2 and U3 the classifier also reads); a
    figure of a few boxes with the U4 map."""
    try:
        boxes = load_boxes(data.root)
    except DataError as e:
        print(f"no Grad-CAM localisation: {e}")
        return None
    found = boxes_on_rows(boxes, data.cache.rows("test"), data.labels, data.cache.size, cfg.crop,
                          cfg.max_boxes)
    if found is None:
        return None
    idx, findings, mapped = found
    images = gather_rows(data.test, idx)
    cls = np.array([data.labels.index(f) for f in findings])
    xs = np.stack([images[i] for i in idx])
    out = {}
    for level, layer in gradcam_layers(model).items():
        heatmaps = np.concatenate([grad_cam(model, xs[s:s + 16], cls[s:s + 16], layer_name=layer)
                                   for s in range(0, len(xs), 16)])
        out[level] = dict(localization_scores(heatmaps, mapped, findings,
                                              tolerance=cfg.pointing_tolerance), layer=layer)
        if level == "u4":
            gradcam_figure(xs[:cfg.gradcam_images], heatmaps, mapped, findings, test_prob[idx],
                           data.eval_labels, run_dir.file("plots", "gradcam_boxes.png"))
    return out


def gradcam_figure(xs, heatmaps, boxes, findings, probs, labels, path):
    """Fig. 11: Grad-CAM at u4 with the finding's box and its predicted score."""
    grey = imagenet_grey(xs)
    titles = [f"box: {f}\nscore {(p[labels.index(f)] if f in labels else float('nan')):.2f}"
              for f, p in zip(findings, probs)]
    overlay_grid(grey, heatmaps, titles, path, boxes=boxes, fontsize=8)


# -------------------------------------------------------------------------------------- report

def report(cfg: Config, m: dict) -> str:
    lines = [f"# mlrfnet run: {cfg.source}, ablation {cfg.ablation}" +
             (f", uncertainty policy {cfg.uncertain}" if cfg.source == "chexpert" else ""), ""]
    lines += phantom_note(cfg.dataset, cfg.source)
    lines += [f"Backbone {cfg.backbone}" + (f" (reduced: {cfg.backbone_options})"
                                            if cfg.backbone_options else "") +
              f", ECA {cfg.use_eca}, MRFC {cfg.use_mrfc}, loss {cfg.loss}, weights {cfg.weights}, "
              f"input {cfg.crop} from a {cfg.cache_size} cache, batch {cfg.batch_size}, "
              f"{m['epochs_trained']} of {cfg.epochs} epochs (early stop on validation loss).", ""]
    ours = dict(m["test_auc"], Mean=m["test_mean_auc"])
    if cfg.source == "nih":
        ref = paper.TABLE5["MLRFNet"] if cfg.ablation == "full" else {}
        lines.append(comparison_table(ours, ref, title="Table 5: test AUC per label (MLRFNet row)"))
        lines += ["", metrics_table({"ours": ours}, {k: v for k, v in paper.TABLE5.items()},
                                    ["Mean"], title="Table 5: mean AUC beside the SOTA rows"), ""]
    else:
        ref = paper.MLRFNET_CHEXPERT.get(cfg.uncertain, {}) if cfg.ablation == "full" else {}
        lines.append(comparison_table(ours, ref, title="Table 6: valid.csv AUC per observation "
                                                        "(MLRFNet row, same policy)"))
        rows = {f"{name} ({pol})": {"Mean": r["Mean"]} for name, pol, r in paper.TABLE6}
        lines += ["", metrics_table({"ours": {"Mean": m["test_mean_auc"]}}, rows, ["Mean"],
                                    title="Table 6: mean AUC beside the SOTA rows"), ""]
    lo, hi = m["test_mean_auc_ci95"]
    lines += [f"Mean AUC 95% bootstrap interval ({cfg.bootstrap} resamples): [{lo:.4f}, {hi:.4f}]",
              ""]
    t7 = {k: 100 * v for k, v in m["test_threshold_metrics"]["youden_val"]["mean"].items()
          if k in ("accuracy", "sensitivity", "specificity", "f1")}
    t7_half = {k: 100 * v for k, v in m["test_threshold_metrics"]["p0.5"]["mean"].items()
               if k in ("accuracy", "sensitivity", "specificity", "f1")}
    lines += [metrics_table({"ours (Youden threshold from validation)": t7,
                             "ours (probability 0.5)": t7_half},
                            paper.TABLE7 if cfg.source == "nih" else {},
                            ["accuracy", "sensitivity", "specificity", "f1"],
                            title="Table 7: mean metrics in percent (the paper does not say how "
                                  "it thresholds)"), ""]
    c = m["cost"]
    t8 = {"ours, paper size (224)": {"gflops": c["paper_size"]["gmacs"],
                                     "seconds_per_image": c["paper_size"]["seconds_per_image"]},
          "ours, as trained": {"gflops": c["trained"]["gmacs"],
                               "seconds_per_image": c["trained"]["seconds_per_image"]}}
    lines += [metrics_table(t8, {k: {kk: vv for kk, vv in v.items() if kk != "auc"}
                                 for k, v in paper.TABLE8.items()},
                            ["gflops", "seconds_per_image"],
                            title="Table 8: cost of one image (GMACs counted from the layers; our "
                                  "seconds are batch 1 on this machine's CPU, the paper's on its "
                                  "GPU)"), ""]
    loc = m.get("localization")
    if loc:
        lines += ["### Grad-CAM against BBox_List_2017 (Fig. 11): pointing game / mean IoU", ""]
        lines += localization_table(loc)
        lines += ["", "The paper shows heatmaps (Fig. 11) but reports no localisation score.", ""]
    table, desc, ref = paper.ABLATIONS[cfg.ablation]
    lines += [comparison_table({f"mean AUC ({cfg.source})": m["test_mean_auc"]},
                               {f"mean AUC ({cfg.source})": ref[cfg.source]},
                               title=f"Table {table}: {desc}"), ""]
    if m.get("train_seconds"):
        lines += [f"Training: {m['train_seconds'] / 60:.1f} min, about "
                  f"{m['train_images'] * m['epochs_trained'] / m['train_seconds']:.1f} images/s.", ""]
    if m.get("cross_dataset"):
        lines += cross_dataset.cross_dataset_table(cfg.source, m["cross_dataset"])
    lines += ["Plots: `plots/roc_test.png` (Fig. 10), `plots/training_curves.png` (Figs. 8-9)" +
              (", `plots/gradcam_boxes.png` (Fig. 11)." if loc else "."), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    cfg, opts = from_command_line(argv)
    run(cfg, opts=opts)
    return 0


# ------------------------------------------------------------------------------ grid (Tables)

def variant(cfg: Config, **fields) -> Config:
    """``cfg`` with ``fields`` changed; a new ``ablation`` brings its own model and loss."""
    cfg = set_ablation(cfg, fields.pop("ablation", cfg.ablation))
    return resolve(replace(cfg, **fields))


def run_many(cfg: Config, opts: RunOptions, variants) -> list:
    """One run per ``variants`` entry (Config fields, ``ablation`` included) of ``cfg``; finished
    ones are returned as they are. Returns the run folders."""
    return [run(variant(cfg, **dict(v)), opts=opts) for v in variants]


def grid_report(runs) -> str:
    """Tables 6 and 9-11 over finished runs (mean AUC, ours beside the paper's)."""
    ours, ref, names = {}, {}, {}
    for r in runs:
        m = r.metrics()
        src, abl = m["source"], m["ablation"]
        key = f"{src}/{abl}" + (f"/{m['uncertain']}" if src == "chexpert" else "")
        ours[key] = {"mean AUC": m["test_mean_auc"]}
        table, desc, by_source = paper.ABLATIONS[abl]
        value = by_source[src]
        if src == "chexpert" and abl == "full":
            value = paper.MLRFNET_CHEXPERT[m["uncertain"]]["Mean"]
        elif src == "chexpert" and m["uncertain"] != "mixed":
            value = None  # the paper's ablations use the mixed policy
        ref[key] = {"mean AUC": value}
        names[key] = f"{key} (Table {table}: {desc})"
    return "\n".join(["# mlrfnet: Tables 5-6 and 9-11, mean AUC", "",
                      metrics_table(ours, ref, ["mean AUC"], names=names), ""])
