"""Training and inference throughput of MLRFNet, its backbone ablations and keras' ResNet50.

    python benchmarks/bench_mlrfnet_train.py --size 224 --batch 8 --steps 5 --warmup 2 --out /tmp/cxr-bench

In one process, on the same synthetic in-memory batches (standard-normal images, as after
ImageNet normalisation; multi-hot targets with about 10% positives, 14 labels; fixed seed), every
model ``weights=None`` with the biased focal loss and ``Adam(1e-4)`` (the paper's protocol):

- ``mlrfnet``: :func:`cxr_keras.models.mlrfnet` (Res2Net-50 26w4s + ECA + three CSRA heads);
- ``mlrfnet_resnet50`` / ``mlrfnet_densenet121``: the Table 10 backbones;
- ``keras_resnet50``: ``keras.applications.ResNet50(include_top=False, pooling="avg")`` + Dense(14),
  the plain keras.applications counterpart.

Timing as in the other train benchmarks (:mod:`_timing`: ``train_on_batch`` then
``predict_on_batch``, models alternating step by step). GMACs per image are counted from the
layers (:func:`cxr_keras.evaluation.flops.count_flops`; the paper's "4.29 GFLOPs" is this
convention). Achieved rates: training GFLOP/s = 3 x 2 x MACs x images/s (forward + backward taken
as three forward passes), inference GFLOP/s = 2 x MACs x images/s. ``--blocks`` (e.g. 1,1,1,1)
reduces every backbone alike (the keras counterpart through keras' ``ResNet`` class) for smoke
tests. Latency: ``predict_on_batch``
of one image, ``--latency-steps`` timed after two warm-up calls, median (paper, Table 8: 0.046 s
on its GPU).

Prints a Markdown table and writes ``OUT/bench_mlrfnet_train.json`` atomically.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository root and this folder (_timing)

import _peer  # noqa: E402

import _timing  # noqa: E402

NUM_CLASSES = 14
KINDS = ("mlrfnet", "mlrfnet_resnet50", "mlrfnet_densenet121", "keras_resnet50")
# the timm peer of each model (bare networks: no ECA / CSRA heads)
PEERS = {"mlrfnet": "res2net50_26w_4s", "mlrfnet_resnet50": "resnet50",
         "mlrfnet_densenet121": "densenet121", "keras_resnet50": "resnet50"}
PAPER = {"gflops": 4.29, "seconds_per_image": 0.046}


def _build(kind: str, size: int, blocks=None):
    """One model; ``blocks`` (four ints) reduces every backbone alike (None: the full ones)."""
    import keras

    from cxr_keras.models import mlrfnet

    if kind == "keras_resnet50":
        base = _timing.keras_resnet(blocks or (3, 4, 6, 3), (size, size, 3))
        return keras.Model(base.input, keras.layers.Dense(NUM_CLASSES)(base.output),
                           name="keras_resnet50")
    backbone = {"mlrfnet": "res2net50"}.get(kind, kind.replace("mlrfnet_", ""))
    return mlrfnet(NUM_CLASSES, backbone=backbone, weights=None, input_shape=(size, size, 3),
                   backbone_options={"blocks": tuple(blocks)} if blocks else None, name=kind)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    _timing.add_loop_args(ap, steps=5, warmup=2)
    ap.add_argument("--latency-steps", type=int, default=10,
                    help="timed batch-1 predictions per model (default 10)")
    ap.add_argument("--only", default=",".join(KINDS),
                    help=f"comma-separated subset of {', '.join(KINDS)} (default all)")
    ap.add_argument("--blocks", default=None,
                    help="blocks per stage of every backbone, e.g. 1,1,1,1 for a smoke test "
                         "(default: the full networks)")
    _timing.add_jit_out_args(ap)
    _timing.add_precision_args(ap)
    _peer.add_args(ap)
    args = ap.parse_args(argv)
    _timing.check_loop_args(ap, args)
    blocks = _timing.parse_blocks(ap, args.blocks)
    if args.size < 32 or args.latency_steps < 1:
        ap.error("--size must be at least 32 and --latency-steps at least 1")
    wanted = _timing.parse_only(ap, args.only, KINDS)

    import keras
    import numpy as np

    from cxr_keras.losses import BiasedFocalLoss

    out = Path(args.out)
    cores = _timing.cores()
    s, b = args.size, args.batch
    rng = np.random.default_rng(args.seed)
    xs = _timing.tensors([rng.standard_normal((b, s, s, 3)).astype(np.float32)
                          for _ in range(args.pool)])
    ys = _timing.tensors([(rng.random((b, NUM_CLASSES)) < 0.1).astype(np.float32)
                          for _ in range(args.pool)])
    keras.mixed_precision.set_global_policy(args.precision)

    keras.utils.set_random_seed(args.seed)
    models = {}
    for kind in wanted:
        t = time.perf_counter()
        model = _build(kind, s, blocks)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=BiasedFocalLoss(),
                      jit_compile=_timing.JIT[args.jit])
        models[kind] = {"kind": kind, "model": model, "targets": ys,
                        "build_s": time.perf_counter() - t,
                        "flops": _timing.count_train_flops(model)}
    if not blocks:  # timm's bare networks + Linear(., 14), same loss and Adam
        want = {}
        for kind in wanted:
            want.setdefault(PEERS[kind], []).append(kind)
        _peer.add(models, want, ys, s, NUM_CLASSES, "bfl", ("adam", 1e-4), args, cores)
    elif args.peer:
        print("peer: only for the full networks (no --blocks)")

    load = _timing.time_models(models, xs, args.steps, args.warmup)
    models, peers = _peer.split(models)
    one = xs[0][:1]
    for m in models.values():
        for _ in range(2):
            np.asarray(m["model"].predict_on_batch(one))
        times = []
        for _ in range(args.latency_steps):
            t = time.perf_counter()
            np.asarray(m["model"].predict_on_batch(one))
            times.append(time.perf_counter() - t)
        m["latency_s"] = statistics.median(times)

    results = {"size": s, "batch": b, "steps": args.steps, "warmup": args.warmup,
               "pool": args.pool, "seed": args.seed, "num_classes": NUM_CLASSES,
               "latency_steps": args.latency_steps, "loss": "BiasedFocalLoss()",
               "optimizer": "Adam(1e-4)", "paper": PAPER,
               "blocks": list(blocks) if blocks else None,
               **_timing.environment(cores, load), "models": []}
    for name, m in models.items():
        row = _timing.model_row(m, b, cores)
        row.update(model=name, seconds_per_image_batch1=round(m["latency_s"], 4))
        results["models"].append(_timing.flop_fields(row, m["flops"]["gmacs"],
                                                     m["flops"]["train_gflop_per_image"]))
    if peers:
        results["peers"] = _peer.rows(peers, b, cores)

    net = f", backbones reduced to {args.blocks} blocks per stage" if blocks else ""
    print(f"\nmlrfnet training and inference{net}, {s}x{s}x3, batch {b}, {args.steps} timed "
          f"steps after {args.warmup} warm-up, synthetic batches (seed {args.seed}), biased "
          f"focal loss, Adam(1e-4), {_timing.conditions(results)}\n")
    print("| model | params (trainable / total) | GMACs/image | train img/s | train GFLOP/s "
          "| predict img/s | predict GFLOP/s | s/image at batch 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["models"]:
        print(f"| {r['model']} | {r['trainable_params']:,} / {r['params']:,} | {r['gmacs']:.3f} "
              f"| {r['train_images_per_s']:.2f} | {r['train_gflop_per_s']:.1f} "
              f"| {r['predict_images_per_s']:.2f} | {r['predict_gflop_per_s']:.1f} "
              f"| {r['seconds_per_image_batch1']:.4f} |")
    print(f"\nPaper (Table 8, MLRFNet, its GPU): {PAPER['gflops']} GFLOPs, "
          f"{PAPER['seconds_per_image']} s per image. First (tracing) train step: "
          + ", ".join(f"{r['model']} {r['train_first_step_s']:.1f} s" for r in results["models"])
          + f"; peak RSS {results['max_rss_mib']:.0f} MiB (all models).")
    _peer.report(results)
    return _timing.save(results, out, "bench_mlrfnet_train")


if __name__ == "__main__":
    main()
