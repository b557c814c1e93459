#!/usr/bin/env bash
# The second stage on VQGAN codes: encode a VQGAN run's data set (vqgan-encode), train 06's class-conditional GPT and
# MaskGIT on the token grids for MINUTES each (root results/calibrated.sh sets the steps), then 06's
# results/decode-steps.sh: COUNT samples from the GPT and from MaskGIT at 1 to 16 steps, decoded through the VQGAN,
# scored on the classifier's features. A stage already done is kept.
#
#   GENLAB_DATA=$(realpath ../shared/data) projects/08_vqgan/results/priors.sh VQGAN_RUN [MINUTES] [COUNT]
set -euo pipefail
vqgan=$1 minutes=${2:-8} count=${3:-2000}
here=$(dirname "$0")
[ -f "$vqgan/tokens/tokens.json" ] || uv run vqgan-encode --run "$vqgan"
for prior in gpt maskgit; do
  [ -f "$vqgan-$prior/results.json" ] || "$here/../../../results/calibrated.sh" "$minutes" \
    "$vqgan-$prior" gpt-train --tokens "$vqgan/tokens" --class-token --prior "$prior" --batch-size 64
done
"$here/../../06_transformer/results/decode-steps.sh" "$vqgan-gpt" "$vqgan-maskgit" "$count"
