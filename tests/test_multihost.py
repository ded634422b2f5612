"""Multi-host data parallelism (JAX backend, gloo CPU collectives): two worker processes on
loopback train one of our networks from a phantom cache through the tf.data pipeline, and end
with identical weights and a falling loss.

The workers ask for determinism (``configure(deterministic=True)``: seeds, TensorFlow op
determinism for the tf.data pipeline; XLA's CPU kernels are deterministic) rather than relying on
it. The coordinator's port: JAX's coordinator binds it itself (on every interface), in another
process, so it cannot be held for it; the OS picks a free port, and a launch whose coordinator
could not bind it (another program took it in between) is recognised in process 0's log and
started again on a new port.
"""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
import pytest

from _cli import console_script

HAS_JAX = importlib.util.find_spec("jax") is not None

WORKER = r"""
import json, sys
from cxr_keras.training.multihost import initialize, is_chief
info = initialize()
import keras, numpy as np
from cxr_keras.data.pipeline import make_dataset
from cxr_keras.models import resnet18
from cxr_keras.training.runtime import configure
configure(0, deterministic=True, mixed_precision=False, xla=False)
ds = make_dataset(sys.argv[1], "train", training=True, batch_size=16, seed=0,
                  labels=["Effusion", "Cardiomegaly"], drop_remainder=True)
base = resnet18(include_top=False, pooling="avg", input_shape=(64, 64, 3), widths=(8, 8, 16, 16))
model = keras.Model(base.input, keras.layers.Dense(2)(base.output))
first = np.concatenate([np.ravel(w) for w in model.get_weights()])
model.compile(keras.optimizers.Adam(3e-3), keras.losses.BinaryCrossentropy(from_logits=True))
hist = model.fit(ds, epochs=3, steps_per_epoch=ds.num_rows // 16, verbose=0)
w = np.concatenate([np.ravel(v) for v in model.get_weights()])
print(json.dumps({**info, "chief": is_chief(), "loss": hist.history["loss"],
                  "checksum": float(np.sum(w * np.arange(1, w.size + 1) % 97)),
                  "moved": float(np.abs(w - first).max())}))
"""


def _free_port():
    """A port the OS reports free on every interface (where the coordinator binds it)."""
    if socket.has_dualstack_ipv6():
        with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as s:
            return s.getsockname()[1]
    with socket.create_server(("", 0)) as s:
        return s.getsockname()[1]


# gRPC's message when the coordinator cannot bind its port (process 0 then dies, SIGSEGV); it is
# an ERROR log line, so the workers run with TF_CPP_MIN_LOG_LEVEL=2, not 3.
BIND_FAILED = re.compile(r"Failed to add port to server|Address already in use")


def _wait_all(procs, timeout):
    """Every process's (stdout, stderr); as soon as one fails, the others are killed (they would
    wait for it in initialize or in the all-reduce until JAX's own timeout)."""
    def communicate(p):
        try:
            return p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.communicate()

    with ThreadPoolExecutor(len(procs)) as pool:
        futures = [pool.submit(communicate, p) for p in procs]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            if any(procs[futures.index(f)].returncode != 0 for f in done):
                for p in procs:
                    if p.poll() is None:
                        p.kill()
        return [f.result() for f in futures]


