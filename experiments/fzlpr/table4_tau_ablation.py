"""fzlpr Table 4 and Fig. 6: FZLPR with tau in {0.1, 0.2, 0.4, 0.6, 0.8, 1.0}.

    python experiments/fzlpr/table4_tau_ablation.py --dataset nih --data-root /data/ChestX-ray14
    python experiments/fzlpr/table4_tau_ablation.py --dataset phantom --quick

Writes --out/fzlpr_tau.md and --out/fzlpr_tau_fig6.png (per-label AUC minus tau = 1).
"""

import sys
from dataclasses import replace
from pathlib import Path

from cxr_keras.io import write_text
from cxr_keras.recipes import fzlpr

TAUS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)

if __name__ == "__main__":
    cfg, opts = fzlpr.from_command_line(sys.argv[1:])
    runs = [fzlpr.run(replace(cfg, loss="fzlpr", tau=tau), opts=opts) for tau in TAUS]
    out = Path(opts.out)
    write_text(out / "fzlpr_tau.md", fzlpr.tau_report(runs, out / "fzlpr_tau_fig6.png"))
    print(f"wrote {out / 'fzlpr_tau.md'}")
