"""mtpret Tables II-VII: every pretraining of Table II (Scratch, ImageNet, SD/MD-SimCLR, SD/MD-MoCo,
MD-MoCo++, MTPret--, MTPret) fine-tuned on every task, for each backbone.

    python experiments/mtpret/tables_2_to_7.py --dataset real --data-root /data \
        --roots nih=/data/ChestX-ray14 --backbones resnet18,resnet50
    python experiments/mtpret/tables_2_to_7.py --dataset phantom --quick --backbones resnet18

One pretraining run per method, one multitask run per variant, one fine-tuning run per (method,
task); finished runs are reused, so the command can be started again after an interruption. The
tables go to --out/mtpret_tables.md: Table II (main metric per task), III (lung Dice / mIoU, TBX
mAP / AP per class), IV and VII (CheXpert per observation), ours with the paper's in brackets.
Tables V and VI compare MTPret with DAM and other self-supervised methods on CheXpert and
DeepCovid; our MTPret row is the one of Table IV (DeepCovid has no reader here). Any
`cxr-keras run mtpret` option can be added (`--tasks`, `--imagenet-weights`, ...).
"""

import argparse
import sys
from pathlib import Path

from cxr_keras.io import write_text
from cxr_keras.recipes import mtpret

if __name__ == "__main__":
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--backbones", default="resnet18,resnet50")
    known, rest = pre.parse_known_args(sys.argv[1:])
    parts = []
    for backbone in known.backbones.split(","):
        args = mtpret.build_parser().parse_args(rest + ["--backbone", backbone, "--stage",
                                                        "baselines"])
        imagenet = not args.quick or args.imagenet_weights is not None
        inits = [i for i in mtpret.INITS if imagenet or i not in ("imagenet", "md_moco++")]
        runs = mtpret.run_grid(args, inits, mtpret.parse_tasks(args.tasks))
        parts.append(mtpret.grid_report(runs, title=f"mtpret {backbone}"))
    out = Path(args.out) / "mtpret_tables.md"
    write_text(out, "\n".join(parts))
    print(f"wrote {out}")
