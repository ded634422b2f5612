"""mtpret (Liao et al. 2024): contrastive pretraining over several X-ray datasets, multitask
continual learning, then fine-tuning on each task, and the baseline grid of Tables II-VII.

``cxr-keras run mtpret [--stage all|pretrain|multitask|finetune|baselines] [--init NAME]
[--backbone resnet18|resnet50] [--tasks pneumonia,mura,...] [--quick]``

- ``pretrain`` (``--init sd_simclr|md_simclr|sd_moco|md_moco|md_moco++``, default md_moco): MoCo
  v2 or SimCLR on NIH alone (SD) or on the paper's Table I set (MD: Shenzhen, Montgomery,
  Indiana, RSNA Bone Age, all of NIH, and the training splits of Pneumonia, MURA, the lung masks
  and TBX: no validation or test image of those four, nor any CheXpert or DeepCovid image);
  ``++`` starts from ImageNet.
  Z-score (mean 122.786, std 18.390 on 0-255), resize to ``image_size``, the ``mtpret``
  augmentation. Writes ``backbone.weights.h5``.
- ``multitask`` (``--init mtpret|mtpret--``): from MD-MoCo, rounds over pneumonia, MURA, lung
  segmentation and TBX detection on one backbone (reshuffled order, cyclic cosine lr of eq. 4,
  L2-SP; MTPret-- without them). Resumes at the last finished round.
- ``finetune``: one run per task (``--tasks``, default all with data) from ``--init`` (any
  method of Table II, default mtpret): FC / DeepLab-V3 / Faster R-CNN on the backbone, the whole
  network trained, the best epoch by the validation main metric tested.
- ``all`` (default): pretrain MD-MoCo, multitask MTPret, fine-tune every task; one summary table.
- ``baselines``: every method of Table II on every task (ImageNet rows only with weights).

Python: ``mtpret.run(Config(task="lung"), out="runs")`` (phantom data; no task: every task);
each stage alone: ``pretrain(Config(init="sd_moco"))``, ``multitask``, ``finetune``, ``run_grid``.
Every stage writes its own folder named after the settings it depends on (``config.json``), shared
by the later stages that need it, with the whole Config beside it (``recipe_config.json``;
``--config`` of either reproduces the run). DeepCovid (the seventh task) is fine-tuned on the
official train folder (a seeded tenth of each class as validation) and tested on the official
test folder, which Table I calls its validation split.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import keras

from .. import tasks
from .._argtypes import positive_int
from ..data.cache import Cache
from ..data.pipeline import make_dataset
from ..evaluation.plots import plot_training_curves
from ..evaluation.report import comparison_table, loss_terms_table, metrics_table, phantom_note, pretraining_numbers
from ..integrity import verify
from ..io import DataError
from ..models import MoCo, SimCLR, multiscale_backbone
from ..training import CoupledDecaySGD, RunFolder, fit_stage, read_history
from ..training.multitask import RoundCheckpoints, Task, continual_learning, last_losses, visits_table
from . import lifecycle
from . import mtpret_paper as paper
from .common import cache_of, full_batches, phantom_or_real_root, pooled_cache
from .lifecycle import RecipeConfig, RunOptions, config_from_args, execute, options_from_args

STAGES = ("all", "pretrain", "multitask", "finetune", "baselines")
PRETRAINED = ("sd_simclr", "md_simclr", "sd_moco", "md_moco", "md_moco++")
MULTITASK = ("mtpret--", "mtpret")
INITS = ("scratch", "imagenet") + PRETRAINED + MULTITASK
PAPER_NAME = dict(zip(INITS, paper.METHODS))
MULTITASK_TASKS = ("pneumonia", "mura", "lung", "tbx")
FINETUNE_TASKS = ("nih", "pneumonia", "mura", "lung", "tbx", "chexpert", "deepcovid")
BACKBONES = ("resnet18", "resnet50")


@dataclass(frozen=True)
class TaskSpec:
    reader: str            # dataset reader (cxr_keras.data.datasets)
    kind: str              # binary | multilabel | segmentation | detection
    options: tuple         # reader options, as (key, value) pairs


TASKS = {
    "pneumonia": TaskSpec("kermany", "binary", (("classes", "binary"), ("split", "random"))),
    "mura": TaskSpec("mura", "binary", (("split", "random"),)),
    "lung": TaskSpec("lungmasks", "segmentation", ()),
    "tbx": TaskSpec("tbx11k", "detection", (("subset", "tb"), ("split", "random"))),
    "nih": TaskSpec("nih", "multilabel", (("split", "random"), ("fractions", (0.7, 0.1, 0.2)))),
    "chexpert": TaskSpec("chexpert", "multilabel",
                         (("labels", ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                      "Pleural Effusion")), ("uncertain", "ones"))),
    "deepcovid": TaskSpec("deepcovid", "binary", (("val_fraction", 0.1),)),
}
# Table I's "only used for multidataset contrastive learning" sets: reader, options, split kept
PRETRAIN_ONLY = {
    "shenzhen": ("shenzhen", (("split", "train"),), None),
    "montgomery": ("montgomery", (("split", "train"), ("masks", False)), None),
    "indiana": ("indiana", (), None),
    "rsna_boneage": ("rsna_boneage", (), "train"),
}
METRIC_OF_KIND = tasks.MAIN_METRIC


@dataclass
class Config(RecipeConfig):
    """Every setting; the paper's where it gives one, else marked CHOICE (docs/FIDELITY.md)."""
    backbone: str = "resnet18"
    init: str = "mtpret"
    task: str | None = None                # fine-tuning task (one run per task)
    image_size: tuple = (800, 512)         # CHOICE: the paper's 800 x 500, width to 512 (/32)
    cache_size: int = 800
    backbone_options: dict = field(default_factory=dict)   # reduced ResNet (--quick)
    imagenet_weights: str | None = "imagenet"  # or a local .weights.h5 / PyTorch checkpoint
    # contrastive pretraining (CHOICE: MoCo v2 defaults; the paper gives none)
    pretrain_epochs: int = 200
    pretrain_batch: int = 256
    pretrain_lr: float = 0.03              # SGD momentum 0.9, x batch / 256, cosine to 0
    pretrain_weight_decay: float = 1e-4
    pretrain_decay_mode: str = "decoupled"  # Keras' SGD; "coupled": MoCo v2's (PyTorch) L2 in
                                           # the gradient, ~10x stronger at momentum 0.9
    queue_size: int = 65536
    moco_momentum: float = 0.999
    temperature: float = 0.2
    head_hidden: int = 2048
    head_dim: int = 128
    # multitask continual learning (CHOICE: rounds, epochs, learning rates)
    rounds: int = 5
    visit_epochs: int = 1
    multitask_batch: int = 16
    max_lr: float = 1e-3                   # eq. (4) eta_max, Adam
    min_lr: float = 1e-6
    l2sp: tuple = (0.1, 0.01)              # alpha, beta (the L2-SP authors' code)
    multitask_from: str = "md_moco"        # the paper: MTPret continues MD-MoCo
    # fine-tuning (CHOICE: Adam, cosine decay, epochs, batch)
    finetune_epochs: int = 30
    detection_epochs: int | None = None    # None: finetune_epochs
    finetune_batch: int = 16
    detection_batch: int = 4
    finetune_lr: float = 1e-4
    # heads
    aspp_rates: tuple | None = None        # None: DeepLab-V3's 6/12/18 (stride 16) scaled to
                                           # the map's stride: 3/6/9 on C5 (stride 32)
    aspp_filters: int = 256
    seg_level: int = 3                     # ASPP on C5 (0..3 = C2..C5)
    det_level: int = 2                     # C4, stride 16
    anchor_sizes: tuple = (32, 64, 128)
    anchor_ratios: tuple = (0.5, 1.0, 2.0)
    rpn_channels: int = 256
    proposals: int = 64
    head_units: int = 256
    dice_smooth: float = 1.0
    pretrain_nih: str = "all"              # Table I: all of NIH in MD pretraining; "train": its
                                           # fine-tuning training split only (no test image)
    # phantom sizes (images written per dataset)
    phantom_n: dict = field(default_factory=lambda: {
        "nih": 3000, "kermany": 1500, "mura": 1500, "lungmasks": 600, "tbx11k": 6000,
        "chexpert": 1500, "deepcovid": 1000, "shenzhen": 300, "montgomery": 100,
        "indiana": 600, "rsna_boneage": 600})
    phantom_size: int = 512


