"""Time of fitting the multiloss prediction-level ensembles: SLSQP weights and stacking.

    python benchmarks/bench_ensemble.py --members 3,5,12 --samples 1000,10000 --out /tmp/cxr-bench

On synthetic member predictions (``--classes`` K = 3; seed fixed): true classes uniform over K;
member m's probabilities are the softmax of ``a_m * onehot(y) + N(0, 1)`` noise with ``a_m``
falling linearly from 2.5 (the best member, m = 0) to 0.5, so the members differ in quality and the
best one is known. For every ``--members`` M x ``--samples`` N:

- ``slsqp``: :func:`cxr_keras.ensemble.slsqp_weights` as the multiloss recipe calls it (the uniform
  start + ``--starts`` (10) Dirichlet starts, SLSQP with the analytic gradient, maxiter 1000,
  ftol 1e-12); best of ``--repeat`` (3) wall times per fit. The SLSQP calls are counted by
  wrapping ``scipy.optimize.minimize`` inside :mod:`cxr_keras.ensemble` for this process only:
  runs, iterations and loss evaluations per fit. Checks: the weights are finite, in [0, 1] and sum
  to 1 (within 1e-9); the fitted log loss is no worse than the uniform average's nor the best
  single member's (the optimum over the simplex includes both; tolerance 1e-9); the largest weight
  goes to the best member (reported, expected here but not required);
- ``stacking``: :func:`cxr_keras.ensemble.fit_stacking` (Keras meta-learner Input(M K) ->
  Dense(M K, relu) -> Dense(K, softmax), Adam 1e-3, batch 32) for ``--stacking-epochs`` (20)
  epochs, once after an untimed 1-epoch fit, for M in ``--stacking-members`` (3,5: the paper's
  top-3 and top-5); time per fit;
  per epoch = (that fit - a 1-epoch fit) / (epochs - 1), which leaves out building and tracing the
  model; the recipe's 300 epochs = the 1-epoch fit + 299 epochs. Checks: the predicted rows are
  probabilities (sum to 1 within 1e-5) and the training accuracy beats chance (1 / K).

Prints a Markdown table and writes ``OUT/bench_ensemble.json`` atomically; exits 1 (after writing)
when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository root and this folder (_timing)

import _timing  # noqa: E402

RECIPE_STACKING_EPOCHS = 300


def _members(rng, m: int, n: int, k: int):
    """(M, N, K) member probabilities, best member first, and the true classes (N,)."""
    import numpy as np
    from scipy import special

    y = rng.integers(0, k, n)
    strength = np.linspace(2.5, 0.5, m) if m > 1 else np.array([2.5])
    logits = strength[:, None, None] * np.eye(k)[y][None] + rng.standard_normal((m, n, k))
    return special.softmax(logits, axis=-1), y


class _CountingMinimize:
    """Stands in for ``scipy.optimize.minimize`` in :mod:`cxr_keras.ensemble`; records each
    call's iterations, loss evaluations and success."""

    def __init__(self, minimize):
        self.minimize, self.calls = minimize, []

    def __call__(self, *args, **kwargs):
        res = self.minimize(*args, **kwargs)
        self.calls.append({"nit": int(res.nit), "nfev": int(res.nfev),
                           "success": bool(res.success)})
        return res


def _slsqp(p, y, starts: int, repeat: int, counter) -> dict:
    import numpy as np

    from cxr_keras import ensemble as E

    times = []
    for _ in range(repeat):
        counter.calls.clear()
        t = time.perf_counter()
        w, loss = E.slsqp_weights(p, y, starts=starts, seed=0)
        times.append(time.perf_counter() - t)
    calls = list(counter.calls)  # those of the last fit
    uniform = E.ensemble_log_loss(p, y)
    singles = [E.ensemble_log_loss(p[i:i + 1], y) for i in range(len(p))]
    checks = {"weights_finite_in_0_1": bool(np.isfinite(w).all() and w.min() >= 0
                                            and w.max() <= 1),
              "weights_sum_to_1": bool(abs(w.sum() - 1.0) <= 1e-9),
              "loss_le_uniform": bool(loss <= uniform + 1e-9),
              "loss_le_best_member": bool(loss <= min(singles) + 1e-9)}
    acc = float(np.mean(np.argmax(E.weighted_average(p, w), axis=1) == y))
    return {"fit_s": round(min(times), 5), "fit_s_all": [round(t, 5) for t in times],
            "fits_per_s": round(1 / min(times), 2), "runs": len(calls),
            "iterations": sum(c["nit"] for c in calls),
            "iterations_per_run_max": max(c["nit"] for c in calls),
            "loss_evaluations": sum(c["nfev"] for c in calls),
            "converged_runs": sum(c["success"] for c in calls),
            "weights": [round(float(v), 6) for v in w], "log_loss": round(loss, 6),
            "uniform_log_loss": round(uniform, 6), "best_member_log_loss": round(min(singles), 6),
            "accuracy": round(acc, 4), "largest_weight_to_best_member": bool(np.argmax(w) == 0),
            "checks": checks, "sane": all(checks.values())}


