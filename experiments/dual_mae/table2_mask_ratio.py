"""dual_mae Table 2: MAE and dual-MAE pretrained at every mask ratio, each fine-tuned on PediCXR.

    python experiments/dual_mae/table2_mask_ratio.py --dataset pedicxr --data-root /data/pedicxr \
        --nih-root /data/ChestX-ray14 --chexpert-root /data --seeds 0,1,2
    python experiments/dual_mae/table2_mask_ratio.py --dataset phantom --quick --ratios 0.65,0.75,0.95

One pretraining run per (method, ratio), one fine-tuning run per seed; finished runs are reused.
The table goes to --out/dual_mae_table2.md. Any `cxr-keras run dual_mae` option can be added
(`--set FIELD=VALUE`, `--config FILE`, `--distributed`).
"""

import argparse
import sys
from pathlib import Path

from cxr_keras.io import write_text
from cxr_keras.recipes import dual_mae
from cxr_keras.recipes import dual_mae_paper as paper
from cxr_keras.training import multihost

if __name__ == "__main__":
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--ratios", default=",".join(f"{r:g}" for r in paper.TABLE2["dual_mae"]),
                     help="comma-separated mask ratios (default: the paper's 0.65-0.95)")
    pre.add_argument("--methods", default="mae,dual_mae")
    known, rest = pre.parse_known_args(sys.argv[1:])
    ratios = [float(r) for r in known.ratios.split(",")]
    methods = known.methods.split(",")
    args = dual_mae.build_parser().parse_args(rest)
    cfg, opts = dual_mae.from_args(args)
    runs = dual_mae.run_many(cfg, [{"init": m, "mask_ratio": r} for m in methods for r in ratios],
                             dual_mae.seeds_of(args.seeds, cfg.seed), opts=opts)
    if multihost.is_chief():
        out = Path(opts.out) / "dual_mae_table2.md"
        write_text(out, dual_mae.mask_ratio_report(runs))
        print(f"wrote {out}")
