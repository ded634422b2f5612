"""Cache build rate against the bare PNG decode rate, per core.

    python benchmarks/bench_cache.py --n 64 --size 1024 --cache-size 256 --workers 1,2 --out /tmp/bench

Writes (or reuses) an ``n``-image phantom NIH of ``size x size`` PNGs under ``OUT/phantom-nih-*``,
then measures, after warming the page cache:

(a) the bare decode rate: ``np.fromfile`` + ``cv2.imdecode`` of each PNG on one core (OpenCV
    threads = 1), the bound a cache build cannot beat per core;
(b) the cache build rate (:func:`cxr_keras.data.cache.build_cache`, from scratch each time) for
    each worker count, wall clock including the process pool's start-up, divided by the number of
    workers to give images/s per core; and images per CPU-second (this process and its reaped
    workers), a figure less disturbed by other load on a shared machine.

Measurements are interleaved in rounds and the best round is kept for each.

Prints a Markdown table and writes ``OUT/bench_cache.json`` atomically. Only the standard library is
imported at module level: worker processes are spawned and re-import this file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: the joined pool workers
    return r.ru_utime + r.ru_stime


def _timed(fn):
    """``(wall seconds, CPU seconds of this process and of the children it reaped meanwhile)``."""
    w, c, k = time.perf_counter(), time.process_time(), _children_cpu()
    fn()
    return time.perf_counter() - w, time.process_time() - c + _children_cpu() - k


def _best(fn, repeat: int) -> float:
    return min(_timed(fn)[0] for _ in range(repeat))


def _noop(_):
    import importlib

    importlib.import_module("cxr_keras.data.cache")  # what a cache worker imports
    return os.getpid()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="images in the phantom (default 64)")
    ap.add_argument("--size", type=int, default=1024, help="phantom PNG side (default 1024)")
    ap.add_argument("--cache-size", type=int, default=256, help="cached image side (default 256)")
    ap.add_argument("--shard-size", type=int, default=16,
                    help="rows per shard (default 16, so that small n still spreads over workers)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats, best kept (default 3)")
    ap.add_argument("--out", default="bench-cache-out", help="output folder (default ./bench-cache-out)")
    args = ap.parse_args(argv)

    import hashlib
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import cv2
    import numpy as np

    from cxr_keras.data import load_table, write_phantom
    from cxr_keras.data.cache import Cache, build_cache
    from cxr_keras.io import write_json

    out = Path(args.out)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    root = out / f"phantom-nih-n{args.n}-s{args.size}"
    if not (root / "Data_Entry_2017_v2020.csv").exists() or len(list(root.glob("images_*/images/*.png"))) != args.n:
        t = time.perf_counter()
        write_phantom("nih", root, n=args.n, size=args.size, seed=0, progress=False)
        print(f"wrote phantom NIH ({args.n} x {args.size}px) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    table = load_table("nih", root)
    paths = table["path"].tolist()
    blobs = [np.fromfile(p, dtype=np.uint8) for p in paths]  # warms the page cache too
    n = len(paths)
    mean_kb = sum(b.size for b in blobs) / n / 1024

    def decode_files():
        before = cv2.getNumThreads()
        cv2.setNumThreads(1)
        for p in paths:
            cv2.imdecode(np.fromfile(p, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        cv2.setNumThreads(before)

    ctx = multiprocessing.get_context("spawn")

    def pool_startup(w):  # what build_cache's pool (w - 1 processes) costs: spawn + imports
        with ProcessPoolExecutor(w - 1, mp_context=ctx) as pool:
            list(pool.map(_noop, range(w - 1)))

    def build(w):
        build_cache(table, out / f"cache-w{w}", size=args.cache_size, shard_size=args.shard_size,
                    workers=w, progress=False)

    # Rounds interleave the measurements so that load from other processes hits all of them alike;
    # the best of the rounds is kept for each.
    load_before = os.getloadavg()[0]
    timing = {"decode": [], **{("pool", w): [] for w in workers if w > 1}, **{("build", w): [] for w in workers}}
    for _ in range(args.repeat):
        timing["decode"].append(_timed(decode_files))
        for w in workers:
            if w > 1:
                timing[("pool", w)].append(_timed(lambda: pool_startup(w)))
            shutil.rmtree(out / f"cache-w{w}", ignore_errors=True)  # a fresh build, not timed
            timing[("build", w)].append(_timed(lambda: build(w)))
    decode_s = min(t[0] for t in timing["decode"])
    decode_rate = n / decode_s
    decode_cpu = min(t[1] for t in timing["decode"])
    cv2.setNumThreads(1)
    imgs = [cv2.imdecode(b, cv2.IMREAD_UNCHANGED) for b in blobs]
    sha1_s = _best(lambda: [hashlib.sha1(b).digest() for b in blobs], args.repeat)
    resize_s = _best(lambda: [cv2.resize(im, (args.cache_size,) * 2, interpolation=cv2.INTER_CUBIC)
                              for im in imgs], args.repeat)
    cv2.setNumThreads(-1)

    results = {"n": n, "size": args.size, "cache_size": args.cache_size, "shard_size": args.shard_size,
               "cpu_count": os.cpu_count(), "repeat": args.repeat,
               "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
               "png_kb_mean": round(mean_kb, 1),
               "decode_ms_per_image": round(1e3 * decode_s / n, 3),
               "decode_images_per_s_core": round(decode_rate, 1),
               "decode_images_per_cpu_s": round(n / decode_cpu, 1),
               "sha1_ms_per_image": round(1e3 * sha1_s / n, 3),
               "resize_ms_per_image": round(1e3 * resize_s / n, 3),
               "build": []}
    for w in workers:
        Cache(out / f"cache-w{w}", verify=True)
        wall = min(t[0] for t in timing[("build", w)])
        cpu = min(t[1] for t in timing[("build", w)])
        pool_s = min(t[0] for t in timing[("pool", w)]) if w > 1 else 0.0
        rate = n / wall
        results["build"].append({
            "workers": w, "wall_s": round(wall, 3), "images_per_s": round(rate, 1),
            "images_per_s_core": round(rate / w, 1), "of_decode_bound": round(rate / w / decode_rate, 3),
            "pool_startup_s": round(pool_s, 3),
            "cpu_s": round(cpu, 3), "images_per_cpu_s": round(n / cpu, 1)})

    print(f"\nCache build vs bare decode: {n} phantom NIH PNGs {args.size}x{args.size} "
          f"({mean_kb:.0f} KiB mean) -> {args.cache_size}x{args.cache_size}, shard_size {args.shard_size}, "
          f"{os.cpu_count()} cores, best of {args.repeat}, 1-min load average "
          "{:.2f} before / {:.2f} after\n".format(*results['loadavg_1min_before_after']))
    print(f"Per image on one core: read+decode {results['decode_ms_per_image']:.2f} ms, "
          f"sha1 {results['sha1_ms_per_image']:.2f} ms, bicubic resize {results['resize_ms_per_image']:.2f} ms\n")
    print("| what | workers | wall s | images/s | images/s/core | of decode bound | pool start-up s "
          "| images per CPU-s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| bare decode (fromfile + imdecode) | 1 | {decode_s:.3f} | {decode_rate:.1f} | {decode_rate:.1f} "
          f"| 1.00 | - | {results['decode_images_per_cpu_s']:.1f} |")
    for b in results["build"]:
        print(f"| cache build | {b['workers']} | {b['wall_s']:.3f} | {b['images_per_s']:.1f} "
              f"| {b['images_per_s_core']:.1f} | {b['of_decode_bound']:.2f} | {b['pool_startup_s']:.2f} "
              f"| {b['images_per_cpu_s']:.1f} |")
    print("\nbuild_cache with w workers runs w - 1 spawned processes plus the calling one; pool start-up "
          "is timed apart for reference (it overlaps with the caller's work). Images per CPU-s counts "
          "the CPU time of this process and of the pool's workers, start-up included: it is less "
          "sensitive than wall time to other load on the machine.")
    write_json(out / "bench_cache.json", results)
    print(f"\nwrote {out / 'bench_cache.json'}")
    return results


if __name__ == "__main__":
    main()
