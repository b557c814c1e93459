"""Print part 2's README tables (markdown) from the folder that results/part2-fashion.sh or part2-twemoji.sh fills.

    uv run python projects/07_diffusion/results/part2-tables.py runs/part2
    uv run python projects/07_diffusion/results/part2-tables.py runs/part2-twemoji

Training wall time is the time from a run's config.json to its last checkpoint (data loading and, for a latent
run, encoding the training set included); reconstruction PSNR is computed here from the autoencoders' 8-bit
reconstructions of the first test images (1,000 of Fashion-MNIST, all 191 of Twemoji).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from genlab.core.data import convert_range, load_dataset
from genlab.core.metrics import psnr

ROWS = {  # data set: (run, first stage, its label)
    "fashion_mnist": [
        ("pixel", None, "pixel space (f = 1)"),
        ("ldm-kl-f2", "vae-kl-f2", "KL, f = 2"),
        ("ldm-kl-f4", "vae-kl-f4", "KL, f = 4"),
        ("ldm-vq-f4", "vqvae-vq-f4", "VQ, f = 4"),
    ],
    "twemoji": [
        ("pixel", None, "pixel space (f = 1)"),
        ("ldm-kl-f2", "vae-kl-f2", "KL, f = 2"),
        ("ldm-kl-f4", "vae-kl-f4", "KL, f = 4"),
        ("ldm-kl-f8", "vae-kl-f8", "KL, f = 8"),
    ],
}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def training_minutes(run: Path) -> float:
    last = max((run / "checkpoints").glob("step_*/state.json"))
    return (last.stat().st_mtime - (run / "config.json").stat().st_mtime) / 60


def scores(path: Path) -> str:
    report = read(path)["scores"]
    return f"{report['fid']:.2f} | {report['precision']:.3f} | {report['recall']:.3f}"


def reconstruction_psnr(samples: Path, dataset: str) -> float:
    reconstructions = torch.from_numpy(np.load(samples)["samples"])
    test = load_dataset(dataset, "test", value_range="uint8").images[: len(reconstructions)]
    return float(psnr(convert_range(reconstructions, "signed"), convert_range(test, "signed")).mean())


def main(out: Path) -> None:
    evals = out / "eval"
    dataset = read(out / "pixel" / "config.json")["config"]["dataset"]
    larger = sorted(evals.glob("pixel/fid-*.json"))  # Twemoji: also scored at more samples than the data floor has
    extra = f" FID ({larger[0].stem.removeprefix('fid-')}) |" if larger else ""
    print(
        "| model | latent | first stage: minutes | diffusion: minutes, steps | parameters | ms per sample "
        f"| FID | precision | recall |{extra} reconstruction FID (floor) | reconstruction PSNR (dB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * bool(larger) + "---|---|")
    for name, stage, label in ROWS[dataset]:
        config = read(out / name / "config.json")
        results, samples = read(out / name / "results.json"), read(evals / name / "samples.json")
        record = config.get("first_stage")
        image_shape = np.load(evals / name / "samples.npz")["samples"].shape[1:]
        latent = "x".join(map(str, record["latent_shape"] if record else image_shape))
        first, floor, floor_psnr = "", "", ""
        if stage:
            first = f"{training_minutes(out / stage):.1f}"
            floor_folder = evals / f"floor-{name.removeprefix('ldm-')}"
            floor = f"{read(floor_folder / 'fid.json')['scores']['fid']:.2f}"
            floor_psnr = f"{reconstruction_psnr(floor_folder / 'samples.npz', dataset):.2f}"
        more = f" {read(evals / name / larger[0].name)['scores']['fid']:.2f} |" if larger else ""
        print(
            f"| {label} | {latent} | {first or '-'} | {training_minutes(out / name):.1f}, {results['step']} "
            f"| {results['parameters'] / 1e6:.2f}M | {1000 * samples['seconds_per_sample']:.1f} "
            f"| {scores(evals / name / 'fid.json')} |{more} {floor or '-'} | {floor_psnr or '-'} |"
        )
    if not (evals / "cfg-s0").exists():
        return
    print("\n| guidance scale | FID | precision | recall | ms per sample |\n|---|---|---|---|---|")
    for scale in (0, 1, 3):
        folder = evals / f"cfg-s{scale}"
        milliseconds = 1000 * read(folder / "samples.json")["seconds_per_sample"]
        print(f"| {scale} | {scores(folder / 'fid.json')} | {milliseconds:.1f} |")
    edits = out / "edit"
    print(
        "\n| task | method | network evaluations | PSNR (dB) | SSIM | PSNR of the missing region (dB) | FID "
        "| precision | recall |\n|---|---|---|---|---|---|---|---|---|"
    )
    baselines_shown = set()
    for folder in sorted(edits.iterdir(), key=lambda path: (path.name.split("-")[0], len(path.name), path.name)):
        measured = read(folder / "edit.json")
        missing = measured.get("missing_region_psnr_db")
        print(
            f"| {measured['task']} | {folder.name} | {measured['function_evaluations']} | {measured['psnr_db']:.2f} "
            f"| {measured['ssim']:.3f} | {f'{missing:.2f}' if missing else '-'} | {scores(folder / 'fid.json')} |"
        )
        if (folder / "fid-baseline.json").exists() and measured["task"] not in baselines_shown:
            baselines_shown.add(measured["task"])
            baseline = "bicubic x4" if measured["task"] == "superres" else "the blurred measurement"
            print(
                f"| {measured['task']} | baseline: {baseline} | 0 | {measured['baseline_psnr_db']:.2f} "
                f"| {measured['baseline_ssim']:.3f} | - | {scores(folder / 'fid-baseline.json')} |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
