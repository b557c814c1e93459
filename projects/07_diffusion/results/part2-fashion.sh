#!/usr/bin/env bash
# Part 2 on Fashion-MNIST, every row of the README's part 2 tables, one run at a time (nothing else on the CPU):
#
#   GENLAB_DATA=$(realpath ../shared/data) projects/07_diffusion/results/part2-fashion.sh [OUT] [EDIT_IMAGES]
#
# 1. first stages, 4 minutes each: 01's conv VAE with a small KL weight at f = 4 (4x7x7) and f = 2 (4x14x14), 05's
#    VQ-VAE at f = 4 (4x7x7 codes of 512); the pixel U-Net and a latent U-Net on each, 10 minutes each
#    (results/calibrated.sh: the schedule ends at the limit); a class-conditional latent U-Net, 6 minutes;
# 2. 1,000 samples of each (ancestral DDPM, 50 steps) and the autoencoders' reconstructions of 1,000 test images,
#    each scored by genlab-eval (genlab's Fashion-MNIST classifier); guidance grid and FID at s = 0, 1, 3;
# 3. editing and inverse problems on the first EDIT_IMAGES (100) test images with the pixel model, 50 steps:
#    RePaint r = 1, 2, 5, 10 (j = 5), outpainting, SDEdit, x4 super-resolution and deblurring by DPS at three step
#    sizes and by replacement, each with PSNR / SSIM (edit.json) and FID of the results (and of the baseline).
# Then `uv run python projects/07_diffusion/results/part2-tables.py OUT` prints the tables.
set -euo pipefail
out=${1:-runs/part2} images=${2:-100}
here=$(dirname "$0")
calibrated=$here/../../../results/calibrated.sh
score() {  # score SAMPLES.npz COUNT JSON
  uv run genlab-eval --samples "$1" --dataset fashion_mnist --features classifier --num-samples "$2" --out "$3"
}

vae="--dataset fashion_mnist --architecture conv --latent-channels 4 --beta 0.01 --activation silu --time-limit 4
     --test-samples 0 --no-progress"
uv run vae-train $vae --hidden-dims 64 128 --run-dir "$out/vae-kl-f4"
uv run vae-train $vae --hidden-dims 64 --run-dir "$out/vae-kl-f2"
uv run vqvae-train --dataset fashion_mnist --code-dim 4 --num-codes 512 --ema --time-limit 4 --no-progress \
  --run-dir "$out/vqvae-vq-f4"
"$calibrated" 10 "$out/pixel" diffusion-train --dataset fashion_mnist
for stage in vae-kl-f4 vae-kl-f2 vqvae-vq-f4; do
  "$calibrated" 10 "$out/ldm-${stage#*-}" diffusion-train --dataset fashion_mnist --first-stage "$out/$stage" \
    --size ldm-small
done
"$calibrated" 6 "$out/ldm-kl-f4-cfg" diffusion-train --dataset fashion_mnist --first-stage "$out/vae-kl-f4" \
  --size ldm-small --class-conditional

for f in f4 f2; do
  uv run vae-sample --run "$out/vae-kl-$f" --npz 1000 --npz-of reconstructions --out "$out/eval/floor-kl-$f"
done
uv run vqvae-sample --run "$out/vqvae-vq-f4" --npz 1000 --out "$out/eval/floor-vq-f4"
for run in ldm-kl-f4 ldm-kl-f2 ldm-vq-f4 pixel; do
  uv run diffusion-sample --run "$out/$run" --sampler ddpm --steps 50 --npz 1000 --out "$out/eval/$run"
done
uv run diffusion-sample --run "$out/ldm-kl-f4-cfg" --sampler ddpm --steps 50 --guidance-scales 0,1,2,3,5 \
  --out "$out/eval/cfg-grid"
for s in 0 1 3; do
  uv run diffusion-sample --run "$out/ldm-kl-f4-cfg" --sampler ddpm --steps 50 --guidance-scale $s --npz 1000 \
    --out "$out/eval/cfg-s$s"
done
for folder in "$out"/eval/*/; do
  [ -f "$folder/samples.npz" ] && score "$folder/samples.npz" 1000 "$folder/fid.json"
done

edit() {  # edit NAME FLAGS...
  local name=$1
  shift
  uv run diffusion-edit --run "$out/pixel" --steps 50 --npz "$images" --out "$out/edit/$name" "$@"
  score "$out/edit/$name/samples.npz" "$images" "$out/edit/$name/fid.json"
  if [ -f "$out/edit/$name/baselines.npz" ]; then
    score "$out/edit/$name/baselines.npz" "$images" "$out/edit/$name/fid-baseline.json"
  fi
}
for r in 1 2 5 10; do edit inpaint-r$r --task inpaint --mask centre --resamplings $r --jump-length 5; done
edit outpaint-r1 --task outpaint
for s in 0.25 0.5 0.75; do edit sdedit-$s --task sdedit --strength $s; done
edit superres-replacement --task superres --method replacement
for z in 0.3 1 3; do edit superres-dps-$z --task superres --method dps --step-size $z; done
for z in 0.3 1 3; do edit deblur-dps-$z --task deblur --method dps --step-size $z; done