def _stacking(p, y, epochs: int) -> dict:
    import numpy as np

    from cxr_keras import ensemble as E

    E.fit_stacking(p, y, epochs=1, seed=0)  # untimed: the process's first Keras fit warms up
    t = time.perf_counter()
    E.fit_stacking(p, y, epochs=1, seed=0)  # model building and tracing + one epoch
    one_s = time.perf_counter() - t
    t = time.perf_counter()
    model = E.fit_stacking(p, y, epochs=epochs, seed=0)
    fit_s = time.perf_counter() - t
    epoch_s = max(fit_s - one_s, 0.0) / (epochs - 1)
    probs = E.stacking_predict(model, p)
    acc = float(np.mean(np.argmax(probs, axis=1) == y))
    best = max(float(np.mean(np.argmax(q, axis=1) == y)) for q in p)
    checks = {"rows_sum_to_1": bool(np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)),
              "accuracy_above_chance": bool(acc > 1.0 / p.shape[2])}
    return {"fit_s": round(fit_s, 3), "fits_per_s": round(1 / fit_s, 3), "epochs": epochs,
            "one_epoch_fit_s": round(one_s, 3), "epoch_s": round(epoch_s, 4),
            "recipe_300_epochs_s": round(one_s + (RECIPE_STACKING_EPOCHS - 1) * epoch_s, 1),
            "train_accuracy": round(acc, 4), "best_member_accuracy": round(best, 4),
            "checks": checks, "sane": all(checks.values())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", default="3,5,12", help="member counts M (default 3,5,12)")
    ap.add_argument("--samples", default="1000,10000", help="case counts N (default 1000,10000)")
    ap.add_argument("--classes", type=int, default=3, help="classes K (default 3)")
    ap.add_argument("--starts", type=int, default=10,
                    help="SLSQP random starts besides the uniform one (default 10, the recipe's)")
    ap.add_argument("--repeat", type=int, default=3, help="SLSQP fits per setting, best kept")
    ap.add_argument("--stacking-members", default="3,5",
                    help="member counts for stacking (default 3,5; empty: no stacking)")
    ap.add_argument("--stacking-epochs", type=int, default=20,
                    help="epochs per stacking fit, at least 2 (default 20; the recipe trains 300)")
    ap.add_argument("--seed", type=int, default=0, help="numpy seed (default 0)")
    ap.add_argument("--out", default="/tmp/cxr-bench",
                    help="output folder (default /tmp/cxr-bench)")
    args = ap.parse_args(argv)
    members, samples = _timing.parse_ints(args.members), _timing.parse_ints(args.samples)
    stack_members = _timing.parse_ints(args.stacking_members)
    if (not members or not samples or min(members + samples) < 1 or args.classes < 2
            or args.repeat < 1 or args.starts < 0 or args.stacking_epochs < 2):
        ap.error("--members/--samples need positive counts, --classes >= 2, --repeat >= 1, "
                 "--stacking-epochs >= 2, --starts >= 0")

    import numpy as np

    from cxr_keras import ensemble as E

    counter = _CountingMinimize(E.minimize)
    E.minimize = counter  # count SLSQP's iterations (this process only)
    cores = _timing.cores()
    load_before = os.getloadavg()[0]
    rows = []
    for n in samples:
        for m in sorted(set(members) | set(stack_members)):
            p, y = _members(np.random.default_rng([args.seed, m, n]), m, n, args.classes)
            if m in members:
                rows.append({"method": "slsqp", "members": m, "samples": n,
                             "classes": args.classes, "starts": args.starts,
                             **_slsqp(p, y, args.starts, args.repeat, counter)})
            if m in stack_members:
                rows.append({"method": "stacking", "members": m, "samples": n,
                             "classes": args.classes, **_stacking(p, y, args.stacking_epochs)})
    E.minimize = counter.minimize
    load = (load_before, os.getloadavg()[0])
    env = _timing.environment(cores, load) if stack_members else {
        "cores": cores, "cpu_count": os.cpu_count(), "backend": "numpy/scipy",
        "loadavg_1min_before_after": [round(v, 2) for v in load]}
    results = {"classes": args.classes, "starts": args.starts, "repeat": args.repeat,
               "stacking_epochs": args.stacking_epochs, "seed": args.seed, **env,
               "sane": all(r["sane"] for r in rows), "rows": rows}

    print(f"\nEnsemble fitting on synthetic member predictions ({args.classes} classes, members "
          f"of falling quality, best first), {_timing.conditions(results)}\n")
    print("| method | members | samples | s per fit | fits/s | runs | iterations "
          "| loss evals | log loss (fit / uniform / best member) | accuracy | checks |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for r in rows:
        ok = "ok" if r["sane"] else "FAILED: " + ", ".join(k for k, v in r["checks"].items()
                                                          if not v)
        if r["method"] == "slsqp":
            print(f"| SLSQP weights | {r['members']} | {r['samples']} | {r['fit_s']:.4f} "
                  f"| {r['fits_per_s']:.1f} | {r['runs']} | {r['iterations']} "
                  f"| {r['loss_evaluations']} | {r['log_loss']:.4f} / {r['uniform_log_loss']:.4f} "
                  f"/ {r['best_member_log_loss']:.4f} | {r['accuracy']:.3f} | {ok} |")
        else:
            print(f"| stacking, {r['epochs']} epochs | {r['members']} | {r['samples']} "
                  f"| {r['fit_s']:.2f} | {r['fits_per_s']:.2f} | - | - | - "
                  f"| - | {r['train_accuracy']:.3f} (best member {r['best_member_accuracy']:.3f}) "
                  f"| {ok} |")
    slsqp = [r for r in rows if r["method"] == "slsqp"]
    if slsqp:
        best = sum(r["largest_weight_to_best_member"] for r in slsqp)
        print(f"\nSLSQP: the largest weight went to the best member in {best} of {len(slsqp)} "
              f"settings; each fit is 1 + {args.starts} SLSQP runs.")
    for r in rows:
        if r["method"] == "stacking":
            print(f"stacking M={r['members']}, N={r['samples']}: {r['epoch_s']:.3f} s per epoch, "
                  f"about {r['recipe_300_epochs_s']:.0f} s for the recipe's 300 epochs")
    _timing.save(results, Path(args.out), "bench_ensemble")
    if not results["sane"]:
        sys.exit("bench_ensemble: a sanity check failed (see the table)")
    return results


if __name__ == "__main__":
    main()
