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
  decay 0.55, RandAugment 6, DropPath 0.2, on the 80% train split of PediCXR; the best epoch by
  validation mean AUC is tested. One run per seed (the paper: three), then mean and std.
- ``all`` (default): pretrain + finetune of the chosen method.
- ``baselines``: Tables 3-4, every method of the paper (ResNet-34 and ViT-S from scratch,
  ImageNet-initialised and supervised-pretrained on the adult X-rays, MAE, dual-MAE).

Every run writes its own folder; pretraining runs are shared by the fine-tunes that need them.
``experiments/dual_mae/`` runs the mask-ratio sweep (Table 2) and the label fractions (Tables 5-6).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._argtypes import nonnegative_int, open_fraction, positive_int
from ..io import DataError
from . import dual_mae_paper as paper
from .common import add_standard_args, apply_args, cached, dataset_root

STAGES = ("all", "pretrain", "finetune", "baselines")
METHODS = ("dual_mae", "mae")
BACKBONES = ("vit_s", "resnet34")
INITS = ("dual_mae", "mae", "scratch", "imagenet", "xray")


@dataclass
class Config:
    """Every setting; defaults are the paper's (Sec. III-B, IV) unless marked CHOICE."""
    dataset: str = "phantom"
    backbone: str = "vit_s"
    init: str = "dual_mae"              # what the fine-tuned network starts from
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
    imagenet_weights: str | None = "imagenet"  # or local files: "vit_s=F1,resnet34=F2" (or one F)
    phantom_n: int = 2000               # PediCXR phantom images
    adult_phantom_n: tuple = (2000, 1000)  # NIH, CheXpert phantom images
    phantom_size: int = 256
    seed: int = 0
    deterministic: bool = False
    mixed_precision: object = "auto"
    xla: object = "auto"
    extra: dict = field(default_factory=dict)

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
             resnet_options={"widths": (16, 32, 64, 128)}, xla=True)


def build_parser():
    p = argparse.ArgumentParser(prog="cxr-keras run dual_mae", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_standard_args(p, "pedicxr")
    p.add_argument("--stage", choices=STAGES, default="all",
                   help="pretrain, finetune, all (pretrain then fine-tune), or baselines")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="pretraining method for --stage all/pretrain (default dual_mae)")
    p.add_argument("--backbone", choices=BACKBONES, default="vit_s",
                   help="fine-tuned network (default vit_s)")
    p.add_argument("--init", choices=INITS, default=None,
                   help="fine-tuning initialisation (default: --method)")
    p.add_argument("--mask-ratio", type=open_fraction, default=None,
                   help="fraction of patches masked in pretraining (paper: 0.75)")
    p.add_argument("--label-fraction", type=float, default=1.0, help="1%%/10%%/50%%/100%% runs")
    p.add_argument("--seeds", default=None, help="comma-separated fine-tuning seeds, e.g. 0,1,2")
    p.add_argument("--nih-root", default=None, help="NIH ChestX-ray14 (pretraining)")
    p.add_argument("--chexpert-root", default=None, help="CheXpert (pretraining)")
    p.add_argument("--imagenet-weights", default=None,
                   help="local ImageNet weights for --init imagenet (default: download): FILE, or "
                        "vit_s=FILE,resnet34=FILE for --stage baselines")
    p.add_argument("--pretrain-epochs", type=nonnegative_int, default=None, help="pretraining epochs")
    p.add_argument("--finetune-epochs", type=nonnegative_int, default=None, help="fine-tuning epochs")
    p.add_argument("--phantom-n", type=positive_int, default=None, help="images in the phantom PediCXR")
    return p


def config_from_args(args, **overrides) -> Config:
    cfg = Config(**(QUICK if args.quick else {}))  # --quick compiles with XLA: 2x faster on CPU
    cfg.backbone = args.backbone
    cfg.init = args.init or args.method or ("dual_mae" if args.backbone == "vit_s" else "scratch")
    cfg.mask_ratio, cfg.label_fraction = args.mask_ratio, args.label_fraction
    apply_args(cfg, args, ("imagenet_weights", "pretrain_epochs", "finetune_epochs", "phantom_n"),
               overrides)
    # one configuration, one run folder: the default ratio is written out, none without pretraining
    cfg.mask_ratio = cfg.ratio if cfg.init in METHODS else None
    check(cfg)
    return cfg


