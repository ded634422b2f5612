"""dual_mae Tables 5-6: every method fine-tuned on 1/10/50/100% of the PediCXR training labels.

    python experiments/dual_mae/tables_5_6_label_fractions.py --dataset pedicxr \
        --data-root /data/pedicxr --nih-root /data/ChestX-ray14 --chexpert-root /data --seeds 0,1,2
    python experiments/dual_mae/tables_5_6_label_fractions.py --dataset phantom --quick \
        --fractions 0.5,1 --methods "dual-MAE (X-ray),ResNet-34 (random)"

Methods are the paper's row names (default: all; the ImageNet rows need weights: the default
download or --imagenet-weights, and full-size networks). The fractions are nested per seed (the
1% images are among the 10% ones). The tables go to --out/dual_mae_tables_5_6.md.
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
    pre.add_argument("--fractions", default="0.01,0.1,0.5,1")
    pre.add_argument("--methods", default=",".join(paper.METHODS))
    known, rest = pre.parse_known_args(sys.argv[1:])
    methods = [m.strip() for m in known.methods.split(",")]
    unknown = [m for m in methods if m not in paper.METHODS]
    if unknown:
        sys.exit(f"--methods: unknown {unknown}; known: {', '.join(paper.METHODS)}")
    args = dual_mae.build_parser().parse_args(rest)
    cfg, opts = dual_mae.from_args(args)
    variants = [{"backbone": paper.METHODS[m][0], "init": paper.METHODS[m][1],
                 "label_fraction": float(f)} for m in methods for f in known.fractions.split(",")]
    runs = dual_mae.run_many(cfg, variants, dual_mae.seeds_of(args.seeds, cfg.seed), opts=opts)
    if multihost.is_chief():
        out = Path(opts.out) / "dual_mae_tables_5_6.md"
        write_text(out, dual_mae.label_fraction_report(runs))
        print(f"wrote {out}")
