"""multiloss Tables 1-5 and Figs. 1-9 in one run folder (all three stages).

    python experiments/multiloss/tables_1_5.py --dataset real --data-root /data/chest_xray \
        --lungmask-root "/data/Chest X-ray Masks and Labels" --montgomery-root /data/NLM
    python experiments/multiloss/tables_1_5.py --dataset phantom --quick

Same as ``cxr-keras run multiloss --stage all``; the stages can also be run one at a time
(``--stage segment``, then ``classify``, then ``ensemble``) with the same options.
"""

import sys

from cxr_keras.recipes import multiloss

if __name__ == "__main__":
    cfg, opts, stage = multiloss.from_command_line(sys.argv[1:], with_stage=True)
    run = multiloss.run(cfg, stage=stage, opts=opts)
    print(f"Tables 1-5: {run.file('report.md')}")
