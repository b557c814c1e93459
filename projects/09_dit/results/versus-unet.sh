#!/usr/bin/env bash
# DiT against 07's U-Net at equal training time on the same data: both class-conditional on Fashion-MNIST with 07's
# objective, schedule and recipe, each trained for MINUTES of this machine (root results/calibrated.sh sets the
# steps so that the schedule ends near the limit), one after the other; then SAMPLES samples from each (ancestral
# DDPM, 50 steps, guidance 1, the classes in turn), scored by genlab-eval on the classifier's features against the
# train split. A stage already done is kept. Prints the table as markdown.
#
#   GENLAB_DATA=$(realpath ../shared/data) projects/09_dit/results/versus-unet.sh [MINUTES] [SAMPLES] [OUT] [DIT_SIZE]
set -euo pipefail
minutes=${1:-20} count=${2:-2000} out=${3:-runs/dit/versus-unet} size=${4:-XS/4}
root=$(dirname "$0")/../../..
declare -A train=([dit]="dit-train --size $size" [unet]="diffusion-train")
declare -A sample=([dit]=dit-sample [unet]=diffusion-sample)
for row in dit unet; do
  folder=$out/$row
  # shellcheck disable=SC2086
  [ -f "$folder/results.json" ] || "$root/results/calibrated.sh" "$minutes" "$folder" ${train[$row]} \
    --dataset fashion_mnist
  if [ ! -f "$folder/fid.json" ]; then
    uv run "${sample[$row]}" --run "$folder" --sampler ddpm --steps 50 --npz "$count" --out "$folder/eval"
    uv run genlab-eval --samples "$folder/eval/samples.npz" --dataset fashion_mnist --features classifier \
      --num-samples "$count" --out "$folder/fid.json"
  fi
done

uv run python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| network | parameters | steps | FID (classifier) | precision | recall | ms per sample |")
print("|---|---|---|---|---|---|---|")
for row, label in (("dit", "DiT"), ("unet", "07's U-Net")):
    folder = out / row
    recorded = json.loads((folder / "config.json").read_text())
    info = json.loads((folder / "eval" / "samples.json").read_text())
    scores = json.loads((folder / "fid.json").read_text())["scores"]
    print(f"| {label} ({recorded['config']['size']}) | {info['parameters']:,} | "
          f"{recorded['config']['steps']} | {scores['fid']:.2f} | {scores['precision']:.3f} | {scores['recall']:.3f} "
          f"| {1000 * info['seconds_per_sample']:.1f} |")
PY
