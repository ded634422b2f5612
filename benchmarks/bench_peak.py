"""The CPU's measured fp32 matmul peak: the yardstick for the models' achieved GFLOP/s.

    python benchmarks/bench_peak.py --sizes 2048,4096 --repeat 5 --out /tmp/cxr-bench

Times ``C = A @ B`` of square float32 matrices (standard normal, fixed seed) for each ``--sizes``
n, best of ``--repeat`` after one untimed call, with:

- ``tf``: ``keras.ops.matmul`` on the TensorFlow backend (``tf.linalg.matmul``, the kernels the
  models' convolutions and dense layers reach through oneDNN/Eigen), TensorFlow's default thread
  pools (one intra-op thread per core); each call ends when one element of C is on the host
  (eager CPU execution is synchronous, so the whole product is done);
- ``numpy``: ``numpy.matmul`` (its BLAS, e.g. OpenBLAS, with its default threads).

GFLOP/s = 2 n^3 / seconds / 1e9 (a multiply and an add per MAC), and per core (divided by the
cores of this process's CPU affinity). The peak is the best TensorFlow figure over the sizes
(``peak_gflop_per_s``): the fraction of it a model reaches is in ``run_all.py``'s table. Prints a
Markdown table and writes ``OUT/bench_peak.json`` atomically.
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


def _best(fn, repeat: int) -> float:
    """Best wall seconds of ``repeat`` calls of ``fn`` after one untimed call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2048,4096",
                    help="comma-separated matrix sides n (default 2048,4096)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="timed calls per size, best kept (default 5)")
    ap.add_argument("--no-numpy", action="store_true", help="time TensorFlow only")
    ap.add_argument("--out", default="/tmp/cxr-bench",
                    help="output folder (default /tmp/cxr-bench)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 16 or args.repeat < 1:
        ap.error("--sizes must list sides of at least 16 and --repeat must be at least 1")

    import keras
    import numpy as np

    if keras.backend.backend() != "tensorflow":
        raise SystemExit(f"bench_peak times the TensorFlow backend; KERAS_BACKEND is "
                         f"{keras.backend.backend()!r}")
    cores = _timing.cores()
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    rows = []
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ta, tb = keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b)
        libs = {"tf": lambda: keras.ops.matmul(ta, tb)[0, 0].numpy()}
        if not args.no_numpy:
            libs["numpy"] = lambda: np.matmul(a, b)
        for lib, fn in libs.items():
            s = _best(fn, args.repeat)
            g = 2 * n ** 3 / s / 1e9
            rows.append({"lib": lib, "n": n, "best_s": round(s, 5), "gflop_per_s": round(g, 1),
                         "gflop_per_s_core": round(g / cores, 1)})
    tf_rows = [r for r in rows if r["lib"] == "tf"]
    peak = max(tf_rows, key=lambda r: r["gflop_per_s"])
    results = {"sizes": sizes, "repeat": args.repeat, "dtype": "float32",
               "numpy_version": np.__version__, "runs": rows,
               "peak_lib": "tf", "peak_n": peak["n"], "peak_gflop_per_s": peak["gflop_per_s"],
               "peak_gflop_per_s_core": peak["gflop_per_s_core"],
               **_timing.environment(cores, (load_before, os.getloadavg()[0]))}
    np_rows = [r for r in rows if r["lib"] == "numpy"]
    if np_rows:
        results["numpy_peak_gflop_per_s"] = max(r["gflop_per_s"] for r in np_rows)

    print(f"\nfp32 matmul C = A @ B (n x n), best of {args.repeat}, "
          f"{_timing.conditions(results)}\n")
    print("| library | n | best s | GFLOP/s | GFLOP/s per core |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        lib = "TensorFlow (keras.ops.matmul)" if r["lib"] == "tf" else "numpy.matmul"
        print(f"| {lib} | {r['n']} | {r['best_s']:.4f} | {r['gflop_per_s']:.1f} "
              f"| {r['gflop_per_s_core']:.1f} |")
    print(f"\nPeak (TensorFlow, n = {peak['n']}): {peak['gflop_per_s']:.1f} GFLOP/s, "
          f"{peak['gflop_per_s_core']:.1f} per core; GFLOP/s = 2 n^3 / s.")
    return _timing.save(results, Path(args.out), "bench_peak")


if __name__ == "__main__":
    main()
