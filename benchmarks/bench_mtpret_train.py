"""Training throughput of mtpret's MoCo v2 pretraining (ResNet-18 and ResNet-50) against supervised
training of our ResNet-18 and of keras.applications' ResNet50.

    python benchmarks/bench_mtpret_train.py --size 224 --batch 8 --steps 4 --out /tmp/cxr-bench
    python benchmarks/bench_mtpret_train.py --size 800x512 ...   # the paper's input (slow on a CPU)

In one process, on the same synthetic in-memory batches (standard-normal images, as after the
recipe's Z-score; seed fixed), every network ``weights=None``:

- ``moco_resnet18`` / ``moco_resnet50``: :class:`cxr_keras.models.MoCo` built as
  ``cxr_keras.recipes.mtpret.pretrain`` builds it: the recipe's backbone
  (:func:`cxr_keras.recipes.mtpret.build_backbone`, i.e. ``multiscale_backbone``: our
  torchvision-style ResNet-18 / ResNet-50) + global average pooling as the encoder, head 2048-128,
  queue ``--queue`` (65,536), momentum 0.999, T 0.2, ``SGD(0.03 x batch / 256, momentum 0.9,
  weight decay 1e-4)``; each image is a pair of views (two different synthetic batches), so one
  step runs the query encoder forward and backward and the key encoder forward on both;
- ``resnet18_supervised``: our :func:`cxr_keras.models.resnet18` (average pooling) + Dense(14),
  BCE on multi-hot targets, ``Adam(1e-4)`` (the recipe's fine-tuning optimiser);
- ``keras_resnet50``: ``keras.applications.ResNet50(include_top=False, pooling="avg")`` +
  Dense(14), the same loss and optimiser: the plain counterpart.

Timing as the other train benchmarks (:mod:`_timing`: ``train_on_batch`` then ``predict_on_batch``,
models alternating step by step; MoCo's "predict" is its forward pass on both views). Images/s
counts images (a MoCo image = its two views). GMACs per image: ``count_flops`` of the networks;
for MoCo 2 x (encoder + head) + the queue logits (K x 128), and a training step costs 3 x 2 x
MACs of the query branch + 2 x MACs of the key branch + 2 x 2 x the queue logits (forward and the
query's gradient). The paper's input (800 x 512, ``--size 800x512``) is far too slow here, hence
the default 224 x 224; ``--blocks`` (e.g. 1,1,1,1) reduces both ResNet-50s alike for smoke
tests. Prints a Markdown table and writes ``OUT/bench_mtpret_train.json``
atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository root and this folder (_timing)

import _peer  # noqa: E402

import _timing  # noqa: E402

NUM_CLASSES = 14
KINDS = ("moco_resnet18", "moco_resnet50", "resnet18_supervised", "keras_resnet50")
VERSUS = {"moco_resnet18": "resnet18_supervised", "moco_resnet50": "keras_resnet50",
          "resnet18_supervised": "keras_resnet50"}


def _size(text: str) -> tuple:
    """``"224"`` -> (224, 224); ``"800x512"`` -> (800, 512) (height x width)."""
    parts = [int(v) for v in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32 or any(v % 32 for v in parts):
        raise argparse.ArgumentTypeError(f"--size: H or HxW, multiples of 32, got {text!r}")
    return tuple(parts)


def _moco(backbone: str, hw: tuple, queue: int, blocks=None):
    """(MoCo model, GMACs per image, training GFLOP per image), as the recipe builds it;
    ``blocks`` reduces a ResNet-50 backbone."""
    import keras

    from cxr_keras.evaluation.flops import count_flops
    from cxr_keras.models import MoCo
    from cxr_keras.recipes.mtpret import Config, build_backbone

    options = {"blocks": tuple(blocks)} if blocks and backbone == "resnet50" else {}
    cfg = Config(backbone=backbone, image_size=hw, backbone_options=options)
    base = build_backbone(cfg, None)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(base.outputs[-1])
    encoder = keras.Model(base.input, pooled, name="encoder")
    model = MoCo(encoder, dim=cfg.head_dim, hidden=cfg.head_hidden, queue_size=queue,
                 momentum=cfg.moco_momentum, temperature=cfg.temperature, seed=0)
    branch = (count_flops(encoder)["macs"]
              + count_flops(model.head, input_shape=(encoder.output.shape[-1],))["macs"])
    logits = queue * cfg.head_dim
    macs = 2 * branch + logits
    train = 2 * (3 * branch + branch + 2 * logits)
    return model, macs / 1e9, train / 1e9


def _supervised(kind: str, hw: tuple, blocks=None):
    import keras

    from cxr_keras.models import resnet18

    if kind == "keras_resnet50":
        base = _timing.keras_resnet(blocks or (3, 4, 6, 3), (*hw, 3))
    else:
        base = resnet18(include_top=False, weights=None, pooling="avg", input_shape=(*hw, 3))
    return keras.Model(base.input, keras.layers.Dense(NUM_CLASSES, name="logits")(base.output),
                       name=kind)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=_size, default=(224, 224),
                    help="input H or HxW, multiples of 32 (default 224; the paper: 800x512)")
    ap.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    ap.add_argument("--queue", type=int, default=65536,
                    help="MoCo queue size K (default 65536, the recipe's)")
    _timing.add_loop_args(ap, steps=4, warmup=2)
    ap.add_argument("--only", default=",".join(KINDS),
                    help=f"comma-separated subset of {', '.join(KINDS)} (default all)")
    ap.add_argument("--blocks", default=None,
                    help="bottleneck blocks per stage of both ResNet-50s (ours in MoCo, keras'), "
                         "e.g. 1,1,1,1 for a smoke test (default 3,4,6,3)")
    _timing.add_jit_out_args(ap)
    _peer.add_args(ap)
    args = ap.parse_args(argv)
    _timing.check_loop_args(ap, args)
    blocks = _timing.parse_blocks(ap, args.blocks)
    if args.queue < 1 or args.pool < 2:
        ap.error("--queue must be positive and --pool at least 2 (MoCo's two views)")
    wanted = _timing.parse_only(ap, args.only, KINDS)

    import keras
    import numpy as np
    import tensorflow as tf

    from cxr_keras.losses import get_loss

    (h, w), b = args.size, args.batch
    rng = np.random.default_rng(args.seed)
    xs = [tf.constant(rng.standard_normal((b, h, w, 3)).astype(np.float32))
          for _ in range(args.pool)]
    ys = [tf.constant((rng.random((b, NUM_CLASSES)) < 0.1).astype(np.float32))
          for _ in range(args.pool)]
    pairs = [(xs[i], xs[(i + 1) % len(xs)]) for i in range(len(xs))]  # (query view, key view)

    keras.utils.set_random_seed(args.seed)
    jit = _timing.JIT[args.jit]
    models = {}
    for kind in wanted:
        t = time.perf_counter()
        if kind.startswith("moco_"):
            model, gmacs, train = _moco(kind[len("moco_"):], (h, w), args.queue, blocks)
            opt = keras.optimizers.SGD(0.03 * b / 256, momentum=0.9, weight_decay=1e-4)
            model.compile(optimizer=opt, loss=None, jit_compile=jit)
            m = {"inputs": pairs, "targets": [None] * len(pairs), "loss": "InfoNCE (MoCo v2)",
                 "optimizer": "SGD(0.03 x batch/256, momentum 0.9, wd 1e-4)"}
        else:
            model = _supervised(kind, (h, w), blocks)
            counted = _timing.count_train_flops(model)
            gmacs, train = counted["gmacs"], counted["train_gflop_per_image"]
            model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=get_loss("bce"),
                          jit_compile=jit)
            m = {"inputs": xs, "targets": ys, "loss": "BCE", "optimizer": "Adam(1e-4)"}
        models[kind] = {**m, "kind": kind, "model": model, "gmacs": gmacs, "train_gflop": train,
                        "build_s": time.perf_counter() - t}

    sup = {"resnet18": [k for k in wanted if k == "resnet18_supervised"],
           "resnet50": [k for k in wanted if k == "keras_resnet50"]}
    if any(sup.values()) and not blocks:  # timm resnet18 / resnet50 + Linear(., 14), BCE, Adam
        _peer.add(models, {a: k for a, k in sup.items() if k}, ys, (h, w), NUM_CLASSES, "bce",
                  ("adam", 1e-4), args, _timing.cores())
    elif any(sup.values()) and args.peer:
        print("peer: only for the full networks (no --blocks)")

    # _timing.time_models feeds one list of inputs to every model: time MoCo's pairs and the
    # supervised batches in two groups, each alternating step by step within itself.
    loads = []
    for group in ({k: m for k, m in models.items() if k.startswith("moco_")},
                  {k: m for k, m in models.items() if not k.startswith("moco_")}):
        if group:
            inputs = next(iter(group.values()))["inputs"]
            loads.append(_timing.time_models(group, inputs, args.steps, args.warmup))
    load = (loads[0][0], loads[-1][1])
    models, peers = _peer.split(models)

    cores = _timing.cores()
    results = {"size": [h, w], "batch": b, "steps": args.steps, "warmup": args.warmup,
               "pool": args.pool, "seed": args.seed, "queue_size": args.queue,
               "num_classes": NUM_CLASSES, "paper_size": [800, 512],
               "resnet50_blocks": list(blocks or (3, 4, 6, 3)),
               **_timing.environment(cores, load), "models": []}
    for name, m in models.items():
        row = _timing.model_row(m, b, cores)
        row.update(model=name, loss=m["loss"], optimizer=m["optimizer"], versus=VERSUS.get(name))
        results["models"].append(_timing.flop_fields(row, m["gmacs"], m["train_gflop"]))
    by = {r["model"]: r for r in results["models"]}
    for r in results["models"]:
        other = by.get(r["versus"])
        if other:
            r["train_ratio_vs"] = round(r["train_images_per_s"] / other["train_images_per_s"], 3)
    if peers:
        results["peers"] = _peer.rows(peers, b, cores)

    net = f", ResNet-50s reduced to {args.blocks} blocks" if blocks else ""
    print(f"\nmtpret training{net}, {h}x{w}x3 (paper: 800x512), batch {b}, MoCo queue "
          f"{args.queue}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, synthetic batches (seed "
          f"{args.seed}), {_timing.conditions(results)}\n")
    print("| model | loss, optimizer | params (trainable / total) | GMACs/image | train img/s "
          "| train img/s/core | train GFLOP/s | predict img/s | predict GFLOP/s "
          "| train vs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["models"]:
        vs = f"{r['train_ratio_vs']:.2f}x {r['versus']}" if "train_ratio_vs" in r else "-"
        print(f"| {r['model']} | {r['loss']}, {r['optimizer']} "
              f"| {r['trainable_params']:,} / {r['params']:,} | {r['gmacs']:.3f} "
              f"| {r['train_images_per_s']:.2f} | {r['train_images_per_s_core']:.2f} "
              f"| {r['train_gflop_per_s']:.1f} | {r['predict_images_per_s']:.2f} "
              f"| {r['predict_gflop_per_s']:.1f} | {vs} |")
    print("\nA MoCo image is two views (query and key encoder); its GMACs/image count both. "
          "First (tracing) train step: "
          + ", ".join(f"{r['model']} {r['train_first_step_s']:.1f} s" for r in results["models"])
          + f"; peak RSS {results['max_rss_mib']:.0f} MiB (all models).")
    _peer.report(results)
    return _timing.save(results, Path(args.out), "bench_mtpret_train")


if __name__ == "__main__":
    main()
