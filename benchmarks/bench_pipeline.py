"""tf.data input-pipeline throughput over an image cache, fzlpr preset.

    python benchmarks/bench_pipeline.py --n 256 --epochs 3 --out /tmp/cxr-bench

Writes (or reuses) an ``n``-image phantom NIH of ``size x size`` PNGs under
``OUT/phantom-nih-n{n}-s{size}`` and its image cache (:func:`cxr_keras.data.cache.build_cache`,
``cache_size`` px) under ``OUT/cache-nih-n{n}-s{size}-c{cache_size}``, then iterates
:func:`cxr_keras.data.pipeline.make_dataset` with the ``fzlpr`` preset (horizontal flip, rotation
+-0.4 rad, random crop 224 of 256; ImageNet normalisation, 3 channels, batch 64) with nothing
downstream consuming the batches:

(a) training (``training=True``): ``--epochs`` passes over the split, one dataset object, each
    pass reshuffled as in ``model.fit``; the first batch of the first pass (graph tracing, thread
    pool start-up, pipeline fill) is timed apart and left out of the rate, later passes' start-up
    stays in, as it would in ``fit``;
(b) evaluation (``training=False``: centre crop only), likewise.

Rates are images/s (wall clock), images/s per core (divided by the cores this process may run on,
``os.sched_getaffinity``; tf.data's parallel map uses them all) and images per CPU-second of this
process (less disturbed by other load on a shared machine). Each mode is measured ``--repeat``
times, interleaved, and the best run is kept.

Prints a Markdown table and writes ``OUT/bench_pipeline.json`` atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository root and this folder (_timing)

import _timing  # noqa: E402


def _ensure_cache(out: Path, n: int, size: int, cache_size: int, workers) -> Path:
    """Reuse ``OUT/cache-...`` when complete and of the right shape, else (re)build it."""
    from cxr_keras.data import load_table, write_phantom
    from cxr_keras.data.cache import Cache, build_cache
    from cxr_keras.io import DataError

    root = out / f"phantom-nih-n{n}-s{size}"
    cache_dir = out / f"cache-nih-n{n}-s{size}-c{cache_size}"
    try:
        c = Cache(cache_dir)
        if len(c) == n and c.size == cache_size:
            print(f"reusing cache {cache_dir}", file=sys.stderr)
            return cache_dir
    except DataError:
        pass
    if not (root / "Data_Entry_2017_v2020.csv").exists() or len(list(root.glob("images_*/images/*.png"))) != n:
        t = time.perf_counter()
        write_phantom("nih", root, n=n, size=size, seed=0, progress=False)
        print(f"wrote phantom NIH ({n} x {size}px) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    t = time.perf_counter()
    build_cache(load_table("nih", root), cache_dir, size=cache_size, workers=workers, progress=False,
                overwrite=True)
    print(f"built cache {cache_dir} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return cache_dir


def _run(ds, epochs: int) -> dict:
    """Iterate ``ds`` for ``epochs`` passes; time the first batch apart from the rest."""
    images, batches, shape = 0, 0, None
    w0 = time.perf_counter()
    first_s = None
    for _ in range(epochs):
        for x, _y in ds:
            n = int(x.shape[0])
            if first_s is None:
                first_s = time.perf_counter() - w0
                w1, c1 = time.perf_counter(), time.process_time()
                shape = list(x.shape)
                continue
            images += n
            batches += 1
    wall, cpu = time.perf_counter() - w1, time.process_time() - c1
    return {"first_batch_s": first_s, "images": images, "batches": batches, "wall_s": wall,
            "cpu_s": cpu, "batch_shape": shape}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="images in the phantom (default 256)")
    ap.add_argument("--size", type=int, default=256, help="phantom PNG side (default 256)")
    ap.add_argument("--cache-size", type=int, default=256, help="cached image side (default 256)")
    ap.add_argument("--split", default="all",
                    help="cache split to iterate: train, val, test or all (default all: the rate "
                         "does not depend on the split, and all rows give more batches)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--epochs", type=int, default=3, help="passes over the split per run (default 3)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per mode, best kept (default 2)")
    ap.add_argument("--workers", type=int, default=None,
                    help="cache build workers if the cache must be built (default: build_cache's)")
    ap.add_argument("--out", default="/tmp/cxr-bench", help="output folder (default /tmp/cxr-bench)")
    args = ap.parse_args(argv)

    import tensorflow as tf

    from cxr_keras.data.cache import Cache
    from cxr_keras.data.pipeline import make_dataset
    from cxr_keras.io import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache(_ensure_cache(out, args.n, args.size, args.cache_size, args.workers))
    split = None if args.split == "all" else args.split
    rows = len(cache.rows(split))
    cores = _timing.cores()

    datasets = {mode: make_dataset(cache, split, preset="fzlpr", training=(mode == "train"),
                                   batch_size=args.batch, seed=0, normalization="imagenet",
                                   channels=3)
                for mode in ("train", "eval")}
    load_before = os.getloadavg()[0]
    runs = {mode: [] for mode in datasets}
    for _ in range(args.repeat):  # interleaved rounds; each run on a fresh iterator of the same dataset
        for mode, ds in datasets.items():
            runs[mode].append(_run(ds, args.epochs))
    load_after = os.getloadavg()[0]

    results = {"n": args.n, "size": args.size, "cache_size": args.cache_size, "split": args.split,
               "rows": rows, "batch": args.batch, "epochs": args.epochs, "repeat": args.repeat,
               "preset": "fzlpr", "normalization": "imagenet", "channels": 3,
               "cores": cores, "cpu_count": os.cpu_count(),
               "tf_version": tf.__version__,
               "loadavg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
               "modes": []}
    for mode, rs in runs.items():
        if not rs[0]["images"]:
            raise SystemExit(f"{mode}: nothing left after the first batch; raise --n or --epochs, "
                             f"or lower --batch")
        best = min(rs, key=lambda r: r["wall_s"] / r["images"])
        rate = best["images"] / best["wall_s"]
        results["modes"].append({
            "mode": mode, "training": mode == "train", "batch_shape": best["batch_shape"],
            "first_batch_s": round(best["first_batch_s"], 3),
            "images_timed": best["images"], "batches_timed": best["batches"],
            "wall_s": round(best["wall_s"], 3), "images_per_s": round(rate, 1),
            "images_per_s_core": round(rate / cores, 1),
            "cpu_s": round(best["cpu_s"], 3),
            "images_per_cpu_s": round(best["images"] / max(best["cpu_s"], 1e-9), 1),
            "all_runs_images_per_s": [round(r["images"] / r["wall_s"], 1) for r in rs]})

    print(f"\ntf.data pipeline, fzlpr preset: phantom NIH {args.n} x {args.size}px -> cache "
          f"{args.cache_size}px, split {args.split} ({rows} rows), batch {args.batch}, "
          f"{args.epochs} epochs per run, best of {args.repeat}, {cores} cores, "
          f"1-min load average {load_before:.2f} before / {load_after:.2f} after\n")
    print("| mode | batch shape | first batch s | images timed | images/s | images/s/core "
          "| images per CPU-s |")
    print("|---|---|---|---|---|---|---|")
    for m in results["modes"]:
        shape = "x".join(str(d) for d in m["batch_shape"])
        print(f"| {m['mode']} (training={m['training']}) | {shape} | {m['first_batch_s']:.2f} "
              f"| {m['images_timed']} | {m['images_per_s']:.1f} | {m['images_per_s_core']:.1f} "
              f"| {m['images_per_cpu_s']:.1f} |")
    print("\nThe first batch of each run is left out of the rate (timed apart); images/s/core divides "
          "by the cores of this process's CPU affinity. Nothing consumes the batches: this is the "
          "bound the input pipeline puts on training speed.")
    write_json(out / "bench_pipeline.json", results)
    print(f"\nwrote {out / 'bench_pipeline.json'}")
    return results


if __name__ == "__main__":
    main()
