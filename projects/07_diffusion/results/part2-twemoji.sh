#!/usr/bin/env bash
# Part 2 on Twemoji 64x64, the README's Twemoji table, one run at a time (nothing else on the CPU):
#
#   GENLAB_DATA=$(realpath ../shared/data) projects/07_diffusion/results/part2-twemoji.sh [OUT] [SAMPLES]
#
# 1. first stages, 5 minutes each: 01's conv VAE with a small KL weight at f = 4 (4x16x16) and f = 8 (4x8x8); the
#    pixel U-Net (twemoji-small at 64x64) and a latent U-Net (ldm-small) on each, 10 minutes each
#    (results/calibrated.sh: the schedule ends at the limit), all unconditional;
# 2. SAMPLES (500) samples of each (ancestral DDPM, 50 steps) and the autoencoders' reconstructions of the whole
#    test split (191 images), scored by genlab-eval on TF-Inception features against the training images, at 191
#    (the count of the data floor and of the reconstructions) and at SAMPLES.
# Then `uv run python projects/07_diffusion/results/part2-tables.py OUT` prints the table.
set -euo pipefail
out=${1:-runs/part2-twemoji} count=${2:-500}
here=$(dirname "$0")
calibrated=$here/../../../results/calibrated.sh
score() {  # score SAMPLES.npz COUNT JSON
  uv run genlab-eval --samples "$1" --dataset twemoji --features inception --num-samples "$2" --out "$3"
}

vae="--dataset twemoji --image-size 64 --architecture conv --latent-channels 4 --beta 0.01 --activation silu
     --time-limit 5 --test-samples 0 --no-progress"
uv run vae-train $vae --hidden-dims 64 128 --run-dir "$out/vae-kl-f4"
uv run vae-train $vae --hidden-dims 64 128 256 --run-dir "$out/vae-kl-f8"
"$calibrated" 10 "$out/pixel" diffusion-train --dataset twemoji --image-size 64 --size twemoji-small
for stage in vae-kl-f4 vae-kl-f8; do
  "$calibrated" 10 "$out/ldm-${stage#*-}" diffusion-train --dataset twemoji --image-size 64 \
    --first-stage "$out/$stage" --size ldm-small
done

for f in f4 f8; do
  uv run vae-sample --run "$out/vae-kl-$f" --npz 191 --npz-of reconstructions --out "$out/eval/floor-kl-$f"
  score "$out/eval/floor-kl-$f/samples.npz" 191 "$out/eval/floor-kl-$f/fid.json"
done
for run in ldm-kl-f8 ldm-kl-f4 pixel; do
  uv run diffusion-sample --run "$out/$run" --sampler ddpm --steps 50 --npz "$count" --out "$out/eval/$run"
  score "$out/eval/$run/samples.npz" 191 "$out/eval/$run/fid.json"
  score "$out/eval/$run/samples.npz" "$count" "$out/eval/$run/fid-$count.json"
done
