"""Run every benchmark in sequence and print one combined table.

    python benchmarks/run_all.py --out /tmp/cxr-bench            # default settings (long)
    python benchmarks/run_all.py --quick --out /tmp/cxr-bench    # smoke settings, minutes

Runs, in this order, ``bench_peak.py`` (first: the fp32 matmul peak the table compares every
model with), ``bench_cache.py``, ``bench_pipeline.py``, ``bench_fzlpr_train.py``,
``bench_multiloss_train.py``, ``bench_mlrfnet_train.py``, ``bench_dual_mae_pretrain.py``,
``bench_mtpret_train.py``, ``bench_inference.py`` and ``bench_ensemble.py``, each in its own Python
process (this interpreter) with ``--out OUT``, so that one benchmark's threads, memory and
TensorFlow state do not disturb the next. Each one's output is echoed and kept in
``OUT/<name>.log``; its JSON lands in ``OUT/<name>.json``.

Short names (for ``--only`` and ``--<name>-args``): peak, cache, pipeline, train (fzlpr),
multiloss, mlrfnet, dual_mae, mtpret, inference, ensemble. ``--quick`` gives every script small
smoke settings (:data:`QUICK`; about 5 minutes in all on 2 cores); ``--<name>-args`` (one quoted
string, e.g. ``--train-args "--steps 5"``, ``--dual-mae-args``) come after them and win.

The combined table (Markdown) has one row per measured thing: images/s (fits/s for the ensemble
fits), per core, achieved GFLOP/s, its fraction of the measured matmul peak, and the ratio to the
counterpart where there is one (the plain keras.applications model, the decode bound, the model
that consumes the pipeline, inference without TTA). Writes ``OUT/run_all.json`` (the table, the
results, commands, exit codes, durations) atomically. Nothing is written outside ``OUT``. Exits
non-zero when a benchmark failed (the others still run).
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

BENCHES = (("bench_peak", "peak"), ("bench_cache", "cache"), ("bench_pipeline", "pipeline"),
           ("bench_fzlpr_train", "train"), ("bench_multiloss_train", "multiloss"),
           ("bench_mlrfnet_train", "mlrfnet"), ("bench_dual_mae_pretrain", "dual_mae"),
           ("bench_mtpret_train", "mtpret"), ("bench_inference", "inference"),
           ("bench_ensemble", "ensemble"))
SHORT = tuple(short for _, short in BENCHES)

# Smoke settings of --quick: reduced networks, tiny batches, one or two timed steps.
QUICK = {
    "peak": "--sizes 1024,2048 --repeat 3",
    "cache": "--n 16 --size 256 --workers 1 --repeat 1",
    "pipeline": "--n 32 --batch 8 --epochs 2 --repeat 1",
    "train": "--blocks 1,2,2,1 --size 160 --batch 2 --steps 2 --warmup 1",
    "multiloss": "--size 64 --width 0.25 --depth 0.5 --batch 2 --steps 1 --warmup 1",
    "mlrfnet": "--only mlrfnet,keras_resnet50 --blocks 1,1,1,1 --size 64 --batch 2 --steps 1 "
               "--warmup 1 --latency-steps 1",
    "dual_mae": "--quick --jit false --batch 8 --steps 1 --warmup 1",
    "mtpret": "--size 64 --blocks 1,1,1,1 --queue 1024 --batch 2 --steps 1 --warmup 1",
    "inference": "--size 160 --batch 4 --steps 1 --warmup 1",
    "ensemble": "--members 3,12 --samples 1000 --repeat 1 --stacking-members 3 "
                "--stacking-epochs 3",
}

COLUMNS = ("benchmark", "what", "setting", "rate", "per_core", "gflop_per_s",
           "fraction_of_peak", "ratio", "ratio_vs", "peer_ratio", "peer_vs")


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


def _row(bench, what, setting, rate=None, per_core=None, gflop=None, ratio=None, vs=None):
    return dict(zip(COLUMNS, (bench, what, setting, rate, per_core, gflop, None, ratio, vs, None,
                              None)))


def _ratio(a, b):
    return a / b if a is not None and b else None


def _model_rows(bench, models, setting, label, versus, phases=("train", "predict"), peers=()):
    """Train and predict rows of one train benchmark's models; ``versus(m)`` names the model a
    row is compared with (or None), ``label(m)`` the row's text. ``peers`` (the result's
    ``peers``: PyTorch + timm, timed alongside) add their own rows and, to each model they are the
    peer of, the ratio ours / peer."""
    by = {m["model"]: m for m in models}
    peer_of = {name: p for p in peers for name in p["peer_of"]}
    rows = []
    for m in models:
        other = by.get(versus(m))
        peer = peer_of.get(m["model"])
        for ph in phases:
            r = _row(bench, f"{label(m)} {ph}", setting(m), m[f"{ph}_images_per_s"],
                     m[f"{ph}_images_per_s_core"], m.get(f"{ph}_gflop_per_s"),
                     _ratio(m[f"{ph}_images_per_s"], other and other[f"{ph}_images_per_s"]),
                     other and label(other))
            if peer:
                r.update(peer_ratio=_ratio(m[f"{ph}_images_per_s"], peer[f"{ph}_images_per_s"]),
                         peer_vs=f"timm {peer['arch']}")
            rows.append(r)
    for p in peers:
        for ph in phases:
            how = ", ".join([p["memory_format"]] + [f"{p[k]}" for k in ("device", "precision")
                                                     if p.get(k) not in (None, "cpu", "float32")])
            rows.append(_row(bench, f"PyTorch peer: timm {p['arch']} ({how}) {ph}",
                             setting(p), p[f"{ph}_images_per_s"], p[f"{ph}_images_per_s_core"],
                             p.get(f"{ph}_gflop_per_s")))
    return rows


def _peak_rows(r):
    tf_at = {x["n"]: x["gflop_per_s"] for x in r["runs"] if x["lib"] == "tf"}
    rows = []
    for x in r["runs"]:
        tf = x["lib"] == "tf"
        rows.append(_row("peak", "fp32 matmul, " + ("TensorFlow (keras.ops.matmul)" if tf
                                                    else "numpy.matmul"),
                         f"n={x['n']}, best of {r['repeat']}, {r['cores']} cores, "
                         f"{x['gflop_per_s_core']:.1f} GFLOP/s/core", gflop=x["gflop_per_s"],
                         ratio=None if tf else _ratio(x["gflop_per_s"], tf_at.get(x["n"])),
                         vs=None if tf else f"TensorFlow at n={x['n']}"))
    return rows


def _cache_rows(c):
    rows = [_row("cache", "bare PNG decode (the bound)", f"{c['n']} x {c['size']}px, 1 core",
                 c["decode_images_per_s_core"], c["decode_images_per_s_core"], ratio=1.0,
                 vs="decode bound")]
    for b in c["build"]:
        rows.append(_row("cache", "cache build", f"-> {c['cache_size']}px, {b['workers']} workers",
                         b["images_per_s"], b["images_per_s_core"], ratio=b["of_decode_bound"],
                         vs="decode bound (per core)"))
    return rows


def _pipeline_rows(p, fz):
    consumer = None
    if fz:
        consumer = next((m for m in fz["models"] if m["model"] == "fzlpr"), None)
    rows = []
    for m in p["modes"]:
        shape = "x".join(map(str, m["batch_shape"][1:]))
        rows.append(_row("pipeline", f"tf.data fzlpr, training={m['training']}",
                         f"batch {p['batch']}, {shape}, {p['cores']} cores", m["images_per_s"],
                         m["images_per_s_core"],
                         ratio=_ratio(m["images_per_s"], consumer
                                      and consumer["train_images_per_s"]),
                         vs=consumer and "densenet121_fzlpr training (its consumer)"))
    return rows


def _rows(runs: dict) -> list:
    """The combined table's rows (dicts of :data:`COLUMNS`), fraction of peak filled in."""
    res = {name: (runs.get(name) or {}).get("result") for name, _ in BENCHES}
    rows = []
    if res["bench_peak"]:
        rows += _peak_rows(res["bench_peak"])
    if res["bench_cache"]:
        rows += _cache_rows(res["bench_cache"])
    if res["bench_pipeline"]:
        rows += _pipeline_rows(res["bench_pipeline"], res["bench_fzlpr_train"])
    t = res["bench_fzlpr_train"]
    if t:
        blocks = t.get("blocks", [6, 12, 24, 16])
        net = ("DenseNet121" if blocks == [6, 12, 24, 16]
               else "DenseNet " + ",".join(map(str, blocks)))
        rows += _model_rows(
            "fzlpr", t["models"],
            lambda m: f"batch {t['batch']}, {t['size']}px, {m['gmacs']:.2f} GMACs, "
                      f"{t['cores']} cores",
            lambda m: (f"densenet121_fzlpr ({net}), FZLPR" if m["model"] == "fzlpr"
                       else f"keras {net} + Dense"),
            lambda m: "keras" if m["model"] == "fzlpr" else None, peers=t.get("peers", []))
    ml = res["bench_multiloss_train"]
    if ml:
        rows += _model_rows(
            "multiloss", ml["models"],
            lambda m: f"batch {ml['batch']}, {ml['size']}px, width {ml['width_coefficient']:g}, "
                      f"depth {ml.get('depth_coefficient', 1.0):g}, {m['gmacs']:.3f} GMACs, "
                      f"{ml['cores']} cores",
            lambda m: ("keras EfficientNetB0 + Dense" if m["kind"] == "keras_b0"
                       else "our EfficientNet-B0 encoder + Dense" if m["kind"] == "encoder_b0"
                       else f"{m['model']}, {m['loss']},"),
            lambda m: ("keras_b0" if m.get("kind") in ("unet", "classifier", "encoder_b0")
                       else None),
            peers=ml.get("peers", []))
    mr = res["bench_mlrfnet_train"]
    if mr:
        rows += _model_rows(
            "mlrfnet", mr["models"],
            lambda m: f"batch {mr['batch']}, {mr['size']}px, {m['gmacs']:.2f} GMACs, "
                      f"{mr['cores']} cores"
                      + (", blocks " + ",".join(map(str, mr["blocks"])) if mr.get("blocks")
                         else ""),
            lambda m: m["model"] + (" (BFL)" if m["model"] != "keras_resnet50" else " + Dense"),
            lambda m: None if m["model"] == "keras_resnet50" else "keras_resnet50",
            peers=mr.get("peers", []))
    dm = res["bench_dual_mae_pretrain"]
    if dm:
        rows += _model_rows(
            "dual_mae", dm["models"],
            lambda m: f"batch {dm['batch']}, {dm['size']}px/{dm['patch']}, {m['gmacs']:.2f} "
                      f"GMACs, {dm['cores']} cores",
            lambda m: (m["model"] if m["model"] != "vit_s_supervised"
                       else "ViT supervised (no keras.applications ViT)"),
            lambda m: None if m["model"] == "vit_s_supervised" else "vit_s_supervised",
            phases=("train",), peers=dm.get("peers", []))
    mt = res["bench_mtpret_train"]
    if mt:
        rows += _model_rows(
            "mtpret", mt["models"],
            lambda m: f"batch {mt['batch']}, {mt['size'][0]}x{mt['size'][1]}px, "
                      f"{m['gmacs']:.2f} GMACs, {mt['cores']} cores",
            lambda m: m["model"].replace("moco_", "MoCo v2 ") + (" (2 views)" if "moco" in
                                                                  m["model"] else ""),
            lambda m: m.get("versus"), phases=("train",), peers=mt.get("peers", []))
    inf = res["bench_inference"]
    if inf:
        for r in inf["rows"]:
            name = "fzlpr --quick net" if r["model"] == "quick" else r["name"]
            rows.append(_row("inference", f"{name}, {r['variant']}",
                             f"batch {inf['batch']}, {r['size']}px, {r['views']} view(s), "
                             f"{inf['cores']} cores", r["images_per_s"], r["images_per_s_core"],
                             r["gflop_per_s"],
                             None if r["variant"] == "plain" else r["ratio_vs_plain"],
                             None if r["variant"] == "plain"
                             else f"no TTA (ideal {r['ideal_ratio']:.2f})"))
    en = res["bench_ensemble"]
    if en:
        for r in en["rows"]:
            setting = f"{r['members']} members x {r['samples']} x {r['classes']}"
            ok = "checks ok" if r["sane"] else "CHECKS FAILED"
            if r["method"] == "slsqp":
                what = (f"SLSQP weights [fits/s] ({r['runs']} runs, {r['iterations']} "
                        f"iterations, {ok})")
            else:
                what = f"stacking fit, {r['epochs']} epochs [fits/s] ({ok})"
            rows.append(_row("ensemble", what, setting, r["fits_per_s"]))
    peak = (res["bench_peak"] or {}).get("peak_gflop_per_s")
    for r in rows:
        if peak and r["gflop_per_s"] is not None:
            r["fraction_of_peak"] = r["gflop_per_s"] / peak
    return rows


