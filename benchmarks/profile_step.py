"""Where one training step's time goes, ours (TensorFlow profiler) and the peer's (torch.profiler).

    python benchmarks/profile_step.py --model fzlpr --steps 2 --timed 4
    python benchmarks/profile_step.py --model mlrfnet --inter-op 1     # a threading lever

For one paper model (``--model``: the builders and settings of :mod:`bench_precision`:
``fzlpr``, ``keras_densenet``, ``mlrfnet``, ``keras_resnet50`` as in ``bench_fzlpr_train.py`` /
``bench_mlrfnet_train.py``; ``resnet18``, mtpret's supervised ResNet-18, and ``vit_s``, dual_mae's
ViT-S/16, as in ``bench_mtpret_train.py`` / ``bench_dual_mae_pretrain.py``) and its timm peer, same
batches:

1. ``--timed`` training steps, ours and the peer alternating (after ``--warmup``), unprofiled:
   the ratio ours / peer of images/s, as the median of step-by-step ratios with its range;
2. ``--steps`` of our training steps under ``tf.profiler.experimental`` (the trace is read back
   from its ``.xplane.pb``: the executor's op events, ``scope/name:OpType``), then as many of the
   peer's under ``torch.profiler`` (self CPU time per ``aten::`` op).

Prints, for each side, the time per step by op category (convolution forward, its input and filter
gradients, batch normalisation, activations, concatenation and slicing, pooling, optimiser,
element-wise and other) and the top op types with their share; for ours also forward / backward
(``gradient_tape/``) / optimiser shares and the most expensive layers. Op times are summed over the
executor's threads: where two ops run at once their times add up, so the sum can exceed the wall
time (its ratio to the wall time is printed as "op time / wall").

``--inter-op`` / ``--intra-op`` set TensorFlow's thread pools before anything runs (the peer keeps
``torch.set_num_threads(cores)``), ``--policy`` ours' dtype policy: the peer in the same process is
the yardstick that makes separate runs of such process-wide levers comparable. Writes
``OUT/profile_step_<model>.json`` atomically; the traces stay under ``OUT/trace_<model>``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository root and this folder (_timing)

import _timing  # noqa: E402

# (category, predicate on the TensorFlow op type) in order; the first that matches wins
TF_CATEGORIES = (
    ("conv backward input", lambda t: "BackpropInput" in t),
    ("conv backward filter", lambda t: "BackpropFilter" in t),
    ("conv forward", lambda t: "Conv2D" in t or "Conv" in t and "Backprop" not in t),
    ("batch norm", lambda t: "BatchNorm" in t or t in ("Rsqrt", "RsqrtGrad", "SquaredDifference")),
    ("activation", lambda t: t in ("Relu", "ReluGrad", "Sigmoid", "SigmoidGrad", "Relu6")),
    ("concat / slice / pad", lambda t: t in ("ConcatV2", "ConcatOffset", "Slice", "StridedSlice",
                                              "StridedSliceGrad", "Split", "SplitV", "Pad",
                                              "PadV2", "MirrorPad", "Pack", "Unpack")),
    ("pooling", lambda t: "Pool" in t),
    ("matmul", lambda t: "MatMul" in t),
    ("reduction", lambda t: t in ("Mean", "Sum", "Max", "Prod", "BiasAddGrad")),
    ("element-wise", lambda t: t in ("Mul", "AddV2", "Add", "AddN", "Sub", "RealDiv", "Square",
                                      "Sqrt", "Maximum", "Minimum", "Neg", "Exp", "Log", "Log1p",
                                      "Select", "SelectV2", "Cast", "BiasAdd", "Tile", "Reshape",
                                      "Transpose", "BroadcastTo", "Pow", "Abs", "Sign",
                                      "ZerosLike", "OnesLike", "Fill", "Softplus", "Identity",
                                      "Relu6Grad", "DivNoNan", "Less", "Greater", "LogicalAnd")),
)
TORCH_CATEGORIES = (
    ("conv backward (input + filter)", lambda t: "convolution_backward" in t),
    ("conv forward", lambda t: "convolution" in t or "conv2d" in t),
    ("batch norm", lambda t: "batch_norm" in t),
    ("activation", lambda t: t in ("aten::relu", "aten::relu_", "aten::threshold_backward",
                                   "aten::clamp_min", "aten::clamp_min_", "aten::sigmoid",
                                   "aten::sigmoid_backward")),
    ("concat / slice / pad", lambda t: t in ("aten::cat", "aten::slice", "aten::split",
                                              "aten::narrow", "aten::slice_backward",
                                              "aten::constant_pad_nd", "aten::stack")),
    ("pooling", lambda t: "pool" in t),
    ("matmul", lambda t: t in ("aten::addmm", "aten::mm", "aten::matmul", "aten::linear")),
    ("reduction", lambda t: t in ("aten::sum", "aten::mean", "aten::max")),
    ("element-wise", lambda t: t.startswith("aten::")),
)


def categorise(op: str, table) -> str:
    for name, test in table:
        if test(op):
            return name
    return "other"


def tf_op_events(logdir: str) -> list:
    """``(name, op_type, seconds)`` of every executor op event of the newest trace in ``logdir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for e in line.events:
                name = plane.event_metadata[e.metadata_id].name
                if ":" in name and "::" not in name:
                    scope, op = name.rsplit(":", 1)
                    events.append((scope, op, e.duration_ps * 1e-12))
    return events