QUICK = dict(image_size=(128, 96), cache_size=128, backbone_options={"widths": (16, 32, 64, 128)},
             imagenet_weights=None, pretrain_epochs=12, pretrain_batch=64, pretrain_lr=0.12,
             queue_size=1024, moco_momentum=0.99, head_hidden=256, head_dim=64, rounds=2,
             visit_epochs=2,
             finetune_epochs=10, detection_epochs=30, finetune_batch=16, detection_batch=8,
             finetune_lr=1e-3, aspp_rates=(1, 2, 3), aspp_filters=64, seg_level=1, det_level=1,
             anchor_sizes=(8, 16, 32), rpn_channels=64, proposals=32, head_units=128,
             phantom_n={"nih": 600, "kermany": 500, "mura": 500, "lungmasks": 300,
                        "tbx11k": 2400, "chexpert": 500, "deepcovid": 300, "shenzhen": 40,
                        "montgomery": 20, "indiana": 60, "rsna_boneage": 60},
             phantom_size=128, xla=False)

SHORTCUTS = {  # command-line options of their own; --set FIELD=VALUE reaches every field
    "init": dict(choices=INITS, help="pretraining (stage pretrain), multitask variant (stage multitask) "
                 "or fine-tuning initialisation (stage finetune)"),
    "backbone": dict(choices=BACKBONES, help="shared backbone (default resnet18)"),
    "imagenet_weights": "local ImageNet weights for the ImageNet-initialised runs (default: download)",
    "pretrain_epochs": "contrastive pretraining epochs",
    "rounds": dict(type=positive_int, help="multitask continual-learning rounds"),
    "finetune_epochs": "fine-tuning epochs per task",
}
STAGE_INIT = {"pretrain": (PRETRAINED, "md_moco"), "multitask": (MULTITASK, "mtpret")}
REAL = ("real",) + tuple(sorted({spec.reader for spec in TASKS.values()}
                                 | {reader for reader, _, _ in PRETRAIN_ONLY.values()}))