def _fmt(x, digits=None) -> str:
    if x is None:
        return "-"
    if digits is not None:
        return f"{x:.{digits}f}"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def _table(rows: list) -> list:
    lines = ["| benchmark | what | setting | images/s (or fits/s) | per core | GFLOP/s "
             "| fraction of peak | ratio vs counterpart | ours / PyTorch peer |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x {r['ratio_vs']}"
        peer = "-" if r.get("peer_ratio") is None else f"{r['peer_ratio']:.2f}x {r['peer_vs']}"
        lines.append(f"| {r['benchmark']} | {r['what']} | {r['setting']} | {_fmt(r['rate'])} "
                     f"| {_fmt(r['per_core'])} | {_fmt(r['gflop_per_s'])} "
                     f"| {_fmt(r['fraction_of_peak'], 3)} | {ratio} | {peer} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/cxr-bench",
                    help="output folder (default /tmp/cxr-bench)")
    ap.add_argument("--only", default=",".join(SHORT),
                    help=f"comma-separated subset of {', '.join(SHORT)} (default all)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke settings for every benchmark (about 5 minutes on 2 cores)")
    for short in SHORT:
        ap.add_argument(f"--{short.replace('_', '-')}-args", default="",
                        help=f"extra arguments for {dict((s, n) for n, s in BENCHES)[short]}.py")
    args = ap.parse_args(argv)

    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = wanted - set(SHORT)
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)}; known: {', '.join(SHORT)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from cxr_keras.io import write_json

    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    runs = {}
    for name, short in BENCHES:
        if short in wanted:
            (out / f"{name}.json").unlink(missing_ok=True)  # no stale result from an earlier run
            extra = (QUICK[short] + " " if args.quick else "") + getattr(args, f"{short}_args")
            runs[name] = _run(name, shlex.split(extra), out)
    wall = time.perf_counter() - t0

    rows = _rows(runs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    peak = ((runs.get("bench_peak") or {}).get("result") or {}).get("peak_gflop_per_s")
    head = (f"{platform.node()}, {platform.processor() or platform.machine()}, {cores} cores, "
            f"Python {platform.python_version()}, started {started}, "
            f"{'--quick (smoke settings), ' if args.quick else ''}{wall:.0f} s in all; "
            f"fp32 matmul peak {_fmt(peak)} GFLOP/s")
    lines = _table(rows)
    print("\n## All benchmarks\n")
    print(head + "\n")
    print("\n".join(lines))
    print("\nGFLOP/s: training 3 x 2 x MACs per image x images/s (frozen layers 2 x), inference "
          "2 x MACs x views x images/s; fraction of peak: GFLOP/s / the measured fp32 matmul "
          "peak (bench_peak, TensorFlow).")
    if not any(r.get("peer_ratio") for r in rows) and any(r["benchmark"] in (
            "fzlpr", "multiloss", "mlrfnet", "dual_mae", "mtpret") for r in rows):
        print("\nNo PyTorch peer rows (peer skipped: pip install '.[bench]', or reduced networks).")
    failed = [n for n, r in runs.items() if r["returncode"] != 0]
    for n in failed:
        print(f"\n{n} FAILED (exit {runs[n]['returncode']}); see {out / (n + '.log')}")
    summary = {"started": started, "host": platform.node(), "python": platform.python_version(),
               "cores": cores, "out": str(out), "quick": args.quick, "wall_s": round(wall, 1),
               "peak_gflop_per_s": peak, "runs": runs, "table": rows,
               "table_markdown": "\n".join(lines)}
    write_json(out / "run_all.json", summary)
    print(f"\nwrote {out / 'run_all.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
