"""Pretraining throughput of dual-MAE and MAE, against supervised ViT-S training.

    python benchmarks/bench_dual_mae_pretrain.py --size 224 --batch 8 --steps 4 --warmup 2 --out /tmp/cxr-bench
    python benchmarks/bench_dual_mae_pretrain.py --quick --out /tmp/cxr-bench   # the --quick recipe's networks

In one process, on the same synthetic in-memory batches (standard-normal images; seed fixed):

- ``dual_mae``: :class:`cxr_keras.models.DualMaskedAutoencoder` (ViT-S/16 online encoder on the 25%
  visible patches, 512-wide 2-block decoder, and the EMA target network's forward pass with its own
  mask; the EMA update after every step), mask ratio 0.75;
- ``mae``: :class:`cxr_keras.models.MaskedAutoencoder`, the same network alone, mask ratio 0.75;
- ``vit_s_supervised``: :func:`cxr_keras.models.vit_small` with a 6-way head and BCE on every patch
  (the fine-tuning network; no keras.applications ViT exists to compare with).

AdamW (betas 0.9/0.95, weight decay 0.05) as the recipe. Timing as the other train benchmarks
(:mod:`_timing`: ``train_on_batch`` then ``predict_on_batch``, models alternating step by step;
"predict" of an autoencoder is one masked reconstruction). ``--quick`` times the networks of
``cxr-keras run dual_mae --quick`` (64 px, patch 8, width 128, depth 4) with XLA. GMACs per image
are counted from the architecture (``count_flops`` has no rule for the ViT blocks): per transformer
block and token 4 w^2 (q, k, v, output projections) + 2 r w^2 (MLP, ratio r), plus 2 T^2 w per
block for the attention products, plus the patch embedding and the MAE decoder's projections;
training GFLOP/s = 3 x 2 x MACs x images/s for a trained network, plus 2 x MACs for the dual-MAE
target's forward pass; inference 2 x MACs x images/s. Prints a Markdown table and writes
``OUT/bench_dual_mae_pretrain.json`` atomically.
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

KINDS = ("dual_mae", "mae", "vit_s_supervised")
QUICK = dict(patch_size=8, width=128, depth=4, num_heads=4, decoder_width=128, decoder_depth=1,
             decoder_heads=4)


def _vit_macs(tokens: int, width: int, depth: int, mlp_ratio: float) -> float:
    """MACs of ``depth`` transformer blocks on ``tokens`` tokens: the q/k/v and output projections
    (4 w^2), the MLP (2 r w^2) per token, and the two attention products (2 T^2 w)."""
    return depth * (tokens * (4 + 2 * mlp_ratio) * width ** 2 + 2 * tokens ** 2 * width)


def _mae_macs(mae) -> float:
    """Forward MACs per image of a :class:`MaskedAutoencoder`: patch embedding of every patch,
    the encoder on the CLS token + visible patches, the decoder on the CLS token + every patch."""
    from cxr_keras.models.mae import keep_count

    n, p, c = mae.num_patches, mae.patch_size, mae.channels
    visible = 1 + keep_count(n, mae.mask_ratio)
    return (n * p * p * c * mae.width
            + _vit_macs(visible, mae.width, mae.depth, mae.mlp_ratio)
            + visible * mae.width * mae.decoder_width
            + _vit_macs(1 + n, mae.decoder_width, mae.decoder_depth, mae.mlp_ratio)
            + (1 + n) * mae.decoder_width * p * p * c)


def _flops(kind: str, model, size: int, quick: bool) -> tuple:
    """(GMACs per image of a forward pass, GFLOP per image of a training step), counted from the
    architecture (``count_flops`` has no rule for the ViT blocks); 2 FLOPs per MAC, a trained
    network's step = 3 forward passes, the dual-MAE target's forward pass = 1."""
    from cxr_keras.models.vit import SMALL

    if kind == "vit_s_supervised":
        cfg = {**SMALL, "patch_size": 8, "width": 128, "depth": 4} if quick else SMALL
        n, w = (size // cfg["patch_size"]) ** 2, cfg["width"]
        macs = (n * cfg["patch_size"] ** 2 * 3 * w + w * 6
                + _vit_macs(1 + n, w, cfg["depth"], cfg["mlp_ratio"]))
        return macs / 1e9, 6 * macs / 1e9
    if kind == "mae":
        macs = _mae_macs(model)
        return macs / 1e9, 6 * macs / 1e9
    macs = _mae_macs(model.online)  # the target network is the same architecture
    return 2 * macs / 1e9, 2 * (3 * macs + macs) / 1e9


def _build(kind: str, size: int, quick: bool):
    from cxr_keras.models import DualMaskedAutoencoder, MaskedAutoencoder, vit, vit_small

    net = dict(QUICK) if quick else {}
    if kind == "vit_s_supervised":
        shape = dict(input_shape=(size, size, 3), num_classes=6)
        if quick:
            return vit(patch_size=8, width=128, depth=4, num_heads=4, **shape)
        return vit_small(**shape)
    cls = DualMaskedAutoencoder if kind == "dual_mae" else MaskedAutoencoder
    return cls(image_size=size, mask_ratio=0.75, seed=0, **net)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=None, help="input side (default 224; --quick 64)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 8; --quick 64)")
    ap.add_argument("--quick", action="store_true", help="the --quick recipe's reduced networks")
    _timing.add_loop_args(ap, steps=4, warmup=2)
    ap.add_argument("--only", default=",".join(KINDS),
                    help=f"comma-separated subset of {', '.join(KINDS)} (default all)")
    _timing.add_jit_out_args(ap)
    _peer.add_args(ap)
    args = ap.parse_args(argv)
    _timing.check_loop_args(ap, args)
    size = args.size or (64 if args.quick else 224)
    batch = args.batch or (64 if args.quick else 8)
    patch = 8 if args.quick else 16
    if size % patch:
        ap.error(f"--size must be a multiple of the patch size {patch}")
    wanted = _timing.parse_only(ap, args.only, KINDS)

    import keras
    import numpy as np
    import tensorflow as tf

    from cxr_keras.losses import get_loss

    jit = _timing.JIT[args.jit] if args.jit != "auto" or not args.quick else True
    rng = np.random.default_rng(args.seed)
    xs = [tf.constant(rng.standard_normal((batch, size, size, 3)).astype(np.float32))
          for _ in range(args.pool)]
    ys = [tf.constant((rng.random((batch, 6)) < 0.2).astype(np.float32)) for _ in range(args.pool)]
    keras.utils.set_random_seed(args.seed)
    models = {}
    for kind in wanted:
        t = time.perf_counter()
        model = _build(kind, size, args.quick)
        opt = keras.optimizers.AdamW(1.5e-4, beta_1=0.9, beta_2=0.95, weight_decay=0.05)
        supervised = kind == "vit_s_supervised"
        model.compile(optimizer=opt, loss=get_loss("bce") if supervised else None, jit_compile=jit)
        models[kind] = {"kind": kind, "model": model, "build_s": time.perf_counter() - t,
                        "targets": ys if supervised else [None] * len(xs)}

    cores = _timing.cores()
    if "vit_s_supervised" in wanted:  # timm's ViT at the same size, patch, width and depth
        vit = (dict(img_size=size, patch_size=8, embed_dim=128, depth=4, num_heads=4)
               if args.quick else dict(img_size=size))
        _peer.add(models, {"vit_small_patch16_224": ["vit_s_supervised"]}, ys, size, 6, "bce",
                  ("adamw", 1.5e-4, 0.05, (0.9, 0.95)), args, cores, **vit)
    load = _timing.time_models(models, xs, args.steps, args.warmup)
    models, peers = _peer.split(models)
    results = {"size": size, "batch": batch, "quick": args.quick, "patch": patch,
               "steps": args.steps, "warmup": args.warmup, "pool": args.pool, "seed": args.seed,
               "mask_ratio": 0.75, "optimizer": "AdamW(1.5e-4, 0.9, 0.95, wd 0.05)",
               **_timing.environment(cores, load), "models": []}
    for name, m in models.items():
        row = _timing.model_row(m, batch, cores)
        row.update(model=name)
        results["models"].append(_timing.flop_fields(row, *_flops(name, m["model"], size,
                                                                  args.quick)))
    if peers:
        results["peers"] = _peer.rows(peers, batch, cores)

    net = "ViT 64px/8, width 128, depth 4" if args.quick else f"ViT-S/16 at {size}px"
    print(f"\ndual_mae pretraining, {net}, batch {batch}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, synthetic batches (seed {args.seed}), "
          f"{_timing.conditions(results)}\n")
    print("| model | params (trainable / total) | GMACs/image | train img/s | img/s per core "
          "| train GFLOP/s | predict img/s | predict GFLOP/s | first train step s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["models"]:
        print(f"| {r['model']} | {r['trainable_params']:,} / {r['params']:,} | {r['gmacs']:.3f} "
              f"| {r['train_images_per_s']:.2f} | {r['train_images_per_s_core']:.2f} "
              f"| {r['train_gflop_per_s']:.1f} | {r['predict_images_per_s']:.2f} "
              f"| {r['predict_gflop_per_s']:.1f} | {r['train_first_step_s']:.1f} |")
    print("\nGMACs per image counted from the architecture (projections, MLPs and attention "
          "products); dual-MAE counts both networks' forward passes, its training step 3 x the "
          "online network's forward + 1 x the target's. No keras.applications ViT exists: the "
          "counterpart is our own supervised ViT.")
    _peer.report(results)
    return _timing.save(results, Path(args.out), "bench_dual_mae_pretrain")


if __name__ == "__main__":
    main()
