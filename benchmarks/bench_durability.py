"""What durable writes cost: an epoch backup of the full fzlpr DenseNet121 and one cache shard
(256 images of 256x256), each published with and without the flushes (fsync of the file before
the rename, of the folder after) and, for the backup, its checksum.

    python benchmarks/bench_durability.py --out /tmp/bench --rounds 5

Rounds alternate the two modes; the median of each is printed (a Markdown table) and written to
``OUT/bench_durability.json``. The figures depend on the disk (here: the machine's ext4 volume).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/bench-durability")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    import numpy as np

    from cxr_keras import io
    from cxr_keras.models import densenet121_fzlpr
    from cxr_keras.training.fit import EpochBackup

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = densenet121_fzlpr(14, weights=None)
    backup = EpochBackup(out / "backup")
    backup.set_model(model)
    shard = np.random.default_rng(0).integers(0, 255, (256, 256, 256), dtype=np.uint8)
    flush = io.fsync_path
    times = {("backup", True): [], ("backup", False): [], ("shard", True): [], ("shard", False): []}
    for r in range(args.rounds):
        for durable in (True, False):
            io.fsync_path = flush if durable else (lambda path: None)
            t0 = time.perf_counter()
            backup.on_epoch_end(2 * r + int(durable), {"loss": 1.0})
            times[("backup", durable)].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with io.atomic_path(out / "shard.npy") as tmp:
                np.save(tmp, shard)
            times[("shard", durable)].append(time.perf_counter() - t0)
    io.fsync_path = flush
    mb = {"backup": sum(f.stat().st_size for f in (out / "backup").glob("epoch-*.h5")) / 2 / 2**20,
          "shard": shard.nbytes / 2**20}
    rows = {}
    print("| write | MB | durable (ms) | not flushed (ms) | cost (ms) |\n|---|---:|---:|---:|---:|")
    for what in ("backup", "shard"):
        on, off = (1000 * statistics.median(times[(what, d)]) for d in (True, False))
        rows[what] = {"mb": mb[what], "durable_ms": on, "plain_ms": off, "cost_ms": on - off}
        print(f"| {what} | {mb[what]:.1f} | {on:.0f} | {off:.0f} | {on - off:.0f} |")
    io.write_json(out / "bench_durability.json", {"rounds": args.rounds, "results": rows})


if __name__ == "__main__":
    main()
