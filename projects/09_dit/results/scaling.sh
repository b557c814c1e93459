#!/usr/bin/env bash
# DiT's main figure at our scale (Peebles & Xie 2023, Fig. 2 and 9): FID against training compute for several sizes
# and patch sizes at equal steps, on one data set, and the four block designs at one size (Fig. 5).
#
#   GENLAB_DATA=$(realpath ../shared/data) projects/09_dit/results/scaling.sh [OUT] [STEPS] [SAMPLES]
#   CONFIGS="XXS/7 XS/7" DESIGNS="" projects/09_dit/results/scaling.sh runs/dit/scaling 300 200    # a quick look
#
# Every run: dit-train on Fashion-MNIST, class-conditional, STEPS (1200) steps at batch 64, a checkpoint at each
# third; each checkpoint gives SAMPLES (500) samples (ancestral DDPM, 50 steps, the classes in turn, guidance 1),
# scored by genlab-eval on the classifier's features against the train split. Training compute is the paper's
# estimate: forward Gflops x batch x steps x 3. A run or score already there is kept, so the script continues where
# it stopped. Prints the table and draws OUT/fid-vs-training-gflops.png.
set -euo pipefail
out=${1:-runs/dit/scaling} steps=${2:-1200} count=${3:-500}
configs=${CONFIGS:-XXS/7 XXS/4 XXS/2 XS/7 XS/4 XS/2}
designs=${DESIGNS-adaln cross-attention in-context}  # compared with adaLN-Zero at DESIGN_SIZE
design_size=${DESIGN_SIZE:-XS/4}
third=$((steps / 3))

run_one() {  # run_one FOLDER SIZE DESIGN
  local folder=$1 size=$2 design=$3
  [ -e "$folder/checkpoints/latest" ] || uv run dit-train --dataset fashion_mnist --size "$size" \
    --conditioning "$design" --steps "$steps" --checkpoint-every "$third" --keep-checkpoints 0 --run-dir "$folder" \
    --no-progress
  for checkpoint in "$folder"/checkpoints/step_*; do
    local eval=$folder/eval/$(basename "$checkpoint")
    if [ ! -f "$eval/fid.json" ]; then
      uv run dit-sample --run "$checkpoint" --sampler ddpm --steps 50 --npz "$count" --out "$eval"
      uv run genlab-eval --samples "$eval/samples.npz" --dataset fashion_mnist --features classifier \
        --num-samples "$count" --out "$eval/fid.json"
    fi
  done
}

for size in $configs; do
  run_one "$out/${size/\//-}" "$size" adaln-zero
done
for design in $designs; do
  run_one "$out/${design_size/\//-}-$design" "$design_size" "$design"
done

uv run python - "$out" <<'PY'
import json, sys
from pathlib import Path
from genlab.core.visualise import plot_curves
from genlab.dit.model import DiTConfig, forward_gflops
out = Path(sys.argv[1])
curves = {}
print("| run | block design | forward Gflops | parameters | steps | training Gflops | FID (classifier) | precision | recall | ms per sample |")
print("|---|---|---|---|---|---|---|---|---|---|")
for run in sorted(p for p in out.iterdir() if (p / "config.json").exists()):
    recorded = json.loads((run / "config.json").read_text())
    model = DiTConfig(**recorded["model"])
    gflops = forward_gflops(model)
    batch = recorded["config"]["batch_size"]
    for eval in sorted((run / "eval").glob("step_*")):
        step = int(eval.name.removeprefix("step_"))
        scores = json.loads((eval / "fid.json").read_text())["scores"]
        info = json.loads((eval / "samples.json").read_text())
        training = 3 * gflops * batch * step
        print(f"| {run.name} | {model.conditioning} | {gflops:.4f} | {info['parameters']:,} | {step} | "
              f"{training:.3g} | {scores['fid']:.2f} | {scores['precision']:.3f} | {scores['recall']:.3f} | "
              f"{1000 * info['seconds_per_sample']:.1f} |")
        curves.setdefault(run.name, []).append((training, scores["fid"]))
plot = plot_curves(curves, out / "fid-vs-training-gflops.png", "training compute (Gflops: forward x batch x steps x 3)",
                   "FID (classifier features)", log_x=True, log_y=True,
                   title="DiT on Fashion-MNIST: FID against training compute")
print(f"plot: {plot}")
PY