def build_parser():
    p = lifecycle.parser("mtpret", __doc__, "real", Config, SHORTCUTS)
    p.add_argument("--stage", choices=STAGES, default=None,
                   help="pretrain, multitask, finetune, all (in turn; the default), or baselines")
    p.add_argument("--tasks", default=None,
                   help=f"comma-separated fine-tuning tasks (default: {','.join(FINETUNE_TASKS)})")
    p.add_argument("--roots", default=None,
                   help="real data: READER=FOLDER,... for nih, kermany, mura, lungmasks, tbx11k, "
                        "chexpert, deepcovid, shenzhen, montgomery, indiana, rsna_boneage (each "
                        "defaults to --data-root); the same as --root READER=DIR")
    return p


def from_command_line(argv=None) -> tuple[Config, RunOptions]:
    """(Config, RunOptions) of a ``cxr-keras run mtpret`` command line (``--stage`` and ``--tasks``
    choose the runs: :func:`stage_of`, :func:`main`)."""
    return _from_args(build_parser().parse_args(argv))


def _from_args(args) -> tuple[Config, RunOptions]:
    cfg = config_from_args(Config, args, QUICK, SHORTCUTS)
    stage = stage_of(args)
    if stage in STAGE_INIT and args.init is None and cfg.init not in STAGE_INIT[stage][0]:
        cfg = replace(cfg, init=STAGE_INIT[stage][1])  # the stage's default method
    opts = options_from_args(args)
    return resolve(cfg), replace(opts, roots={**parse_roots(args.roots), **opts.roots})


def stage_of(args) -> str:
    """``--stage``; by default the stage of the run folder ``--config`` comes from, else all."""
    folder = Path(args.config).parent.name if args.config else ""
    return args.stage or next((s for s in STAGE_INIT | {"finetune": 0}
                               if folder.startswith(f"mtpret-{s}-")), "all")


def parse_roots(text) -> dict:
    """``--roots READER=FOLDER,...``: an alias of ``--root READER=DIR`` (repeated)."""
    items = [item for item in (text or "").split(",") if item.strip()]
    if any("=" not in item for item in items):
        raise DataError(f"--roots takes READER=FOLDER items, got {text!r}")
    return {k.strip(): v.strip() for k, v in (item.split("=", 1) for item in items)}


def resolve(cfg: Config) -> Config:
    """The configuration as it runs (JSON lists back to tuples), checked."""
    lifecycle.check_choices(cfg, backbone=BACKBONES, init=INITS, task=(None, *TASKS),
                            pretrain_nih=("all", "train"),
                            pretrain_decay_mode=("decoupled", "coupled"))
    if cfg.init in ("imagenet", "md_moco++") and cfg.imagenet_weights is None:
        raise DataError(f"--init {cfg.init} needs ImageNet weights: the full-size network with "
                        "--imagenet-weights FILE or the default download (not --quick)")
    h, w = cfg.image_size
    if h % 32 or w % 32:
        raise DataError(f"image_size {cfg.image_size} must be a multiple of 32 (DeepLab-V3 and "
                        "Faster R-CNN read the stride-32 and stride-16 maps)")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.backbone_options.items()}
    return replace(cfg, image_size=tuple(cfg.image_size), backbone_options=options)


def parse_tasks(text) -> list:
    """``--tasks a,b``: fine-tuning tasks (default: every one)."""
    if text is None:
        return list(FINETUNE_TASKS)
    return lifecycle.comma_list(text, "--tasks", known=TASKS, what="task")


def setup(cfg: Config | None = None, out="runs", data_root=None, *,
          opts: RunOptions | None = None, **options) -> tuple[Config, RunOptions]:
    """(Config, RunOptions) of a call, checked; real data when a folder is given; with
    ``distributed``, the processes joined (once: pass the result on to every later call)."""
    return lifecycle.setup(cfg or Config(), resolve, REAL, out, data_root, opts, options, join=True)


# ---------------------------------------------------------------------------------------- data

def reader_root(reader: str, cfg: Config, opts: RunOptions) -> Path:
    # seed 0: one phantom and one split for every seed
    return phantom_or_real_root(reader, replace(cfg, seed=0), opts, phantom_n=cfg.phantom_n,
                                phantom_size=cfg.phantom_size)


def task_cache(name: str, cfg: Config, opts: RunOptions) -> Path:
    spec = TASKS[name]
    return cache_of(spec.reader, reader_root(spec.reader, cfg, opts), opts,
                    cache_size=cfg.cache_size, table_options=dict(spec.options), tag="mtpret")


def pretrain_sources(cfg: Config, data: str) -> dict:
    """name -> (reader, reader options, split kept or None for all) of the unlabelled pretraining
    images: NIH alone (``sd``) or Table I's set (``md``): the four pretraining-only datasets
    (Shenzhen, Montgomery, Indiana, RSNA Bone Age's training set), NIH (all, or its training
    split with ``pretrain_nih="train"``) and the training splits of the four multitask datasets.
    No validation or test image of pneumonia, MURA, lung or TBX, and none of CheXpert or
    DeepCovid."""
    nih_split = None if cfg.pretrain_nih == "all" else "train"
    nih = {"nih": ("nih", TASKS["nih"].options if nih_split else (), nih_split)}
    if data == "sd":
        return nih
    return {**PRETRAIN_ONLY, **nih,
            **{t: (TASKS[t].reader, TASKS[t].options, "train") for t in MULTITASK_TASKS}}


def pretrain_cache(cfg: Config, opts: RunOptions, data: str) -> Path:
    """The cache of the unlabelled pretraining images (:func:`pretrain_sources`)."""
    sources = {name: (reader, reader_root(reader, cfg, opts), options, split)
               for name, (reader, options, split) in pretrain_sources(cfg, data).items()}
    return pooled_cache(sources, opts, name=f"pretrain-{data}", dataset=f"mtpret-{data}",
                        cache_size=cfg.cache_size)


