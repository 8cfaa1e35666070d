#!/usr/bin/env bash
# The CUDA paths end to end on a GPU machine, each step timed: latency with CUDA events, the main command with its
# proxy on the GPU, apply's finetune with and without AMP, sparse training, one-shot pruning with calibration on the
# GPU. CPU-only CI never runs this; run it where a GPU is, from the repository root:
#
#   benchmarks/gpu_check.sh [OUT_DIR]          # default runs/gpu_check; AUTOPRUNE_HOME as set (or a fresh one)
#
# Every step's output goes to OUT_DIR/log.txt, a line per step (exit code, wall seconds) to OUT_DIR/summary.txt.
# It needs autoprune's dependencies importable (`pip install -e .`, or the repository on PYTHONPATH with the wheels
# installed elsewhere, as on the offline GPU machine of docs/BENCHMARKS.md, "CUDA paths on an NVIDIA H100").
set -uo pipefail
out=${1:-runs/gpu_check}
mkdir -p "$out"
: > "$out/log.txt"
: > "$out/summary.txt"
export AUTOPRUNE_HOME=${AUTOPRUNE_HOME:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
name=gpu-check-$$

step() {  # step LABEL COMMAND...: run it, log its output, record exit code and wall time
  local label=$1; shift
  echo "=== $label: $*" >> "$out/log.txt"
  local t0; t0=$(date +%s.%N)
  "$@" >> "$out/log.txt" 2>&1
  local rc=$?
  local t1; t1=$(date +%s.%N)
  printf '%-34s rc=%-3s %7.1f s\n' "$label" "$rc" "$(awk "BEGIN {print $t1 - $t0}")" | tee -a "$out/summary.txt"
}
ap() { python3 -m autoprune "$@"; }

{
  echo "command: benchmarks/gpu_check.sh $*"
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, ultralytics, optuna, deap; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'| ultralytics', ultralytics.__version__, '| optuna', optuna.__version__, '| deap', deap.__version__)"
  python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tail -1
  echo "cpu cores: $(nproc)"
} | tee -a "$out/summary.txt"

step "cost demo, cuda (events)"        ap cost --device cuda --json
step "cost demo, cuda, batch 32"       ap cost --device cuda --batch 32 --json
step "cost yolov8n.yaml, cuda"         ap cost --model yolov8n.yaml --device cuda --json
step "cost demo, onnxruntime cuda"     ap cost --device cuda --backend onnxruntime --json
step "search (main command), cuda"     ap search --budget-gflops 5 --device cuda --name "$name" --json
step "trials --pareto"                 ap trials --name "$name" --pareto
step "proxy keep 0.7, cuda"            ap proxy --keep 0.7 --device cuda --json
step "proxy keep 0.7, cuda, reconstruct" ap proxy --keep 0.7 --reconstruct --device cuda --json
step "apply trial 1, 3 epochs, AMP"    ap apply --name "$name" --trial 1 --epochs 3 --device cuda --out "$name-amp" --json
step "apply trial 1, 3 epochs, fp32"   ap apply --name "$name" --trial 1 --epochs 3 --device cuda --no-amp \
                                          --out "$name-fp32" --json
step "prune global hessian, cuda"      ap prune --target-gflops 4.1 --strategy global --criterion hessian \
                                          --reconstruct --device cuda --out "$AUTOPRUNE_HOME/pruned.pt" --json
step "sparsify 1 epoch, cuda"          ap sparsify --epochs 1 --device cuda --name "$name" --json
echo "AUTOPRUNE_HOME=$AUTOPRUNE_HOME; runs under $(pwd)/runs" | tee -a "$out/summary.txt"