def _phase(scope: str) -> str:
    if scope.startswith(("gradient_tape/", "AddN")) or "/gradient_tape/" in scope:
        return "backward"  # AddN_<k>: the gradients of a tensor used twice, summed
    head = scope.split("/", 1)[0].lower().replace("_", "")
    if head in ("adam", "adamw", "sgd", "rmsprop") or "optimizer" in head:
        return "optimiser"
    return "forward"


def _layer(scope: str) -> str:
    """The layer of an op: the component after the model's name (gradients folded in)."""
    parts = [p for p in scope.split("/") if p != "gradient_tape"]
    return parts[1] if len(parts) > 2 else parts[0]


def summarise(per_op: dict, table, steps: int, wall: float, optimiser=None) -> dict:
    """``{op_type: seconds}`` summed over ``steps`` -> per-step categories and top ops; the ops'
    time inside the optimiser's update (``optimiser``, ``{op_type: seconds}``) is its own
    category."""
    total = sum(per_op.values())
    optimiser = optimiser or {}
    cats = collections.Counter({"optimiser": sum(optimiser.values())})
    for op, s in per_op.items():
        cats[categorise(op, table)] += s - optimiser.get(op, 0.0)
    return {"wall_s_per_step": round(wall / steps, 4), "op_s_per_step": round(total / steps, 4),
            "categories": [(c, round(s / steps, 4), round(s / total, 4))
                           for c, s in cats.most_common()],
            "top_ops": [(o, round(s / steps, 4), round(s / total, 4))
                        for o, s in collections.Counter(per_op).most_common(15)]}


def profile_ours(model, xs, ys, steps: int, logdir: str) -> dict:
    import numpy as np
    import tensorflow as tf

    tf.profiler.experimental.start(logdir)
    t = time.perf_counter()
    for i in range(steps):
        np.asarray(model.train_on_batch(xs[i % len(xs)], ys[i % len(ys)]))
    wall = time.perf_counter() - t
    tf.profiler.experimental.stop()
    events = tf_op_events(logdir)
    per_op, phases, layers, opt = (collections.Counter() for _ in range(4))
    for scope, op, s in events:
        per_op[op] += s
        phases[_phase(scope)] += s
        layers[_layer(scope)] += s
        if _phase(scope) == "optimiser":
            opt[op] += s
    out = summarise(per_op, TF_CATEGORIES, steps, wall, opt)
    total = sum(phases.values())
    out["phases"] = [(p, round(s / steps, 4), round(s / total, 4)) for p, s in phases.most_common()]
    out["top_layers"] = [(n, round(s / steps, 4), round(s / total, 4))
                         for n, s in layers.most_common(12)]
    return out


def profile_peer(peer, xs, ys, steps: int) -> dict:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for i in range(steps):
            peer.train_on_batch(xs[i % len(xs)], ys[i % len(ys)])
        wall = time.perf_counter() - t
    per_op, opt = collections.Counter(), collections.Counter()
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        s = e.self_cpu_time_total * 1e-6
        per_op[e.name] += s
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("Optimizer.step"):
            parent = parent.cpu_parent
        if parent is not None:
            opt[e.name] += s
    return summarise(per_op, TORCH_CATEGORIES, steps, wall, opt)


def _print(title: str, s: dict, extra=()) -> None:
    print(f"\n{title}: wall {s['wall_s_per_step']:.3f} s per step, op time "
          f"{s['op_s_per_step']:.3f} s (op time / wall {s['op_s_per_step'] / s['wall_s_per_step']:.2f})\n")
    for key, head in (("categories", "category"), ("top_ops", "op type"), *extra):
        print(f"| {head} | s per step | share |\n|---|---:|---:|")
        for name, sec, share in s[key]:
            print(f"| {name} | {sec:.3f} | {100 * share:.1f}% |")
        print()


