"""fzlpr (Hanif et al. 2025): DenseNet121 + custom top + focal ZLPR loss on NIH ChestX-ray14.

``cxr-keras run fzlpr [--loss bce|focal|zlpr|fzlpr] [--tau T] [--quick] [--dataset phantom|nih]``

One run = one loss: two-stage training (Sec. 4.2: top only, then all layers with cosine decay),
evaluation on validation and test (per-label ROC AUC, thresholded metrics at score 0, bootstrap
interval), test-time augmentation step by step (Table 3), ROC curves (Fig. 5), Grad-CAM overlays
(Fig. 7), and a report beside the paper's Tables 1-3. ``experiments/fzlpr/`` runs the four losses
and the tau ablation (Table 4, Fig. 6) through :func:`run` and :func:`compare_runs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from types import SimpleNamespace

import keras
import numpy as np
from scipy.special import expit

from .._argtypes import positive_float, positive_int
from ..evaluation import metrics as M
from ..evaluation.delong import delong_table
from ..evaluation.metrics import mean_of
from ..evaluation.plots import plot_auc_differences
from ..evaluation.report import comparison_table, phantom_note
from ..explain.figures import top_label_gradcam
from ..inference.tta import TABLE3_STEPS, TTAPredictor, cumulative_means
from ..integrity import verify
from ..io import DataError
from ..losses import get_loss
from ..models import densenet, densenet121_fzlpr
from ..models.batchnorm import set_bn_momentum
from ..models.densenet_fzlpr import set_backbone_trainable
from ..training import RunFolder, fit_stage
from . import fzlpr_paper as paper
from . import lifecycle
from .common import auc_metric, crop_pipelines, curves_and_calibration, predict_and_save, prepared_cache
from .lifecycle import RecipeConfig, RunOptions, config_from_args, execute, options_from_args

LOSSES = ("bce", "focal", "zlpr", "fzlpr")


@dataclass
class Config(RecipeConfig):
    """Every setting of a run; defaults are the paper's (Sec. 4.2) unless marked CHOICE."""
    loss: str = "fzlpr"
    tau: float | None = 0.2
    weights: str | None = "imagenet"   # "imagenet", None, or a local weights file (backbone)
    backbone_blocks: tuple = (6, 12, 24, 16)  # DenseNet121; --quick uses a reduced DenseNet
    bn_momentum: float = 0.99          # Keras default; reduced (quick) models use 0.9
    cache_size: int = 256              # images downscaled once to 256x256, bicubic
    crop: int = 224                    # random crop 224 (train), centre crop (eval; CHOICE)
    batch_size: int = 64
    stage1_epochs: int = 5
    stage1_lr: float = 1e-3
    stage2_epochs: int = 20
    stage2_lr: float = 1e-5
    lr_floor: float = 1e-7             # cosine annealing 1e-5 -> 1e-7 over stage 2
    weight_decay: float = 4e-3         # keras AdamW: decoupled, scaled by lr (CHOICE)
    val_fraction: float = 0.1
    val_by: str = "image"              # the paper splits by image; "patient" avoids leakage
    monitor: str = "val_auc"           # best checkpoint by validation mean AUC (CHOICE)
    tta_zoom: float = 0.1
    bootstrap: int = 1000
    gradcam_images: int = 9
    phantom_n: int = 2000
    phantom_size: int = 256


QUICK = dict(weights=None, backbone_blocks=(1, 2, 2, 1), bn_momentum=0.9, cache_size=184, crop=160,
             batch_size=32, stage1_epochs=2, stage1_lr=1e-3, stage2_epochs=6, stage2_lr=1e-3,
             lr_floor=1e-5, bootstrap=200, phantom_n=700, phantom_size=256)

SHORTCUTS = {  # command-line options of their own; --set FIELD=VALUE reaches every field
    "loss": dict(choices=LOSSES, help="training loss (default fzlpr)"),
    "tau": dict(type=positive_float, help="FZLPR temperature (default 0.2; 1.0 = ZLPR)"),
    "weights": "'imagenet' (default), 'none', or a local backbone weights file",
    "batch_size": dict(type=positive_int, help="global batch size (paper: 64)"),
    "stage1_epochs": "epochs of stage 1, the new top only (paper: 5)",
    "stage2_epochs": "epochs of stage 2, all layers (paper: 20)",
    "val_by": dict(choices=["image", "patient"], help="hold the validation set out by image or by patient"),
    "phantom_n": dict(type=positive_int, help="images in the phantom dataset"),
}


