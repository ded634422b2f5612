"""mlrfnet Tables 5-11: the full model and its ablations on one dataset.

    python experiments/mlrfnet/tables_5_11.py --dataset nih --data-root /data/ChestX-ray14
    python experiments/mlrfnet/tables_5_11.py --dataset chexpert --data-root /data   # CheXpert-v1.0-small inside
    python experiments/mlrfnet/tables_5_11.py --dataset phantom --quick
    python experiments/mlrfnet/tables_5_11.py --dataset phantom-chexpert --quick --only full,bce

NIH: the full model (Tables 5, 7, 8 and Fig. 11 in its run folder) and the six ablations
(Tables 9-11). CheXpert: the full model under the three uncertainty policies (Table 6) and the six
ablations under the mixed policy (the paper's setting for Tables 9-11). Every configuration gets
its own run folder (finished ones are returned as they are); the combined table goes to
--out/mlrfnet_<dataset>_tables.md. Any `cxr-keras run mlrfnet` option can be added
(`--set FIELD=VALUE`, `--config FILE`).
"""

import argparse
import sys
from pathlib import Path

from cxr_keras.io import write_text
from cxr_keras.recipes import mlrfnet


def variants(dataset: str, only):
    ablations = [a for a in mlrfnet.ABLATIONS if only is None or a in only]
    if not dataset.endswith("chexpert"):
        return [{"ablation": a} for a in ablations]
    out = [{"ablation": "full", "uncertain": p} for p in mlrfnet.POLICIES if "full" in ablations]
    return out + [{"ablation": a, "uncertain": "mixed"} for a in ablations if a != "full"]


if __name__ == "__main__":
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--only", default=None, help="comma-separated ablations (default: all)")
    known, rest = pre.parse_known_args(sys.argv[1:])
    only = None if known.only is None else set(known.only.split(","))
    cfg, opts = mlrfnet.from_command_line(rest)
    runs = mlrfnet.run_many(cfg, opts, variants(cfg.source, only))
    out = Path(opts.out) / f"mlrfnet_{cfg.dataset}_tables.md"
    write_text(out, mlrfnet.grid_report(runs))
    print(f"wrote {out}")
