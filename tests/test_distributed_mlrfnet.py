"""``cxr-keras run mlrfnet --distributed`` on two loopback processes (JAX, gloo): both train the
same weights from their halves of every batch, only process 0 evaluates and reports. Opt-in (slow):
``CXR_SLOW_TESTS=1 python -m pytest tests/test_distributed_mlrfnet.py``."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest
from test_multihost import _h5_arrays, run_two_processes

from _cli import console_script

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed"),
    pytest.mark.skipif(os.environ.get("CXR_SLOW_TESTS") != "1",
                       reason="about 10 min on 2 busy cores (XLA compiles the Res2Net on each "
                              "process, gloo all-reduces every step): set CXR_SLOW_TESTS=1"),
]



def test_cli_run_mlrfnet_distributed_two_processes(tmp_path):
    from cxr_keras.training import read_history

    out = tmp_path / "runs"
    cmd = [console_script(), "run", "mlrfnet", "--dataset", "phantom", "--quick", "--distributed", "--deterministic",
                   "--phantom-n", "160", "--epochs", "2", "--batch-size", "16", "--verbose", "0",
                   "--workers", "1", "--out", str(out), "--set", "bootstrap=20",
                   "--set", "latency_images=1", "--set", "max_boxes=8", "--set", "gradcam_images=2"]
    logs = []
    for rc, stdout, stderr in run_two_processes(cmd, timeout=1200, cwd=tmp_path):
        assert rc == 0, (stdout + stderr)[-4000:]
        logs.append(stdout + stderr)
    assert "process 0 of 2" in logs[0] and "process 1 of 2" in logs[1]
    [chief] = [d for d in out.glob("mlrfnet-*") if d.is_dir()]
    [worker] = list((out / "_workers" / "process1").glob("mlrfnet-*"))
    assert chief.name == worker.name                            # the same configuration
    assert (chief / "report.md").exists() and (chief / "DONE").exists()
    assert not (worker / "report.md").exists() and not (worker / "metrics.json").exists()
    a = _h5_arrays(chief / "checkpoints" / "train.weights.h5")
    b = _h5_arrays(worker / "checkpoints" / "train.weights.h5")
    assert a.keys() == b.keys() and len(a) > 50
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    metrics = json.loads((chief / "metrics.json").read_text())
    assert set(metrics["localization"]) == {"u2", "u3", "u4"}   # Grad-CAM on JAX, every level
    history = read_history(chief / "logs" / "history_train.csv")
    assert len(history["loss"]) == 2 and all(math.isfinite(v) for v in history["loss"])
