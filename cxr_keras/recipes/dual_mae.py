"""dual_mae (Yoon & Kang 2024): MAE / dual-MAE pretraining on adult chest X-rays (NIH + CheXpert
frontal), fine-tuning on PediCXR's six classes, and the baselines of Tables 2-6.

``cxr-keras run dual_mae [--stage all|pretrain|finetune|baselines] [--method dual_mae|mae]
[--backbone vit_s|resnet34] [--init dual_mae|mae|scratch|imagenet|xray] [--mask-ratio R]
[--label-fraction F] [--seeds 0,1,2] [--quick]``

- ``pretrain``: a (dual-)MAE on every adult image (303,349 in the paper; AdamW betas 0.9/0.95,
  weight decay 0.05, base lr 1.5e-4 x batch/256, 20 warm-up epochs then cosine, 800 epochs, random
  resized crop 0.5-1 and flip). Writes the online encoder (``encoder.weights.h5``), the loss terms,
  reconstructions and the pretraining throughput.
- ``finetune``: the encoder + a linear head on the CLS token, six sigmoid outputs, mean BCE; AdamW
  0.9/0.95, wd 0.05, lr 2.5e-3, batch 128, 5 warm-up epochs then cosine, 75 epochs, layer-wise lr
  decay 0.55, RandAugment 6, DropPath 0.2, on the 80% train split of PediCXR; the model after
  fine-tuning (epoch 75) is tested (``--select best_val``: the best epoch by validation mean
  AUC). One run per seed (the paper: three), then mean and std.
- ``all`` (default): pretrain + finetune of the chosen method.
- ``baselines``: Tables 3-4, every method of the paper (ResNet-34 and ViT-S from scratch,
  ImageNet-initialised and supervised-pretrained on the adult X-rays, MAE, dual-MAE).

Python: ``dual_mae.run(dual_mae.Config(init="mae"), out="runs")`` (phantom data without
``data_root``), likewise :func:`pretrain`, :func:`xray_pretrain`, :func:`run_many`. Every run
writes its own folder; pretraining runs are shared by the fine-tunes that need them.
``experiments/dual_mae/`` runs the mask ratios (Table 2) and label fractions (Tables 5-6).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
from scipy.special import expit

from .._argtypes import open_fraction, positive_int
from ..data import load_table
from ..data.augment import PRESETS, Preset
from ..data.cache import Cache
from ..data.pipeline import make_dataset
from ..data.tables import pooled_table
from ..evaluation import metrics as M
from ..evaluation.plots import plot_mae_reconstructions, plot_training_curves
from ..evaluation.report import (
    comparison_table,
    loss_terms_table,
    mean_std,
    metrics_table,
    phantom_note,
    pretraining_numbers,
)
from ..integrity import verify
from ..io import DataError
from ..losses import get_loss
from ..models.mae import DualMaskedAutoencoder, MaskedAutoencoder
from ..models.resnet import resnet34
from ..models.vit import copy_encoder, load_vit_weights, vit, vit_small
from ..training import RunFolder, fit_stage, read_history
from ..training.layer_decay import LayerDecayAdamW, vit_layer_multipliers, warmup_cosine
from ..weights import weights_for
from . import common, lifecycle
from . import dual_mae_paper as paper
from .lifecycle import RecipeConfig, RunOptions, config_from_args, options_from_args

STAGES = ("all", "pretrain", "finetune", "baselines")
METHODS = ("dual_mae", "mae")
BACKBONES = ("vit_s", "resnet34")
INITS = ("dual_mae", "mae", "scratch", "imagenet", "xray")


@dataclass
class Config(RecipeConfig):
    """Every setting; defaults are the paper's (Sec. III-B, IV) unless marked CHOICE. ``dataset``:
    "phantom" or "pedicxr" (the real data; the adult X-rays alike)."""
    backbone: str = "vit_s"
    init: str | None = None             # the fine-tuning start; None: dual_mae (ViT), scratch
    mask_ratio: float | None = None     # None: 0.75 dual-MAE, 0.85 MAE (Table 2's best)
    # ViT-S/16 and the decoder (CHOICE: 512 wide, 2 blocks, 16 heads)
    image_size: int = 224
    patch_size: int = 16
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    decoder_width: int = 512
    decoder_depth: int = 2
    decoder_heads: int = 16
    norm_pix_loss: bool = False         # CHOICE: the paper reconstructs pixels
    tau: float = 0.99
    loss_weights: tuple = (1.0, 1.0, 1.0)
    l1_region: str = "all"              # CHOICE: L1 over the whole reconstructed images
    resnet_options: dict = field(default_factory=dict)  # reduced ResNet-34 (--quick)
    cache_size: int = 256               # images resized to 256, cropped to 224
    # pretraining (adult X-rays)
    pretrain_epochs: int = 800
    pretrain_warmup: int = 20
    pretrain_batch: int = 256
    base_lr: float = 1.5e-4             # x batch / 256
    weight_decay: float = 0.05
    decay_all: bool = False             # CHOICE: no decay on biases and norms (MAE); True: all
    betas: tuple = (0.9, 0.95)
    pretrain_seed: int = 0              # the seeds vary the fine-tuning (paper: weight init)
    adult_val_fraction: float = 0.05    # supervised X-ray pretraining only (CHOICE)
    # supervised pretraining on the adult X-rays (the "(X-ray)" baselines; CHOICE, not given)
    xray_epochs: int = 30
    xray_lr: float = 1e-3
    xray_batch: int = 128
    # fine-tuning (PediCXR)
    finetune_epochs: int = 75
    finetune_warmup: int = 5
    finetune_batch: int = 128
    finetune_lr: float = 2.5e-3         # CHOICE: absolute (the paper: "initial learning rate")
    layer_decay: float = 0.55
    drop_path: float = 0.2
    randaugment: float = 6.0
    finetune_crop: tuple = (0.08, 1.0)  # CHOICE: MAE's fine-tuning RandomResizedCrop scale
    label_fraction: float = 1.0
    val_fraction: float = 0.2
    threshold: str = "youden"           # CHOICE for Table 4: per-class Youden threshold on val
    select: str = "final"               # tested model: "final" (paper: after fine-tuning) or
                                        # "best_val" (the best epoch by validation mean AUC)
    imagenet_weights: str | None = "imagenet"  # or local files: "vit_s=F1,resnet34=F2" (or one F)
    phantom_n: int = 2000               # PediCXR phantom images
    adult_phantom_n: tuple = (2000, 1000)  # NIH, CheXpert phantom images
    phantom_size: int = 256

    @property
    def ratio(self) -> float:
        if self.mask_ratio is not None:
            return float(self.mask_ratio)
        return paper.MASK_RATIO.get(self.init, 0.75)


QUICK = dict(image_size=64, patch_size=8, width=128, depth=4, num_heads=4, decoder_width=128,
             decoder_depth=1, decoder_heads=4, cache_size=72, pretrain_epochs=30, pretrain_warmup=3,
             pretrain_batch=64, base_lr=4e-3, xray_epochs=8, xray_batch=64, finetune_epochs=30,
             finetune_warmup=3, finetune_batch=16, finetune_lr=1e-3, drop_path=0.1,
             finetune_crop=(0.8, 1.0), randaugment=0.0,
             imagenet_weights=None, phantom_n=900, adult_phantom_n=(700, 300), phantom_size=128,
             resnet_options={"widths": (16, 32, 64, 128)}, xla=True)  # XLA: 2x faster on CPU

SELECT = ("final", "best_val")
SHORTCUTS = {  # command-line options of their own; --set FIELD=VALUE reaches every field
    "backbone": dict(choices=BACKBONES, help="fine-tuned network (default vit_s)"),
    "init": dict(choices=INITS, help="fine-tuning start (default: dual_mae for vit_s, scratch for resnet34)"),
    "mask_ratio": dict(type=open_fraction, help="fraction of patches masked in pretraining (paper: 0.75)"),
    "label_fraction": "1%%/10%%/50%%/100%% runs",
    "imagenet_weights": "local ImageNet weights for --init imagenet (default: download): FILE, or "
                        "vit_s=FILE,resnet34=FILE for --stage baselines",
    "pretrain_epochs": "pretraining epochs",
    "finetune_epochs": "fine-tuning epochs",
    "phantom_n": dict(type=positive_int, help="images in the phantom PediCXR"),
    "select": dict(choices=SELECT, help="tested model: final (the paper, the default) or best_val "
                                        "(the best epoch by validation mean AUC)"),
}


def build_parser():
    p = lifecycle.parser("dual_mae", __doc__, "pedicxr", Config, SHORTCUTS)
    p.add_argument("--stage", choices=STAGES, default="all",
                   help="pretrain, finetune, all (pretrain then fine-tune), or baselines")
    p.add_argument("--method", choices=METHODS, default=None, dest="init",
                   help="pretraining method (default dual_mae): --init dual_mae|mae")
    p.add_argument("--seeds", default=None, help="comma-separated fine-tuning seeds, e.g. 0,1,2")
    p.add_argument("--nih-root", default=None, help="NIH ChestX-ray14 (= --root nih=DIR)")
    p.add_argument("--chexpert-root", default=None, help="CheXpert (= --root chexpert=DIR)")
    return p


def from_args(args) -> tuple[Config, RunOptions]:
    """(Config, RunOptions) of parsed arguments; the Config checked but unresolved (``init``,
    ``mask_ratio`` may be None: a grid's variants vary the method and get its default ratio)."""
    cfg = config_from_args(Config, args, QUICK, SHORTCUTS)
    resolve(cfg)  # errors now, naming the option
    return cfg, options_from_args(args, {"nih": "nih_root", "chexpert": "chexpert_root"})


def from_command_line(argv=None) -> tuple[Config, RunOptions]:
    """(Config, RunOptions) of a ``cxr-keras run dual_mae`` command line."""
    return from_args(build_parser().parse_args(argv))


def resolve(cfg: Config) -> Config:
    """The configuration as it runs: the backbone's default start (dual-MAE for the ViT, random
    for ResNet-34) and the mask ratio written out (none without pretraining), checked."""
    cfg = replace(cfg, init=cfg.init or ("dual_mae" if cfg.backbone == "vit_s" else "scratch"))
    cfg = replace(cfg, mask_ratio=cfg.ratio if cfg.init in METHODS else None)
    lifecycle.check_choices(cfg, backbone=BACKBONES, init=INITS, select=SELECT)
    if cfg.backbone == "resnet34" and cfg.init in METHODS:
        raise DataError(f"--init {cfg.init} pretrains a ViT; ResNet-34 takes scratch, imagenet or "
                        "xray")
    if not 0.0 < cfg.label_fraction <= 1.0:
        raise DataError(f"--label-fraction must be in (0, 1], got {cfg.label_fraction}")
    if cfg.init == "imagenet" and cfg.imagenet_weights is None:
        raise DataError("--init imagenet needs ImageNet weights: the full-size network with "
                        "--imagenet-weights FILE or the default download (not --quick)")
    return cfg


def seeds_of(seeds: str | None, default: int) -> list:
    """``--seeds 0,1,2`` as integers; ``[default]`` without it."""
    return lifecycle.comma_list(seeds, "--seeds", of=int) or [default]


# ------------------------------------------------------------------- lifecycle over several runs

def _setup(cfg, out, data_root, opts, options) -> tuple[Config, RunOptions]:
    """The resolved Config and the RunOptions of a stage, the processes joined once."""
    return lifecycle.setup(cfg or Config(), resolve, ("pedicxr",), out, data_root, opts, options, join=True)


# ---------------------------------------------------------------------------------------- data

def adult_cache(cfg: Config, opts: RunOptions) -> Path:
    """One cache of NIH + CheXpert frontal images (phantoms, or ``opts.root("nih")`` /
    ``opts.root("chexpert")``), labels kept as 'NIH/<finding>' and 'CheXpert/<observation>' (NaN
    where a dataset has no such column, and for CheXpert's uncertain labels) for the supervised
    X-ray baselines."""
    seeded, (n_nih, n_chx) = replace(cfg, seed=cfg.pretrain_seed), cfg.adult_phantom_n
    nih = common.phantom_or_real_root("nih", seeded, opts, phantom_n=n_nih, phantom_size=cfg.phantom_size)
    chx = common.phantom_or_real_root("chexpert", seeded, opts, phantom_n=n_chx,
                                      phantom_size=cfg.phantom_size)

    def with_chexpert(nih_table):
        chexpert = load_table("chexpert", chx, frontal_only=True, uncertain="ignore",
                              val_fraction=cfg.adult_val_fraction)
        return pooled_table({"NIH": nih_table, "CheXpert": chexpert}, dataset="adult", root=nih)

    return common.cache_of("nih", nih, opts, cache_size=cfg.cache_size, table_fn=with_chexpert,
                           table_options={"val_fraction": cfg.adult_val_fraction},
                           tag=f"adult+{Path(chx).resolve()}")


def pedicxr_cache(cfg: Config, opts: RunOptions) -> Path:
    """PediCXR's cache: one phantom and one split (seed 0) for every seed, the seeds vary the
    training."""
    root = common.phantom_or_real_root("pedicxr", replace(cfg, seed=0), opts, phantom_n=cfg.phantom_n,
                                       phantom_size=cfg.phantom_size)
    options = {"val_fraction": cfg.val_fraction, "label_fraction": cfg.label_fraction, "seed": 0}
    return common.cache_of("pedicxr", root, opts, cache_size=cfg.cache_size, table_options=options,
                           cache=opts.cache if cfg.label_fraction == 1.0 else None)


# ------------------------------------------------------------------------------------ schedule

def optimizer(lr: float, steps_per_epoch: int, epochs: int, warmup: int, cfg: Config,
              multipliers=None):
    """AdamW (betas, decoupled weight decay, none on biases and norms as MAE unless
    ``cfg.decay_all``), linear warm-up then cosine to 0, per step (MAE's schedule); per-variable lr
    ``multipliers`` (layer decay)."""
    return LayerDecayAdamW(warmup_cosine(lr, steps_per_epoch, epochs, warmup),
                           beta_1=cfg.betas[0], beta_2=cfg.betas[1],
                           weight_decay=cfg.weight_decay, lr_multipliers=multipliers,
                           decay_vectors=cfg.decay_all)


# ---------------------------------------------------------------------------------- pretraining

def build_mae(cfg: Config, method: str):
    kw = dict(image_size=cfg.image_size, channels=3, patch_size=cfg.patch_size, width=cfg.width,
              depth=cfg.depth, num_heads=cfg.num_heads, decoder_width=cfg.decoder_width,
              decoder_depth=cfg.decoder_depth, decoder_heads=cfg.decoder_heads,
              mask_ratio=cfg.ratio, norm_pix_loss=cfg.norm_pix_loss, seed=cfg.pretrain_seed)
    if method == "dual_mae":
        return DualMaskedAutoencoder(tau=cfg.tau, loss_weights=cfg.loss_weights,
                                     l1_region=cfg.l1_region, **kw)
    return MaskedAutoencoder(**kw)


def pretrain(cfg: Config | None = None, out="runs", data_root=None, *,
             opts: RunOptions | None = None, **options) -> RunFolder:
    """Pretrain a (dual-)MAE (``cfg.init``) on the adult images; one folder per method, mask
    ratio and pretraining settings (Config fields: its config.json is a --config)."""
    cfg, opts = _setup(cfg, out, data_root, opts, options)
    if cfg.init not in METHODS:
        raise DataError(f"pretraining is dual_mae or mae (--method), not init {cfg.init!r}")
    keys = ("dataset", "image_size", "patch_size", "width", "depth", "num_heads", "decoder_width",
            "decoder_depth", "decoder_heads", "norm_pix_loss", "cache_size", "pretrain_epochs",
            "pretrain_warmup", "pretrain_batch", "base_lr", "weight_decay", "decay_all", "betas",
            "pretrain_seed", "adult_phantom_n", "phantom_size", "mixed_precision", "xla", "init",
            "mask_ratio") + (("tau", "loss_weights", "l1_region") if cfg.init == "dual_mae" else ())
    return lifecycle.execute(f"dual_mae-pretrain-{cfg.init}-r{int(round(cfg.ratio * 100))}",
                    replace(cfg, seed=cfg.pretrain_seed), opts,
                    config={k: getattr(cfg, k) for k in keys},
                    prepare=_pretrain_data, train=_pretrain_train, evaluate=_pretrain_evaluate)


def _pretrain_data(cfg: Config, opts: RunOptions) -> SimpleNamespace:
    cache = Cache(adult_cache(cfg, opts))
    preset = dataclasses.replace(PRESETS["dual_mae_pretrain"], crop=cfg.image_size / cache.size)
    train = make_dataset(cache, None, preset=preset, training=True, target="none",
                         batch_size=cfg.pretrain_batch, seed=cfg.pretrain_seed, drop_remainder=True)
    steps = common.full_batches(len(cache), cfg.pretrain_batch, "the adult set")
    return SimpleNamespace(cache=cache, train=train, steps=steps)


def _pretrain_train(cfg: Config, run_dir: RunFolder, data, runtime, opts: RunOptions):
    """Eq. 1-2 (the model's own train step); writes the online encoder on every process (the
    fine-tunes of process i start from its own copy). Returns the seconds (None if resumed)."""
    model = build_mae(cfg, cfg.init)
    t0 = time.perf_counter()
    resumed = any(p.suffix == ".h5" for p in run_dir.checkpoints.iterdir())
    lr = cfg.base_lr * cfg.pretrain_batch / 256
    fit_stage(model, data.train, None, run_dir, "pretrain", epochs=cfg.pretrain_epochs,
              optimizer=optimizer(lr, data.steps, cfg.pretrain_epochs, cfg.pretrain_warmup, cfg),
              loss=None, monitor="loss", mode="min",
              **lifecycle.fit_options(runtime, opts, cfg.pretrain_seed))
    seconds = None if resumed else time.perf_counter() - t0
    model.encoder.save_weights(run_dir.file("encoder.weights.h5"))
    return seconds


def _pretrain_evaluate(cfg: Config, run_dir: RunFolder, data, seconds, opts: RunOptions):
    """Loss terms, reconstructions, throughput and the report (process 0, the last weights)."""
    method, cache, steps = cfg.init, data.cache, data.steps
    model = build_mae(cfg, method)
    model.load_weights(run_dir.checkpoints / "pretrain.weights.h5")
    history = read_history(run_dir.file("logs", "history_pretrain.csv"))
    centre = Preset(crop=cfg.image_size / cache.size)
    sample = next(iter(make_dataset(cache, None, preset=centre, target="none", batch_size=6,
                                    shuffle=False)))
    plot_mae_reconstructions(model.online if method == "dual_mae" else model, sample,
                             run_dir.file("plots", "reconstructions.png"),
                             title=f"{method}: input, masked ({int(cfg.ratio * 100)}%), reconstruction")
    plot_training_curves(history, run_dir.file("plots", "pretraining_curves.png"),
                         title=f"{method} pretraining loss terms")
    m = run_dir.update_metrics(
        method=method, mask_ratio=cfg.ratio, **pretraining_numbers(history, steps * cfg.pretrain_batch, seconds),
        adult_images=len(cache), params=int(model.count_params()))
    lines = [f"# dual_mae pretraining: {method}, mask ratio {cfg.ratio}", "",
             f"{len(cache)} adult images (NIH + CheXpert frontal{', phantom' if cfg.dataset == 'phantom' else ''}), "
             f"{m['epochs']} epochs of batch {cfg.pretrain_batch}, ViT {cfg.width}x{cfg.depth} / "
             f"patch {cfg.patch_size} at {cfg.image_size} px, decoder {cfg.decoder_width}x"
             f"{cfg.decoder_depth}.", ""] + loss_terms_table(m)
    if method == "dual_mae":
        lines += ["", "l1 = MSE(y1, y2), l2 = MSE(x, y1), l3 = MSE(x, y2) (eq. 1); the target "
                  "network gets no gradient (eq. 2 moves it), so l3 only monitors it."]
    if m["images_per_second"]:
        lines += ["", f"Throughput: {m['images_per_second']:.1f} images/s "
                  f"({seconds / 60:.1f} min)."]
    lines += ["", "Plots: `plots/reconstructions.png`, `plots/pretraining_curves.png`. Encoder "
              "weights: `encoder.weights.h5`.", ""]
    run_dir.write_text("report.md", "\n".join(lines))


# --------------------------------------------------------------------------- classifier models

def build_classifier(cfg: Config, num_classes: int, drop_path: float | None = None):
    if cfg.backbone == "vit_s":
        positional = "learned" if cfg.init in ("scratch", "imagenet", "xray") else "sincos"
        return vit(input_shape=(cfg.image_size, cfg.image_size, 3), patch_size=cfg.patch_size,
                   width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
                   num_classes=num_classes, pooling="cls", positional=positional,
                   drop_path_rate=cfg.drop_path if drop_path is None else drop_path,
                   seed=cfg.seed, name="vit")
    base = resnet34(include_top=False, pooling="avg", input_shape=(cfg.image_size, cfg.image_size, 3),
                    **cfg.resnet_options)
    out = keras.layers.Dense(num_classes, name="head")(base.output)
    return keras.Model(base.input, out, name="resnet34")


def copy_backbone(source, target):
    """Every layer of ``source`` except its head into the same-named layer of ``target``."""
    for layer in source.layers:
        if layer.name == "head" or not layer.weights:
            continue
        target.get_layer(layer.name).set_weights(layer.get_weights())


def initialise(model, cfg: Config, source: RunFolder | None):
    """Load the fine-tuning start point into ``model`` (``source``: the pretraining run folder
    of ``cfg.init``, if it has one); returns a description."""
    if cfg.init == "scratch":
        return "random (Xavier-uniform blocks)" if cfg.backbone == "vit_s" else "random"
    if cfg.init in METHODS:
        load_vit_weights(model, source.file("encoder.weights.h5"))
        return f"{cfg.init} online encoder from {source.path.name}"
    if cfg.init == "imagenet":
        if cfg.backbone == "vit_s":
            src = vit_small(include_top=False, pooling=None, positional="learned",
                            weights=imagenet_weights(cfg))
            copy_encoder(src, model)
            return f"ImageNet (DeiT-S) {imagenet_weights(cfg)}"
        src = resnet34(include_top=False, pooling="avg", weights=imagenet_weights(cfg))
        copy_backbone(src, model)
        return f"ImageNet (torchvision) {imagenet_weights(cfg)}"
    src = keras.saving.load_model(verify(source.checkpoints / "best.keras"), safe_mode=True)
    copy_backbone(src, model)
    return f"supervised on the adult X-rays ({source.path.name})"


def imagenet_weights(cfg: Config) -> str:
    """The ImageNet weights of ``cfg.backbone``: "imagenet" (download), one file, or the file
    named for the backbone in "vit_s=F1,resnet34=F2"."""
    return weights_for(cfg.imagenet_weights, cfg.backbone)


def xray_pretrain(cfg: Config | None = None, out="runs", data_root=None, *,
                  opts: RunOptions | None = None, **options) -> RunFolder:
    """The "(X-ray)" baselines: the same network trained supervised on the adult images' labels
    (NIH 14 + CheXpert 14 as separate outputs, masked BCE on what each image has; CHOICE)."""
    cfg, opts = _setup(cfg, out, data_root, opts, options)
    keys = ("dataset", "backbone", "image_size", "patch_size", "width", "depth", "num_heads",
            "resnet_options", "cache_size", "xray_epochs", "xray_lr", "xray_batch",
            "weight_decay", "decay_all", "betas", "pretrain_seed", "adult_phantom_n",
            "phantom_size", "adult_val_fraction", "mixed_precision", "xla")
    return lifecycle.execute(f"dual_mae-xray-{cfg.backbone}", replace(cfg, seed=cfg.pretrain_seed,
                    init="xray"), opts, config={k: getattr(cfg, k) for k in keys},
                    prepare=_xray_data, train=_xray_train, evaluate=_xray_evaluate)


def _xray_data(cfg: Config, opts: RunOptions) -> SimpleNamespace:
    return common.crop_pipelines(adult_cache(cfg, opts), "dual_mae_pretrain", cfg.image_size,
                                 splits=("train", "val"), drop_remainder=True, batch_size=cfg.xray_batch,
                                 seed=cfg.pretrain_seed)


def _xray_train(cfg: Config, run_dir: RunFolder, data, runtime, opts: RunOptions):
    model = build_classifier(cfg, len(data.labels), drop_path=0.0)
    steps = max(1, data.train.num_rows // cfg.xray_batch)
    fit_stage(model, data.train, data.val, run_dir, "xray", epochs=cfg.xray_epochs,
              optimizer=optimizer(cfg.xray_lr, steps, cfg.xray_epochs, 1, cfg),
              loss=get_loss("bce"), metrics=[common.auc_metric(len(data.labels))], monitor="val_loss", mode="min",
              seed=cfg.pretrain_seed, jit_compile=runtime.jit_compile, verbose=opts.verbose)


def _xray_evaluate(cfg: Config, run_dir: RunFolder, data, state, opts: RunOptions):
    val_loss = read_history(run_dir.file("logs", "history_xray.csv")).get("val_loss", [np.nan])
    run_dir.write_text("report.md", f"# dual_mae supervised X-ray pretraining: {cfg.backbone}\n\n"
                       f"Best validation loss {min(val_loss):.4f} (`checkpoints/best.keras`).\n")


# ---------------------------------------------------------------------------------- fine-tuning

def run_tag(cfg: Config) -> str:
    tag = f"dual_mae-finetune-{cfg.backbone}-{cfg.init}"
    if cfg.init in METHODS:
        tag += f"-r{int(round(cfg.ratio * 100))}"
    if cfg.label_fraction < 1.0:
        tag += f"-f{cfg.label_fraction:g}"
    return tag + f"-seed{cfg.seed}"


def finetune(cfg: Config | None = None, out="runs", data_root=None, *,
             opts: RunOptions | None = None, **options) -> RunFolder:
    """Fine-tune on PediCXR and evaluate on its test set (pretraining first when ``cfg.init``
    needs it and it has not run); returns the run folder, a finished one as it is."""
    cfg, opts = _setup(cfg, out, data_root, opts, options)
    needs = {"dual_mae": pretrain, "mae": pretrain, "xray": xray_pretrain}.get(cfg.init)
    done = not opts.force and lifecycle.open_run(opts.out, run_tag(cfg), asdict(cfg)).finished
    source = needs(cfg, opts=replace(opts, force=False)) if needs and not done else None
    return lifecycle.execute(run_tag(cfg), cfg, opts, prepare=_finetune_data,
                    train=partial(_finetune_train, source=source), evaluate=evaluate)


run = finetune  # one run of the paper: a fine-tune, from the pretraining it needs


def _finetune_data(cfg: Config, opts: RunOptions) -> SimpleNamespace:
    data = common.crop_pipelines(pedicxr_cache(cfg, opts), "dual_mae_finetune", cfg.image_size,
                                 drop_remainder=True, batch_size=cfg.finetune_batch, seed=cfg.seed,
                                 preset_options=dict(resized_crop=tuple(cfg.finetune_crop),
                                                     randaugment=cfg.randaugment))
    common.full_batches(data.train.num_rows, cfg.finetune_batch,
                        f"the PediCXR training split (label fraction {cfg.label_fraction})")
    return data


def _finetune_train(cfg: Config, run_dir: RunFolder, data, runtime, opts: RunOptions, source=None):
    """Sec. IV: the whole network, layer-wise lr decay on the ViT; returns the start point's
    description and the training seconds."""
    model = build_classifier(cfg, len(data.labels))
    start = initialise(model, cfg, source)
    multipliers = (vit_layer_multipliers(model, cfg.depth, cfg.layer_decay)
                   if cfg.backbone == "vit_s" else None)
    steps = data.train.num_rows // cfg.finetune_batch
    t0 = time.perf_counter()
    fit_stage(model, data.train, data.val, run_dir, "finetune", epochs=cfg.finetune_epochs,
              optimizer=optimizer(cfg.finetune_lr, steps, cfg.finetune_epochs,
                                  cfg.finetune_warmup, cfg, multipliers),
              loss=get_loss("bce"), metrics=[common.auc_metric(len(data.labels))], monitor="val_auc", mode="max",
              **lifecycle.fit_options(runtime, opts, cfg.seed))
    return SimpleNamespace(start=start, seconds=time.perf_counter() - t0)


def tested_model(cfg: Config, run_dir: RunFolder):
    """The fine-tuned model that is tested: after the last epoch (``select="final"``; the paper:
    "After fine-tuning, the fine-tuned model was used to evaluate test images") or the best epoch
    by validation mean AUC (``"best_val"``)."""
    model = keras.saving.load_model(verify(run_dir.checkpoints / "best.keras"), safe_mode=True)
    if cfg.select == "final":  # fit_stage's marker holds the weights after the last epoch
        model.load_weights(verify(run_dir.checkpoints / "finetune.weights.h5"))
    return model


def evaluate(cfg: Config, run_dir: RunFolder, data, state, opts: RunOptions | None = None):
    """Table 3-4 metrics of the tested model (:func:`tested_model`) on PediCXR's test set."""
    model = tested_model(cfg, run_dir)
    labels, val, test = data.labels, data.val, data.test
    (val_logits, val_y), (test_logits, test_y) = common.predict_and_save(model, run_dir, labels, val=val,
                                                                         test=test)
    val_p, test_p = expit(val_logits), expit(test_logits)
    history, calibration, calibration_md = common.curves_and_calibration(
        run_dir, test_y, test_p, labels, stages=("finetune",), roc_title="ROC, PediCXR test",
        curves_title="Fine-tuning loss and AUC")
    m = run_dir.update_metrics(
        backbone=cfg.backbone, init=cfg.init, mask_ratio=cfg.ratio if cfg.init in METHODS else None,
        label_fraction=cfg.label_fraction, seed=cfg.seed, start=state.start, tested=cfg.select,
        **M.multilabel_summary(val_y, val_p, test_y, test_p, labels), test_calibration=calibration,
        epochs_trained=len(history.get("loss", [])), train_seconds=state.seconds,
        train_images=data.train.num_rows)
    run_dir.write_text("report.md", report(cfg, m) + "\n".join(calibration_md))
    return m


def table4_row(m: dict, rule: str = "youden_val") -> dict:
    mean = m["test_threshold_metrics"][rule]["mean"]
    return {"auc": m["test_mean_auc"], "sensitivity": mean["sensitivity"],
            "precision": mean["precision"], "f1": mean["f1"]}


def report(cfg: Config, m: dict) -> str:
    name = paper.NAME_OF[(cfg.backbone, cfg.init)]
    lines = [f"# dual_mae fine-tuning: {name}, seed {cfg.seed}"
             + (f", {cfg.label_fraction:.0%} of the labels" if cfg.label_fraction < 1 else ""), ""]
    lines += phantom_note(cfg.dataset, "PediCXR and adult X-rays")
    lines += [f"Start: {m['start']}. {cfg.backbone} at {cfg.image_size} px, {m['epochs_trained']} "
              f"epochs of batch {cfg.finetune_batch} on {m['train_images']} images; tested: "
              + ("the best epoch by validation mean AUC." if cfg.select == "best_val" else
                 "the model after the last epoch (the paper's)."), ""]
    ours = dict(m["test_auc"], Mean=m["test_mean_auc"])
    ref = paper.TABLE3[name] if cfg.label_fraction == 1.0 else {}
    lines += [comparison_table(ours, ref, title=f"Table 3: test AUC per class ({name} row)"), ""]
    lines += [metrics_table({"ours (Youden threshold from validation)": table4_row(m),
                             "ours (probability 0.5)": table4_row(m, "p0.5")},
                            {name: paper.TABLE4[name]} if cfg.label_fraction == 1.0 else {},
                            ["auc", "sensitivity", "precision", "f1"],
                            title="Table 4: macro means over the six classes (the paper does not "
                                  "state its threshold rule)"), ""]
    if cfg.init in METHODS:
        lines += [comparison_table({f"mask ratio {cfg.ratio:g}": m["test_mean_auc"]},
                                   {f"mask ratio {cfg.ratio:g}":
                                    paper.TABLE2[cfg.init].get(round(cfg.ratio, 2))},
                                   title="Table 2: mean AUC at this pretraining mask ratio"), ""]
    frac = round(cfg.label_fraction, 2)
    if frac in (0.1, 0.5, 1.0):
        lines += [comparison_table({f"{frac:.0%} labels": m["test_mean_auc"]},
                                   {f"{frac:.0%} labels": paper.TABLE6[name].get(frac)},
                                   title="Table 6: mean AUC at this labelled fraction"), ""]
    lines += ["Plots: `plots/roc_test.png`, `plots/training_curves.png`.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ grids

def run_many(cfg: Config, variants=({},), seeds=None, out="runs", data_root=None, *,
             opts: RunOptions | None = None, **options) -> list:
    """Fine-tune every variant (dict of Config changes) for every seed (default: ``cfg.seed``);
    finished runs are reused. Returns the run folders."""
    opts = lifecycle.join_processes(opts or lifecycle.options(out, data_root, **options))
    return [finetune(replace(cfg, seed=seed, **dict(overrides)), opts=opts)
            for overrides in variants for seed in (seeds or [cfg.seed])]


def baseline_variants(imagenet: bool = True):
    """Every method of Tables 3-4 (the ImageNet rows only when weights can be had)."""
    return [{"backbone": backbone, "init": init} for backbone, init in paper.METHODS.values()
            if imagenet or init != "imagenet"]


def grid_report(runs, title="dual_mae: Tables 3-4") -> str:
    """Mean (std over seeds) per method: Table 3 per class, Table 4 metrics, beside the paper."""
    groups = {}
    for r in runs:
        m = r.metrics()
        key = (m["backbone"], m["init"], m.get("mask_ratio"), m["label_fraction"])
        groups.setdefault(key, []).append(m)
    t3_ours, t3_ref, t4_ours, t4_ref, names = {}, {}, {}, {}, {}
    for (backbone, init, ratio, frac), ms in groups.items():
        name = paper.NAME_OF[(backbone, init)]
        key = name + (f" r{ratio:g}" if ratio is not None else "") + (
            f" {frac:.0%}" if frac < 1 else "")
        names[key] = f"{key} (n={len(ms)})"
        cols = list(ms[0]["test_auc"]) + ["Mean"]
        t3_ours[key] = {}
        for c in cols:
            vals = [mm["test_mean_auc"] if c == "Mean" else mm["test_auc"][c] for mm in ms]
            t3_ours[key][c] = mean_std(vals)
        rows = [table4_row(mm) for mm in ms]
        t4_ours[key] = {k: mean_std([r_[k] for r_ in rows])
                        for k in ("auc", "sensitivity", "precision", "f1")}
        if frac == 1.0 and (ratio is None or abs(ratio - paper.MASK_RATIO.get(init, ratio)) < 1e-9):
            t3_ref[key] = {c: f"{paper.TABLE3[name][c]:.3f} ({paper.TABLE3_STD[name][c]:.3f})"
                           for c in paper.TABLE3[name]}
            t4_ref[key] = paper.TABLE4[name]
    cols = list(paper.CLASSES) + ["Mean"]
    return "\n".join([f"# {title}", "", "Mean (std) over the seeds run; paper rows below ours.", "",
                      metrics_table(t3_ours, t3_ref, cols, title="Table 3: test AUC per class",
                                    names=names), "",
                      metrics_table(t4_ours, t4_ref, ["auc", "sensitivity", "precision", "f1"],
                                    title="Table 4: AUC, sensitivity, precision, F1 (Youden "
                                          "thresholds from validation)", names=names), ""])


def _mean_auc_by(runs, key):
    """{(paper method name, key(metrics)): [test mean AUC of each seed]}."""
    out = {}
    for r in runs:
        m = r.metrics()
        out.setdefault((paper.NAME_OF[(m["backbone"], m["init"])], key(m)), []).append(
            m["test_mean_auc"])
    return out


def mask_ratio_report(runs) -> str:
    """Table 2: mean test AUC (std over seeds) against the pretraining mask ratio, MAE and
    dual-MAE, beside the paper's."""
    got = _mean_auc_by(runs, lambda m: round(m["mask_ratio"], 2))
    ratios = sorted({r for _, r in got} | set(paper.TABLE2["dual_mae"]))
    ours, ref = {}, {}
    for method in METHODS:
        name = paper.NAME_OF[("vit_s", method)]
        ours[name] = {f"{r:g}": mean_std(got[(name, r)], with_n=True) for r in ratios if (name, r) in got}
        ref[name] = {f"{r:g}": paper.TABLE2[method][r] for r in ratios if r in paper.TABLE2[method]}
    ours = {k: v for k, v in ours.items() if v}
    return "\n".join(["# dual_mae: Table 2, pretraining mask ratio", "",
                      "Test mean AUC: ours as mean (std, seeds), the paper's in brackets.", "",
                      metrics_table(ours, ref, [f"{r:g}" for r in ratios],
                                    title="Table 2: mean AUC against the mask ratio"), ""])


def label_fraction_report(runs) -> str:
    """Table 5 (dual-MAE: AUC, sensitivity, precision, F1) and Table 6 (every method's mean
    AUC) against the fraction of labelled training images, beside the paper's."""
    got = _mean_auc_by(runs, lambda m: round(m["label_fraction"], 2))
    fracs = sorted({f for _, f in got})
    t6_ours, t6_ref = {}, {}
    for name in paper.METHODS:
        row = {f"{f:.0%}": mean_std(got[(name, f)], with_n=True) for f in fracs if (name, f) in got}
        if row:
            t6_ours[name] = row
            t6_ref[name] = {f"{f:.0%}": v for f, v in paper.TABLE6[name].items()}
    t5_ours = {}
    for r in runs:
        m = r.metrics()
        if (m["backbone"], m["init"]) == ("vit_s", "dual_mae"):
            t5_ours.setdefault(f"{m['label_fraction']:.0%}", []).append(table4_row(m))
    t5 = {k: {c: mean_std([row[c] for row in rows])
              for c in ("auc", "sensitivity", "precision", "f1")} for k, rows in t5_ours.items()}
    t5_ref = {f"{f:.0%}": {c: v for c, v in row.items() if v is not None}
              for f, row in paper.TABLE5.items() if f"{f:.0%}" in t5}
    cols = [f"{f:.0%}" for f in fracs]
    return "\n".join(["# dual_mae: Tables 5-6, labelled fraction", "",
                      "Ours as mean (std); the paper's in brackets.", "",
                      metrics_table(t5, t5_ref, ["auc", "sensitivity", "precision", "f1"],
                                    title="Table 5: dual-MAE against the labelled fraction (Youden "
                                     "thresholds from validation)"), "",
                      metrics_table(t6_ours, t6_ref, cols,
                                    title="Table 6: mean AUC against the labelled fraction"), ""])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg, opts = from_args(args)
    if args.stage == "pretrain":
        pretrain(cfg, opts=opts)
        return 0
    seeds = seeds_of(args.seeds, cfg.seed)
    if args.stage == "baselines":  # Tables 3-4: every method of the paper
        if cfg.imagenet_weights is None:
            print(lifecycle.IMAGENET_SKIPPED)
        runs = run_many(cfg, baseline_variants(cfg.imagenet_weights is not None), seeds, opts=opts)
    else:
        runs = run_many(cfg, [{}], seeds, opts=opts)
    if len(runs) > 1:
        lifecycle.write_summary(Path(opts.out) / f"dual_mae_{args.stage}_tables.md",
                                lambda: grid_report(runs))
    return 0
