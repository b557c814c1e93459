#!/usr/bin/env bash
# Sample quality against sampling steps: DDPM (ancestral, respaced), DDIM (eta = 0) and Heun (the probability-flow
# ODE, 2N - 1 evaluations) at each step count, COUNT samples each (classes in turn, guidance scale 1), scored by
# genlab-eval on the classifier's features (train split reference; FEATURES=inception for colour data, which has no
# classifier); wall time per image from samples.json.
#
#   projects/07_diffusion/results/sampler-steps.sh RUN [COUNT] [STEPS...]      # default: 1000 samples, 10 20 50
#   FEATURES=inception projects/07_diffusion/results/sampler-steps.sh runs/diffusion/twemoji 1000 10 20 50
#   SAMPLERS="ddpm ddim" projects/07_diffusion/results/sampler-steps.sh runs/crosspaper/ddpm 200 50 1000
#
# Writes <RUN>/sampler-steps/<sampler>-<N>/, prints the table as markdown (rows already sampled are kept) and draws
# <RUN>/sampler-steps/fid-vs-steps.png: FID against steps per sampler, beside the DDIM paper's CIFAR-10 curve (eta 0,
# Inception features, Table 1: another data set and feature network; its shape is the comparison, not its values).
set -euo pipefail
run=$1 count=${2:-1000}
shift $(( $# >= 2 ? 2 : $# ))
steps=${*:-10 20 50}
features=${FEATURES:-classifier}
samplers=${SAMPLERS:-ddpm ddim heun}
out=$run/sampler-steps
dataset=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['config']['dataset'])" "$run/config.json")
for n in $steps; do
  for sampler in $samplers; do
    folder=$out/$sampler-$n
    if [ ! -f "$folder/eval-$features-train-$count.json" ]; then
      uv run diffusion-sample --run "$run" --sampler "$sampler" --steps "$n" --npz "$count" --count 10 --out "$folder"
      uv run genlab-eval --samples "$folder/samples.npz" --dataset "$dataset" --features "$features" --num-samples "$count"
    fi
  done
done
uv run python - "$out" "$count" "$features" "$samplers" $steps <<'PY'
import json, sys
from pathlib import Path
from genlab.core.visualise import plot_curves
out, count, features, samplers, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5:]
curves = {}
print(f"| sampler | steps | network evaluations | FID ({features}) | KID ({features}) | ms per image |")
print("|---|---|---|---|---|---|")
for sampler in samplers:
    for n in steps:
        folder = out / f"{sampler}-{n}"
        info = json.loads((folder / "samples.json").read_text())
        scores = json.loads((folder / f"eval-{features}-train-{count}.json").read_text())["scores"]
        print(f"| {sampler} | {n} | {info['function_evaluations_per_sample']} | {scores['fid']:.2f} | "
              f"{scores['kid']:.4f} | {1000 * info['seconds_per_sample']:.1f} |")
        curves.setdefault(sampler.upper(), []).append((int(n), scores["fid"]))
curves["paper DDIM, CIFAR-10, Inception"] = [(10, 13.36), (20, 6.84), (50, 4.67), (100, 4.16)]
plot = plot_curves(curves, out / "fid-vs-steps.png", "sampling steps", "FID", log_x=True, log_y=True,
                   title=f"FID ({features} features, {count} samples) against sampling steps")
print(f"plot: {plot}")
PY
