#!/usr/bin/env bash
# Sample quality against sampling steps: DDPM (ancestral, respaced), DDIM (eta = 0) and Heun (the probability-flow
# ODE, 2N - 1 evaluations) at each step count, COUNT samples each (classes in turn, guidance scale 1), scored by
# genlab-eval on the classifier's features (train split reference); wall time per image from samples.json.
#
#   projects/07_diffusion/results/sampler-steps.sh RUN [COUNT] [STEPS...]      # default: 1000 samples, 10 20 50
#
# Writes <RUN>/sampler-steps/<sampler>-<N>/ and prints the table as markdown (rows already sampled are kept).
set -euo pipefail
run=$1 count=${2:-1000}
shift $(( $# >= 2 ? 2 : $# ))
steps=${*:-10 20 50}
out=$run/sampler-steps
dataset=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['config']['dataset'])" "$run/config.json")
for n in $steps; do
  for sampler in ddpm ddim heun; do
    folder=$out/$sampler-$n
    if [ ! -f "$folder/eval-classifier-train-$count.json" ]; then
      uv run diffusion-sample --run "$run" --sampler "$sampler" --steps "$n" --npz "$count" --count 10 --out "$folder"
      uv run genlab-eval --samples "$folder/samples.npz" --dataset "$dataset" --features classifier --num-samples "$count"
    fi
  done
done
python3 - "$out" "$count" $steps <<'PY'
import json, sys
from pathlib import Path
out, count, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
print("| sampler | steps | network evaluations | FID (classifier) | KID (classifier) | ms per image |")
print("|---|---|---|---|---|---|")
for sampler in ("ddpm", "ddim", "heun"):
    for n in steps:
        folder = out / f"{sampler}-{n}"
        info = json.loads((folder / "samples.json").read_text())
        scores = json.loads((folder / f"eval-classifier-train-{count}.json").read_text())["scores"]
        print(f"| {sampler} | {n} | {info['function_evaluations_per_sample']} | {scores['fid']:.2f} | "
              f"{scores['kid']:.4f} | {1000 * info['seconds_per_sample']:.1f} |")
PY
