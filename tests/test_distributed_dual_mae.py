"""``dual_mae --distributed`` on two loopback processes (JAX, gloo): the pretraining and the
fine-tune it feeds train the same weights on both processes, only process 0 evaluates and
reports, and every process's copy of each run folder is finished.

Opt-in (CXR_SLOW_TESTS=1): XLA compiles the MAE and the ViT on each process and gloo all-reduces
every step.
"""

import os

import numpy as np
import pytest
from test_multihost import HAS_JAX, _h5_arrays, run_two_processes

from _cli import console_script

TINY = {"image_size": 32, "patch_size": 8, "cache_size": 36, "phantom_size": 64, "width": 32,
        "depth": 1, "num_heads": 2, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2,
        "adult_phantom_n": [64, 32], "pretrain_epochs": 2, "pretrain_batch": 16,
        "pretrain_warmup": 1, "phantom_n": 160, "finetune_epochs": 2, "finetune_batch": 16,
        "finetune_warmup": 1, "drop_path": 0.0, "xla": False}


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
@pytest.mark.skipif(os.environ.get("CXR_SLOW_TESTS") != "1",
                    reason="minutes on 2 cores (two processes compile and all-reduce every "
                           "step): set CXR_SLOW_TESTS=1")
def test_dual_mae_distributed_two_processes(tmp_path):
    out = tmp_path / "runs"
    cmd = [console_script(), "run", "dual_mae", "--quick", "--distributed", "--deterministic",
           "--verbose", "0", "--workers", "1", "--out", str(out)]
    for key, value in TINY.items():
        cmd += ["--set", f"{key}={str(value).replace(' ', '').replace('False', 'false')}"]
    logs = []
    for rc, stdout, stderr in run_two_processes(cmd, timeout=900, cwd=tmp_path):
        assert rc == 0, (stdout + stderr)[-4000:]
        logs.append(stdout + stderr)
    assert "process 0 of 2" in logs[0] and "process 1 of 2" in logs[1]
    worker = out / "_workers" / "process1"
    for pattern, weights in (("dual_mae-pretrain-*", "encoder.weights.h5"),
                             ("dual_mae-finetune-*", "checkpoints/finetune.weights.h5")):
        [chief] = [d for d in out.glob(pattern) if d.is_dir()]
        [copy] = list(worker.glob(pattern))
        assert chief.name == copy.name                          # the same configuration
        assert (chief / "DONE").exists() and (copy / "DONE").exists()
        assert (chief / "report.md").exists() and not (copy / "report.md").exists()
        a, b = _h5_arrays(chief / weights), _h5_arrays(copy / weights)
        assert a.keys() == b.keys() and len(a) > 10
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    [finetune] = list(out.glob("dual_mae-finetune-*"))
    assert "dual_mae online encoder" in (finetune / "report.md").read_text()