def datasets_for(name: str, cfg: Config, cache, batch: int, model=None, splits=("train", "val",
                                                                                 "test")):
    """tf.data pipelines of one task (:func:`cxr_keras.tasks.task_datasets`): Z-scored, resized to
    ``image_size``, augmented with ``mtpret`` in training."""
    return tasks.task_datasets(TASKS[name].kind, cache, batch, preset="mtpret",
                               normalization="mtpret", image_size=cfg.image_size, seed=cfg.seed,
                               model=model, splits=splits)


# --------------------------------------------------------------------------------------- models

def build_backbone(cfg: Config, weights=None):
    return multiscale_backbone(cfg.backbone, input_shape=(*cfg.image_size, 3), weights=weights,
                               **cfg.backbone_options)


def build_task_model(name: str, backbone, cfg: Config, num_outputs: int):
    """FC (classification), DeepLab-V3 (segmentation) or Faster R-CNN (detection) on
    ``backbone`` (:func:`cxr_keras.tasks.head_model`)."""
    return tasks.head_model(TASKS[name].kind, backbone, num_outputs, name,
                            **{k: getattr(cfg, k) for k in tasks.HEAD_OPTIONS})


def loss_and_metrics(name: str, cfg: Config, n_out: int):
    """(loss, metrics, monitor, mode) of a task; segmentation: eq. 7, one Dice per image."""
    return tasks.loss_and_metrics(TASKS[name].kind, n_out, cfg.dice_smooth)


def _shared_keys(cfg: Config) -> dict:
    keys = ("dataset", "backbone", "image_size", "cache_size", "backbone_options", "phantom_n",
            "phantom_size", "mixed_precision", "xla")
    return {k: getattr(cfg, k) for k in keys}


def pretrain_config(cfg: Config, init: str) -> dict:
    keys = ("pretrain_epochs", "pretrain_batch", "pretrain_lr", "pretrain_weight_decay",
            "pretrain_decay_mode", "head_hidden", "head_dim", "temperature")
    out = {**_shared_keys(cfg), **{k: getattr(cfg, k) for k in keys}, "init": init,
           "seed": 0, "pretrain_nih": cfg.pretrain_nih,
           "sources": sorted(pretrain_sources(cfg, "sd" if init.startswith("sd") else "md"))}
    if "moco" in init:
        out.update(queue_size=cfg.queue_size, moco_momentum=cfg.moco_momentum)
    if init == "md_moco++":
        out["imagenet_weights"] = cfg.imagenet_weights
    return out


def multitask_config(cfg: Config, variant: str) -> dict:
    keys = ("rounds", "visit_epochs", "multitask_batch", "max_lr", "min_lr", "multitask_from",
            "aspp_rates", "aspp_filters", "seg_level", "det_level", "anchor_sizes",
            "anchor_ratios", "rpn_channels", "proposals", "head_units", "dice_smooth")
    out = {**_shared_keys(cfg), **{k: getattr(cfg, k) for k in keys}, "variant": variant,
           "seed": 0, "pretrain": pretrain_config(cfg, cfg.multitask_from)}
    if variant == "mtpret":
        out["l2sp"] = cfg.l2sp
    return out


# ----------------------------------------------------------------------------- run folders

# ---------------------------------------------------------------------------------- pretraining

def pretrain(cfg: Config | None = None, out="runs", data_root=None, *,
             opts: RunOptions | None = None, **options) -> RunFolder:
    """Contrastive pretraining ``cfg.init`` (sd/md x simclr/moco, md_moco++; Sec. III-B) with seed
    0 (one pretraining serves every fine-tuning seed); returns its run folder (a finished one of
    the same settings as it is). ``options``: see :class:`RunOptions`."""
    cfg, opts = setup(cfg, out, data_root, opts=opts, **options)
    if cfg.init not in PRETRAINED:
        raise DataError(f"--stage pretrain takes --init {'|'.join(PRETRAINED)}, got {cfg.init!r}")
    cfg = replace(cfg, seed=0, task=None)
    return execute(f"mtpret-pretrain-{cfg.init}", cfg, opts, config=pretrain_config(cfg, cfg.init),
                   prepare=_pretrain_data, train=_pretrain_train, evaluate=_pretrain_evaluate)


def _pretrain_data(cfg: Config, opts: RunOptions) -> SimpleNamespace:
    cache = Cache(pretrain_cache(cfg, opts, "sd" if cfg.init.startswith("sd") else "md"))
    ds = make_dataset(cache, None, preset="mtpret", training=True, target="none", views=2,
                      batch_size=cfg.pretrain_batch, seed=0, normalization="mtpret",
                      output_size=tuple(cfg.image_size), drop_remainder=True)
    steps = full_batches(len(cache), cfg.pretrain_batch, "the pretraining set")
    return SimpleNamespace(train=ds, images=len(cache), steps=steps)


def pretrain_optimizer(cfg: Config, schedule):
    """SGD momentum 0.9 with weight decay ``cfg.pretrain_weight_decay``: Keras' decoupled form, or
    MoCo v2's coupled L2 (``cfg.pretrain_decay_mode="coupled"``)."""
    if cfg.pretrain_decay_mode == "coupled":
        return CoupledDecaySGD(schedule, momentum=0.9,
                               coupled_weight_decay=cfg.pretrain_weight_decay)
    return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=cfg.pretrain_weight_decay)


