#!/usr/bin/env bash
# Sample quality against decoding steps: MaskGIT at 1, 2, 4, 8 and 16 parallel steps beside the GPT prior's one step
# per code, COUNT samples each (classes in turn), scored by genlab-eval on the classifier's features (train split
# reference) and, for the first INCEPTION of them, on TF-Inception's; wall time per image from samples.json.
#
#   projects/06_transformer/results/decode-steps.sh GPT_RUN MASKGIT_RUN [COUNT] [INCEPTION]
#
# Writes <GPT_RUN>/samples/ (where genlab-table looks for a cross-paper row) and <MASKGIT_RUN>/decode-steps/steps-N/,
# and prints the table as markdown.
set -euo pipefail
gpt=$1 maskgit=$2 count=${3:-10000} inception=${4:-0}
out=$maskgit/decode-steps
dataset=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['config']['dataset'])" "$maskgit/config.json")
score() {  # FOLDER
  uv run genlab-eval --samples "$1/samples.npz" --dataset "$dataset" --features classifier --num-samples "$count"
  if [ "$inception" -gt 0 ]; then
    uv run genlab-eval --samples "$1/samples.npz" --dataset "$dataset" --features inception --num-samples "$inception"
  fi
}
uv run gpt-sample --run "$gpt" --npz "$count"
score "$gpt/samples"
for steps in 1 2 4 8 16; do
  uv run gpt-sample --run "$maskgit" --decode-steps "$steps" --npz "$count" --out "$out/steps-$steps"
  score "$out/steps-$steps"
done
python3 - "$gpt" "$out" "$count" "$inception" <<'PY'
import json, sys
from pathlib import Path
gpt, out, count, inception = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
print("| prior | network passes per image | FID (classifier) | KID (classifier) | FID (Inception) | ms per image |")
print("|---|---|---|---|---|---|")
for name in ["gpt", *(f"steps-{s}" for s in (1, 2, 4, 8, 16))]:
    folder = gpt / "samples" if name == "gpt" else out / name
    info = json.loads((folder / "samples.json").read_text())
    scores = json.loads((folder / f"eval-classifier-train-{count}.json").read_text())["scores"]
    fid_inception = "—"
    if inception:
        fid_inception = f"{json.loads((folder / f'eval-inception-train-{inception}.json').read_text())['scores']['fid']:.1f}"
    label = "GPT, one code at a time" if name == "gpt" else f"MaskGIT, {name[6:]} steps"
    print(f"| {label} | {info['function_evaluations_per_sample']} | {scores['fid']:.2f} | {scores['kid']:.4f} | "
          f"{fid_inception} | {1000 * info['seconds_per_sample']:.2f} |")
PY