def check(cfg: Config):
    if cfg.backbone not in BACKBONES:
        raise DataError(f"backbone must be one of {BACKBONES}, got {cfg.backbone!r}")
    if cfg.init not in INITS:
        raise DataError(f"init must be one of {INITS}, got {cfg.init!r}")
    if cfg.backbone == "resnet34" and cfg.init in METHODS:
        raise DataError(f"--init {cfg.init} pretrains a ViT; ResNet-34 takes scratch, imagenet or "
                        "xray")
    if not 0.0 < cfg.label_fraction <= 1.0:
        raise DataError(f"--label-fraction must be in (0, 1], got {cfg.label_fraction}")
    if cfg.init == "imagenet" and cfg.imagenet_weights is None:
        raise DataError("--init imagenet needs ImageNet weights: the full-size network with "
                        "--imagenet-weights FILE or the default download (not --quick)")


# ---------------------------------------------------------------------------------------- data

def adult_cache(cfg: Config, args) -> Path:
    """One cache of NIH + CheXpert frontal images (phantoms, or --nih-root / --chexpert-root),
    labels kept as 'NIH/<finding>' and 'CheXpert/<observation>' (NaN where a dataset has no such
    column, and for CheXpert's uncertain labels) for the supervised X-ray baselines."""
    import pandas as pd

    from ..data import load_table
    from ..data.cache import Cache, build_cache
    from ..training import config_hash

    ns = argparse.Namespace(**vars(args))
    ns.dataset = "phantom" if cfg.dataset == "phantom" else "real"
    n_nih, n_chx = cfg.adult_phantom_n
    ns.seed = cfg.pretrain_seed
    nih = dataset_root("nih", ns, phantom_n=n_nih, phantom_size=cfg.phantom_size,
                       data_root=getattr(args, "nih_root", None))
    chx = dataset_root("chexpert", ns, phantom_n=n_chx, phantom_size=cfg.phantom_size,
                       data_root=getattr(args, "chexpert_root", None))
    key = config_hash({"nih": str(Path(nih).resolve()), "chexpert": str(Path(chx).resolve()),
                       "val": cfg.adult_val_fraction})
    path = Path(args.out) / "_data" / f"cache-adult-{cfg.cache_size}-{key}"
    try:
        Cache(path)
        return path
    except DataError:
        pass
    parts = []
    for name, root, opts in (("NIH", nih, {"val_fraction": cfg.adult_val_fraction}),
                             ("CheXpert", chx, {"frontal_only": True, "uncertain": "ignore",
                                                "val_fraction": cfg.adult_val_fraction})):
        t = load_table(name.lower(), root, **opts)
        labels = list(t.attrs["labels"])
        t = t[["path", "split"] + labels].rename(columns={c: f"{name}/{c}" for c in labels})
        t.insert(2, "source", name)
        parts.append(t)
    table = pd.concat(parts, ignore_index=True)
    labels = [c for c in table.columns if "/" in c]
    table.attrs = {"dataset": "adult", "root": str(Path(nih).resolve()), "labels": labels}
    table[labels] = table[labels].astype("float32")
    build_cache(table, path, size=cfg.cache_size, workers=args.workers)
    return path


def pedicxr_cache(cfg: Config, args) -> tuple[Path, Path]:
    ns = argparse.Namespace(**vars(args))
    ns.dataset = "phantom" if cfg.dataset == "phantom" else "pedicxr"
    ns.seed = 0  # one phantom and one split for every seed (the seeds vary the training)
    root = dataset_root("pedicxr", ns, phantom_n=cfg.phantom_n, phantom_size=cfg.phantom_size)
    options = {"val_fraction": cfg.val_fraction, "label_fraction": cfg.label_fraction, "seed": 0}
    return root, cached("pedicxr", root, ns, cache_size=cfg.cache_size, table_options=options,
                        cache=args.cache if cfg.label_fraction == 1.0 else None)


