#!/usr/bin/env bash
# One command that measures a GPU (see scripts/bench/gpu.py): recording images/s (fp32, bf16), training patches/s
# (standard / topk / batchtopk, 24,576 latents, batch 4,096 and 16,384), the store reader against training, peak
# GPU memory, and saev 0.1.0 beside them when installed. Under 8 minutes on one H100.
#   scripts/bench/gpu.sh [--device cuda:0] [--refpkgs /tmp/saevpkgs] [--json gpu.json]
#   scripts/bench/gpu.sh --quick --device cpu      # small sizes: the same code path, under 2 minutes
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
exec "${PYTHON:-.venv/bin/python}" scripts/bench/gpu.py "$@"
