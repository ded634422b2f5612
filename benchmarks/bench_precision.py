"""Mixed bfloat16 against float32 training and inference of the paper models, ours and the peer.

    python benchmarks/bench_precision.py --only fzlpr,mlrfnet --steps 6 --warmup 2 --out /tmp/cxr-bench

For each model of ``--only`` (``fzlpr``: ``densenet121_fzlpr`` + FZLPR, AdamW, batch 16;
``keras_densenet``: keras DenseNet121 + Dense + BCE, batch 16; ``mlrfnet``: MLRFNet (Res2Net-50) +
biased focal loss, Adam, batch 8; ``keras_resnet50``: keras ResNet50 + Dense + BFL, batch 8; the
builders and settings of ``bench_fzlpr_train.py`` / ``bench_mlrfnet_train.py``), in one process:
ours built under each Keras dtype policy of ``--policies`` (default ``float32,mixed_bfloat16``;
same seed, so the same initial weights), and the timm peer in float32 and under
``torch.autocast(bfloat16)``, all timed alternating step by step (:func:`_timing.time_models`).
Ratios are given as the median over the timed steps of step-by-step ratios, with their range, so
that load from other processes (which hits neighbouring steps alike) cancels. The first training
loss of each policy (the same weights and batch) shows what bfloat16 compute changes numerically.

Answers: is ``mixed_bfloat16`` faster than float32 on this CPU (AVX512_BF16 / AMX), and does it
close the gap to the peer (the peer's own bfloat16 autocast given beside it). Writes
``OUT/bench_precision.json`` atomically.
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

# kind -> (batch, bench module, its kind, peer arch, peer loss, peer optimiser)
KINDS = {
    "fzlpr": (16, "bench_fzlpr_train", "fzlpr", "densenet121", "bce", ("adamw", 1e-5, 4e-3)),
    "keras_densenet": (16, "bench_fzlpr_train", "keras", "densenet121", "bce",
                       ("adamw", 1e-5, 4e-3)),
    "mlrfnet": (8, "bench_mlrfnet_train", "mlrfnet", "res2net50_26w_4s", "bfl", ("adam", 1e-4)),
    "keras_resnet50": (8, "bench_mlrfnet_train", "keras_resnet50", "resnet50", "bfl",
                       ("adam", 1e-4)),
    "resnet18": (8, "bench_mtpret_train", "resnet18_supervised", "resnet18", "bce",
                 ("adam", 1e-4)),
    "vit_s": (8, "bench_dual_mae_pretrain", "vit_s_supervised", "vit_small_patch16_224", "bce",
              ("adamw", 1.5e-4, 0.05, (0.9, 0.95))),
}
NUM_CLASSES = 14


def _ours(kind: str, size: int, policy: str, seed: int):
    """One of our models built and compiled under ``policy`` (seeded: the same weights)."""
    import importlib

    import keras

    from cxr_keras.losses import get_loss

    _, module, sub, *_ = KINDS[kind]
    bench = importlib.import_module(module)
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(policy)
    try:
        if module == "bench_fzlpr_train":
            model, loss, _ = bench._build(sub, size, bench.FULL)
            opt = keras.optimizers.AdamW(1e-5, weight_decay=4e-3)
        elif module == "bench_mtpret_train":
            model, loss = bench._supervised(sub, (size, size)), get_loss("bce")
            opt = keras.optimizers.Adam(1e-4)
        elif module == "bench_dual_mae_pretrain":
            from cxr_keras.models import vit_small

            model = vit_small(input_shape=(size, size, 3), num_classes=NUM_CLASSES)
            loss = get_loss("bce")
            opt = keras.optimizers.AdamW(1.5e-4, beta_1=0.9, beta_2=0.95, weight_decay=0.05)
        else:
            from cxr_keras.losses import BiasedFocalLoss

            model, loss = bench._build(sub, size), BiasedFocalLoss()
            opt = keras.optimizers.Adam(1e-4)
        model.compile(optimizer=opt, loss=loss, jit_compile=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def step_ratios(a: dict, b: dict, phase: str) -> dict:
    """Median and range over the timed steps of rate(a) / rate(b) = time(b) / time(a)."""
    r = [tb / ta for ta, tb in zip(a[phase]["times"], b[phase]["times"])]
    return {"median": round(statistics.median(r), 3), "min": round(min(r), 3),
            "max": round(max(r), 3), "overall": round(sum(b[phase]["times"])
                                                     / sum(a[phase]["times"]), 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="fzlpr,mlrfnet",
                    help=f"comma-separated subset of {', '.join(KINDS)} (default fzlpr,mlrfnet)")
    ap.add_argument("--policies", default="float32,mixed_bfloat16",
                    help="Keras dtype policies of ours, the first the reference "
                         "(default float32,mixed_bfloat16)")
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    _timing.add_loop_args(ap, steps=6, warmup=2)
    ap.add_argument("--out", default="/tmp/cxr-bench", help="output folder")
    _peer.add_args(ap)
    args = ap.parse_args(argv)
    _timing.check_loop_args(ap, args)
    wanted = _timing.parse_only(ap, args.only, tuple(KINDS))
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies or set(policies) - set(_timing.PRECISIONS):
        ap.error(f"--policies: one or more of {', '.join(_timing.PRECISIONS)}")

    import numpy as np

    out = Path(args.out)
    cores = _timing.cores()
    results = {"size": args.size, "steps": args.steps, "warmup": args.warmup,
               "policies": policies, "cpu_flags": sorted(cpu_flags() & BF16_FLAGS), "kinds": []}
    for kind in wanted:
        batch, _, _, arch, loss, opt = KINDS[kind]
        rng = np.random.default_rng(args.seed)
        pos = 1 / 6 if loss == "bce" else 0.1
        xs = _timing.tensors([rng.standard_normal((batch, args.size, args.size, 3))
                              .astype(np.float32) for _ in range(args.pool)])
        ys = _timing.tensors([(rng.random((batch, NUM_CLASSES)) < pos).astype(np.float32)
                              for _ in range(args.pool)])
        models = {}
        for policy in policies:
            t = time.perf_counter()
            models[f"{kind}@{policy}"] = {"model": _ours(kind, args.size, policy, args.seed),
                                          "targets": ys, "build_s": time.perf_counter() - t}
        if args.peer and _peer.available():
            for policy in policies:
                if policy == "mixed_float16":  # float16 autocast on a CPU: not a fair peer
                    continue
                args.precision = policy
                t = time.perf_counter()
                net = _peer.Peer(arch, NUM_CLASSES, args.size, loss, opt, cores,
                                 args.peer_format, "cpu", policy)
                models[f"peer_{arch}@{policy}"] = {"model": net, "targets": ys,
                                                   "build_s": time.perf_counter() - t}
        load = _timing.time_models(models, xs, args.steps, args.warmup)
        ref = models[f"{kind}@{policies[0]}"]
        entry = {"kind": kind, "batch": batch, "peer": arch,
                 "loadavg_1min_before_after": [round(v, 2) for v in load], "rows": []}
        for name, m in models.items():
            row = {"model": name, **_timing.model_row(m, batch, cores)}
            row["train_vs_ref"] = step_ratios(m, ref, "train")
            row["predict_vs_ref"] = step_ratios(m, ref, "predict")
            same = ref if not name.startswith("peer_") else next(
                v for k, v in models.items() if k.startswith("peer_"))  # same weights
            row["first_loss_rel_diff"] = round(abs(m["losses"][0] - same["losses"][0])
                                               / max(abs(same["losses"][0]), 1e-12), 5)
            entry["rows"].append(row)
        results["kinds"].append(entry)
        _print(entry, policies[0])
    results.update(_timing.environment(cores, load))
    return _timing.save(results, out, "bench_precision")


BF16_FLAGS = {"avx512_bf16", "amx_bf16", "amx_tile"}


def cpu_flags() -> set:
    """The flags of the first processor in /proc/cpuinfo (empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _print(entry: dict, ref: str) -> None:
    print(f"\n{entry['kind']}, batch {entry['batch']}, load {entry['loadavg_1min_before_after']}"
          f" (ratios: median over steps of step-by-step ratios to ours in {ref} [range])\n")
    print("| model | train img/s | train vs ours " + ref + " | predict img/s | predict vs ours "
          + ref + " | first loss, rel. diff |")
    print("|---|---:|---|---:|---|---:|")
    for r in entry["rows"]:
        t, p = r["train_vs_ref"], r["predict_vs_ref"]
        print(f"| {r['model']} | {r['train_images_per_s']:.2f} | {t['median']:.2f}x "
              f"[{t['min']:.2f}, {t['max']:.2f}] | {r['predict_images_per_s']:.2f} "
              f"| {p['median']:.2f}x [{p['min']:.2f}, {p['max']:.2f}] "
              f"| {r['loss_first_last'][0]:.4f}, {r['first_loss_rel_diff']:.2g} |", flush=True)


if __name__ == "__main__":
    main()
