#!/usr/bin/env bash
# Classifier-free guidance's trade-off: FID, precision and recall (genlab classifier's features, train split as the
# reference) against the guidance scale, COUNT samples per scale (classes in turn), DDPM with STEPS respaced steps.
# Guidance costs two network evaluations per step (conditional and unconditional) except at scales 0 and 1.
#
#   projects/07_diffusion/results/guidance-fid.sh RUN [COUNT] [STEPS] [SCALES...]     # default: 1000 50 0 1 2 4
#
# Writes <RUN>/guidance-fid/scale-<s>/, prints the table as markdown and draws <RUN>/guidance-fid/fid-vs-scale.png.
set -euo pipefail
run=$1 count=${2:-1000} steps=${3:-50}
shift $(( $# >= 3 ? 3 : $# ))
scales=${*:-0 1 2 4}
out=$run/guidance-fid
dataset=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['config']['dataset'])" "$run/config.json")
for s in $scales; do
  folder=$out/scale-$s
  if [ ! -f "$folder/eval-classifier-train-$count.json" ]; then
    uv run diffusion-sample --run "$run" --sampler ddpm --steps "$steps" --guidance-scale "$s" --npz "$count" \
      --count 10 --out "$folder"
    uv run genlab-eval --samples "$folder/samples.npz" --dataset "$dataset" --features classifier --num-samples "$count"
  fi
done
uv run python - "$out" "$count" $scales <<'PY'
import json, sys
from pathlib import Path
from genlab.core.visualise import plot_curves
out, count, scales = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
print("| guidance scale | FID (classifier) | precision | recall | ms per image |")
print("|---|---|---|---|---|")
curves = {"FID": []}
for s in scales:
    folder = out / f"scale-{s}"
    info = json.loads((folder / "samples.json").read_text())
    scores = json.loads((folder / f"eval-classifier-train-{count}.json").read_text())["scores"]
    print(f"| {s} | {scores['fid']:.2f} | {scores['precision']:.3f} | {scores['recall']:.3f} | "
          f"{1000 * info['seconds_per_sample']:.1f} |")
    curves["FID"].append((float(s), scores["fid"]))
plot = plot_curves(curves, out / "fid-vs-scale.png", "guidance scale s", "FID (classifier features)",
                   title=f"Classifier-free guidance: FID of {count} samples against the scale")
print(f"plot: {plot}")
PY
