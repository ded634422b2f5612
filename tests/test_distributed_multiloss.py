"""``multiloss --distributed`` on two loopback processes (JAX, gloo): the U-Nets, classifiers and
model-level ensembles train data-parallel and end identical on both processes; every process
makes its own lung crops; only process 0 writes the tables and the report. Opt-in (slow tier):
``CXR_SLOW_TESTS=1``."""

import os

import numpy as np
import pytest
from test_multihost import HAS_JAX, _h5_arrays, run_two_processes

from _cli import console_script

# the smallest run with every stage: one U-Net, three classifiers (a top-3 ensemble), one epoch
TINY = dict(depth_coefficient=0.25, truncate_at="block5a_project_bn", phantom_size=64,
            phantom_lungmasks=80, phantom_montgomery=8, phantom_kermany=96, seg_size=32,
            seg_batch=4, seg_epochs=1, crop_size=32, cls_size=32, cls_batch=4, cls_epochs=1,
            stacking_epochs=2, ensemble_epochs=1, gradcam_images=1, slsqp_starts=1)


def _command():
    return [console_script(), "run", "multiloss"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
@pytest.mark.skipif(os.environ.get("CXR_SLOW_TESTS") != "1",
                    reason="minutes on 2 cores (XLA compiles five networks on each process, gloo "
                           "all-reduces every step): set CXR_SLOW_TESTS=1")
def test_multiloss_distributed_two_processes(tmp_path):
    out = tmp_path / "runs"
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    cmd = [*_command(), "--dataset", "phantom", "--quick", "--distributed", "--deterministic",
           "--seg-losses", "bce", "--cls-losses", "cce,focal,ls_cce", "--verbose", "0",
           "--workers", "1", "--out", str(out), *sets]
    logs = []
    for rc, stdout, stderr in run_two_processes(cmd, timeout=1500, cwd=tmp_path):
        assert rc == 0, (stdout + stderr)[-4000:]
        logs.append(stdout + stderr)
    assert "process 0 of 2" in logs[0] and "process 1 of 2" in logs[1]
    [chief] = [d for d in out.glob("multiloss-*") if d.is_dir()]
    [worker] = list((out / "_workers" / "process1").glob("multiloss-*"))
    assert chief.name == worker.name                            # the same configuration
    assert (chief / "report.md").exists() and (chief / "DONE").exists()
    # every copy is marked done (a rerun finds them all finished); only process 0 reports
    assert not (worker / "report.md").exists() and (worker / "DONE").exists()
    for model in ("segment/bce", "classify/cce", "classify/ls_cce", "ensemble/model_level_top3"):
        a = _h5_arrays(chief / model / "checkpoints" / "train.weights.h5")
        b = _h5_arrays(worker / model / "checkpoints" / "train.weights.h5")
        assert a.keys() == b.keys() and len(a) > 10, model
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{model}: {k}")
    assert "Table 5" in (chief / "report.md").read_text()
