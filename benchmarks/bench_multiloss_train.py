"""Training and inference throughput of the multiloss U-Net, classifier and model-level ensemble.

    python benchmarks/bench_multiloss_train.py --size 256 --batch 8 --steps 10 --warmup 2 --out /tmp/cxr-bench

In one process, on the same synthetic in-memory batches (numpy, fixed seed; ``--pool`` distinct
batches used in turn; RGB images uniform in [0, 255], the range the EfficientNet models expect),
with the multiloss recipe's optimisers:

(a) ``unet``: :func:`cxr_keras.models.efficientnet_unet` (``weights=None``, EfficientNet-B0 U-Net,
    10,071,501 trainable parameters at ``--width`` 1) with the focal Tversky loss
    (``get_segmentation_loss("focal_tversky")``) and ``Adam(1e-3)``; binary masks as targets;
(b) ``classifier``: :func:`cxr_keras.models.efficientnet_classifier` on that U-Net (encoder copied
    up to ``block5c_add`` + conv top, 3 classes, every layer trainable) with the calibrated CCE
    (``get_classification_loss("cal_cce").make_loss()``, lambda 10) and ``SGD(1e-3, momentum=0.9)``;
    one-hot targets;
(c) ``model_level_top3``: :func:`cxr_keras.models.model_level_ensemble` of ``--members`` (3)
    classifiers built as in (b) (members frozen; only the 1x1 conv and the Dense train) with
    ``CategoricalCrossentropy`` and ``SGD(1e-3, momentum=0.9)``;
(d) ``keras_b0``: the plain counterpart, ``keras.applications.EfficientNetB0(weights=None,
    include_top=False, pooling="avg")`` + ``Dense(3, softmax)`` (keras' ``EfficientNet`` class at
    ``--width`` / ``--depth`` when below 1) with ``CategoricalCrossentropy`` and the same SGD.

No metrics; ``jit_compile`` as ``--jit`` says (``auto``: Keras' choice, off on a CPU-only
machine). Training is ``model.train_on_batch`` for ``--warmup`` untimed steps (tracing) and
``--steps`` timed steps, the models alternating step by step so that other load on the machine
hits all alike; inference is ``model.predict_on_batch`` likewise. Each step's wall time ends when
its result is in host memory. Rates are images/s over the timed steps (and per core: divided by
the cores of this process's CPU affinity); the median step time is given too. GMACs per image are
counted from the layers (``count_flops``); achieved training GFLOP/s = FLOPs of a training step per
image x images/s, with 3 x 2 x MACs for layers with trainable weights and 2 x MACs for frozen ones
(the ensemble's members), inference GFLOP/s = 2 x MACs x images/s.

Prints a Markdown table and writes ``OUT/bench_multiloss_train.json`` atomically.
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

NUM_CLASSES = 3
KINDS = ("unet", "classifier", "model_level", "encoder_b0", "keras_b0")
LABELS = {"unet": "efficientnet_unet (EfficientNet-B0 U-Net)",
          "classifier": "efficientnet_classifier (encoder to block5c_add + conv top)",
          "model_level": "model_level_ensemble (frozen members + 1x1 conv top)",
          "encoder_b0": "our EfficientNet-B0 encoder (avg pool) + Dense(3, softmax)",
          "keras_b0": "keras EfficientNetB0 (avg pool) + Dense(3, softmax)"}


def _keras_b0(size: int, width: float, depth: float):
    """The plain counterpart: keras.applications' EfficientNetB0 (no top, average pooling) +
    Dense(3, softmax); below width or depth 1, keras' ``EfficientNet`` class scaled alike."""
    import keras

    shape = (size, size, 3)
    if (width, depth) == (1.0, 1.0):
        base = keras.applications.EfficientNetB0(include_top=False, weights=None, pooling="avg",
                                                 input_shape=shape)
    else:
        from keras.src.applications.efficientnet import EfficientNet

        base = EfficientNet(width, depth, 224, include_top=False, weights=None, pooling="avg",
                            input_shape=shape, name=f"efficientnet_w{width:g}_d{depth:g}")
    out = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(base.output)
    return keras.Model(base.input, out, name="keras_efficientnetb0")


