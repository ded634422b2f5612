"""``cxr-keras run mtpret --distributed`` on two loopback processes (JAX backend, gloo): the three
stages in a tiny configuration (MD-MoCo pretraining, one MTPret round, lung fine-tuning); both
processes train the same weights in every stage, only process 0 evaluates and reports.

Opt-in (several minutes on 2 cores: XLA compiles every network on each process):
``CXR_SLOW_TESTS=1 python -m pytest tests/test_distributed_mtpret.py``.
"""

import json
import os

import numpy as np
import pytest
from test_multihost import HAS_JAX, _h5_arrays, run_two_processes

from _cli import console_script

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_JAX, reason="jax is not installed"),
    pytest.mark.skipif(os.environ.get("CXR_SLOW_TESTS") != "1",
                       reason="two processes train three stages: set CXR_SLOW_TESTS=1"),
]

# every global batch splits in two; the MoCo queue takes whole global batches
TINY = dict(image_size=[64, 64], cache_size=64, phantom_size=64,
            phantom_n={"nih": 64, "kermany": 32, "mura": 32, "lungmasks": 64, "tbx11k": 600,
                       "chexpert": 32, "deepcovid": 32, "shenzhen": 8, "montgomery": 8,
                       "indiana": 8, "rsna_boneage": 8},
            pretrain_epochs=1, pretrain_batch=16, queue_size=64, rounds=1, visit_epochs=1,
            multitask_batch=8, finetune_epochs=2, finetune_batch=8, seg_level=0,
            detection_batch=4, det_level=1, anchor_sizes=[10], anchor_ratios=[1.0], proposals=64)


def test_mtpret_stages_on_two_processes(tmp_path):
    out = tmp_path / "runs"
    # XLA stays at its default (on under JAX): eager JAX cannot scatter into the IoU metric's
    # confusion matrix from a batch spread over processes (keras' jax scatter iterates it)
    cmd = [console_script(), "run", "mtpret", "--dataset", "phantom", "--quick", "--distributed",
           "--deterministic", "--tasks", "lung", "--verbose", "0", "--workers", "1",
           "--out", str(out)]
    for key, value in TINY.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    logs = []
    for rc, stdout, stderr in run_two_processes(cmd, timeout=1800, cwd=tmp_path):
        assert rc == 0, (stdout + stderr)[-4000:]
        logs.append(stdout + stderr)
    assert "process 0 of 2" in logs[0] and "process 1 of 2" in logs[1]
    workers = out / "_workers" / "process1"
    for stage, weights in (("pretrain-md_moco", "backbone.weights.h5"),
                           ("multitask-mtpret", "backbone.weights.h5"),
                           ("finetune-lung-mtpret-seed0", "checkpoints/finetune.weights.h5")):
        [chief] = list(out.glob(f"mtpret-{stage}-*"))
        [worker] = list(workers.glob(f"mtpret-{stage}-*"))
        assert chief.name == worker.name                        # the same configuration
        assert (chief / "DONE").exists() and (chief / "report.md").exists()
        assert not (worker / "report.md").exists()              # process 0 alone reports
        assert (chief / "recipe_config.json").exists()
        a, b = _h5_arrays(chief / weights), _h5_arrays(worker / weights)
        assert a.keys() == b.keys() and len(a) > 10, stage
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{stage}: {k}")
    assert (out / "mtpret_all_tables.md").exists()
    assert not (workers / "mtpret_all_tables.md").exists()
    m = json.loads(next(out.glob("mtpret-finetune-lung-*")).joinpath("metrics.json").read_text())
    assert 0 < m["test"]["dice"] <= 1
