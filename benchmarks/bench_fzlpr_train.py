"""Stage-2 training and inference throughput of the fzlpr model against a plain Keras DenseNet121.

    python benchmarks/bench_fzlpr_train.py --size 224 --batch 16 --steps 20 --warmup 3 --out /tmp/cxr-bench

In one process, on the same synthetic in-memory batches (numpy, fixed seed; ``--pool`` distinct
batches used in turn), with all layers trainable (stage 2 of the paper):

(a) ``fzlpr``: :func:`cxr_keras.models.densenet121_fzlpr` (``weights=None``, 14 classes; DenseNet121
    + the paper's convolutional top) with the focal ZLPR loss (``get_loss("fzlpr")``, tau 0.2);
(b) ``keras``: ``keras.applications.DenseNet121(weights=None, include_top=False, pooling="avg")``
    + ``Dense(14)`` with ``BinaryCrossentropy(from_logits=True)``.

Both use ``AdamW(1e-5, weight_decay=4e-3)`` (the recipe's stage-2 start), no metrics, and
``jit_compile`` as ``--jit`` says (``auto``: Keras' choice, off on a CPU-only machine). Training is
``model.train_on_batch`` for ``--warmup`` untimed steps (tracing) and ``--steps`` timed steps, the
two models alternating step by step so that other load on the machine hits both alike; inference
is ``model.predict_on_batch`` likewise. Each step's wall time ends when its result is in host
memory. Rates are images/s over the timed steps (and per core: divided by the cores of this
process's CPU affinity); the median step time is given too.

Prints a Markdown table and writes ``OUT/bench_fzlpr_train.json`` atomically.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NUM_CLASSES = 14


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _build(name: str, size: int):
    import keras

    from cxr_keras.losses import get_loss
    from cxr_keras.models import densenet121_fzlpr, set_backbone_trainable

    if name == "fzlpr":
        try:
            model = densenet121_fzlpr(num_classes=NUM_CLASSES, weights=None, input_shape=(size, size, 3))
        except ValueError as e:
            raise SystemExit(f"densenet121_fzlpr cannot be built at {size}x{size} (its top needs a "
                             f"feature map of at least 5x5, i.e. --size >= 160): {e}") from None
        set_backbone_trainable(model, True)  # stage 2: every layer trainable
        return model, get_loss("fzlpr"), "FZLPR (tau 0.2)"
    base = keras.applications.DenseNet121(weights=None, include_top=False, pooling="avg",
                                          input_shape=(size, size, 3))
    out = keras.layers.Dense(NUM_CLASSES, name="logits")(base.output)
    model = keras.Model(base.input, out, name="densenet121_keras")
    return model, keras.losses.BinaryCrossentropy(from_logits=True), "BCE (from logits)"


def _rate(times, batch):
    return batch * len(times) / sum(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model and mode (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--pool", type=int, default=4, help="distinct synthetic batches (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="numpy seed of the batches (default 0)")
    ap.add_argument("--jit", choices=("auto", "true", "false"), default="auto",
                    help="jit_compile of model.compile (default auto: Keras' choice)")
    ap.add_argument("--out", default="/tmp/cxr-bench", help="output folder (default /tmp/cxr-bench)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be at least 1 (the first step traces the graph)")

    import keras
    import numpy as np
    import tensorflow as tf

    from cxr_keras.io import write_json

    out = Path(args.out)
    cores = _cores()
    jit = {"auto": "auto", "true": True, "false": False}[args.jit]

    rng = np.random.default_rng(args.seed)
    # ImageNet-normalised-looking inputs and multi-hot targets (about 1 positive in 6, no NaN).
    xs = [tf.constant(rng.standard_normal((args.batch, args.size, args.size, 3), dtype=np.float32))
          for _ in range(args.pool)]
    ys = [tf.constant((rng.random((args.batch, NUM_CLASSES)) < 1 / 6).astype(np.float32))
          for _ in range(args.pool)]

    keras.utils.set_random_seed(args.seed)
    models = {}
    for name in ("fzlpr", "keras"):
        t = time.perf_counter()
        model, loss, loss_name = _build(name, args.size)
        model.compile(optimizer=keras.optimizers.AdamW(1e-5, weight_decay=4e-3), loss=loss,
                      jit_compile=jit)
        models[name] = {"model": model, "loss": loss_name, "build_s": time.perf_counter() - t}

    def train_step(m, i):
        t = time.perf_counter()
        loss = float(np.asarray(m.train_on_batch(xs[i % args.pool], ys[i % args.pool])).ravel()[0])
        return time.perf_counter() - t, loss  # the loss is on the host: the step is done

    def predict_step(m, i):
        t = time.perf_counter()
        np.asarray(m.predict_on_batch(xs[i % args.pool]))
        return time.perf_counter() - t

    load_before = os.getloadavg()[0]
    for phase in ("train", "predict"):
        for name, m in models.items():
            m[phase] = {"warmup_s": [], "times": [], "cpu_s": 0.0}
        for i in range(args.warmup + args.steps):
            for name, m in models.items():
                c0 = time.process_time()
                if phase == "train":
                    dt, loss = train_step(m["model"], i)
                    m.setdefault("losses", []).append(loss)
                else:
                    dt = predict_step(m["model"], i)
                if i < args.warmup:
                    m[phase]["warmup_s"].append(dt)
                else:
                    m[phase]["times"].append(dt)
                    m[phase]["cpu_s"] += time.process_time() - c0
    load_after = os.getloadavg()[0]

    results = {"size": args.size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
               "pool": args.pool, "seed": args.seed, "num_classes": NUM_CLASSES,
               "optimizer": "AdamW(learning_rate=1e-5, weight_decay=4e-3)", "metrics": [],
               "cores": cores, "cpu_count": os.cpu_count(),
               "tf_version": tf.__version__, "keras_version": keras.__version__,
               "backend": keras.backend.backend(),
               "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
               "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
               "loadavg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
               "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "models": []}
    for name, m in models.items():
        model = m["model"]
        tr, pr = m["train"], m["predict"]
        train_rate, pred_rate = _rate(tr["times"], args.batch), _rate(pr["times"], args.batch)
        results["models"].append({
            "model": name, "name": model.name, "loss": m["loss"],
            "params": int(model.count_params()),
            "trainable_params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
            "jit_compile": bool(model.jit_compile), "build_compile_s": round(m["build_s"], 3),
            "train_first_step_s": round(tr["warmup_s"][0], 3),
            "train_step_s_median": round(statistics.median(tr["times"]), 4),
            "train_images_per_s": round(train_rate, 2),
            "train_images_per_s_core": round(train_rate / cores, 2),
            "train_images_per_cpu_s": round(args.batch * args.steps / max(tr["cpu_s"], 1e-9), 2),
            "predict_first_step_s": round(pr["warmup_s"][0], 3),
            "predict_step_s_median": round(statistics.median(pr["times"]), 4),
            "predict_images_per_s": round(pred_rate, 2),
            "predict_images_per_s_core": round(pred_rate / cores, 2),
            "predict_images_per_cpu_s": round(args.batch * args.steps / max(pr["cpu_s"], 1e-9), 2),
            "loss_first_last": [round(m["losses"][0], 4), round(m["losses"][-1], 4)],
        })

    print(f"\nStage-2 training (all layers trainable) and inference, {args.size}x{args.size}x3, batch "
          f"{args.batch}, {args.steps} timed steps after {args.warmup} warm-up, synthetic batches "
          f"(seed {args.seed}), {keras.backend.backend()} backend, {cores} cores, 1-min load average "
          f"{load_before:.2f} before / {load_after:.2f} after\n")
    print("| model | loss | params | train img/s | train img/s/core | train step s (median) "
          "| predict img/s | predict img/s/core |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["models"]:
        label = ("densenet121_fzlpr (DenseNet121 + conv top)" if r["model"] == "fzlpr"
                 else "keras DenseNet121 (avg pool) + Dense(14)")
        print(f"| {label} | {r['loss']} | {r['params']:,} | {r['train_images_per_s']:.2f} "
              f"| {r['train_images_per_s_core']:.2f} | {r['train_step_s_median']:.3f} "
              f"| {r['predict_images_per_s']:.2f} | {r['predict_images_per_s_core']:.2f} |")
    a, b = results["models"]
    print(f"\nfzlpr / keras: train {a['train_images_per_s'] / b['train_images_per_s']:.2f}x, "
          f"predict {a['predict_images_per_s'] / b['predict_images_per_s']:.2f}x. "
          f"AdamW, no metrics, jit_compile={a['jit_compile']}; peak RSS {results['max_rss_mib']:.0f} MiB "
          f"(both models).")
    write_json(out / "bench_fzlpr_train.json", results)
    print(f"\nwrote {out / 'bench_fzlpr_train.json'}")
    return results


if __name__ == "__main__":
    main()
