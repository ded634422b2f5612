"""mtpret Tables II-VII: every pretraining of Table II (Scratch, ImageNet, SD/MD-SimCLR, SD/MD-MoCo,
MD-MoCo++, MTPret--, MTPret) fine-tuned on every task, for each backbone.

    python experiments/mtpret/tables_2_to_7.py --dataset real --data-root /data \
        --root nih=/data/ChestX-ray14 --backbones resnet18,resnet50
    python experiments/mtpret/tables_2_to_7.py --dataset phantom --quick --backbones resnet18

One pretraining run per method, one multitask run per variant, one fine-tuning run per (method,
task); finished runs are reused, so the command can be started again after an interruption. The
tables go to --out/mtpret_tables.md: Table II (main metric per task, DeepCovid included), III
(lung Dice / mIoU, TBX mAP / AP per class), IV and VII (CheXpert per observation) and VI
(DeepCovid accuracy, specificity, sensitivity, AUC), ours with the paper's in brackets. Table V
compares MTPret with DAM on CheXpert; our MTPret row is the one of Table IV. Any
`cxr-keras run mtpret` option can be added (`--tasks`, `--imagenet-weights`, `--set FIELD=VALUE`,
...).
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from cxr_keras.io import write_text
from cxr_keras.recipes import mtpret
from cxr_keras.training import multihost

if __name__ == "__main__":
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--backbones", default="resnet18,resnet50")
    pre.add_argument("--tasks", default=None)
    known, rest = pre.parse_known_args(sys.argv[1:])
    cfg, opts = mtpret.from_command_line(rest)
    cfg, opts = mtpret.setup(cfg, opts=opts)  # --distributed: the processes join once
    tasks = mtpret.parse_tasks(known.tasks)
    parts = []
    for backbone in known.backbones.split(","):
        backbone_cfg = replace(cfg, backbone=backbone)
        runs = mtpret.run_grid(backbone_cfg, mtpret.baseline_inits(backbone_cfg), tasks, opts=opts)
        parts.append(mtpret.grid_report(runs, title=f"mtpret {backbone}"))
    if multihost.is_chief():
        out = Path(opts.out) / "mtpret_tables.md"
        write_text(out, "\n".join(parts))
        print(f"wrote {out}")