def _pretrain_train(cfg: Config, run_dir: RunFolder, data, runtime, opts: RunOptions):
    """MoCo v2 or SimCLR on the backbone + global average pooling; SGD momentum 0.9, lr x batch /
    256, cosine to 0. Saves ``backbone.weights.h5`` (every process: later stages load it)."""
    init = cfg.init
    backbone = build_backbone(cfg, cfg.imagenet_weights if init == "md_moco++" else None)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone.outputs[-1])
    encoder = keras.Model(backbone.input, pooled, name="encoder")
    if "moco" in init:
        model = MoCo(encoder, dim=cfg.head_dim, hidden=cfg.head_hidden, queue_size=cfg.queue_size,
                     momentum=cfg.moco_momentum, temperature=cfg.temperature, seed=0)
    else:
        model = SimCLR(encoder, dim=cfg.head_dim, hidden=cfg.head_hidden,
                       temperature=cfg.temperature)
    lr = cfg.pretrain_lr * cfg.pretrain_batch / 256
    schedule = keras.optimizers.schedules.CosineDecay(lr, data.steps * cfg.pretrain_epochs)
    opt = pretrain_optimizer(cfg, schedule)
    t0 = time.perf_counter()
    resumed = any(p.suffix == ".h5" for p in run_dir.checkpoints.iterdir())
    history = fit_stage(model, data.train, None, run_dir, "pretrain", epochs=cfg.pretrain_epochs,
                        optimizer=opt, loss=None, monitor="loss", mode="min",
                        **lifecycle.fit_options(runtime, opts, 0))
    seconds = None if resumed else time.perf_counter() - t0
    backbone.save_weights(run_dir.file("backbone.weights.h5"))
    return SimpleNamespace(history=history, seconds=seconds)


def _pretrain_evaluate(cfg: Config, run_dir: RunFolder, data, state, opts: RunOptions):
    """The loss terms' curves, throughput and the report."""
    init, history, n_images, steps, seconds = (cfg.init, state.history, data.images, data.steps,
                                               state.seconds)
    plot_training_curves(history, run_dir.file("plots", "pretraining_curves.png"),
                         title=f"{PAPER_NAME[init]} pretraining")
    m = run_dir.update_metrics(init=init, images=n_images,
                               **pretraining_numbers(history, steps * cfg.pretrain_batch, seconds))
    nih = "NIH" if cfg.pretrain_nih == "all" else "NIH's training split"
    source = (f"{nih} only" if init.startswith("sd") else
              f"Shenzhen, Montgomery, Indiana, RSNA Bone Age (training set), {nih} and the training "
              "splits of Pneumonia, MURA, lung masks, TBX")
    if cfg.dataset == "phantom":
        source += ", phantom"
    lines = [f"# mtpret pretraining: {PAPER_NAME[init]}", "",
             f"{n_images} images ({source}), "
             f"{m['epochs']} epochs of batch {cfg.pretrain_batch}, {cfg.backbone} at "
             f"{cfg.image_size[0]}x{cfg.image_size[1]}.", ""] + loss_terms_table(m)
    if m["images_per_second"]:
        lines += ["", f"Throughput: {m['images_per_second']:.1f} images/s (two views each), "
                  f"{seconds / 60:.1f} min."]
    lines += ["", "Backbone weights: `backbone.weights.h5`; plot: `plots/pretraining_curves.png`.",
              ""]
    run_dir.write_text("report.md", "\n".join(lines))


# ------------------------------------------------------------------------------------ multitask

def multitask(cfg: Config | None = None, out="runs", data_root=None, *,
              opts: RunOptions | None = None, **options) -> RunFolder:
    """MTPret / MTPret-- (``cfg.init``) continual learning over the four multitask datasets
    (Sec. III-C, Algorithm 2) from the ``cfg.multitask_from`` backbone (pretrained first if
    needed), seed 0; resumes at the last finished round. Returns the run folder."""
    cfg, opts = setup(cfg, out, data_root, opts=opts, **options)
    if cfg.init not in MULTITASK:
        raise DataError(f"--stage multitask takes --init {'|'.join(MULTITASK)}, got {cfg.init!r}")
    source = pretrain(replace(cfg, init=cfg.multitask_from), opts=replace(opts, force=False))
    cfg = replace(cfg, seed=0, task=None)

    def prepare(cfg, opts):
        caches = {name: Cache(task_cache(name, cfg, opts)) for name in MULTITASK_TASKS}
        return SimpleNamespace(source=source, caches=caches)

    return execute(f"mtpret-multitask-{cfg.init}", cfg, opts, config=multitask_config(cfg, cfg.init),
                   prepare=prepare, train=_multitask_train, evaluate=_multitask_evaluate)


