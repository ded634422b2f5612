"""fzlpr Tables 1-3 and Fig. 5/7: DenseNet121 trained with BCE, focal, ZLPR and FZLPR(0.2).

    python experiments/fzlpr/table1_2_losses.py --dataset nih --data-root /data/ChestX-ray14
    python experiments/fzlpr/table1_2_losses.py --dataset phantom --quick

Each loss gets its own run folder (with its Table 3 TTA steps, ROC curves and Grad-CAM);
the combined Tables 1 and 2 are written to --out/fzlpr_losses.md.
"""

import sys
from dataclasses import replace
from pathlib import Path

from cxr_keras.io import write_text
from cxr_keras.recipes import fzlpr

if __name__ == "__main__":
    cfg, opts = fzlpr.from_command_line(sys.argv[1:])
    runs = [fzlpr.run(replace(cfg, loss=loss), opts=opts) for loss in fzlpr.LOSSES]
    out = Path(opts.out) / "fzlpr_losses.md"
    write_text(out, fzlpr.losses_report(runs))
    print(f"wrote {out}")