def _build(wanted, size: int, width: float, depth: float, members: int) -> tuple:
    """``({kind: (model, loss, loss name, optimizer, optimizer name, build seconds)}, the
    classifier's cut layer)``."""
    import keras

    from cxr_keras.losses import get_classification_loss, get_segmentation_loss
    from cxr_keras.models import efficientnet_classifier, efficientnet_encoder, efficientnet_unet, model_level_ensemble

    def sgd():
        return keras.optimizers.SGD(1e-3, momentum=0.9)

    built = {}
    t = time.perf_counter()
    # The classifiers and the ensemble start from the U-Net's encoder, so it is always built.
    unet = efficientnet_unet((size, size, 3), weights=None, width_coefficient=width,
                             depth_coefficient=depth)
    unet_s = time.perf_counter() - t
    # The classifier's cut: block5c_add (paper), the last block-5 add of a shallower encoder
    # (block5b_add at depth 0.5, as the recipe's --quick).
    adds = [layer.name for layer in unet.layers
            if layer.name.startswith("block5") and layer.name.endswith("_add")]
    if not adds:
        raise SystemExit(f"--depth {depth}: the encoder has no block-5 residual add to cut at")
    cut = "block5c_add" if "block5c_add" in adds else adds[-1]
    if "unet" in wanted:
        built["unet"] = (unet, get_segmentation_loss("focal_tversky"), "focal Tversky",
                         keras.optimizers.Adam(1e-3), "Adam(1e-3)", unet_s)
    if "classifier" in wanted:
        t = time.perf_counter()
        clf = efficientnet_classifier(unet, num_classes=NUM_CLASSES, truncate_at=cut)
        built["classifier"] = (clf, get_classification_loss("cal_cce").make_loss(),
                               "calibrated CCE (lambda 10)", sgd(), "SGD(1e-3, momentum 0.9)",
                               unet_s + time.perf_counter() - t)
    if "model_level" in wanted:
        t = time.perf_counter()
        # Members built as in (b); their weights are copies of one U-Net's encoder, which does
        # not change the work done per step.
        clfs = [efficientnet_classifier(unet, num_classes=NUM_CLASSES, truncate_at=cut,
                                        name=f"classifier_{i}")
                for i in range(members)]
        ens = model_level_ensemble(clfs, num_classes=NUM_CLASSES)
        del clfs
        built["model_level"] = (ens, keras.losses.CategoricalCrossentropy(), "CCE", sgd(),
                                "SGD(1e-3, momentum 0.9)", unet_s + time.perf_counter() - t)
    if "encoder_b0" in wanted:  # the U-Net's encoder as a whole classifier: what faces the peer
        t = time.perf_counter()
        enc = efficientnet_encoder((size, size, 3), weights=None, width_coefficient=width,
                                   depth_coefficient=depth)
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(enc.output)
        out = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(pooled)
        built["encoder_b0"] = (keras.Model(enc.input, out, name="encoder_b0"),
                               keras.losses.CategoricalCrossentropy(), "CCE", sgd(),
                               "SGD(1e-3, momentum 0.9)", time.perf_counter() - t)
    if "keras_b0" in wanted:
        t = time.perf_counter()
        built["keras_b0"] = (_keras_b0(size, width, depth), keras.losses.CategoricalCrossentropy(),
                             "CCE", sgd(), "SGD(1e-3, momentum 0.9)", time.perf_counter() - t)
    return built, cut


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256,
                    help="input side, a multiple of 32 (default 256)")
    ap.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    _timing.add_loop_args(ap, steps=10, warmup=2)
    ap.add_argument("--width", type=float, default=1.0,
                    help="width_coefficient of the EfficientNet encoder (default 1.0: B0)")
    ap.add_argument("--depth", type=float, default=1.0,
                    help="depth_coefficient of the EfficientNet encoder (default 1.0: B0)")
    ap.add_argument("--members", type=int, default=3,
                    help="classifiers in the model-level ensemble (default 3)")
    ap.add_argument("--only", default=",".join(KINDS),
                    help="comma-separated subset of unet, classifier, model_level, keras_b0 "
                         "(default all)")
    _timing.add_jit_out_args(ap)
    _peer.add_args(ap)
    args = ap.parse_args(argv)
    _timing.check_loop_args(ap, args)
    if args.size < 32 or args.size % 32:
        ap.error(f"--size must be a positive multiple of 32 (the U-Net's 5 down-samplings); "
                 f"got {args.size}")
    if not (0 < args.width <= 1.0 and 0 < args.depth <= 1.0) or args.members < 1:
        ap.error("--width and --depth must be in (0, 1] and --members at least 1")
    wanted = _timing.parse_only(ap, args.only, KINDS)

    import keras
    import numpy as np
    import tensorflow as tf

    out = Path(args.out)
    cores = _timing.cores()
    jit = _timing.JIT[args.jit]
    s, b = args.size, args.batch

    rng = np.random.default_rng(args.seed)
    # RGB pixel values in [0, 255] (the EfficientNet models rescale and normalise themselves),
    # binary masks (about 30% foreground) and one-hot 3-class targets.
    xs = [tf.constant(rng.uniform(0.0, 255.0, (b, s, s, 3)).astype(np.float32))
          for _ in range(args.pool)]
    masks = [tf.constant((rng.random((b, s, s, 1)) < 0.3).astype(np.float32))
             for _ in range(args.pool)]
    onehots = [tf.constant(np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, b)])
               for _ in range(args.pool)]

    keras.utils.set_random_seed(args.seed)
    models = {}
    built, cut = _build(wanted, s, args.width, args.depth, args.members)
    for kind, (model, loss, loss_name, opt, opt_name, build_s) in built.items():
        t = time.perf_counter()
        model.compile(optimizer=opt, loss=loss, jit_compile=jit)
        name = f"model_level_top{args.members}" if kind == "model_level" else kind
        models[name] = {"kind": kind, "model": model, "loss": loss_name, "optimizer": opt_name,
                        "targets": masks if kind == "unet" else onehots,
                        "build_s": build_s + time.perf_counter() - t,
                        "flops": _timing.count_train_flops(model)}

    b0s = [k for k in ("encoder_b0", "keras_b0") if k in wanted]
    if b0s and (args.width, args.depth) == (1.0, 1.0):  # timm efficientnet_b0
        _peer.add(models, {"efficientnet_b0": b0s}, onehots, s, NUM_CLASSES, "cce",
                  ("sgd", 1e-3, 0.9), args, cores)
    elif b0s and args.peer:
        print("peer: only for the full EfficientNet-B0 (--width 1 --depth 1)")
    load = _timing.time_models(models, xs, args.steps, args.warmup)
    models, peers = _peer.split(models)

    results = {"size": s, "batch": b, "steps": args.steps, "warmup": args.warmup,
               "pool": args.pool, "seed": args.seed, "num_classes": NUM_CLASSES,
               "width_coefficient": args.width, "depth_coefficient": args.depth,
               "truncate_at": cut,
               "members": args.members, "metrics": [],
               **_timing.environment(cores, load), "models": []}
    for name, m in models.items():
        row = {"model": name, "kind": m["kind"], "name": m["model"].name, "loss": m["loss"],
               "optimizer": m["optimizer"], **_timing.model_row(m, b, cores)}
        results["models"].append(_timing.flop_fields(row, m["flops"]["gmacs"],
                                                     m["flops"]["train_gflop_per_image"]))

    if peers:
        results["peers"] = _peer.rows(peers, b, cores)

    print(f"\nmultiloss training and inference, {s}x{s}x3, batch {b}, width_coefficient "
          f"{args.width:g}, depth_coefficient {args.depth:g}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, synthetic batches (seed {args.seed}), "
          f"{_timing.conditions(results)}\n")
    print("| model | loss, optimizer | params (trainable / total) | GMACs/image | train img/s "
          "| train img/s/core | train step s (median) | train GFLOP/s | predict img/s "
          "| predict img/s/core | predict GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["models"]:
        label = LABELS[r["kind"]].replace("block5c_add", cut)
        if r["kind"] == "model_level":
            label = f"{label}, top-{args.members}"
        print(f"| {label} | {r['loss']}, {r['optimizer']} "
              f"| {r['trainable_params']:,} / {r['params']:,} | {r['gmacs']:.3f} "
              f"| {r['train_images_per_s']:.2f} | {r['train_images_per_s_core']:.2f} "
              f"| {r['train_step_s_median']:.3f} | {r['train_gflop_per_s']:.1f} "
              f"| {r['predict_images_per_s']:.2f} | {r['predict_images_per_s_core']:.2f} "
              f"| {r['predict_gflop_per_s']:.1f} |")
    first = results["models"][0]
    print(f"\nNo metrics, jit_compile={first['jit_compile']}; first (tracing) train step: "
          + ", ".join(f"{r['model']} {r['train_first_step_s']:.1f} s" for r in results["models"])
          + f"; peak RSS {results['max_rss_mib']:.0f} MiB (all models).")
    _peer.report(results)
    return _timing.save(results, out, "bench_multiloss_train")


if __name__ == "__main__":
    main()
