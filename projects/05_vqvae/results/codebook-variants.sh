#!/usr/bin/env bash
# The codebook's update and dead-code restarts, side by side at equal steps: the default (codebook loss), the EMA
# update (App. A.1), restarts of codes whose running count falls below 1, and both; each one run alone, then the
# table as markdown from their results.json (all test images).
#
#   projects/05_vqvae/results/codebook-variants.sh [DATASET] [STEPS] [OUT]
set -euo pipefail
dataset=${1:-fashion_mnist} steps=${2:-1000} out=${3:-runs/vqvae/variants-${1:-fashion_mnist}}
declare -A flags=([loss]="" [ema]="--ema" [loss-restarts]="--dead-code-threshold 1" [ema-restarts]="--ema --dead-code-threshold 1")
for name in loss ema loss-restarts ema-restarts; do
  [ -f "$out/$name/results.json" ] && continue
  # shellcheck disable=SC2086
  uv run vqvae-train --dataset "$dataset" --steps "$steps" ${flags[$name]} --eval-every 0 --sample-every 0 \
    --no-progress --run-dir "$out/$name"
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
labels = {"loss": "codebook loss (default)", "ema": "EMA update", "loss-restarts": "codebook loss + restarts",
          "ema-restarts": "EMA update + restarts"}
print("| codebook | test MSE | PSNR | codes used (of 512) | perplexity | bound, uniform prior |")
print("|---|---|---|---|---|---|")
for name, label in labels.items():
    r = json.loads((out / name / "results.json").read_text())
    print(f"| {label} | {r['mse']:.4f} | {r['psnr_db']:.2f} dB | {round(r['codes/usage'] * 512)} ({r['codes/usage']:.1%}) "
          f"| {r['codes/perplexity']:.1f} | {r['bits_per_dim_bound']:.3f} bits/dim |")
PY