def _multitask_train(cfg: Config, run_dir: RunFolder, data, runtime, opts: RunOptions):
    """The rounds; each finished round checkpoints every task model (so the backbone)."""
    backbone = build_backbone(cfg)
    backbone.load_weights(data.source.file("backbone.weights.h5"))
    task_list = []
    for name in MULTITASK_TASKS:
        cache = data.caches[name]
        n_out = tasks.num_outputs(TASKS[name].kind, cache)
        model = build_task_model(name, backbone, cfg, n_out)
        loss, metrics, _, _ = loss_and_metrics(name, cfg, n_out)
        batch = cfg.detection_batch if TASKS[name].kind == "detection" else cfg.multitask_batch
        ds = datasets_for(name, cfg, cache, batch, model=model, splits=("train",))["train"]
        task_list.append(Task(name, model, ds, loss, metrics=metrics))
    rounds = RoundCheckpoints(run_dir.checkpoints, task_list)
    if rounds.done:
        print(f"resuming after round {rounds.done} of {cfg.rounds}")
    t0 = time.perf_counter()
    continual_learning(backbone, task_list, rounds=cfg.rounds, epochs=cfg.visit_epochs,
                       max_lr=cfg.max_lr, min_lr=cfg.min_lr, variant=cfg.init,
                       l2sp=tuple(cfg.l2sp), seed=0, verbose=0 if opts.verbose == 0 else 2,
                       on_visit=rounds.on_visit, start_round=rounds.done + 1)
    seconds = time.perf_counter() - t0
    backbone.save_weights(run_dir.file("backbone.weights.h5"))
    return SimpleNamespace(records=rounds.records, seconds=seconds)


def _multitask_evaluate(cfg: Config, run_dir: RunFolder, data, state, opts: RunOptions):
    variant, records = cfg.init, state.records
    loss_by_task = last_losses(records, MULTITASK_TASKS)
    plot_training_curves({f"{k} loss": v for k, v in loss_by_task.items()},
                         run_dir.file("plots", "multitask_losses.png"),
                         title=f"{PAPER_NAME[variant]}: last-epoch loss per visit")
    run_dir.update_metrics(variant=variant, visits=records, train_seconds=state.seconds,
                           loss_by_task=loss_by_task)
    lines = [f"# mtpret multitask continual learning: {PAPER_NAME[variant]}", "",
             f"From {PAPER_NAME[cfg.multitask_from]} ({data.source.path.name}); {cfg.rounds} "
             f"rounds of {cfg.visit_epochs} epoch(s) per task visit; "
             + ("order reshuffled every round, cyclic cosine lr (eq. 4) per visit, L2-SP "
                f"alpha {cfg.l2sp[0]}, beta {cfg.l2sp[1]} toward the round's start."
                if variant == "mtpret" else "fixed order, one cosine decay, no L2-SP."), ""]
    lines += visits_table(records)
    lines += ["", "Backbone weights: `backbone.weights.h5`; plot: `plots/multitask_losses.png`.",
              ""]
    run_dir.write_text("report.md", "\n".join(lines))


# -------------------------------------------------------------------------------- fine-tuning

def finetune(cfg: Config | None = None, out="runs", data_root=None, *,
             opts: RunOptions | None = None, **options) -> RunFolder:
    """Fine-tune the whole network on ``cfg.task`` from ``cfg.init`` (its pretraining or multitask
    run first, if needed) and test the best epoch; returns the run folder."""
    cfg, opts = setup(cfg, out, data_root, opts=opts, **options)
    if cfg.task is None:
        raise DataError(f"fine-tuning needs a task: Config(task=...), one of {', '.join(TASKS)}")
    plain = replace(opts, force=False)  # --force reruns the fine-tuning, not its start
    source = (pretrain(cfg, opts=plain) if cfg.init in PRETRAINED else
              multitask(cfg, opts=plain) if cfg.init in MULTITASK else None)

    def prepare(cfg, opts):
        cache = Cache(task_cache(cfg.task, cfg, opts))
        detection = TASKS[cfg.task].kind == "detection"
        return SimpleNamespace(cache=cache, n_out=tasks.num_outputs(TASKS[cfg.task].kind, cache),
                               init=init_weights(cfg, source),
                               batch=cfg.detection_batch if detection else cfg.finetune_batch)

    return execute(f"mtpret-finetune-{cfg.task}-{cfg.init}-seed{cfg.seed}", cfg, opts,
                   config=finetune_config(cfg), prepare=prepare, train=_finetune_train,
                   evaluate=_finetune_evaluate)


def init_weights(cfg: Config, source: RunFolder | None):
    """(backbone weights for build_backbone, file to load afterwards, description)."""
    if cfg.init == "scratch":
        return None, None, "random initialisation (Kaiming normal, fan-out, as torchvision)"
    if cfg.init == "imagenet":
        return cfg.imagenet_weights, None, f"ImageNet ({cfg.imagenet_weights})"
    return None, source.file("backbone.weights.h5"), f"{PAPER_NAME[cfg.init]} ({source.path.name})"


def finetune_config(cfg: Config) -> dict:
    out = asdict(cfg)
    if cfg.init in PRETRAINED:
        out["pretrain"] = pretrain_config(cfg, cfg.init)
    elif cfg.init in MULTITASK:
        out["multitask"] = multitask_config(cfg, cfg.init)
    return out


