#!/usr/bin/env bash
# One command, <= 9.5 minutes on one GPU (stage limits sum to 570 s), torch only (no Ray, MLflow or network needed):
#   PYTHONPATH=. bash benchmarks/gpu_check.sh            # RESULTS=folder to keep the figures elsewhere
# Stages, most important first, each under its own time limit (a stage cut short loses only itself):
# 1. parity: sab vs sab_reference gradients on CUDA; float64 gradients on CUDA vs the CPU (sab, cuDNN's
#    bptt, bptt_cell, tbptt); run-to-run determinism of sab (index_put_ must repeat bit for bit,
#    index_add_'s atomics measured beside it);
# 2. launches: the kernels, copies and fills the GPU really ran per time step (torch.profiler) and the
#    host syncs it made (sync debug mode), beside the CPU's dispatch-mode counts in benchmarks/README;
# 3. costs at T = 1000, B = 64, H = 128 (issue #13's goal: sab within 10x of cuDNN's bptt), eager and
#    whole-step CUDA graphs side by side;
# 4. one short copy trial through sab.train on CUDA (cuda_graphs auto: the trial's own graphed path);
# 5. costs at T = 5000, eager, then graphed.
# Figures: the output, and $RESULTS/gpu_cost_1000.csv, gpu_cost_5000.csv and gpu_cost_5000_graphs.csv.
# Every engine runs in float32 without TF32 (sab.measure.full_float32), cuDNN's included.
# Exit 0 only when every stage passed; a failed stage does not stop the others.
# Rehearsal on a CPU, every stage at small sizes (tests/benchmarks/test_gpu_check.py runs it, so an
# argument a stage no longer accepts fails in CI, not in the first minutes of a lent GPU):
#   DEVICE=cpu T_SHORT=24 T_LONG=48 B=4 H=16 REPEATS=1 RESULTS=/tmp/r bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
RESULTS="${RESULTS:-results/cost}"
B="${B:-64}" H="${H:-128}" DEVICE="${DEVICE:-cuda}" T_SHORT="${T_SHORT:-1000}" T_LONG="${T_LONG:-5000}" REPEATS="${REPEATS:-3}"
mkdir -p "$RESULTS"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU'); sys.exit(0 if torch.cuda.is_available() or '$DEVICE' == 'cpu' else 1)" || exit 1
failed=()
stage() {  # stage NAME LIMIT_S COMMAND...: run it under a time limit, say how it ended
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name (limit ${limit} s)"
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  [ $rc -eq 0 ] || failed+=("$name (exit $rc)")
}
stage parity 100 "$PY" -m benchmarks.parity --device "$DEVICE"
stage launches 70 "$PY" -m benchmarks.launches --device "$DEVICE" --replay-group 16 --methods bptt_cell tbptt self_attention sab
stage launches-static 35 "$PY" -m benchmarks.launches --device "$DEVICE" --replay-group 16 --static-shapes --methods sab
stage cost-1000 200 "$PY" -m benchmarks.cost --device "$DEVICE" --repeats "$REPEATS" --batch-size "$B" --hidden-size "$H" --lengths "$T_SHORT" \
  --methods bptt bptt_cell tbptt self_attention sab --cuda-graphs off on --out "$RESULTS/gpu_cost_1000.csv"
stage trial 45 "$PY" -m sab.train --device "$DEVICE" --task copy --seq-len 30 --method sab --steps 60 --eval-interval 30 --batch-size "$B"
stage cost-5000 60 "$PY" -m benchmarks.cost --device "$DEVICE" --repeats "$REPEATS" --batch-size "$B" --hidden-size "$H" --lengths "$T_LONG" \
  --methods bptt bptt_cell tbptt sab --out "$RESULTS/gpu_cost_5000.csv"
stage cost-5000-graphed 60 "$PY" -m benchmarks.cost --device "$DEVICE" --repeats "$REPEATS" --batch-size "$B" --hidden-size "$H" --lengths "$T_LONG" \
  --methods bptt bptt_cell sab --cuda-graphs on --out "$RESULTS/gpu_cost_5000_graphs.csv"
if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: every stage passed"; exit 0; fi
echo "gpu_check: failed: ${failed[*]}"
exit 1