# ------------------------------------------------------------------------------------ schedule

def optimizer(lr: float, steps_per_epoch: int, epochs: int, warmup: int, cfg: Config,
              multipliers=None):
    """AdamW (betas, decoupled weight decay, none on biases and norms as MAE), linear warm-up
    then cosine to 0, per step (MAE's schedule); per-variable lr ``multipliers`` (layer decay)."""
    import keras

    from ..training.layer_decay import LayerDecayAdamW

    total = max(1, steps_per_epoch * epochs)
    warm = min(total - 1, steps_per_epoch * warmup)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, max(1, total - warm), alpha=0.0,
                                                      warmup_target=lr, warmup_steps=warm)
    return LayerDecayAdamW(schedule, beta_1=cfg.betas[0], beta_2=cfg.betas[1],
                           weight_decay=cfg.weight_decay, lr_multipliers=multipliers)


# ---------------------------------------------------------------------------------- pretraining

def pretrain_config(cfg: Config, method: str) -> dict:
    keys = ("dataset", "image_size", "patch_size", "width", "depth", "num_heads", "decoder_width",
            "decoder_depth", "decoder_heads", "norm_pix_loss", "cache_size", "pretrain_epochs",
            "pretrain_warmup", "pretrain_batch", "base_lr", "weight_decay", "betas",
            "pretrain_seed", "adult_phantom_n", "phantom_size", "mixed_precision", "xla")
    out = {k: getattr(cfg, k) for k in keys}
    out.update(method=method, mask_ratio=cfg.ratio)
    if method == "dual_mae":
        out.update(tau=cfg.tau, loss_weights=cfg.loss_weights, l1_region=cfg.l1_region)
    return out


def build_mae(cfg: Config, method: str):
    from ..models.mae import DualMaskedAutoencoder, MaskedAutoencoder

    kw = dict(image_size=cfg.image_size, channels=3, patch_size=cfg.patch_size, width=cfg.width,
              depth=cfg.depth, num_heads=cfg.num_heads, decoder_width=cfg.decoder_width,
              decoder_depth=cfg.decoder_depth, decoder_heads=cfg.decoder_heads,
              mask_ratio=cfg.ratio, norm_pix_loss=cfg.norm_pix_loss, seed=cfg.pretrain_seed)
    if method == "dual_mae":
        return DualMaskedAutoencoder(tau=cfg.tau, loss_weights=cfg.loss_weights,
                                     l1_region=cfg.l1_region, **kw)
    return MaskedAutoencoder(**kw)


def pretrain(cfg: Config, args, method: str):
    """Pretrain a (dual-)MAE on the adult images, or return the finished run of the same
    pretraining configuration."""
    import keras

    from ..data.augment import PRESETS
    from ..data.cache import Cache
    from ..data.pipeline import make_dataset
    from ..training import RunFolder, configure, fit_stage

    pcfg = pretrain_config(cfg, method)
    tag = f"dual_mae-pretrain-{method}-r{int(round(cfg.ratio * 100))}"
    try:
        run_dir = RunFolder.for_config(args.out, tag, pcfg, force=False)
    except DataError:
        from ..training import config_hash

        return RunFolder(Path(args.out) / f"{tag}-{config_hash(pcfg)}")
    print(f"pretraining run folder: {run_dir.path}")
    rt = configure(cfg.pretrain_seed, cfg.deterministic, cfg.mixed_precision, cfg.xla)
    cache = Cache(adult_cache(cfg, args))
    preset = dataclasses.replace(PRESETS["dual_mae_pretrain"], crop=cfg.image_size / cache.size)
    ds = make_dataset(cache, None, preset=preset, training=True, target="none",
                      batch_size=cfg.pretrain_batch, seed=cfg.pretrain_seed, drop_remainder=True)
    steps = len(cache) // cfg.pretrain_batch
    if steps == 0:
        raise DataError(f"{len(cache)} adult images are fewer than one batch of {cfg.pretrain_batch}")
    lr = cfg.base_lr * cfg.pretrain_batch / 256
    with rt.scope():
        model = build_mae(cfg, method)
        t0 = time.perf_counter()
        resumed = any(p.suffix == ".h5" for p in run_dir.checkpoints.iterdir())
        fit_stage(model, ds, None, run_dir, "pretrain", epochs=cfg.pretrain_epochs,
                  optimizer=optimizer(lr, steps, cfg.pretrain_epochs, cfg.pretrain_warmup, cfg),
                  loss=None, monitor="loss", mode="min", seed=cfg.pretrain_seed,
                  jit_compile=rt.jit_compile, verbose=args.verbose, tensorboard=args.tensorboard)
        seconds = None if resumed else time.perf_counter() - t0
    model.encoder.save_weights(run_dir.file("encoder.weights.h5"))
    finish_pretrain(model, cfg, method, run_dir, cache, seconds, steps)
    run_dir.mark_done()
    return run_dir


