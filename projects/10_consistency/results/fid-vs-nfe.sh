#!/usr/bin/env bash
# FID against network evaluations per image for every few-step method of this project and 07's DDPM / DDIM, on one
# data set: each run is sampled at each NFE, COUNT samples (classes in turn, no guidance), scored by genlab-eval on
# the genlab classifier's features (train split reference). Training cost from the run's logged throughput; wall
# time per image from samples.json.
#
#   projects/10_consistency/results/fid-vs-nfe.sh OUT COUNT NAME=RUN [NAME=RUN ...]
#   projects/10_consistency/results/fid-vs-nfe.sh runs/nfe 5000 "RF=runs/flow/fm" "CD=runs/consistency/cd" \
#       "DDIM=runs/diffusion/fm"
#
# A run's kind comes from its config.json: fm-train (Euler, N steps), fm-train --objective meanflow (N steps of u),
# cm-train (N-level consistency sampling), a distilled flow (one step only), diffusion-train (DDIM at N steps, and
# DDPM beside it when NAME starts with DDPM). Rows already sampled are kept. Prints the markdown table and draws
# OUT/fid-vs-nfe.png beside the papers' CIFAR-10 anchors (Inception features on CIFAR-10: their values are not
# comparable with these, the shape of each curve is).
set -euo pipefail
out=$1 count=$2
shift 2
NFES=${NFES:-1 2 4 8 16 50}
mkdir -p "$out"
for spec in "$@"; do
  name=${spec%%=*} run=${spec#*=}
  read -r project dataset kind < <(python3 - "$run/config.json" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
config = info["config"]
kind = {"consistency": "consistency", "diffusion": "diffusion"}.get(info["project"], "flow")
if kind == "flow" and config.get("objective") == "meanflow":
    kind = "meanflow"
if kind == "flow" and config.get("distill"):
    kind = "distilled"
print(info["project"], config["dataset"], kind)
PY
)
  for nfe in $NFES; do
    folder=$out/${name// /_}/nfe-$nfe
    [ "$kind" = distilled ] && [ "$nfe" != 1 ] && continue
    if [ ! -f "$folder/eval-classifier-train-$count.json" ]; then
      case $kind in
        diffusion)
          sampler=ddim; [[ $name == DDPM* ]] && sampler=ddpm
          uv run diffusion-sample --run "$run" --sampler "$sampler" --steps "$nfe" --npz "$count" --count 10 \
            --out "$folder" ;;
        *) uv run fm-sample --run "$run" --steps "$nfe" --npz "$count" --count 10 --out "$folder" ;;
      esac
      uv run genlab-eval --samples "$folder/samples.npz" --dataset "$dataset" --features classifier \
        --num-samples "$count"
    fi
  done
done
uv run python - "$out" "$count" "$@" <<'PY'
import json, sys
from pathlib import Path
from genlab.core.visualise import plot_curves
out, count, specs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
print("| method | run | training steps | training CPU-minutes | NFE | FID (classifier) | KID | ms per image |")
print("|---|---|---|---|---|---|---|---|")
curves = {}
for spec in specs:
    name, run = spec.split("=", 1)
    run = Path(run)
    info = json.loads((run / "config.json").read_text())["config"]
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"images_per_second"' in line]
    seconds, previous = 0.0, 0
    for record in logs:  # steps since the last log times the batch, over the logged throughput
        seconds += (record["step"] - previous) * info["batch_size"] / record["images_per_second"]
        previous = record["step"]
    for folder in sorted((out / name.replace(" ", "_")).glob("nfe-*"), key=lambda p: int(p.name[4:])):
        scores_file = folder / f"eval-classifier-train-{count}.json"
        if not scores_file.is_file():
            continue
        scores = json.loads(scores_file.read_text())["scores"]
        sampled = json.loads((folder / "samples.json").read_text())
        nfe = sampled["function_evaluations_per_sample"]
        print(f"| {name} | `{run}` | {previous} | {seconds / 60:.1f} | {nfe} | {scores['fid']:.2f} | "
              f"{scores['kid']:.4f} | {1000 * sampled['seconds_per_sample']:.1f} |")
        curves.setdefault(name, []).append((nfe, scores["fid"]))
# The papers' CIFAR-10 FIDs (Inception features, 50k samples): 2-rectified flow + distillation (Liu et al.), CD and CT
# with LPIPS (Song et al.), MeanFlow's one step from scratch (Geng et al.).
anchors = {"paper 2-RF + distill": [(1, 4.85)], "paper CD": [(1, 3.55), (2, 2.93)], "paper CT": [(1, 8.70), (2, 5.83)],
           "paper MeanFlow": [(1, 2.92)]}
plot = plot_curves({**curves, **anchors}, out / "fid-vs-nfe.png", "network evaluations per image", "FID",
                   log_x=True, log_y=True, title=f"FID (classifier features, {count} samples) against NFE")
print(f"plot: {plot}")
PY
