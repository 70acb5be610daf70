#!/usr/bin/env bash
# One command, <= 5 minutes on one GPU, torch only (no Ray, MLflow or network needed):
#   PYTHONPATH=. bash benchmarks/gpu_check.sh
# 1. sab vs sab_reference gradient parity on CUDA, and run-to-run determinism of sab's gradients
#    (G's credit summed by index_put_, which must repeat bit for bit; index_add_'s atomics measured beside it);
# 2. the cost benchmark on CUDA (cuDNN bptt, bptt_cell, tbptt, self_attention, sab_reference, sab)
#    at T = 300, 1000, 5000 - what cannot fit, or would take minutes, is skipped and marked;
# 3. eager against whole-step CUDA graphs (--cuda-graphs off on) at T = 1000;
# the cost tables are printed last (also results/cost/gpu_cost_short.csv, gpu_cost_5000.csv and gpu_cost_graphs.csv).
# A parity failure does not stop the costs: they are measured and printed, and the script exits 1.
# Every engine runs in float32 without TF32 (sab.measure.full_float32), cuDNN's included.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}"
PY="${PYTHON:-python3}"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU'); sys.exit(0 if torch.cuda.is_available() else 1)" || exit 1
mkdir -p results/cost
"$PY" -m benchmarks.parity --device cuda
parity=$?
# T=5000: the eager references are O(T^2) graphs; keep the engines that finish in seconds.
"$PY" -m benchmarks.cost --device cuda --repeats 3 --lengths 300 1000 --methods bptt bptt_cell tbptt self_attention sab_reference sab \
  --out results/cost/gpu_cost_short.csv > /tmp/sab_gpu_short.md
short=$?
"$PY" -m benchmarks.cost --device cuda --repeats 3 --lengths 5000 --methods bptt bptt_cell tbptt sab \
  --out results/cost/gpu_cost_5000.csv > /tmp/sab_gpu_5000.md
long=$?
# Eager against whole-step CUDA graphs (sab.graphs), side by side: the rows' cuda_graphs column says whether the capture held.
"$PY" -m benchmarks.cost --device cuda --repeats 3 --lengths 1000 --methods bptt bptt_cell tbptt sab --cuda-graphs off on \
  --out results/cost/gpu_cost_graphs.csv > /tmp/sab_gpu_graphs.md
graphs=$?
echo
echo "skipped at T=5000 (run time, not memory): self_attention, sab_reference"
cat /tmp/sab_gpu_short.md
tail -n +3 /tmp/sab_gpu_5000.md
cat /tmp/sab_gpu_graphs.md
"$PY" -c "import csv; [print(r['method'], r['seq_len'], 'cuda_graphs:', r['cuda_graphs']) for r in csv.DictReader(open('results/cost/gpu_cost_graphs.csv'))]"
echo "parity: $([ $parity -eq 0 ] && echo ok || echo FAILED); costs: results/cost/gpu_cost_short.csv (exit $short), results/cost/gpu_cost_5000.csv (exit $long), results/cost/gpu_cost_graphs.csv (exit $graphs)"
[ $parity -eq 0 ] && [ $short -eq 0 ] && [ $long -eq 0 ] && [ $graphs -eq 0 ]
