#!/usr/bin/env bash
# Part 2 on Twemoji 64x64, the README's Twemoji table, one run at a time (nothing else on the CPU):
#
#   GENLAB_DATA=$(realpath ../shared/data) projects/07_diffusion/results/part2-twemoji.sh [OUT] [SAMPLES] [MINUTES]
#
# 1. first stages, 5 minutes each: 01's conv VAE with a small KL weight at f = 2 (4x32x32), f = 4 (4x16x16) and
#    f = 8 (4x8x8); the pixel U-Net (twemoji-small at 64x64, attention at 16x16) and a latent U-Net (ldm-small) on
#    each, MINUTES (6) each (results/calibrated.sh: the schedule ends at the limit), class-conditional (the
#    default); a run already trained (its checkpoints/latest exists) is kept, so the script continues where it
#    stopped;
# 2. SAMPLES (300) samples of each (ancestral DDPM, 50 steps) and the autoencoders' reconstructions of the whole
#    test split (191 images), scored by genlab-eval on TF-Inception features against the training images, at 191
#    (the count of the data floor and of the reconstructions) and at SAMPLES; a score already written is kept.
# Then `uv run python projects/07_diffusion/results/part2-tables.py OUT` prints the table.
set -euo pipefail
out=${1:-runs/part2-twemoji} count=${2:-300} minutes=${3:-6}
here=$(dirname "$0")
calibrated=$here/../../../results/calibrated.sh
trained() { [ -e "$1/checkpoints/latest" ]; }
score() {  # score SAMPLES.npz COUNT JSON
  [ -e "$3" ] || uv run genlab-eval --samples "$1" --dataset twemoji --features inception --num-samples "$2" --out "$3"
}

vae="--dataset twemoji --image-size 64 --architecture conv --latent-channels 4 --beta 0.01 --activation silu
     --time-limit 5 --test-samples 0 --no-progress"
trained "$out/vae-kl-f4" || uv run vae-train $vae --hidden-dims 64 128 --run-dir "$out/vae-kl-f4"
trained "$out/vae-kl-f8" || uv run vae-train $vae --hidden-dims 64 128 256 --run-dir "$out/vae-kl-f8"
trained "$out/vae-kl-f2" || uv run vae-train $vae --hidden-dims 64 --run-dir "$out/vae-kl-f2"
trained "$out/pixel" || "$calibrated" "$minutes" "$out/pixel" diffusion-train --dataset twemoji --image-size 64 \
  --size twemoji-small --attention-resolutions 16
for stage in vae-kl-f4 vae-kl-f8 vae-kl-f2; do
  trained "$out/ldm-${stage#*-}" || "$calibrated" "$minutes" "$out/ldm-${stage#*-}" diffusion-train --dataset twemoji \
    --image-size 64 --first-stage "$out/$stage" --size ldm-small
done

for f in f4 f8 f2; do
  [ -e "$out/eval/floor-kl-$f/samples.npz" ] ||
    uv run vae-sample --run "$out/vae-kl-$f" --npz 191 --npz-of reconstructions --out "$out/eval/floor-kl-$f"
  score "$out/eval/floor-kl-$f/samples.npz" 191 "$out/eval/floor-kl-$f/fid.json"
done
for run in ldm-kl-f8 ldm-kl-f4 ldm-kl-f2 pixel; do
  [ -e "$out/eval/$run/samples.npz" ] ||
    uv run diffusion-sample --run "$out/$run" --sampler ddpm --steps 50 --npz "$count" --out "$out/eval/$run"
  score "$out/eval/$run/samples.npz" 191 "$out/eval/$run/fid.json"
  score "$out/eval/$run/samples.npz" "$count" "$out/eval/$run/fid-$count.json"
done