def finish_pretrain(model, cfg, method, run_dir, cache, seconds, steps):
    from ..data.augment import Preset
    from ..data.pipeline import make_dataset
    from ..evaluation.plots import plot_reconstructions, plot_training_curves
    from ..training import read_history

    history = read_history(run_dir.file("logs", "history_pretrain.csv"))
    centre = Preset(crop=cfg.image_size / cache.size)
    sample = next(iter(make_dataset(cache, None, preset=centre, target="none", batch_size=6,
                                    shuffle=False)))
    mae = model.online if method == "dual_mae" else model
    out = mae.reconstruct(sample)
    plot_reconstructions(np.asarray(sample), mae.images_from_patches(out["pred"]),
                         mae.images_from_patches(out["mask"][..., None] *
                                                 np.ones((1, 1, mae.patch_size ** 2 * 3))),
                         run_dir.file("plots", "reconstructions.png"), norm_pix=mae.norm_pix_loss,
                         patch_size=mae.patch_size,
                         title=f"{method}: input, masked ({int(cfg.ratio * 100)}%), reconstruction")
    plot_training_curves(history, run_dir.file("plots", "pretraining_curves.png"),
                         title=f"{method} pretraining loss terms")
    images = steps * cfg.pretrain_batch * len(history.get("loss", []))
    m = run_dir.update_metrics(
        method=method, mask_ratio=cfg.ratio, epochs=len(history.get("loss", [])),
        final={k: v[-1] for k, v in history.items() if k != "epoch" and v},
        first={k: v[0] for k, v in history.items() if k != "epoch" and v},
        train_seconds=seconds, images_per_second=(images / seconds) if seconds else None,
        adult_images=len(cache), params=int(model.count_params()))
    lines = [f"# dual_mae pretraining: {method}, mask ratio {cfg.ratio}", "",
             f"{len(cache)} adult images (NIH + CheXpert frontal{', phantom' if cfg.dataset == 'phantom' else ''}), "
             f"{m['epochs']} epochs of batch {cfg.pretrain_batch}, ViT {cfg.width}x{cfg.depth} / "
             f"patch {cfg.patch_size} at {cfg.image_size} px, decoder {cfg.decoder_width}x"
             f"{cfg.decoder_depth}.", "", "| term | first epoch | last epoch |", "|---|---:|---:|"]
    for k in sorted(m["final"]):
        lines.append(f"| {k} | {m['first'][k]:.4f} | {m['final'][k]:.4f} |")
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
    import keras

    if cfg.backbone == "vit_s":
        from ..models.vit import vit

        positional = "learned" if cfg.init in ("scratch", "imagenet", "xray") else "sincos"
        return vit(input_shape=(cfg.image_size, cfg.image_size, 3), patch_size=cfg.patch_size,
                   width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
                   num_classes=num_classes, pooling="cls", positional=positional,
                   drop_path_rate=cfg.drop_path if drop_path is None else drop_path,
                   seed=cfg.seed, name="vit")
    from ..models.resnet import resnet34

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


