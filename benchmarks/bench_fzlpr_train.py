"""Stage-2 training and inference throughput of the fzlpr model against a plain Keras DenseNet121.

    python benchmarks/bench_fzlpr_train.py --size 224 --batch 16 --steps 20 --warmup 3 --out /tmp/cxr-bench
    python benchmarks/bench_fzlpr_train.py --blocks 1,2,2,1 --size 160 ...   # the --quick DenseNet

In one process, on the same synthetic in-memory batches (numpy, fixed seed; ``--pool`` distinct
batches used in turn), with all layers trainable (stage 2 of the paper):

(a) ``fzlpr``: :func:`cxr_keras.models.densenet121_fzlpr` (``weights=None``, 14 classes; DenseNet121
    + the paper's convolutional top) with the focal ZLPR loss (``get_loss("fzlpr")``, tau 0.2);
(b) ``keras``: ``keras.applications.DenseNet121(weights=None, include_top=False, pooling="avg")``
    + ``Dense(14)`` with ``BinaryCrossentropy(from_logits=True)``.

``--blocks`` other than 6,12,24,16 reduces both DenseNets alike (keras' ``DenseNet`` class with
fewer dense layers per block, as ``cxr-keras run fzlpr --quick`` does with 1,2,2,1). Both use
``AdamW(1e-5, weight_decay=4e-3)`` (the recipe's stage-2 start), no metrics, and
``jit_compile`` as ``--jit`` says (``auto``: Keras' choice, off on a CPU-only machine). Training is
``model.train_on_batch`` for ``--warmup`` untimed steps (tracing) and ``--steps`` timed steps, the
two models alternating step by step so that other load on the machine hits both alike; inference
is ``model.predict_on_batch`` likewise. Each step's wall time ends when its result is in host
memory. Rates are images/s over the timed steps (and per core: divided by the cores of this
process's CPU affinity); the median step time is given too. GMACs per image are counted from the
layers (:func:`_timing.count_train_flops`, i.e. ``count_flops``); achieved training GFLOP/s =
3 x 2 x MACs x images/s, inference 2 x MACs x images/s.

Prints a Markdown table and writes ``OUT/bench_fzlpr_train.json`` atomically.
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
FULL = (6, 12, 24, 16)  # DenseNet121's dense layers per block


def _build(name: str, size: int, blocks: tuple):
    import keras

    from cxr_keras.losses import get_loss
    from cxr_keras.models import densenet121_fzlpr, set_backbone_trainable

    shape = (size, size, 3)
    if name == "fzlpr":
        try:
            if blocks == FULL:
                model = densenet121_fzlpr(num_classes=NUM_CLASSES, weights=None, input_shape=shape)
            else:  # the reduced DenseNet of `cxr-keras run fzlpr --quick` (recipes.fzlpr)
                from cxr_keras.models import densenet

                base = densenet(blocks, input_shape=shape)
                model = densenet121_fzlpr(num_classes=NUM_CLASSES, weights=None, base=base)
        except ValueError as e:
            raise SystemExit(f"densenet121_fzlpr cannot be built at {size}x{size} (its top needs a "
                             f"feature map of at least 5x5, i.e. --size >= 160): {e}") from None
        set_backbone_trainable(model, True)  # stage 2: every layer trainable
        return model, get_loss("fzlpr"), "FZLPR (tau 0.2)"
    base = _timing.keras_densenet(blocks, shape)
    out = keras.layers.Dense(NUM_CLASSES, name="logits")(base.output)
    model = keras.Model(base.input, out, name="densenet121_keras")
    return model, keras.losses.BinaryCrossentropy(from_logits=True), "BCE (from logits)"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    ap.add_argument("--blocks", default="6,12,24,16",
                    help="dense layers per DenseNet block, both models (default 6,12,24,16: "
                         "DenseNet121; the fzlpr --quick recipe uses 1,2,2,1)")
    _timing.add_loop_args(ap, steps=20, warmup=3)
    _timing.add_jit_out_args(ap)
    _timing.add_precision_args(ap)
    _peer.add_args(ap)
    args = ap.parse_args(argv)
    _timing.check_loop_args(ap, args)
    blocks = _timing.parse_blocks(ap, args.blocks)

    import keras
    import numpy as np

    out = Path(args.out)
    cores = _timing.cores()
    jit = _timing.JIT[args.jit]

    rng = np.random.default_rng(args.seed)
    # ImageNet-normalised-looking inputs and multi-hot targets (about 1 positive in 6, no NaN).
    xs = _timing.tensors([rng.standard_normal((args.batch, args.size, args.size, 3),
                                              dtype=np.float32) for _ in range(args.pool)])
    ys = _timing.tensors([(rng.random((args.batch, NUM_CLASSES)) < 1 / 6).astype(np.float32)
                          for _ in range(args.pool)])
    keras.mixed_precision.set_global_policy(args.precision)

    keras.utils.set_random_seed(args.seed)
    models = {}
    for name in ("fzlpr", "keras"):
        t = time.perf_counter()
        model, loss, loss_name = _build(name, args.size, blocks)
        model.compile(optimizer=keras.optimizers.AdamW(1e-5, weight_decay=4e-3), loss=loss,
                      jit_compile=jit)
        models[name] = {"model": model, "loss": loss_name, "targets": ys,
                        "build_s": time.perf_counter() - t,
                        "flops": _timing.count_train_flops(model)}
    if blocks == FULL:  # timm densenet121: its classifier is Linear(1024, 14); BCE, same AdamW
        _peer.add(models, {"densenet121": ["fzlpr", "keras"]}, ys, args.size, NUM_CLASSES, "bce",
                  ("adamw", 1e-5, 4e-3), args, cores)
    elif args.peer:
        print("peer: only for the full DenseNet121 (--blocks 6,12,24,16)")

    load = _timing.time_models(models, xs, args.steps, args.warmup)
    models, peers = _peer.split(models)

    results = {"size": args.size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
               "pool": args.pool, "seed": args.seed, "num_classes": NUM_CLASSES,
               "blocks": list(blocks), "metrics": [],
               "optimizer": "AdamW(learning_rate=1e-5, weight_decay=4e-3)",
               **_timing.environment(cores, load), "models": []}
    for name, m in models.items():
        row = {"model": name, "name": m["model"].name, "loss": m["loss"],
               **_timing.model_row(m, args.batch, cores)}
        results["models"].append(_timing.flop_fields(row, m["flops"]["gmacs"],
                                                     m["flops"]["train_gflop_per_image"]))
    if peers:
        results["peers"] = _peer.rows(peers, args.batch, cores)

    net = "DenseNet121" if blocks == FULL else f"reduced DenseNet {args.blocks}"
    print(f"\nStage-2 training (all layers trainable) and inference, {net}, "
          f"{args.size}x{args.size}x3, batch {args.batch}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, synthetic batches (seed {args.seed}), "
          f"{_timing.conditions(results)}\n")
    print("| model | loss | params | GMACs/image | train img/s | train img/s/core "
          "| train step s (median) | train GFLOP/s | predict img/s | predict img/s/core "
          "| predict GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["models"]:
        label = (f"densenet121_fzlpr ({net} + conv top)" if r["model"] == "fzlpr"
                 else f"keras {net} (avg pool) + Dense(14)")
        print(f"| {label} | {r['loss']} | {r['params']:,} | {r['gmacs']:.3f} "
              f"| {r['train_images_per_s']:.2f} | {r['train_images_per_s_core']:.2f} "
              f"| {r['train_step_s_median']:.3f} | {r['train_gflop_per_s']:.1f} "
              f"| {r['predict_images_per_s']:.2f} | {r['predict_images_per_s_core']:.2f} "
              f"| {r['predict_gflop_per_s']:.1f} |")
    a, b = results["models"]
    print(f"\nfzlpr / keras: train {a['train_images_per_s'] / b['train_images_per_s']:.2f}x, "
          f"predict {a['predict_images_per_s'] / b['predict_images_per_s']:.2f}x. "
          f"AdamW, no metrics, jit_compile={a['jit_compile']}; peak RSS "
          f"{results['max_rss_mib']:.0f} MiB (both models).")
    _peer.report(results)
    return _timing.save(results, out, "bench_fzlpr_train")


if __name__ == "__main__":
    main()