def _finetune_train(cfg: Config, run_dir: RunFolder, data, runtime, opts: RunOptions):
    """Adam with cosine decay, the whole network; the best epoch by the validation main metric
    (``checkpoints/best.keras``). Returns the training seconds."""
    name, kind, batch = cfg.task, TASKS[cfg.task].kind, data.batch
    weights, load, _ = data.init
    backbone = build_backbone(cfg, weights)
    if load is not None:
        backbone.load_weights(load)
    model = build_task_model(name, backbone, cfg, data.n_out)
    ds = datasets_for(name, cfg, data.cache, batch, model=model, splits=("train", "val"))
    steps = full_batches(len(data.cache.rows("train")), batch, f"task {name}: the training split")
    loss, metrics, monitor, mode = loss_and_metrics(name, cfg, data.n_out)
    epochs = cfg.detection_epochs if kind == "detection" and cfg.detection_epochs else \
        cfg.finetune_epochs
    schedule = keras.optimizers.schedules.CosineDecay(cfg.finetune_lr, steps * epochs)
    t0 = time.perf_counter()
    fit_stage(model, ds["train"], ds["val"], run_dir, "finetune",
              epochs=epochs, optimizer=keras.optimizers.Adam(schedule),
              loss=loss, metrics=metrics, monitor=monitor, mode=mode,
              **dict(lifecycle.fit_options(runtime, opts, cfg.seed),
                     jit_compile=runtime.jit_compile and kind != "detection"))
    return time.perf_counter() - t0


def _finetune_evaluate(cfg: Config, run_dir: RunFolder, data, seconds, opts: RunOptions):
    """The best checkpoint on the test split (process 0, no distribution)."""
    model = build_task_model(cfg.task, build_backbone(cfg), cfg, data.n_out)
    model.load_weights(verify(run_dir.checkpoints / "best.keras"))
    test = datasets_for(cfg.task, cfg, data.cache, data.batch, splits=("test",))
    evaluate(model, cfg.task, cfg, run_dir, data.cache, test, data.init[2], seconds)


def evaluate(model, name, cfg, run_dir, cache, data, start, seconds) -> dict:
    """Test metrics of one task (the paper's: AUC + accuracy, mAUC + per-class AUC, Dice + mIoU,
    mAP + per-class AP at IoU 0.5; :func:`cxr_keras.tasks.evaluate_task`), predictions, plots and
    the report."""
    kind = TASKS[name].kind
    title = "lung segmentation" if kind == "segmentation" else f"ROC, {paper.TASK_NAMES[name]} test"
    result, calibration_md = tasks.evaluate_task(kind, model, data["test"], cache, run_dir, title)
    history = read_history(run_dir.file("logs", "history_finetune.csv"))
    plot_training_curves(history, run_dir.file("plots", "training_curves.png"),
                         title=f"{paper.TASK_NAMES[name]} fine-tuning")
    m = run_dir.update_metrics(task=name, init=cfg.init, method=PAPER_NAME[cfg.init],
                               backbone=cfg.backbone, seed=cfg.seed, start=start,
                               test=result, main_metric=METRIC_OF_KIND[kind],
                               main=result[METRIC_OF_KIND[kind]],
                               epochs_trained=len(history.get("loss", [])),
                               train_seconds=seconds, train_images=len(cache.rows("train")),
                               test_images=len(cache.rows("test")))
    run_dir.write_text("report.md", finetune_report(cfg, m) + "\n".join(calibration_md))
    return m