def initialise(model, cfg: Config, args):
    """Load the fine-tuning start point into ``model``; returns a description."""
    from ..models.vit import copy_encoder

    if cfg.init == "scratch":
        return "random (Xavier-uniform blocks)" if cfg.backbone == "vit_s" else "random"
    if cfg.init in METHODS:
        run_dir = pretrain(cfg, args, cfg.init)
        from ..models.vit import load_vit_weights

        load_vit_weights(model, run_dir.file("encoder.weights.h5"))
        return f"{cfg.init} online encoder from {run_dir.path.name}"
    if cfg.init == "imagenet":
        if cfg.backbone == "vit_s":
            from ..models.vit import vit_small

            src = vit_small(include_top=False, pooling=None, positional="learned",
                            weights=imagenet_weights(cfg))
            copy_encoder(src, model)
            return f"ImageNet (DeiT-S) {imagenet_weights(cfg)}"
        from ..models.resnet import resnet34

        src = resnet34(include_top=False, pooling="avg", weights=imagenet_weights(cfg))
        copy_backbone(src, model)
        return f"ImageNet (torchvision) {imagenet_weights(cfg)}"
    run_dir = xray_pretrain(cfg, args)
    import keras

    src = keras.saving.load_model(run_dir.checkpoints / "best.keras", safe_mode=True)
    copy_backbone(src, model)
    return f"supervised on the adult X-rays ({run_dir.path.name})"


def imagenet_weights(cfg: Config) -> str:
    """The ImageNet weights of ``cfg.backbone``: "imagenet" (download), one file, or the file
    named for the backbone in "vit_s=F1,resnet34=F2"."""
    value = cfg.imagenet_weights
    if value is None or "=" not in value:
        return value
    pairs = dict(part.split("=", 1) for part in value.split(",") if part.strip())
    if cfg.backbone not in pairs:
        raise DataError(f"--imagenet-weights {value!r} names no file for {cfg.backbone}")
    return pairs[cfg.backbone]


def xray_pretrain(cfg: Config, args):
    """The "(X-ray)" baselines: the same network trained supervised on the adult images' labels
    (NIH 14 + CheXpert 14 as separate outputs, masked BCE on what each image has; CHOICE)."""
    import keras

    from ..data.augment import PRESETS
    from ..data.cache import Cache
    from ..data.pipeline import make_dataset
    from ..losses import get_loss
    from ..training import RunFolder, config_hash, configure, fit_stage

    keys = ("dataset", "backbone", "image_size", "patch_size", "width", "depth", "num_heads",
            "resnet_options", "cache_size", "xray_epochs", "xray_lr", "xray_batch",
            "weight_decay", "betas", "pretrain_seed", "adult_phantom_n", "phantom_size",
            "adult_val_fraction", "mixed_precision", "xla")
    xcfg = {k: getattr(cfg, k) for k in keys}
    tag = f"dual_mae-xray-{cfg.backbone}"
    try:
        run_dir = RunFolder.for_config(args.out, tag, xcfg)
    except DataError:
        return RunFolder(Path(args.out) / f"{tag}-{config_hash(xcfg)}")
    print(f"supervised X-ray pretraining run folder: {run_dir.path}")
    rt = configure(cfg.pretrain_seed, cfg.deterministic, cfg.mixed_precision, cfg.xla)
    cache = Cache(adult_cache(cfg, args))
    preset = dataclasses.replace(PRESETS["dual_mae_pretrain"], crop=cfg.image_size / cache.size)
    kw = dict(preset=preset, batch_size=cfg.xray_batch, seed=cfg.pretrain_seed)
    train = make_dataset(cache, "train", training=True, drop_remainder=True, **kw)
    val = make_dataset(cache, "val", **kw)
    steps = train.num_rows // cfg.xray_batch
    with rt.scope():
        model = build_classifier(dataclasses.replace(cfg, init="xray"), len(cache.labels),
                                 drop_path=0.0)
        auc = keras.metrics.AUC(multi_label=True, num_labels=len(cache.labels), from_logits=True,
                                name="auc")
        fit_stage(model, train, val, run_dir, "xray", epochs=cfg.xray_epochs,
                  optimizer=optimizer(cfg.xray_lr, max(1, steps), cfg.xray_epochs, 1, cfg),
                  loss=get_loss("bce"), metrics=[auc], monitor="val_loss", mode="min",
                  seed=cfg.pretrain_seed, jit_compile=rt.jit_compile, verbose=args.verbose)
    run_dir.mark_done()
    return run_dir


