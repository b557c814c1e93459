#!/usr/bin/env bash
# results/calibrated.sh MINUTES RUN_DIR SCRIPT FLAGS...: a one-minute calibration run, then SCRIPT with --steps set so
# that the schedule ends near MINUTES of training (0.92 of the linear estimate: the calibration's start-up), and a
# time limit of MINUTES + 3 as a guard. Prints the calibration.
set -euo pipefail
minutes=$1 run=$2 script=$3; shift 3
rm -rf "$run-calib"
mkdir -p "$(dirname "$run")"
uv run "$script" "$@" --steps 10000000 --time-limit 1 --run-dir "$run-calib" --no-progress --eval-every 0 \
  > "$run-calib.log" 2>&1 || true
[ -s "$run-calib/metrics.jsonl" ] || { echo "calibration run failed ($run-calib.log):" >&2; tail -3 "$run-calib.log" >&2; exit 1; }
steps=$(python3 -c "
import json,sys
rows=[json.loads(l) for l in open(sys.argv[1]+'/metrics.jsonl') if l.strip()]
print(int(max(r['step'] for r in rows)*float(sys.argv[2])*0.92))" "$run-calib" "$minutes")
echo "calibration: $(tail -1 "$run-calib/metrics.jsonl" | cut -c1-200); --steps $steps for $minutes min"
uv run "$script" "$@" --steps "$steps" --time-limit $((minutes + 3)) --run-dir "$run" --no-progress
