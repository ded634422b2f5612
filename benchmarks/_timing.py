"""Shared parts of the benchmarks: cores, rates, the alternating train/predict timing loop, the
plain keras.applications counterparts (full or reduced), FLOP counts and achieved GFLOP/s, and the
common fields of the results JSON.

Imported as a plain ``import _timing`` by the scripts in this folder (a script's own folder is first
on ``sys.path`` when it runs as ``python benchmarks/<name>.py``; the scripts also insert it).
"""

from __future__ import annotations

import os
import resource
import statistics
import time

JIT = {"auto": "auto", "true": True, "false": False}  # --jit choice -> model.compile(jit_compile=)


def cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` off Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def rate(times, batch: int) -> float:
    """Images per second over steps of ``batch`` images that took ``times`` seconds."""
    return batch * len(times) / sum(times)


def add_loop_args(ap, steps: int, warmup: int) -> None:
    """``--steps``, ``--warmup``, ``--pool`` and ``--seed`` of the train benchmarks."""
    ap.add_argument("--steps", type=int, default=steps,
                    help=f"timed steps per model and mode (default {steps})")
    ap.add_argument("--warmup", type=int, default=warmup,
                    help=f"untimed steps first (default {warmup})")
    ap.add_argument("--pool", type=int, default=4, help="distinct synthetic batches (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="numpy seed of the batches (default 0)")


def add_jit_out_args(ap) -> None:
    """``--jit`` and ``--out`` of the train benchmarks."""
    ap.add_argument("--jit", choices=tuple(JIT), default="auto",
                    help="jit_compile of model.compile (default auto: Keras' choice)")
    ap.add_argument("--out", default="/tmp/cxr-bench",
                    help="output folder (default /tmp/cxr-bench)")


def check_loop_args(ap, args) -> None:
    """Exit through ``ap.error`` unless ``--steps`` and ``--warmup`` are at least 1."""
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be at least 1 (the first step traces the graph)")


def time_models(models: dict, xs: list, steps: int, warmup: int) -> tuple:
    """Time ``train_on_batch`` then ``predict_on_batch`` of every model, alternating step by step.

    ``models`` maps names to dicts with ``model`` and ``targets`` (one per batch of ``xs``, used in
    turn). Each of ``warmup`` untimed and ``steps`` timed steps ends when its result is in host
    memory. Adds to each dict ``train`` and ``predict`` (``warmup_s``, ``times``: wall seconds;
    ``cpu_s``: process CPU seconds of the timed steps) and ``losses``. Returns the 1-min load
    average before and after.
    """
    import numpy as np

    pool = len(xs)
    load_before = os.getloadavg()[0]
    for phase in ("train", "predict"):
        for m in models.values():
            m[phase] = {"warmup_s": [], "times": [], "cpu_s": 0.0}
        for i in range(warmup + steps):
            for m in models.values():
                c0 = time.process_time()
                t = time.perf_counter()
                if phase == "train":
                    out = m["model"].train_on_batch(xs[i % pool], m["targets"][i % pool])
                    loss = float(np.asarray(out).ravel()[0])  # the loss is on the host: step done
                    dt = time.perf_counter() - t
                    m.setdefault("losses", []).append(loss)
                else:
                    np.asarray(m["model"].predict_on_batch(xs[i % pool]))
                    dt = time.perf_counter() - t
                if i < warmup:
                    m[phase]["warmup_s"].append(dt)
                else:
                    m[phase]["times"].append(dt)
                    m[phase]["cpu_s"] += time.process_time() - c0
    return load_before, os.getloadavg()[0]


def environment(n_cores: int, load: tuple) -> dict:
    """Common fields of the results JSON: cores, versions, threads, devices, dtype policy, load
    average, peak RSS. TensorFlow's fields are None where it is not installed (a JAX-only GPU
    machine)."""
    import keras

    env = {"cores": n_cores, "cpu_count": os.cpu_count(), "tf_version": None,
           "keras_version": keras.__version__, "backend": keras.backend.backend(),
           "dtype_policy": keras.mixed_precision.global_policy().name,
           "devices": devices(), "intra_op_threads": None, "inter_op_threads": None}
    try:
        import tensorflow as tf
    except ImportError:
        tf = None
    if tf is not None:
        env.update(tf_version=tf.__version__,
                   intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
                   inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads())
    if env["backend"] == "jax":
        import jax

        env["jax_version"] = jax.__version__
    env.update(loadavg_1min_before_after=[round(load[0], 2), round(load[1], 2)],
               max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return env


def devices() -> list:
    """The accelerators the Keras backend sees (``["cpu"]`` when none)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        found = [f"{d.platform}:{d.device_kind}" for d in jax.devices() if d.platform != "cpu"]
    elif backend == "tensorflow":
        import tensorflow as tf

        found = [d.name for d in tf.config.list_physical_devices("GPU")]
    else:
        found = []
    return found or ["cpu"]


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def add_precision_args(ap) -> None:
    """``--precision``: the Keras dtype policy ours are built with (the peer runs under
    ``torch.autocast`` with the same half type)."""
    ap.add_argument("--precision", choices=PRECISIONS, default="float32",
                    help="Keras dtype policy of our models; the peer autocasts to the same half "
                         "type (default float32)")


def tensors(arrays: list) -> list:
    """NumPy batches as backend tensors (on the backend's default device), created once."""
    import keras

    return [keras.ops.convert_to_tensor(a) for a in arrays]


def model_row(m: dict, batch: int, n_cores: int) -> dict:
    """Result fields of one model timed by :func:`time_models`: parameters, first-step times,
    median step times, images/s (per core, per CPU-second) and first/last loss."""
    import numpy as np

    model = m["model"]
    row = {"params": int(model.count_params()),
           "trainable_params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
           "jit_compile": bool(model.jit_compile), "build_compile_s": round(m["build_s"], 3)}
    for phase in ("train", "predict"):
        p = m[phase]
        r = rate(p["times"], batch)
        row.update({
            f"{phase}_first_step_s": round(p["warmup_s"][0], 3),
            f"{phase}_step_s_median": round(statistics.median(p["times"]), 4),
            f"{phase}_images_per_s": round(r, 2),
            f"{phase}_images_per_s_core": round(r / n_cores, 2),
            f"{phase}_images_per_cpu_s": round(batch * len(p["times"]) / max(p["cpu_s"], 1e-9), 2),
        })
    row["loss_first_last"] = [round(m["losses"][0], 4), round(m["losses"][-1], 4)]
    return row


def parse_ints(text: str) -> tuple:
    """``"1,2,2,1"`` -> ``(1, 2, 2, 1)``."""
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_blocks(ap, text):
    """``--blocks``: four positive integers (blocks per stage), or None when not given."""
    if text is None:
        return None
    blocks = parse_ints(text)
    if len(blocks) != 4 or min(blocks) < 1:
        ap.error(f"--blocks must be four positive integers, got {text!r}")
    return blocks


def parse_only(ap, text: str, kinds) -> list:
    """``--only``: the named subset of ``kinds``, in the order of ``kinds``."""
    only = {k.strip() for k in text.split(",") if k.strip()}
    wanted = [k for k in kinds if k in only]
    if only - set(kinds) or not wanted:
        ap.error(f"--only: unknown {sorted(only - set(kinds))} or none given; "
                 f"known: {', '.join(kinds)}")
    return wanted


def keras_densenet(blocks, input_shape, name="densenet121"):
    """keras.applications' DenseNet (no top, average pooling) with ``blocks`` dense layers per
    stage: ``keras.applications.DenseNet121`` itself for (6, 12, 24, 16)."""
    import keras

    if tuple(blocks) == (6, 12, 24, 16):
        return keras.applications.DenseNet121(weights=None, include_top=False, pooling="avg",
                                              input_shape=tuple(input_shape))
    from keras.src.applications.densenet import DenseNet

    return DenseNet(list(blocks), include_top=False, weights=None, pooling="avg",
                    input_shape=tuple(input_shape), name=f"{name}_reduced")


def keras_resnet(blocks, input_shape, name="resnet50"):
    """keras.applications' ResNet v1 (no top, average pooling) with ``blocks`` bottleneck blocks
    per stage: ``keras.applications.ResNet50`` itself for (3, 4, 6, 3)."""
    import keras

    if tuple(blocks) == (3, 4, 6, 3):
        return keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                           input_shape=tuple(input_shape))
    from keras.src.applications.resnet import ResNet, stack_residual_blocks_v1

    def stack_fn(x):
        for i, (filters, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            x = stack_residual_blocks_v1(x, filters, n, stride1=2 if i else 1, name=f"conv{i + 2}")
        return x

    return ResNet(stack_fn, preact=False, use_bias=True, include_top=False, weights=None,
                  input_shape=tuple(input_shape), pooling="avg", name=f"{name}_reduced")


def _layer_at(model, path: str):
    """The layer that :func:`cxr_keras.evaluation.flops.count_flops` names ``path`` ("a/b/c")."""
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


def count_train_flops(model) -> dict:
    """Forward MACs per image and FLOPs per image of one training step, from the layers.

    MACs per image: :func:`cxr_keras.evaluation.flops.count_flops` (weight products of convolutions
    and dense layers; the papers' "FLOPs"). A training step costs 3 x 2 x MACs (forward, input
    gradient, weight gradient, 2 FLOPs per MAC) for each counted layer with trainable weights and
    2 x MACs (forward only) for a frozen one; exact when frozen layers sit below every trainable one
    (as in the model-level ensemble), so a fully trainable model gets the usual 6 x MACs.
    Returns ``{"gmacs", "train_gflop_per_image", "uncounted"}``.
    """
    from cxr_keras.evaluation.flops import count_flops

    counted = count_flops(model)
    train = sum((6 if _layer_at(model, name).trainable_weights else 2) * macs
                for name, _, macs in counted["per_layer"])
    return {"gmacs": counted["macs"] / 1e9, "train_gflop_per_image": train / 1e9,
            "uncounted": counted["uncounted"]}


def flop_fields(row: dict, gmacs: float, train_gflop_per_image: float, views: int = 1) -> dict:
    """Add to a :func:`model_row` row: GMACs per image, training GFLOP per image and the achieved
    GFLOP/s of training (FLOPs per training image x images/s) and of inference (2 x MACs x
    ``views`` forward passes per image x images/s)."""
    row.update(gmacs=round(gmacs, 4), train_gflop_per_image=round(train_gflop_per_image, 4))
    if "train_images_per_s" in row:
        row["train_gflop_per_s"] = round(train_gflop_per_image * row["train_images_per_s"], 2)
    if "predict_images_per_s" in row:
        row["predict_gflop_per_s"] = round(2 * gmacs * views * row["predict_images_per_s"], 2)
    return row


def conditions(results: dict) -> str:
    """``"<backend> backend, <n> cores, 1-min load average <a> before / <b> after"``."""
    before, after = results["loadavg_1min_before_after"]
    return (f"{results['backend']} backend, {results['cores']} cores, 1-min load average "
            f"{before:.2f} before / {after:.2f} after")


def save(results: dict, out, name: str) -> dict:
    """Write ``OUT/<name>.json`` atomically, say so, and return ``results``."""
    from cxr_keras.io import write_json

    write_json(out / f"{name}.json", results)
    print(f"\nwrote {out / f'{name}.json'}")
    return results