# ---------------------------------------------------------------------------------- fine-tuning

def run_tag(cfg: Config) -> str:
    tag = f"dual_mae-finetune-{cfg.backbone}-{cfg.init}"
    if cfg.init in METHODS:
        tag += f"-r{int(round(cfg.ratio * 100))}"
    if cfg.label_fraction < 1.0:
        tag += f"-f{cfg.label_fraction:g}"
    return tag + f"-seed{cfg.seed}"


def finetune(cfg: Config, args):
    """Fine-tune on PediCXR and evaluate on its test set; returns the run folder."""
    import keras

    from ..data.augment import PRESETS
    from ..data.cache import Cache
    from ..data.pipeline import make_dataset
    from ..losses import get_loss
    from ..training import RunFolder, configure, fit_stage
    from ..training.layer_decay import vit_layer_multipliers

    if cfg.dataset != "phantom":
        cfg.extra = dict(cfg.extra, data_root=str(args.data_root), nih_root=str(args.nih_root),
                         chexpert_root=str(args.chexpert_root))
    run_dir = RunFolder.for_config(args.out, run_tag(cfg), asdict(cfg), force=args.force)
    print(f"fine-tuning run folder: {run_dir.path}")
    rt = configure(cfg.seed, cfg.deterministic, cfg.mixed_precision, cfg.xla)
    _, cache_path = pedicxr_cache(cfg, args)
    cache = Cache(cache_path)
    labels = list(cache.labels)
    preset = dataclasses.replace(PRESETS["dual_mae_finetune"], crop=cfg.image_size / cache.size,
                                 resized_crop=tuple(cfg.finetune_crop), randaugment=cfg.randaugment)
    kw = dict(preset=preset, batch_size=cfg.finetune_batch, seed=cfg.seed)
    train = make_dataset(cache, "train", training=True, drop_remainder=True, **kw)
    val = make_dataset(cache, "val", **kw)
    test = make_dataset(cache, "test", **kw)
    steps = train.num_rows // cfg.finetune_batch
    if steps == 0:
        raise DataError(f"the PediCXR training split has {train.num_rows} images, fewer than one "
                        f"batch of {cfg.finetune_batch} (label fraction {cfg.label_fraction})")
    with rt.scope():
        model = build_classifier(cfg, len(labels))
        start = initialise(model, cfg, args)
        multipliers = (vit_layer_multipliers(model, cfg.depth, cfg.layer_decay)
                       if cfg.backbone == "vit_s" else None)
        auc = keras.metrics.AUC(multi_label=True, num_labels=len(labels), from_logits=True,
                                name="auc")
        t0 = time.perf_counter()
        fit_stage(model, train, val, run_dir, "finetune", epochs=cfg.finetune_epochs,
                  optimizer=optimizer(cfg.finetune_lr, steps, cfg.finetune_epochs,
                                      cfg.finetune_warmup, cfg, multipliers),
                  loss=get_loss("bce"), metrics=[auc], monitor="val_auc", mode="max",
                  seed=cfg.seed, jit_compile=rt.jit_compile, verbose=args.verbose,
                  tensorboard=args.tensorboard)
        seconds = time.perf_counter() - t0
    best = keras.saving.load_model(run_dir.checkpoints / "best.keras", safe_mode=True)
    evaluate(best, cfg, run_dir, labels, val, test, start, seconds, train.num_rows)
    run_dir.mark_done()
    print(f"report: {run_dir.file('report.md')}")
    return run_dir