def finetune_report(cfg: Config, m: dict) -> str:
    name, method = m["task"], m["method"]
    bb = cfg.backbone if cfg.backbone in paper.BACKBONES else "resnet18"
    lines = [f"# mtpret fine-tuning: {paper.TASK_NAMES[name]}, {method}, {cfg.backbone}", ""]
    lines += phantom_note(cfg.dataset, "datasets in their official layouts")
    lines += [f"Start: {m['start']}. {m['epochs_trained']} epochs on {m['train_images']} images at "
              f"{cfg.image_size[0]}x{cfg.image_size[1]}; best epoch by the validation main "
              f"metric; tested on {m['test_images']} images.", ""]
    key = METRIC_OF_KIND[TASKS[name].kind]
    ref = {key: paper.TABLE2[bb][method][name]}
    ours = {key: m["main"]}
    if name == "lung":
        ours["miou"], ref["miou"] = m["test"]["miou"], paper.TABLE3[bb][method]["miou"]
    if name == "tbx":
        for k in ("ap_active", "ap_latent"):
            ours[k], ref[k] = m["test"][k], paper.TABLE3[bb][method][k]
    if name in ("pneumonia", "mura"):
        ours["accuracy"] = m["test"]["accuracy"]
    if name == "deepcovid":  # Table VI gives MTPret's accuracy, specificity and sensitivity
        for k in ("accuracy", "specificity", "sensitivity"):
            ours[k] = m["test"][k]
            if method in paper.TABLE6[bb]:
                ref[k] = paper.TABLE6[bb][method][k]
    if name == "chexpert":
        for obs in paper.CHEXPERT_OBSERVATIONS:
            ours[obs] = m["test"]["per_class_auc"].get(obs)
            ref[obs] = paper.TABLE4[bb][method][obs]
    lines += [comparison_table(ours, ref, title=f"Table II/III/IV: {method} ("
                               f"{paper.BACKBONE_NAMES.get(cfg.backbone, cfg.backbone)})"), ""]
    if name == "nih":
        lines += ["Per class (test AUC): " + ", ".join(
            f"{k} {v:.3f}" for k, v in m["test"]["per_class_auc"].items()), ""]
    lines += ["Plots: `plots/training_curves.png` and "
              + {"binary": "`plots/roc_test.png`", "multilabel": "`plots/roc_test.png`",
                 "segmentation": "`plots/example_test.png`",
                 "detection": "(boxes in `predictions/test.npz`)"}[TASKS[name].kind] + ".", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- grids

def baseline_inits(cfg: Config) -> list:
    """Every method of Table II; the ImageNet rows only with ImageNet weights."""
    return [i for i in INITS if cfg.imagenet_weights is not None or i not in ("imagenet",
                                                                              "md_moco++")]


def run_grid(cfg: Config | None, inits, tasks, out="runs", data_root=None, *,
             opts: RunOptions | None = None, **options) -> list:
    """Fine-tune every ``init`` on every task; finished runs are reused. Returns run folders."""
    cfg, opts = setup(cfg, out, data_root, opts=opts, **options)
    return [finetune(replace(cfg, init=init, task=task), opts=opts) for init in inits
            for task in tasks]


def run(cfg: Config | None = None, out="runs", data_root=None, *, tasks=None,
        opts: RunOptions | None = None, **options):
    """The paper's chain for ``cfg.init`` (default MTPret: MD-MoCo pretraining, then multitask
    learning) and fine-tuning on ``cfg.task``: its run folder; without a task, on every task of
    ``tasks`` (default every task with a reader): a list of run folders."""
    cfg = cfg or Config()
    if cfg.task is not None:
        return finetune(cfg, out, data_root, opts=opts, **options)
    return run_grid(cfg, [cfg.init], tasks or FINETUNE_TASKS, out, data_root, opts=opts,
                    **options)


def grid_report(runs, title="mtpret") -> str:
    """Tables II (main metric per task), III (lung and TBX), IV (CheXpert) and VI (DeepCovid) of
    every method run, ours with the paper's in brackets."""
    ms = sorted((r.metrics() for r in runs), key=lambda m: paper.METHODS.index(m["method"]))
    bb = ms[0]["backbone"] if ms else "resnet18"
    bb = bb if bb in paper.BACKBONES else "resnet18"
    methods = [m for m in paper.METHODS if any(x["method"] == m for x in ms)]
    t2, t3, t4, t6 = {}, {}, {}, {}
    for x in ms:
        t2.setdefault(x["method"], {})[paper.TASK_NAMES[x["task"]]] = x["main"]
        if x["task"] == "lung":
            t3.setdefault(x["method"], {}).update(dice=x["test"]["dice"], miou=x["test"]["miou"])
        if x["task"] == "tbx":
            t3.setdefault(x["method"], {}).update(
                {k: x["test"][k] for k in ("map", "ap_active", "ap_latent")})
        if x["task"] == "chexpert":
            t4[x["method"]] = dict(x["test"]["per_class_auc"], Average=x["main"])
        if x["task"] == "deepcovid":
            t6[x["method"]] = {k: x["test"][k] for k in ("accuracy", "specificity", "sensitivity",
                                                          "auc")}
    cols2 = [paper.TASK_NAMES[t] for t in paper.TASKS]
    ref2 = {m: {paper.TASK_NAMES[t]: v for t, v in paper.TABLE2[bb][m].items()} for m in methods}
    ref3 = {m: paper.TABLE3[bb][m] for m in methods}
    ref4 = {m: paper.TABLE4[bb][m] for m in methods}
    lines = [f"# {title}: our numbers (the paper's {paper.BACKBONE_NAMES[bb]} in brackets)", "",
             "Main metric per task (Table II): mAUC (NIHCC), AUC, Dice (lung), mAP at IoU 0.5 "
             "(TBX).", "",
             metrics_table(t2, ref2, cols2, title="Table II: main metric per task"), ""]
    if t3:
        lines += [metrics_table(t3, ref3, ["dice", "miou", "map", "ap_active", "ap_latent"],
                                title="Table III: lung segmentation and TB detection"), ""]
    if t4:
        lines += [metrics_table(t4, ref4, list(paper.CHEXPERT_OBSERVATIONS) + ["Average"],
                                title="Table IV: CheXpert AUC per observation"), ""]
        if "MTPret" in t4:
            lines += [metrics_table({"MTPret (ours)": t4["MTPret"]}, paper.TABLE7[bb],
                                    list(paper.CHEXPERT_OBSERVATIONS) + ["Average"],
                                    title="Table VII: CheXpert against other self-supervised "
                                          "methods (paper rows)"), ""]
    if "MTPret" in t6:
        lines += [metrics_table({"MTPret (ours)": t6["MTPret"]}, paper.TABLE6[bb],
                                ["accuracy", "specificity", "sensitivity", "auc"],
                                title="Table VI: DeepCovid against other self-supervised methods "
                                      "(paper rows)"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg, opts = _from_args(args)
    stage = stage_of(args)
    tasks = [cfg.task] if cfg.task and not args.tasks else parse_tasks(args.tasks)
    cfg, opts = setup(cfg, opts=opts)  # joins the processes once (--distributed)
    if stage == "pretrain":
        pretrain(cfg, opts=opts)
        return 0
    if stage == "multitask":
        multitask(cfg, opts=opts)
        return 0
    inits = baseline_inits(cfg) if stage == "baselines" else [cfg.init]
    if stage == "baselines" and "imagenet" not in inits:
        print(lifecycle.IMAGENET_SKIPPED)
    t0 = time.perf_counter()
    runs = run_grid(cfg, inits, tasks, opts=opts)
    minutes = (time.perf_counter() - t0) / 60
    lifecycle.write_summary(Path(opts.out) / f"mtpret_{stage}_tables.md", lambda: grid_report(
        runs, title=f"mtpret --stage {stage}") + f"\nWall time of this command: {minutes:.1f} min.\n")
    return 0
