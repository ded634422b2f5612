"""Inference throughput of the fzlpr model with and without test-time augmentation (TTA).

    python benchmarks/bench_inference.py --batch 16 --steps 4 --warmup 1 --out /tmp/cxr-bench

For two models (``--models``), on synthetic standard-normal batches (as after ImageNet
normalisation; seed fixed), ``weights=None``, 14 outputs:

- ``quick``: the reduced DenseNet of ``cxr-keras run fzlpr --quick``
  (``cxr_keras.recipes.fzlpr.build_model`` with its ``QUICK`` settings: blocks 1,2,2,1, 160 px);
- ``full``: :func:`cxr_keras.models.densenet121_fzlpr` at ``--size`` (224).

Variants, each a call on one batch of ``--batch`` images, alternating step by step:

- ``plain``: ``sigmoid(model.predict_on_batch(x))``, what ``cxr-keras predict`` does without TTA
  (:func:`cxr_keras.inference.predict.predict_folder`);
- ``tta:<views>``: :class:`cxr_keras.inference.tta.TTAPredictor` with the cumulative view sets of
  the paper's Table 3 (``TABLE3_STEPS``: original; original + horizontal flip; + zoom in and out by
  10%), ``.predict(x)``: every view transformed with keras.ops, predicted, activated and averaged.
  ``tta:original`` is the TTA machinery's overhead on one view; the recipe's Table 3 (all views
  once, then :func:`cumulative_means`) costs as much as the four-view set.

Figures: images/s (and per core), the ratio to ``plain`` (ideal: 1 / views), achieved GFLOP/s
(2 x MACs x views x images/s; MACs from ``count_flops``; the view transforms count zero), and a
check that ``tta:original`` equals ``plain``. Prints a Markdown table and writes
``OUT/bench_inference.json`` atomically.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository root and this folder (_timing)

import _timing  # noqa: E402

NUM_CLASSES = 14
MODELS = ("quick", "full")


def _build(kind: str, size: int):
    """(model, input side)."""
    from cxr_keras.models import densenet121_fzlpr
    from cxr_keras.recipes.fzlpr import QUICK, Config, build_model

    if kind == "quick":
        cfg = Config(**QUICK)
        return build_model(cfg, NUM_CLASSES), cfg.crop
    return densenet121_fzlpr(NUM_CLASSES, weights=None, input_shape=(size, size, 3)), size


def _variants(model):
    """``{name: (views, fn(x) -> probabilities)}``: plain, then the Table 3 view sets."""
    import numpy as np
    from scipy import special

    from cxr_keras.inference.tta import TABLE3_STEPS, TTAPredictor

    out = {"plain": (1, lambda x: special.expit(np.asarray(model.predict_on_batch(x),
                                                           np.float64)))}
    for step in TABLE3_STEPS:
        tta = TTAPredictor(model, views=step)
        out["tta:" + "+".join(step)] = (len(step), lambda x, t=tta: t.predict(x, len(x)))
    return out


def _time(variants: dict, xs: list, steps: int, warmup: int) -> dict:
    """Wall seconds of ``steps`` timed calls per variant after ``warmup`` untimed ones, the
    variants alternating step by step; and the first batch's probabilities of each."""
    times = {name: [] for name in variants}
    probs = {}
    for i in range(warmup + steps):
        for name, (_, fn) in variants.items():
            t = time.perf_counter()
            p = fn(xs[i % len(xs)])
            dt = time.perf_counter() - t
            if i == 0:
                probs[name] = p
            if i >= warmup:
                times[name].append(dt)
    return times, probs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated subset of quick, full (default both)")
    ap.add_argument("--size", type=int, default=224,
                    help="input side of the full model, at least 160 (default 224)")
    ap.add_argument("--batch", type=int, default=16,
                    help="images per call (default 16, cxr-keras predict's)")
    _timing.add_loop_args(ap, steps=4, warmup=1)
    ap.add_argument("--out", default="/tmp/cxr-bench",
                    help="output folder (default /tmp/cxr-bench)")
    args = ap.parse_args(argv)
    _timing.check_loop_args(ap, args)
    wanted = [k.strip() for k in args.models.split(",") if k.strip()]
    if not wanted or set(wanted) - set(MODELS) or args.size < 160 or args.batch < 1:
        ap.error("--models takes quick and/or full, --size at least 160, --batch at least 1")

    import keras
    import numpy as np

    cores = _timing.cores()
    rng = np.random.default_rng(args.seed)
    keras.utils.set_random_seed(args.seed)
    load_before = os.getloadavg()[0]
    rows = []
    for kind in (k for k in MODELS if k in wanted):
        model, side = _build(kind, args.size)
        gmacs = _timing.count_train_flops(model)["gmacs"]
        xs = [rng.standard_normal((args.batch, side, side, 3)).astype(np.float32)
              for _ in range(args.pool)]
        variants = _variants(model)
        times, probs = _time(variants, xs, args.steps, args.warmup)
        plain = _timing.rate(times["plain"], args.batch)
        one_view = float(np.max(np.abs(probs["tta:original"] - probs["plain"])))
        for name, (views, _) in variants.items():
            r = _timing.rate(times[name], args.batch)
            rows.append({"model": kind, "name": model.name, "size": side, "params":
                         int(model.count_params()), "variant": name, "views": views,
                         "images_per_s": round(r, 2), "images_per_s_core": round(r / cores, 2),
                         "step_s_median": round(statistics.median(times[name]), 4),
                         "ratio_vs_plain": round(r / plain, 3), "ideal_ratio": round(1 / views, 3),
                         "gmacs": round(gmacs, 4),
                         "gflop_per_s": round(2 * gmacs * views * r, 2)})
        rows[-len(variants)]["tta_original_max_abs_diff"] = one_view
        del model
        keras.backend.clear_session()

    results = {"batch": args.batch, "steps": args.steps, "warmup": args.warmup,
               "pool": args.pool, "seed": args.seed, "num_classes": NUM_CLASSES,
               "zoom": 0.1, **_timing.environment(cores, (load_before, os.getloadavg()[0])),
               "rows": rows}

    print(f"\nfzlpr inference with and without TTA, batch {args.batch}, {args.steps} timed calls "
          f"after {args.warmup} warm-up per variant, synthetic batches (seed {args.seed}), "
          f"{_timing.conditions(results)}\n")
    print("| model | size | variant | views | images/s | images/s/core | vs plain | ideal "
          "| GFLOP/s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = "fzlpr --quick (DenseNet 1,2,2,1)" if r["model"] == "quick" else r["name"]
        print(f"| {label} | {r['size']} | {r['variant']} | {r['views']} "
              f"| {r['images_per_s']:.2f} | {r['images_per_s_core']:.2f} "
              f"| {r['ratio_vs_plain']:.2f} | {r['ideal_ratio']:.2f} | {r['gflop_per_s']:.1f} |")
    diffs = [r["tta_original_max_abs_diff"] for r in rows if "tta_original_max_abs_diff" in r]
    print(f"\nmax |tta:original - plain| = {max(diffs):.2e} (same model, same images). "
          "Ideal ratio: 1 / views (each view a full forward pass; flips and zooms cost extra).")
    return _timing.save(results, Path(args.out), "bench_inference")


if __name__ == "__main__":
    main()
