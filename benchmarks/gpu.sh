#!/usr/bin/env bash
# GPU figures in one command: the paper models against their PyTorch + timm peers, mixed precision
# and XLA, on the JAX backend and (where TensorFlow imports) the TensorFlow backend.
#
#   benchmarks/gpu.sh [--dry-run] [OUT]          # OUT defaults to /tmp/cxr-bench-gpu
#
# For each backend: `run_all.py --only train,mlrfnet` (bench_fzlpr_train.py: densenet121_fzlpr and
# keras DenseNet121 against timm densenet121, batch 16 at 224; bench_mlrfnet_train.py: MLRFNet and
# its ResNet-50 ablation and keras ResNet50 against timm res2net50_26w_4s / resnet50, batch 8 at
# 224) with `--precision $PRECISION` (default mixed_float16, what `--mixed-precision auto` picks on
# a GPU) and `--jit true` (XLA); the peer runs on CUDA under torch.autocast to the same half type
# (float16 with a GradScaler), channels_last, eager (no torch.compile). Each backend's combined
# table (ours / peer column) goes to OUT/<backend>/run_all.json and, with a heading naming the
# backend, precision, XLA and the devices, to OUT/gpu.md, which is printed at the end.
#
# Needs the `bench` extra (torch, timm) and a JAX with CUDA; TensorFlow is optional (the JAX path
# imports none of it). --dry-run: tiny settings on whatever device there is (a CPU here), to check
# that everything runs, in a few minutes; its figures mean nothing. Environment: PYTHON (default
# .venv/bin/python, else python3), PRECISION, STEPS (timed steps, default 20), WARMUP (default 3).
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-/tmp/cxr-bench-gpu}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
PRECISION="${PRECISION:-mixed_float16}"
STEPS="${STEPS:-20}"
WARMUP="${WARMUP:-3}"
mkdir -p "$OUT"

backends=(jax)
if "$PYTHON" -c "import tensorflow" >/dev/null 2>&1; then backends+=(tensorflow); fi

common="--precision $PRECISION --jit true"
if (( DRY )); then
  # reduced DenseNet (no peer: the peer is timed for the full network only) and the full MLRFNet
  # at 64 px with its peer, one timed step each
  train_args="$common --blocks 1,2,2,1 --size 160 --batch 2 --steps 1 --warmup 1"
  mlrfnet_args="$common --only mlrfnet --size 64 --batch 2 --steps 1 --warmup 1 --latency-steps 1"
else
  train_args="$common --steps $STEPS --warmup $WARMUP"
  mlrfnet_args="$common --only mlrfnet,mlrfnet_resnet50,keras_resnet50 --steps $STEPS --warmup $WARMUP --latency-steps 10"
fi

md="$OUT/gpu.md"
: > "$md.tmp"
status=0
for backend in "${backends[@]}"; do
  echo "=== backend $backend" >&2
  if ! KERAS_BACKEND="$backend" "$PYTHON" "$HERE/run_all.py" --only train,mlrfnet \
      --out "$OUT/$backend" --train-args "$train_args" --mlrfnet-args "$mlrfnet_args"; then
    status=1
  fi
  KERAS_BACKEND="$backend" "$PYTHON" - "$OUT/$backend" "$PRECISION" "$DRY" >> "$md.tmp" <<'EOF'
import json, sys
from pathlib import Path
out, precision, dry = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
summary = json.loads((out / "run_all.json").read_text())
env = next((r["result"] for r in summary["runs"].values() if r.get("result")), {}) or {}
print(f"## {env.get('backend', '?')} backend, {precision}, XLA on"
      + (" (--dry-run: tiny settings, figures mean nothing)" if dry else "") + "\n")
print(f"Keras {env.get('keras_version')}, devices {env.get('devices')}, "
      f"TensorFlow {env.get('tf_version')}, JAX {env.get('jax_version', '-')}; "
      f"{summary['wall_s']:.0f} s.\n")
print(summary["table_markdown"] + "\n")
EOF
done
mv "$md.tmp" "$md"
cat "$md"
echo "wrote $md" >&2
exit $status
