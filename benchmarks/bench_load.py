"""Full-size metadata: ``load_table`` on NIH ChestX-ray14 (112,120 images) and CheXpert (223,414
training rows + valid.csv), ``prepare`` of the NIH cache, and reading that cache through
``make_dataset`` without loading its shards into memory; wall time and peak memory of each.

    python benchmarks/bench_load.py --out /tmp/bench-load [--size 32] [--workers 2]

The layouts are the official ones at full size: a small phantom's metadata rows repeated under new
image names (realistic label strings, patients, lists), and every image a hard link to one small
phantom image (placeholders: the figures measure the metadata and the cache machinery, not image
decoding). Each step runs in its own process, so its peak RSS (``ru_maxrss``) is its own. Prints a
Markdown table and writes ``OUT/bench_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NIH_N, CHEXPERT_N = 112_120, 223_414


def _link(src: Path, dest: Path):
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        os.link(src, dest)


def make_nih(out: Path):
    import pandas as pd

    from cxr_keras.data import write_phantom

    if (out / ".complete").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    small = out.parent / "nih-small"
    write_phantom("nih", small, n=200, size=32, seed=0, workers=1, progress=False)
    entries = pd.read_csv(small / "Data_Entry_2017_v2020.csv")
    images = sorted(small.glob("images_*/images/*.png"))  # (a file takes at most 65,000 links)
    rows = entries.iloc[[i % len(entries) for i in range(NIH_N)]].copy()
    rows["Patient ID"] = [1 + i // 4 for i in range(NIH_N)]   # NIH: 30,805 patients, ~3.6 images each
    rows["Follow-up #"] = [i % 4 for i in range(NIH_N)]
    rows["Image Index"] = [f"{p:08d}_{f:03d}.png" for p, f in zip(rows["Patient ID"], rows["Follow-up #"])]
    rows.to_csv(out / "Data_Entry_2017_v2020.csv", index=False)
    names = rows["Image Index"].tolist()
    for i, name in enumerate(names):  # 12 folders of up to 10,000 images, as NIH ships them
        _link(images[i % len(images)], out / f"images_{1 + i // 10_000:03d}" / "images" / name)
    cut = int(0.78 * NIH_N)
    (out / "train_val_list.txt").write_text("\n".join(names[:cut]))
    (out / "test_list.txt").write_text("\n".join(names[cut:]))
    (out / "BBox_List_2017.csv").write_text((small / "BBox_List_2017.csv").read_text())
    (out / ".complete").write_text("")
    return out


def make_chexpert(out: Path):
    import pandas as pd

    from cxr_keras.data import write_phantom

    if (out / ".complete").exists():
        return out
    small = out.parent / "chexpert-small"
    write_phantom("chexpert", small, n=200, size=32, seed=0, workers=1, progress=False)
    folder = next(p for p in small.iterdir() if (p / "train.csv").exists())
    train = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)
    images = [folder.parent / rel for rel in train["Path"]]
    rows = train.iloc[[i % len(train) for i in range(CHEXPERT_N)]].copy()
    rows["Path"] = [f"{folder.name}/train/patient{1 + i // 3:05d}/study{1 + i % 3}/view1_frontal.jpg"
                    for i in range(CHEXPERT_N)]
    rows["Frontal/Lateral"] = "Frontal"
    dest = out / folder.name
    dest.mkdir(parents=True, exist_ok=True)
    rows.to_csv(dest / "train.csv", index=False)
    (dest / "valid.csv").write_text((folder / "valid.csv").read_text())
    for i, rel in enumerate(rows["Path"]):
        _link(images[i % len(images)], out / rel)
    valid = pd.read_csv(folder / "valid.csv", dtype=str, keep_default_na=False)
    for rel in valid["Path"]:
        _link(folder.parent / rel, out / rel)
    (out / ".complete").write_text("")
    return out


STEPS = {
    "load_table nih": "from cxr_keras.data import load_table; t = load_table('nih', ROOT); print(len(t))",
    "load_table chexpert": "from cxr_keras.data import load_table; t = load_table('chexpert', ROOT); print(len(t))",
    "prepare nih": ("from cxr_keras.data.cache import prepare; prepare('nih', ROOT, CACHE, size=SIZE, "
                    "workers=WORKERS, progress=False, overwrite=True)"),
    "import cxr_keras.data (baseline)": "import cxr_keras.data; print(0)",
    "make_dataset, first batch": (
        "from cxr_keras.data.cache import Cache; from cxr_keras.data.pipeline import make_dataset; "
        "c = Cache(CACHE); ds = make_dataset(c, 'train', training=True, batch_size=256); "
        "x, _ = next(iter(ds)); print(int(x.shape[0]), 'rows of', len(c))"),
    "make_dataset, one epoch": (
        "from cxr_keras.data.cache import Cache; from cxr_keras.data.pipeline import make_dataset; "
        "c = Cache(CACHE); ds = make_dataset(c, 'train', training=True, batch_size=256); "
        "n = sum(int(x.shape[0]) for x, _ in ds); print(n, 'rows of', len(c))"),
}


def run_step(name, code, subs) -> dict:
    for k, v in subs.items():
        code = code.replace(k, repr(v) if isinstance(v, str) else str(v))
    wrapper = ("import resource, time; t0 = time.perf_counter()\n" + code.replace("; ", "\n") +
               "\nimport json; print(json.dumps({'seconds': time.perf_counter() - t0, "
               "'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout.strip().splitlines()
    result = json.loads(out[-1])
    result["output"] = " ".join(out[:-1])[-200:]
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/bench-load")
    p.add_argument("--size", type=int, default=32, help="cache image side")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    nih, chexpert = make_nih(out / "nih"), make_chexpert(out / "chexpert")
    print(f"layouts ready in {time.perf_counter() - t0:.0f} s", flush=True)
    results = {}
    for name, code in STEPS.items():
        root = chexpert if "chexpert" in name else nih
        results[name] = run_step(name, code, {"ROOT": str(root), "CACHE": str(out / "cache-nih"),
                                              "SIZE": args.size, "WORKERS": args.workers})
        print(f"{name}: {results[name]}", flush=True)
    print("\n| step | rows | seconds | peak RSS (MB) |\n|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['output'].split()[0] if r['output'] else ''} | {r['seconds']:.1f} | "
              f"{r['peak_mb']:.0f} |")
    from cxr_keras.io import write_json

    write_json(out / "bench_load.json", {"size": args.size, "workers": args.workers, "results": results})


if __name__ == "__main__":
    main()
