"""Run every benchmark in sequence and print one combined table.

    python benchmarks/run_all.py --out /tmp/cxr-bench

Runs ``bench_cache.py``, ``bench_pipeline.py``, ``bench_fzlpr_train.py`` and
``bench_multiloss_train.py``, ``bench_mlrfnet_train.py`` and ``bench_dual_mae_pretrain.py`` one after the other, each in its own Python process (this
interpreter) with its default arguments and ``--out OUT``, so that one benchmark's threads, memory
and TensorFlow state do not disturb the next. Each one's output is echoed and kept in
``OUT/<name>.log``; its JSON lands in ``OUT/<name>.json``. Extra arguments for one benchmark go
through ``--cache-args``, ``--pipeline-args``, ``--train-args``, ``--multiloss-args``, ``--mlrfnet-args`` and ``--dual-mae-args`` (one
quoted string each, e.g. ``--train-args "--steps 5"``). Writes ``OUT/run_all.json`` (the results,
commands, exit codes, durations) atomically. Nothing is written outside ``OUT``.
Exits non-zero when a benchmark failed (the others still run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

BENCHES = (("bench_cache", "cache"), ("bench_pipeline", "pipeline"), ("bench_fzlpr_train", "train"),
           ("bench_multiloss_train", "multiloss"), ("bench_mlrfnet_train", "mlrfnet"),
           ("bench_dual_mae_pretrain", "dual_mae"))


def _run(name: str, extra: list, out: Path) -> dict:
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--out", str(out), *extra]
    print(f"\n=== {name}: {shlex.join(cmd)}", flush=True)
    t = time.perf_counter()
    with open(out / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    wall = time.perf_counter() - t
    result = None
    path = out / f"{name}.json"
    if rc == 0 and path.exists():
        result = json.loads(path.read_text(encoding="utf-8"))
    print(f"=== {name}: exit {rc} after {wall:.1f} s", flush=True)
    return {"command": cmd, "returncode": rc, "wall_s": round(wall, 1), "result": result}


def _rows(runs: dict) -> list:
    """(benchmark, what, setting, images/s, images/s/core) rows of the combined table."""
    rows = []
    c = runs.get("bench_cache", {}).get("result")
    if c:
        rows.append(("cache", "bare PNG decode", f"{c['n']} x {c['size']}px, 1 core",
                     c["decode_images_per_s_core"], c["decode_images_per_s_core"]))
        for b in c["build"]:
            rows.append(("cache", "cache build", f"-> {c['cache_size']}px, {b['workers']} workers",
                         b["images_per_s"], b["images_per_s_core"]))
    p = runs.get("bench_pipeline", {}).get("result")
    if p:
        for m in p["modes"]:
            rows.append(("pipeline", f"tf.data fzlpr, training={m['training']}",
                         f"batch {p['batch']}, {'x'.join(map(str, m['batch_shape'][1:]))}, "
                         f"{p['cores']} cores", m["images_per_s"], m["images_per_s_core"]))
    t = runs.get("bench_fzlpr_train", {}).get("result")
    if t:
        for m in t["models"]:
            setting = f"batch {t['batch']}, {t['size']}px, {t['cores']} cores"
            label = "densenet121_fzlpr" if m["model"] == "fzlpr" else "keras DenseNet121 + Dense"
            rows.append(("train", f"{label} train ({m['loss']})", setting,
                         m["train_images_per_s"], m["train_images_per_s_core"]))
            rows.append(("train", f"{label} predict", setting,
                         m["predict_images_per_s"], m["predict_images_per_s_core"]))
    ml = runs.get("bench_multiloss_train", {}).get("result")
    if ml:
        for m in ml["models"]:
            setting = (f"batch {ml['batch']}, {ml['size']}px, width {ml['width_coefficient']:g}, "
                       f"{ml['cores']} cores")
            rows.append(("multiloss", f"{m['model']} train ({m['loss']})", setting,
                         m["train_images_per_s"], m["train_images_per_s_core"]))
            rows.append(("multiloss", f"{m['model']} predict", setting,
                         m["predict_images_per_s"], m["predict_images_per_s_core"]))
    mr = runs.get("bench_mlrfnet_train", {}).get("result")
    if mr:
        for m in mr["models"]:
            setting = f"batch {mr['batch']}, {mr['size']}px, {m['gmacs']:.2f} GMACs, {mr['cores']} cores"
            rows.append(("mlrfnet", f"{m['model']} train (BFL)", setting,
                         m["train_images_per_s"], m["train_images_per_s_core"]))
            rows.append(("mlrfnet", f"{m['model']} predict", setting,
                         m["predict_images_per_s"], m["predict_images_per_s_core"]))
    dm = runs.get("bench_dual_mae_pretrain", {}).get("result")
    if dm:
        for m in dm["models"]:
            setting = f"batch {dm['batch']}, {dm['size']}px/{dm['patch']}, {dm['cores']} cores"
            rows.append(("dual_mae", f"{m['model']} train", setting,
                         m["train_images_per_s"], m["train_images_per_s_core"]))
    return rows


def _fmt(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/cxr-bench", help="output folder (default /tmp/cxr-bench)")
    ap.add_argument("--only", default="cache,pipeline,train,multiloss,mlrfnet,dual_mae",
                    help="comma-separated subset of cache, pipeline, train, multiloss, mlrfnet, "
                         "dual_mae (default all)")
    ap.add_argument("--cache-args", default="", help="extra arguments for bench_cache.py")
    ap.add_argument("--pipeline-args", default="", help="extra arguments for bench_pipeline.py")
    ap.add_argument("--train-args", default="", help="extra arguments for bench_fzlpr_train.py")
    ap.add_argument("--multiloss-args", default="",
                    help="extra arguments for bench_multiloss_train.py")
    ap.add_argument("--mlrfnet-args", default="", help="extra arguments for bench_mlrfnet_train.py")
    ap.add_argument("--dual-mae-args", default="",
                    help="extra arguments for bench_dual_mae_pretrain.py")
    args = ap.parse_args(argv)

    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = wanted - {short for _, short in BENCHES}
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)}; known: cache, pipeline, train, multiloss, "
                 "mlrfnet, dual_mae")
    extra = {"cache": args.cache_args, "pipeline": args.pipeline_args, "train": args.train_args,
             "multiloss": args.multiloss_args, "mlrfnet": args.mlrfnet_args,
             "dual_mae": args.dual_mae_args}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from cxr_keras.io import write_json

    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    runs = {}
    for name, short in BENCHES:
        if short in wanted:
            (out / f"{name}.json").unlink(missing_ok=True)  # no stale result from an earlier run
            runs[name] = _run(name, shlex.split(extra[short]), out)

    rows = _rows(runs)
    print("\n## All benchmarks\n")
    print(f"{platform.node()}, {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} "
          f"cores, Python {platform.python_version()}, started {started}\n")
    print("| benchmark | what | setting | images/s | images/s/core |")
    print("|---|---|---|---|---|")
    for bench, what, setting, rate, per_core in rows:
        print(f"| {bench} | {what} | {setting} | {_fmt(rate)} | {_fmt(per_core)} |")
    failed = [n for n, r in runs.items() if r["returncode"] != 0]
    for n in failed:
        print(f"\n{n} FAILED (exit {runs[n]['returncode']}); see {out / (n + '.log')}")
    summary = {"started": started, "host": platform.node(), "python": platform.python_version(),
               "out": str(out), "runs": runs,
               "table": [dict(zip(("benchmark", "what", "setting", "images_per_s", "images_per_s_core"), r))
                         for r in rows]}
    write_json(out / "run_all.json", summary)
    print(f"\nwrote {out / 'run_all.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