def evaluate(model, cfg, run_dir, labels, val, test, start, seconds, n_train):
    from scipy.special import expit

    from ..evaluation import metrics as M
    from ..evaluation.plots import plot_roc_curves, plot_training_curves
    from ..inference.batches import predict_dataset
    from ..training import read_history

    val_logits, val_y = predict_dataset(model, val, np.float64)
    test_logits, test_y = predict_dataset(model, test, np.float64)
    run_dir.save_predictions("val", y_true=val_y, logits=val_logits, labels=np.array(labels))
    run_dir.save_predictions("test", y_true=test_y, logits=test_logits, labels=np.array(labels))
    val_p, test_p = expit(val_logits), expit(test_logits)
    test_auc = M.per_class_auc(test_y, test_p, labels)
    thr = M.youden_thresholds(val_y, val_p)
    # positive when prob >= threshold (threshold_metrics is strict)
    at_youden = M.threshold_metrics(test_y, test_p - np.nextafter(thr, -np.inf)[None, :], 0.0, labels)
    at_half = M.threshold_metrics(test_y, test_p, 0.5, labels)
    history = read_history(run_dir.file("logs", "history_finetune.csv"))
    m = run_dir.update_metrics(
        backbone=cfg.backbone, init=cfg.init, mask_ratio=cfg.ratio if cfg.init in METHODS else None,
        label_fraction=cfg.label_fraction, seed=cfg.seed, start=start,
        val_auc=M.per_class_auc(val_y, val_p, labels), test_auc=test_auc,
        test_mean_auc=M.mean_of(test_auc), thresholds=dict(zip(labels, map(float, thr))),
        test_threshold_metrics={"youden_val": at_youden, "p0.5": at_half},
        epochs_trained=len(history.get("loss", [])), train_seconds=seconds, train_images=n_train)
    plot_roc_curves(test_y, test_p, labels, run_dir.file("plots", "roc_test.png"),
                    title="ROC, PediCXR test")
    plot_training_curves(history, run_dir.file("plots", "training_curves.png"),
                         title="Fine-tuning loss and AUC")
    run_dir.write_text("report.md", report(cfg, m))
    return m


def table4_row(m: dict, rule: str = "youden_val") -> dict:
    mean = m["test_threshold_metrics"][rule]["mean"]
    return {"auc": m["test_mean_auc"], "sensitivity": mean["sensitivity"],
            "precision": mean["precision"], "f1": mean["f1"]}


def report(cfg: Config, m: dict) -> str:
    from ..evaluation.report import comparison_table, metrics_table

    name = paper.NAME_OF[(cfg.backbone, cfg.init)]
    lines = [f"# dual_mae fine-tuning: {name}, seed {cfg.seed}"
             + (f", {cfg.label_fraction:.0%} of the labels" if cfg.label_fraction < 1 else ""), ""]
    if cfg.dataset == "phantom":
        lines += ["Data: **phantom** PediCXR and adult X-rays (synthetic). Numbers are not "
                  "comparable with the paper's; the tables show the pipeline end to end.", ""]
    lines += [f"Start: {m['start']}. {cfg.backbone} at {cfg.image_size} px, {m['epochs_trained']} "
              f"epochs of batch {cfg.finetune_batch} on {m['train_images']} images; best epoch by "
              "validation mean AUC.", ""]
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