def run_two_processes(argv, timeout=600, attempts=3, **popen_kw):
    """Run ``argv`` as processes 0 and 1 of a loopback JAX job; ``[(returncode, stdout, stderr)]``
    of the first launch whose coordinator could bind its port."""
    for attempt in range(1, attempts + 1):
        port = _free_port()
        procs = []
        for pid in (0, 1):
            env = dict(os.environ, KERAS_BACKEND="jax", CXR_COORDINATOR=f"127.0.0.1:{port}",
                       CXR_NUM_PROCESSES="2", CXR_PROCESS_ID=str(pid), TF_CPP_MIN_LOG_LEVEL="2",
                       JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, **popen_kw))
        logs = _wait_all(procs, timeout)
        if procs[0].returncode == 0 or not BIND_FAILED.search(logs[0][1]) or attempt == attempts:
            return [(p.returncode, out, err) for p, (out, err) in zip(procs, logs)]


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_two_processes_on_loopback_end_with_identical_weights(tmp_path):
    from cxr_keras.data import load_table, write_phantom
    from cxr_keras.data.cache import build_cache

    write_phantom("nih", tmp_path / "nih", n=160, size=64, seed=0, workers=1, progress=False)
    table = load_table("nih", tmp_path / "nih")
    cache = build_cache(table, tmp_path / "cache", size=64, workers=1, progress=False)
    results = []
    for rc, out, err in run_two_processes([sys.executable, "-c", WORKER, str(cache)]):
        assert rc == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    a, b = results
    assert (a["num_processes"], a["devices"]) == (2, 2)
    assert {a["process_id"], b["process_id"]} == {0, 1}
    assert a["chief"] != b["chief"]
    assert a["checksum"] == b["checksum"] and a["moved"] > 0       # the same weights, trained
    assert a["loss"] == b["loss"] and a["loss"][-1] < a["loss"][0], a["loss"]


INIT_ONLY = r"""
import json, os
import jax
jax.distributed.initialize(os.environ["CXR_COORDINATOR"], int(os.environ["CXR_NUM_PROCESSES"]),
                           int(os.environ["CXR_PROCESS_ID"]))
print(json.dumps({"process_id": jax.process_index(), "processes": jax.process_count()}))
"""


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_a_coordinator_port_taken_in_between_is_recognised_and_retried(monkeypatch):
    """The race itself, forced: the first port handed out is held by another socket; process 0
    cannot bind it, the other process is stopped, and the second launch joins."""
    family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
    with socket.create_server(("", 0), family=family,
                              dualstack_ipv6=family == socket.AF_INET6) as held:
        handed = []
        free = _free_port

        def port():
            handed.append(held.getsockname()[1] if not handed else free())
            return handed[-1]

        monkeypatch.setattr(sys.modules[__name__], "_free_port", port)
        results = run_two_processes([sys.executable, "-c", INIT_ONLY], timeout=120)
    assert len(handed) == 2 and handed[0] != handed[1]
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
    joined = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    assert joined == [{"process_id": 0, "processes": 2}, {"process_id": 1, "processes": 2}]


def test_initialize_names_what_is_missing(monkeypatch):
    from cxr_keras.training import multihost

    for name in multihost.ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="JAX backend|CXR_COORDINATOR"):
        multihost.initialize()


