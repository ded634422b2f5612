"""multiloss with the original code's choices where they differ from the paper, to measure what
they change: top-K and AND-ed masks picked on the test set, lung boxes widened by 5% per side, SGD
lr 1e-4 with Nesterov momentum. (The no-gradient calibration term and the missing entropy
regulariser are loss options: ``cxr_keras.losses.calibrated``.)

    python experiments/multiloss/original_code_variants.py --dataset phantom --quick
"""

import sys

from cxr_keras.recipes import multiloss

if __name__ == "__main__":
    argv = sys.argv[1:] + ["--select-on", "test", "--crop-margin", "0.05", "--original-optimizer"]
    raise SystemExit(multiloss.main(argv))