def main(argv=None) -> dict:
    import bench_precision

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=tuple(bench_precision.KINDS), default="fzlpr")
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--batch", type=int, default=None, help="batch (default: the benchmark's)")
    ap.add_argument("--steps", type=int, default=2, help="profiled steps per side (default 2)")
    ap.add_argument("--timed", type=int, default=4,
                    help="unprofiled alternating steps for the ours / peer ratio (default 4)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--policy", choices=_timing.PRECISIONS, default="float32",
                    help="dtype policy of ours (the peer stays float32)")
    ap.add_argument("--inter-op", type=int, default=None, help="TensorFlow inter-op threads")
    ap.add_argument("--intra-op", type=int, default=None, help="TensorFlow intra-op threads")
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="ours only")
    ap.add_argument("--peer-format", choices=("channels_last", "contiguous"),
                    default="channels_last")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/cxr-bench", help="output folder")
    args = ap.parse_args(argv)
    if min(args.steps, args.warmup) < 1 or args.timed < 0:
        ap.error("--steps and --warmup must be at least 1, --timed at least 0")

    import numpy as np
    import tensorflow as tf

    if args.inter_op is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    if args.intra_op is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    import _peer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = _timing.cores()
    batch, _, _, arch, loss, opt = bench_precision.KINDS[args.model]
    batch = args.batch or batch
    rng = np.random.default_rng(args.seed)
    pos = 1 / 6 if loss == "bce" else 0.1
    xs = _timing.tensors([rng.standard_normal((batch, args.size, args.size, 3))
                          .astype(np.float32) for _ in range(2)])
    ys = _timing.tensors([(rng.random((batch, bench_precision.NUM_CLASSES)) < pos)
                          .astype(np.float32) for _ in range(2)])
    models = {"ours": {"model": bench_precision._ours(args.model, args.size, args.policy,
                                                      args.seed), "targets": ys, "build_s": 0.0}}
    peer_on = args.peer and _peer.available()
    if peer_on:
        models["peer"] = {"model": _peer.Peer(arch, bench_precision.NUM_CLASSES, args.size, loss,
                                              opt, cores, args.peer_format),
                          "targets": ys, "build_s": 0.0}
    results = {"model": args.model, "batch": batch, "size": args.size, "policy": args.policy,
               "peer": arch if peer_on else None, "steps": args.steps, "timed": args.timed,
               "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
    load0 = os.getloadavg()[0]
    for i in range(args.warmup + args.timed):  # alternating, unprofiled
        for m in models.values():
            t = time.perf_counter()
            np.asarray(m["model"].train_on_batch(xs[i % 2], ys[i % 2]))
            m.setdefault("times", []).append(time.perf_counter() - t)
    if peer_on and args.timed:
        a = models["ours"]["times"][args.warmup:]
        b = models["peer"]["times"][args.warmup:]
        r = [tb / ta for ta, tb in zip(a, b)]
        results["ours_over_peer_train"] = {
            "median": round(statistics.median(r), 3), "min": round(min(r), 3),
            "max": round(max(r), 3), "overall": round(sum(b) / sum(a), 3),
            "ours_step_s": round(statistics.median(a), 3),
            "peer_step_s": round(statistics.median(b), 3)}
    results["ours"] = profile_ours(models["ours"]["model"], xs, ys, args.steps,
                                   str(out / f"trace_{args.model}"))
    if peer_on:
        results["peer_profile"] = profile_peer(models["peer"]["model"], xs, ys, args.steps)
    results.update(_timing.environment(cores, (load0, os.getloadavg()[0])))

    head = (f"{args.model}, batch {batch}, {args.size}px, ours {args.policy}, TF threads inter "
            f"{results['inter_op_threads']} / intra {results['intra_op_threads']}, oneDNN opts "
            f"{results['onednn_opts']}, load {results['loadavg_1min_before_after']}")
    print("\n" + head)
    if "ours_over_peer_train" in results:
        r = results["ours_over_peer_train"]
        print(f"train ours / peer (timm {arch}): {r['median']:.2f}x [{r['min']:.2f}, "
              f"{r['max']:.2f}] over {args.timed} steps (step s: ours {r['ours_step_s']}, peer "
              f"{r['peer_step_s']})")
    _print("ours (TensorFlow profiler)", results["ours"],
           (("phases", "phase"), ("top_layers", "layer")))
    if peer_on:
        _print(f"peer (torch.profiler, timm {arch})", results["peer_profile"])
    return _timing.save(results, out, f"profile_step_{args.model}")


if __name__ == "__main__":
    main()