def _h5_arrays(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


TINY_FZLPR = ["--set", "backbone_blocks=[1,1,1,1]", "--set", "phantom_n=96", "--set", "phantom_size=192",
              "--set", "bootstrap=20", "--set", "gradcam_images=2"]


def _two_process_fzlpr(tmp_path, extra, timeout):
    """``cxr-keras run fzlpr --distributed`` on two loopback processes: both train the same
    weights (bit for bit), only process 0 reports."""
    from cxr_keras.training import read_history

    out = tmp_path / "runs"
    cmd = [console_script(), "run", "fzlpr", "--dataset", "phantom", "--quick", "--distributed",
           "--deterministic", "--batch-size", "16", "--verbose", "0", "--out", str(out), *extra]
    logs = []
    for rc, stdout, stderr in run_two_processes(cmd, timeout=timeout, cwd=tmp_path):
        assert rc == 0, (stdout + stderr)[-4000:]
        logs.append(stdout + stderr)
    assert "process 0 of 2" in logs[0] and "process 1 of 2" in logs[1]
    [chief] = [d for d in out.glob("fzlpr-*") if d.is_dir()]
    [worker] = list((out / "_workers" / "process1").glob("fzlpr-*"))
    assert chief.name == worker.name                            # the same configuration
    assert (chief / "report.md").exists() and not (worker / "report.md").exists()
    a = _h5_arrays(chief / "checkpoints" / "stage2.weights.h5")
    b = _h5_arrays(worker / "checkpoints" / "stage2.weights.h5")
    assert a.keys() == b.keys() and len(a) > 50
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    first = read_history(chief / "logs" / "history_stage1.csv")["loss"][0]
    last = read_history(chief / "logs" / "history_stage2.csv")["loss"][-1]
    return first, last


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_cli_run_distributed_two_processes_tiny(tmp_path):
    """The CI check of the recipe path (the cheapest paper, a one-layer-per-block DenseNet, one
    epoch per stage): it runs, the processes agree bit for bit, process 0 alone reports."""
    extra = ["--stage1-epochs", "1", "--stage2-epochs", "1", *TINY_FZLPR]
    _two_process_fzlpr(tmp_path, extra, timeout=600)
    # the same command again: every process finds its copy finished (none retrains alone)
    cmd = [console_script(), "run", "fzlpr", "--dataset", "phantom", "--quick", "--distributed",
           "--deterministic", "--batch-size", "16", "--verbose", "0", "--out", str(tmp_path / "runs"),
           *extra]
    for rc, stdout, stderr in run_two_processes(cmd, timeout=300, cwd=tmp_path):
        assert rc == 0 and "finished earlier" in stdout, (stdout + stderr)[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
@pytest.mark.skipif(os.environ.get("CXR_SLOW_TESTS") != "1",
                    reason="several minutes on 2 cores (the quick DenseNet on each process, gloo "
                           "all-reduces every step): set CXR_SLOW_TESTS=1")
def test_cli_run_distributed_two_processes(tmp_path):
    """The quick configuration with 160 phantom images and three epochs: training lowers the loss."""
    first, last = _two_process_fzlpr(tmp_path, ["--phantom-n", "160", "--stage1-epochs", "1",
                                                "--stage2-epochs", "2"], timeout=900)
    assert last < first, (first, last)


@pytest.mark.parametrize("paper", ["fzlpr", "multiloss", "mlrfnet", "dual_mae", "mtpret"])
def test_every_recipe_takes_distributed(paper):
    import importlib

    recipe = importlib.import_module(f"cxr_keras.recipes.{paper}")
    assert recipe.build_parser().parse_args(["--distributed"]).distributed is True


def test_training_rows_split_over_processes_as_one_process_would_batch_them(tmp_path, monkeypatch):
    """Process p of P reads positions p, p + P, ... of the epoch's order in batches of B / P: the
    P local batches of step s together are exactly the rows of the one-process batch s."""
    from cxr_keras.data import load_table, pipeline, write_phantom
    from cxr_keras.data.cache import build_cache

    write_phantom("nih", tmp_path / "nih", n=47, size=32, seed=0, workers=1, progress=False)
    cache = build_cache(load_table("nih", tmp_path / "nih"), tmp_path / "c", size=32, workers=1,
                        progress=False)
    kw = dict(training=True, batch_size=6, seed=3, normalization="unit", channels=1,
              labels=["Effusion"], preset="fzlpr")  # augmented: the seeds must follow the rows

    def keys(ds):  # augmented images identify rows and their augmentation: compare as bytes
        return [[x.tobytes() for x in np.asarray(b[0])] for b in ds]

    monkeypatch.setattr(pipeline, "data_shard", lambda: (0, 1))
    one = keys(pipeline.make_dataset(cache, None, **kw))
    parts = []
    for p in (0, 1, 2):
        monkeypatch.setattr(pipeline, "data_shard", lambda p=p: (p, 3))
        parts.append(keys(pipeline.make_dataset(cache, None, **kw)))
    assert [len(b) for b in one] == [6] * 7 + [5]
    assert all(len(part) == len(one) for part in parts)             # the same number of steps
    assert [len(b) for b in parts[2]] == [2] * 7 + [1]              # 47 - 47 % 3 = 45 rows
    for step, batch in enumerate(one):
        merged = sorted(k for part in parts for k in part[step])
        want = sorted(batch) if step < len(one) - 1 else sorted(batch[:3])
        assert merged == want, step
    with pytest.raises(ValueError, match="batch_size=7 does not split over 3 processes"):
        pipeline.make_dataset(cache, None, **dict(kw, batch_size=7))
    evaluation = pipeline.make_dataset(cache, None, **dict(kw, training=False))
    assert sum(len(b) for b in keys(evaluation)) == 47                # evaluation is not split