def build_parser():
    return lifecycle.parser("fzlpr", __doc__, "nih", Config, SHORTCUTS)


def resolve(cfg: Config) -> Config:
    """The configuration as it runs: tau only applies to (F)ZLPR (ZLPR is tau 1), checked."""
    lifecycle.check_choices(cfg, loss=LOSSES)
    if cfg.loss == "fzlpr":
        if cfg.tau is None or cfg.tau <= 0:
            raise DataError(f"tau must be > 0 for the FZLPR loss, got {cfg.tau!r}")
        tau = cfg.tau
    else:
        tau = 1.0 if cfg.loss == "zlpr" else None
    if cfg.weights is not None and tuple(cfg.backbone_blocks) != (6, 12, 24, 16):
        raise DataError("a reduced DenseNet (--quick) is trained from scratch: it takes no weights")
    return replace(cfg, tau=tau, backbone_blocks=tuple(cfg.backbone_blocks))


def from_command_line(argv=None) -> tuple[Config, RunOptions]:
    """(Config, RunOptions) of a ``cxr-keras run fzlpr`` command line."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(Config, args, QUICK, SHORTCUTS)
    return resolve(cfg), options_from_args(args)


def build_model(cfg: Config, num_classes: int):
    shape = (cfg.crop, cfg.crop, 3)
    if tuple(cfg.backbone_blocks) == (6, 12, 24, 16):
        return densenet121_fzlpr(num_classes, weights=cfg.weights, input_shape=shape)
    # A reduced DenseNet (same design, fewer layers per block) for quick CPU runs and tests.
    base = densenet(cfg.backbone_blocks, input_shape=shape)
    return set_bn_momentum(densenet121_fzlpr(num_classes, weights=None, base=base), cfg.bn_momentum)


def run_tag(cfg: Config) -> str:
    return f"fzlpr-{cfg.loss}" + (f"-tau{cfg.tau:g}" if cfg.loss == "fzlpr" else "")


def run(cfg: Config | None = None, out="runs", data_root=None, *, opts: RunOptions | None = None,
        **options) -> RunFolder:
    """Train and evaluate one configuration (phantom NIH when ``data_root`` is None); returns
    its run folder (a finished one as it is). ``options``: see :class:`RunOptions`."""
    cfg, opts = lifecycle.setup(cfg or Config(), resolve, ("nih",), out, data_root, opts, options)
    return execute(run_tag(cfg), cfg, opts, prepare=_prepare, train=_train, evaluate=_evaluate)


def _prepare(cfg: Config, opts: RunOptions) -> SimpleNamespace:
    """The NIH cache and its three pipelines (random crop for training, centre crop else)."""
    cache = prepared_cache("nih", cfg, opts, phantom_n=cfg.phantom_n,
                           phantom_size=cfg.phantom_size, cache_size=cfg.cache_size,
                           table_options={"val_fraction": cfg.val_fraction,
                                          "val_by": cfg.val_by, "seed": cfg.seed})
    return crop_pipelines(cache, "fzlpr", cfg.crop, batch_size=cfg.batch_size, seed=cfg.seed,
                          normalization="imagenet")


def _train(cfg: Config, run_dir: RunFolder, data, runtime, opts: RunOptions):
    """Sec. 4.2: stage 1 the new top alone (backbone frozen), stage 2 all layers with cosine
    decay; returns the training seconds (None for a resumed run: no misleading rate)."""
    steps = int(data.train.cardinality())  # per epoch (also when --distributed splits the rows)
    model = build_model(cfg, len(data.labels))
    loss = get_loss(cfg.loss, **({"tau": cfg.tau} if cfg.loss == "fzlpr" else {}))

    common = dict(loss=loss, monitor=cfg.monitor, **lifecycle.fit_options(runtime, opts, cfg.seed))
    t0 = time.perf_counter()
    resumed = any(run_dir.checkpoints.iterdir())  # anything there: an earlier process trained
    set_backbone_trainable(model, False)
    fit_stage(model, data.train, data.val, run_dir, "stage1", epochs=cfg.stage1_epochs,
              optimizer=keras.optimizers.AdamW(cfg.stage1_lr, weight_decay=cfg.weight_decay),
              metrics=[auc_metric(len(data.labels))], **common)
    set_backbone_trainable(model, True)
    schedule = keras.optimizers.schedules.CosineDecay(
        cfg.stage2_lr, decay_steps=max(1, steps * cfg.stage2_epochs),
        alpha=cfg.lr_floor / cfg.stage2_lr)
    fit_stage(model, data.train, data.val, run_dir, "stage2", epochs=cfg.stage2_epochs,
              optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
              metrics=[auc_metric(len(data.labels))], **common)
    return None if resumed else time.perf_counter() - t0


def _evaluate(cfg: Config, run_dir: RunFolder, data, train_seconds, opts: RunOptions):
    best = keras.saving.load_model(verify(run_dir.checkpoints / "best.keras"), safe_mode=True)
    evaluate(best, cfg, run_dir, data.labels, data.val, data.test, train_seconds=train_seconds,
             train_images=data.train.num_rows)


def evaluate(model, cfg, run_dir, labels, val_ds, test_ds, train_seconds=None, train_images=None):
    """Every number, plot and table of one run."""
    [(val_logits, val_y)] = predict_and_save(model, run_dir, labels, val=val_ds)
    tta = TTAPredictor(model, zoom=cfg.tta_zoom)
    views = tta.predict_views(test_ds)
    test_y = np.concatenate([np.asarray(y) for _, y in test_ds])
    step_probs = list(cumulative_means(views, TABLE3_STEPS).values())
    test_prob = step_probs[0]  # the original view alone
    run_dir.save_predictions("test", y_true=test_y, **{f"prob_{k}": v for k, v in views.items()},
                             labels=np.array(labels))

    val_auc = M.per_class_auc(val_y, expit(val_logits), labels)
    step_names = ["original", "+hflip", "+hflip+zoom"]
    tta_auc = {name: M.per_class_auc(test_y, p, labels) for name, p in zip(step_names, step_probs)}
    test_auc = tta_auc["original"]
    thr = M.threshold_metrics(test_y, test_prob, 0.5, labels)  # = logit 0, the paper's rule
    est, lo, hi = M.bootstrap_ci(lambda t, s: M.mean_auc(t, s), test_y, test_prob,
                                 n_boot=cfg.bootstrap, seed=cfg.seed)
    _, calibration, calibration_md = curves_and_calibration(
        run_dir, test_y, test_prob, labels, stages=("stage1", "stage2"),
        roc_title=f"ROC, test ({cfg.loss})")
    metrics = run_dir.update_metrics(
        loss=cfg.loss, tau=cfg.tau,
        val_auc=val_auc, val_mean_auc=mean_of(val_auc),
        test_auc=test_auc, test_mean_auc=mean_of(test_auc),
        test_mean_auc_ci95=[lo, hi],
        tta_auc={k: {"per_class": v, "mean": mean_of(v)} for k, v in tta_auc.items()},
        test_threshold_metrics=thr, test_calibration=calibration,
        train_seconds=train_seconds, train_images=train_images)
    # Fig. 7: Grad-CAM of the top predicted label on conv5, images with findings first
    top_label_gradcam(model, test_ds, test_y, test_prob, labels, run_dir.file("plots", "gradcam.png"),
                      n=cfg.gradcam_images, layer_name="relu")
    run_dir.write_text("report.md", report(cfg, metrics) + "\n".join(calibration_md))
    return metrics


def report(cfg: Config, m: dict) -> str:
    loss = cfg.loss
    lines = [f"# fzlpr run: loss {loss}" + (f", tau {cfg.tau:g}" if loss == "fzlpr" else ""), ""]
    lines += phantom_note(cfg.dataset, "NIH ChestX-ray14")
    lines += [f"Backbone blocks {list(cfg.backbone_blocks)}, weights {cfg.weights}, input "
              f"{cfg.crop}x{cfg.crop} from a {cfg.cache_size} cache, batch {cfg.batch_size}, "
              f"epochs {cfg.stage1_epochs}+{cfg.stage2_epochs}.", ""]
    paper_loss = loss if loss != "fzlpr" or abs(cfg.tau - 0.2) < 1e-9 else None
    lines.append(comparison_table(
        {"validation mean AUC": m["val_mean_auc"]},
        {"validation mean AUC": paper.TABLE1_VAL_MEAN_AUC.get(paper_loss)} if paper_loss else {},
        title="Table 1: validation mean AUC"))
    ours = dict(m["test_auc"], Average=m["test_mean_auc"])
    ref = paper.TABLE2_TEST_AUC.get(paper_loss, {}) if paper_loss else {}
    if loss == "fzlpr" and cfg.tau in paper.TABLE4_TAU_AUC:
        ref = paper.TABLE4_TAU_AUC[cfg.tau]
    lines += ["", comparison_table(ours, ref, title="Table 2 / 4: test AUC per label")]
    lo, hi = m["test_mean_auc_ci95"]
    lines += ["", f"Test mean AUC 95% bootstrap interval ({cfg.bootstrap} resamples): "
              f"[{lo:.4f}, {hi:.4f}]", ""]
    tta_ours = {k: v["mean"] for k, v in m["tta_auc"].items()}
    tta_ref = {k: v["Average"] for k, v in paper.TABLE3_TTA_AUC.items()} if paper_loss == "fzlpr" else {}
    lines += [comparison_table(tta_ours, tta_ref, title="Table 3: test mean AUC with TTA (HF: "
                               "horizontal flip, Z: zoom +-10%)"), ""]
    thr = m["test_threshold_metrics"]["mean"]
    lines += ["Mean thresholded metrics on test (score > 0, i.e. probability > 0.5): " +
              ", ".join(f"{k} {v:.4f}" for k, v in thr.items()), ""]
    if m.get("train_seconds"):
        ips = m["train_images"] * (cfg.stage1_epochs + cfg.stage2_epochs) / m["train_seconds"]
        lines += [f"Training: {m['train_seconds'] / 60:.1f} min, about {ips:.1f} images/s "
                  f"(paper: {paper.REPORTED_TRAINING['minutes']} min on an "
                  f"{paper.REPORTED_TRAINING['gpu']}; about {paper.DERIVED_IMAGES_PER_S:.0f} "
                  "images/s derived by us from 77,872 images x 25 epochs / 186 min, not stated "
                  "in the paper).", ""]
    lines += ["Plots: `plots/roc_test.png` (Fig. 5), `plots/gradcam.png` (Fig. 7), "
              "`plots/training_curves.png`.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    cfg, opts = from_command_line(argv)
    run(cfg, opts=opts)
    return 0


def losses_report(runs) -> str:
    """Tables 1 and 2 over runs of the four losses."""
    lines = ["# fzlpr: the four losses (Tables 1 and 2)", ""]
    for r in runs:
        m = r.metrics()
        loss = m["loss"]
        lines.append(comparison_table(
            {"validation mean AUC": m["val_mean_auc"], "test mean AUC": m["test_mean_auc"]},
            {"validation mean AUC": paper.TABLE1_VAL_MEAN_AUC[loss],
             "test mean AUC": paper.TABLE2_TEST_AUC[loss]["Average"]},
            title=f"{loss}"))
        lines.append("")
    lines += delong_section(runs)
    return "\n".join(lines)


def delong_section(runs) -> list:
    """DeLong's paired test, per label, of FZLPR against every other loss on the same test set."""
    preds = {r.metrics()["loss"]: r.load_predictions("test") for r in runs}
    if "fzlpr" not in preds:
        return []
    labels = [str(x) for x in preds["fzlpr"]["labels"]]
    return (["### DeLong's test, FZLPR against each loss (test set, p-values)", ""]
            + delong_table("fzlpr", preds, labels, "prob_original") + [""])


def tau_report(runs, plot_path) -> str:
    """Table 4 and Fig. 6 over runs with several tau."""
    by_tau = {r.metrics()["tau"]: r.metrics()["test_auc"] for r in runs}
    lines = ["# fzlpr: tau ablation (Table 4, Fig. 6)", ""]
    for tau, auc in sorted(by_tau.items()):
        ours = dict(auc, Average=mean_of(auc))
        lines += [comparison_table(ours, paper.TABLE4_TAU_AUC.get(tau, {}), title=f"tau = {tau:g}"), ""]
    if 1.0 in by_tau:
        plot_auc_differences(by_tau, plot_path, reference_tau=1.0)
        lines.append(f"Fig. 6: `{plot_path}`")
    return "\n".join(lines)
