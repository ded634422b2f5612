"""What the fused batch norm buys: ours (``cxr_keras.layers.FusedBatchNormalization``) against the
same network with Keras 3's ``BatchNormalization``, training and inference, alternating.

    python benchmarks/bench_fused_bn.py --only fzlpr,mlrfnet --steps 4 --warmup 1

Keras 3's ``BatchNormalization`` on the TensorFlow backend is not fused: in training it computes
the moments (``Mean``, ``SquaredDifference``) and the normalisation as separate element-wise ops,
and its gradient as ``Tile`` / ``Sum`` / ``Mul`` (``profile_step.py``: about 30% of the op time of a
DenseNet121 training step). Our models' batch norm runs TensorFlow's fused kernel in training. Each
model of ``--only`` (the builders of :mod:`bench_precision`) is cloned with every
``FusedBatchNormalization`` replaced by Keras' layer (same configuration, same weights), and both
are timed step by step, alternating. Writes ``OUT/bench_fused_bn.json`` atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository root and this folder (_timing)

import _timing  # noqa: E402


def with_keras_bn(model):
    """A clone of ``model`` (same weights) with Keras' own BatchNormalization everywhere."""
    import keras

    from cxr_keras.models.batchnorm import replace_batch_norm

    return replace_batch_norm(model, keras.layers.BatchNormalization)


def main(argv=None) -> dict:
    import bench_precision

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="fzlpr,mlrfnet",
                    help=f"comma-separated subset of {', '.join(bench_precision.KINDS)}")
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--policy", choices=_timing.PRECISIONS, default="float32")
    _timing.add_loop_args(ap, steps=4, warmup=1)
    ap.add_argument("--out", default="/tmp/cxr-bench", help="output folder")
    args = ap.parse_args(argv)
    _timing.check_loop_args(ap, args)
    wanted = _timing.parse_only(ap, args.only, tuple(bench_precision.KINDS))

    import keras
    import numpy as np

    cores = _timing.cores()
    results = {"size": args.size, "policy": args.policy, "steps": args.steps, "kinds": []}
    for kind in wanted:
        batch, _, _, _, loss, _ = bench_precision.KINDS[kind]
        rng = np.random.default_rng(args.seed)
        xs = _timing.tensors([rng.standard_normal((batch, args.size, args.size, 3))
                              .astype(np.float32) for _ in range(args.pool)])
        ys = _timing.tensors([(rng.random((batch, bench_precision.NUM_CLASSES)) < 0.15)
                              .astype(np.float32) for _ in range(args.pool)])
        fused = bench_precision._ours(kind, args.size, args.policy, args.seed)
        keras.mixed_precision.set_global_policy(args.policy)
        try:
            keras_bn = with_keras_bn(fused)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        keras_bn.compile(optimizer=fused.optimizer.__class__.from_config(
            fused.optimizer.get_config()), loss=fused.loss, jit_compile=False)
        models = {"keras_bn": {"model": keras_bn, "targets": ys, "build_s": 0.0},
                  "fused_bn": {"model": fused, "targets": ys, "build_s": 0.0}}
        t = time.perf_counter()
        load = _timing.time_models(models, xs, args.steps, args.warmup)
        r = bench_precision.step_ratios(models["fused_bn"], models["keras_bn"], "train")
        p = bench_precision.step_ratios(models["fused_bn"], models["keras_bn"], "predict")
        entry = {"kind": kind, "batch": batch, "train_fused_over_keras": r,
                 "predict_fused_over_keras": p, "wall_s": round(time.perf_counter() - t, 1),
                 "loadavg_1min_before_after": [round(v, 2) for v in load],
                 "rows": [{"model": n, **_timing.model_row(m, batch, cores)}
                          for n, m in models.items()]}
        results["kinds"].append(entry)
        a, b = entry["rows"]
        print(f"\n{kind}, batch {batch}, {args.policy}, load {entry['loadavg_1min_before_after']}: "
              f"train img/s Keras BN {a['train_images_per_s']:.2f}, fused BN "
              f"{b['train_images_per_s']:.2f}: fused / Keras {r['median']:.2f}x "
              f"[{r['min']:.2f}, {r['max']:.2f}]; predict {p['median']:.2f}x "
              f"(losses {a['loss_first_last']} / {b['loss_first_last']})", flush=True)
    results.update(_timing.environment(cores, load))
    return _timing.save(results, Path(args.out), "bench_fused_bn")


if __name__ == "__main__":
    main()
