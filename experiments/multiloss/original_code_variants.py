"""multiloss with the original code's choices where they differ from the paper, to measure what
they change: top-K and AND-ed masks picked on the test set, lung boxes widened by 5% per side, SGD
lr 1e-4 with Nesterov momentum. (The no-gradient calibration term and the missing entropy
regulariser are loss options: ``cxr_keras.losses.calibrated``.)

    python experiments/multiloss/original_code_variants.py --dataset phantom --quick
"""

import sys
from dataclasses import replace

from cxr_keras.recipes import multiloss

ORIGINAL_CODE = dict(select_on="test", seg_select_on="test", crop_margin=0.05, cls_lr=1e-4,
                     cls_nesterov=True)

if __name__ == "__main__":
    cfg, opts, stage = multiloss.from_command_line(sys.argv[1:], with_stage=True)
    run = multiloss.run(replace(cfg, **ORIGINAL_CODE), stage=stage, opts=opts)
    print(f"original code's choices: {run.file('report.md')}")
