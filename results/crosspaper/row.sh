#!/usr/bin/env bash
# One row of the root README's cross-paper table: train on Fashion-MNIST for 20 minutes of this machine (nothing else
# running), draw 10k samples, score them with genlab-eval (classifier features on 10k, TF-Inception on 2k, each with
# its data floor), and collect the row into results/crosspaper/fashion_mnist/. Then `uv run genlab-table`.
#
#   results/crosspaper/row.sh NAME RUN_DIR MACHINE TRAIN_SCRIPT [TRAIN FLAGS...]
#   results/crosspaper/row.sh DCGAN runs/crosspaper/dcgan "2-core Xeon CPU" gan-train --variant dcgan --steps 1000000
#
# --steps sets the learning-rate schedule's length; --time-limit 20 ends training wherever it has got to by then.
# Needs GENLAB_DATA (Fashion-MNIST), the genlab classifier (uv run genlab-classifier --dataset fashion_mnist) and
# the TF-Inception file (../shared/tools/fetch-weights).
set -euo pipefail
name=$1 run=$2 machine=$3 script=$4
shift 4
sampler=${script%-train}-sample
case $script in ar-train) sampler=ar-sample ;; esac
uv run "$script" "$@" --dataset fashion_mnist --time-limit 20 --run-dir "$run" --no-progress
uv run "$sampler" --run "$run" --npz 10000
uv run genlab-eval --samples "$run" --features classifier --num-samples 10000
uv run genlab-eval --samples "$run" --features inception --num-samples 2000
uv run genlab-table --add "$run" --name "$name" --machine "$machine" \
  --command "results/crosspaper/row.sh '$name' $run '$machine' $script $*"