def seeds_of(args) -> list:
    if args.seeds is None:
        return [args.seed]
    try:
        return [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        raise DataError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from e


def run_many(args, variants):
    """Fine-tune every variant (dict of Config overrides) for every seed; finished runs are
    reused. Returns the run folders."""
    from .common import run_or_reuse

    runs = []
    for overrides in variants:
        for seed in seeds_of(args):
            cfg = config_from_args(args, seed=seed, **dict(overrides))
            runs.append(run_or_reuse(finetune, cfg, args, run_tag(cfg)))
    return runs


def baseline_variants(imagenet: bool = True):
    """Every method of Tables 3-4 (the ImageNet rows only when weights can be had)."""
    return [{"backbone": backbone, "init": init} for backbone, init in paper.METHODS.values()
            if imagenet or init != "imagenet"]


def _mean_std(values):
    v = np.array([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def grid_report(runs, title="dual_mae: Tables 3-4") -> str:
    """Mean (std over seeds) per method: Table 3 per class, Table 4 metrics, beside the paper."""
    from ..evaluation.report import metrics_table

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
            mu, sd = _mean_std(vals)
            t3_ours[key][c] = f"{mu:.3f} ({sd:.3f})"
        rows = [table4_row(mm) for mm in ms]
        t4_ours[key] = {k: "{:.3f} ({:.3f})".format(*_mean_std([r_[k] for r_ in rows]))
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


def _cell(values) -> str:
    mu, sd = _mean_std(values)
    return f"{mu:.3f} ({sd:.3f}, n={len(values)})"


def mask_ratio_report(runs) -> str:
    """Table 2: mean test AUC (std over seeds) against the pretraining mask ratio, MAE and
    dual-MAE, beside the paper's."""
    from ..evaluation.report import metrics_table

    got = _mean_auc_by(runs, lambda m: round(m["mask_ratio"], 2))
    ratios = sorted({r for _, r in got} | set(paper.TABLE2["dual_mae"]))
    ours, ref = {}, {}
    for method in METHODS:
        name = paper.NAME_OF[("vit_s", method)]
        ours[name] = {f"{r:g}": _cell(got[(name, r)]) for r in ratios if (name, r) in got}
        ref[name] = {f"{r:g}": paper.TABLE2[method][r] for r in ratios if r in paper.TABLE2[method]}
    ours = {k: v for k, v in ours.items() if v}
    return "\n".join(["# dual_mae: Table 2, pretraining mask ratio", "",
                      "Test mean AUC: ours as mean (std, seeds), the paper's in brackets.", "",
                      metrics_table(ours, ref, [f"{r:g}" for r in ratios],
                                    title="Table 2: mean AUC against the mask ratio"), ""])


def label_fraction_report(runs) -> str:
    """Table 5 (dual-MAE: AUC, sensitivity, precision, F1) and Table 6 (every method's mean
    AUC) against the fraction of labelled training images, beside the paper's."""
    from ..evaluation.report import metrics_table

    got = _mean_auc_by(runs, lambda m: round(m["label_fraction"], 2))
    fracs = sorted({f for _, f in got})
    t6_ours, t6_ref = {}, {}
    for name in paper.METHODS:
        row = {f"{f:.0%}": _cell(got[(name, f)]) for f in fracs if (name, f) in got}
        if row:
            t6_ours[name] = row
            t6_ref[name] = {f"{f:.0%}": v for f, v in paper.TABLE6[name].items()}
    t5_ours = {}
    for r in runs:
        m = r.metrics()
        if (m["backbone"], m["init"]) == ("vit_s", "dual_mae"):
            t5_ours.setdefault(f"{m['label_fraction']:.0%}", []).append(table4_row(m))
    t5 = {k: {c: "{:.3f} ({:.3f})".format(*_mean_std([row[c] for row in rows]))
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
    from ..io import write_text

    args = build_parser().parse_args(argv)
    if args.stage == "pretrain":
        cfg = config_from_args(args)
        pretrain(cfg, args, args.method or "dual_mae")
        return 0
    if args.stage == "baselines":
        runs = run_many(args, baseline_variants(imagenet=not args.quick or
                                                args.imagenet_weights is not None))
        if args.quick and args.imagenet_weights is None:
            print("ImageNet rows skipped: --quick trains reduced networks (pass full-size runs "
                  "with --imagenet-weights or the default download)")
    else:
        runs = run_many(args, [{}])
    if len(runs) > 1:
        out = Path(args.out) / f"dual_mae_{args.stage}_tables.md"
        write_text(out, grid_report(runs))
        print(f"wrote {out}")
    return 0
