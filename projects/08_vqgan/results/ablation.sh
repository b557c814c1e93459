#!/usr/bin/env bash
# What each loss term buys, at one compression: 05's VQ-VAE (squared error only), then VQGAN with L1 only, with L1 +
# perceptual, and with L1 + perceptual + adversarial (the paper's objective), each at equal steps and batch, each
# trained alone, one after another. Each gives N reconstructions of the test images, scored by genlab-eval against
# the test images themselves (the reconstruction FID): the genlab classifier's features on 28x28 grey data, TF-
# Inception's on Twemoji.
#
#   GENLAB_DATA=$(realpath ../shared/data) projects/08_vqgan/results/ablation.sh [DATASET] [STEPS] [N] [OUT]
#   projects/08_vqgan/results/ablation.sh fashion_mnist 2000 10000       # Fashion-MNIST, f = 4 (7x7 codes)
#   SIZE=fashion-small projects/08_vqgan/results/ablation.sh twemoji 2000 191   # Twemoji 64x64 at f = 4, as 05
#
# 05's VQ-VAE is one level at f = 4, so SIZE must give f = 4 too (fashion-small does on any image size). The
# discriminator starts at half the steps. A row already there is kept, so the script continues where it stopped.
# Wall time is the train command's, in OUT/<row>/train-seconds. Prints the table as markdown.
set -euo pipefail
dataset=${1:-fashion_mnist} steps=${2:-2000} count=${3:-10000} out=${4:-runs/vqgan/ablation-${1:-fashion_mnist}}
size=${SIZE:-fashion-small}
features=classifier
[ "$dataset" = twemoji ] && features=inception
start=$((steps / 2))
declare -A train=(
  [vqvae]="vqvae-train --lr-schedule constant"
  [rec]="vqgan-train --size $size --perceptual none --no-adversarial"
  [perceptual]="vqgan-train --size $size --no-adversarial"
  [full]="vqgan-train --size $size --discriminator-start $start"
)
declare -A sample=([vqvae]=vqvae-sample [rec]=vqgan-sample [perceptual]=vqgan-sample [full]=vqgan-sample)
for row in vqvae rec perceptual full; do
  folder=$out/$row
  if [ ! -f "$folder/results.json" ]; then
    SECONDS=0
    # shellcheck disable=SC2086
    uv run ${train[$row]} --dataset "$dataset" --steps "$steps" --batch-size 32 --no-progress --run-dir "$folder"
    echo "$SECONDS" > "$folder/train-seconds"
  fi
  if [ ! -f "$folder/fid.json" ]; then
    uv run "${sample[$row]}" --run "$folder" --npz "$count" --out "$folder/samples"
    uv run genlab-eval --samples "$folder/samples/samples.npz" --dataset "$dataset" --reference test \
      --features "$features" --num-samples "$count" --out "$folder/fid.json"
  fi
done

uv run python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
labels = {"vqvae": "05 VQ-VAE: squared error", "rec": "VQGAN: L1", "perceptual": "VQGAN: L1 + perceptual",
          "full": "VQGAN: L1 + perceptual + adversarial"}
print("| objective | perceptual network | parameters | train wall time | test MSE | PSNR | codes used | perplexity "
      "| reconstruction FID | precision | recall |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for row, label in labels.items():
    folder = out / row
    r = json.loads((folder / "results.json").read_text())
    scores = json.loads((folder / "fid.json").read_text())["scores"]
    minutes = int((folder / "train-seconds").read_text()) / 60
    config = json.loads((folder / "config.json").read_text())
    codes = config["model"]["num_codes"]
    usage, perplexity = r["codes/usage"], r["codes/perplexity"]
    params = json.loads((folder / "samples" / "samples.json").read_text())["parameters"]
    print(f"| {label} | {r.get('perceptual') or '-'} | {params:,} | {minutes:.1f} min | {r['mse']:.4f} | "
          f"{r['psnr_db']:.2f} dB | {round(usage * codes)} of {codes} | {perplexity:.1f} | {scores['fid']:.2f} | "
          f"{scores['precision']:.3f} | {scores['recall']:.3f} |")
PY
