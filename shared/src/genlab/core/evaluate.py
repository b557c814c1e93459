"""``genlab-eval``: one sample-quality harness for every project.

    genlab-eval --samples runs/gans/mnist-dcgan --features classifier     # the run's samples/samples.npz
    genlab-eval --samples my_samples.npz --dataset mnist --reference test

Samples are uint8 (N, C, H, W) in 0..255 under the key ``samples`` of an .npz (every sample script writes
one with ``--npz``). The report states what a score depends on: the number of samples, the reference set
(data set, split, count), the feature network and its sha256. Beside the score it gives the data-vs-data
floor: the same metrics between N reference images and N images of the other split, which is what a
perfect model would get at this sample count. Where a split has fewer than N images (Twemoji's test split has
191) the floor is taken at that smaller count, and the report says so: FID is biased upwards at small counts, so
such a floor is not comparable to the score.

Reference features are cached under $GENLAB_CACHE or ~/.cache/genlab/eval, keyed by everything that changes
them: the sha256 of the loaded split's pixels (so another data root, other files, another image size or resize
give another key), the data set, split, channels and image size, the count and the fixed permutation (the first
N of it), the feature network's name, sha256 and preprocessing, genlab's feature-code version, the versions of
genlab-core, torch-fidelity and torch, and the device type. Each cache file stores its key and is used only when
the key matches in full. The split is loaded (and hashed) on every run, which is cheap next to the features.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from genlab.core.checkpoint import read_run_info, resolve_device
from genlab.core.config import option, parse_config
from genlab.core.data import DATASETS, ImageDataset, load_dataset
from genlab.core.errors import GenlabError, exit_on_user_error
from genlab.core.features import FEATURE_CODE_VERSION, FeatureNetwork, extract_features, load_feature_network
from genlab.core.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
)

SAMPLES_KEY = "samples"
REFERENCE_SEED = 0
OTHER_SPLIT = {"train": "test", "test": "train"}
CACHE_FORMAT = "2"  # 1: keyed by (data set, split, size, network hash, count) only


@dataclass
class EvalConfig:
    """Score generated samples against a data set: FID, KID, precision/recall, and IS where there are logits."""

    samples: str = option("", "run folder (reads <run>/samples/samples.npz) or an .npz with uint8 'samples'")
    dataset: str = option("", "reference data set (default: the run's data set)")
    data_dir: str = option("", "data root (default: the run's, else $GENLAB_DATA)")
    reference: Literal["train", "test"] = option("train", "reference split")
    features: Literal["inception", "classifier"] = option(
        "inception", "feature network: inception (TF-Inception pool3) or classifier (genlab's, 28x28 grey)"
    )
    inception: str = option("", "TorchScript FID Inception (default: $GENLAB_INCEPTION, the fetch-weights file, name)")
    classifier: str = option("", "genlab classifier folder (default: ~/.cache/genlab/weights/genlab-classifier-<data>)")
    num_samples: int = option(0, "use the first N samples (0: all in the file)")
    kid_subsets: int = option(100, "KID: random subsets averaged")
    kid_subset_size: int = option(1000, "KID: samples per subset (capped at the sample count)")
    neighbourhood: int = option(3, "precision/recall: k of the k-nearest-neighbour balls")
    floor: bool = option(True, "also score N reference images against N of the other split (the data floor)")
    batch_size: int = option(100, "images per feature-network batch")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "device for the feature network")
    out: str = option("", "JSON report path (default: eval-<features>-<reference>-<N>.json beside the samples)")

    def validate(self) -> None:
        if not self.samples:
            raise GenlabError("--samples is required: a run folder or an .npz of samples")
        if self.num_samples < 0 or self.kid_subsets <= 0 or self.kid_subset_size < 2 or self.neighbourhood <= 0:
            raise GenlabError("--num-samples must be >= 0; --kid-subsets, --kid-subset-size, --neighbourhood > 0")
        if self.batch_size <= 0:
            raise GenlabError(f"--batch-size must be positive, got {self.batch_size}")
        resolve_device(self.device)


@dataclass
class SampleSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    path: Path
    run_config: dict | None


def read_samples(source: str | Path, count: int = 0) -> SampleSet:
    """A run folder or an .npz -> uint8 samples (N, C, H, W), the first ``count`` if given."""
    source = Path(source)
    run_config = None
    if source.is_dir():
        run_config = read_run_info(source)["config"]
        path = source / "samples" / "samples.npz"
        if not path.is_file():
            raise GenlabError(f"{source} has no samples/samples.npz: write it with the project's sample script --npz")
    elif source.is_file():
        path = source
    else:
        raise GenlabError(f"{source} does not exist")
    array = _read_npz_array(path)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] not in (1, 3) or 0 in array.shape[2:]:
        raise GenlabError(
            f"{path}: samples must be uint8 (N, C, H, W) with C = 1 or 3, got {array.dtype} {array.shape}"
        )
    if count:
        if count > len(array):
            raise GenlabError(f"--num-samples {count} is more than the {len(array)} samples in {path}")
        array = array[:count]
    if len(array) < 2:
        raise GenlabError(f"{path} holds {len(array)} sample(s); the metrics need at least 2")
    return SampleSet(torch.from_numpy(np.ascontiguousarray(array)), path, run_config)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _read_npz_array(path: Path) -> np.ndarray:
    """The array ``samples`` of an .npz; any file numpy cannot read that way is a one-line GenlabError.

    A damaged file fails in many ways (zipfile.BadZipFile when truncated, zlib.error or a CRC error in a damaged
    member, EOFError when empty, ValueError for pickled or garbage bytes, a bare ndarray for an .npy), so every
    failure to read is caught here and named, rather than listed and one forgotten.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as error:  # any unreadable file means the same thing to the user
        raise GenlabError(f"{path} is not a readable .npz file ({_first_line(error)})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise GenlabError(f"{path} holds one bare array (an .npy), not an .npz with an array {SAMPLES_KEY!r}")
    with loaded as archive:
        if SAMPLES_KEY not in archive.files:
            raise GenlabError(f"{path} has no array {SAMPLES_KEY!r} (it has: {', '.join(archive.files) or 'none'})")
        try:
            return archive[SAMPLES_KEY]
        except Exception as error:  # a damaged member: bad CRC, bad deflate stream, short data, object dtype
            raise GenlabError(f"{path}: the array {SAMPLES_KEY!r} cannot be read ({_first_line(error)})") from None


def package_version(name: str) -> str:
    """The installed version of a distribution, or "absent"; part of the reference cache key."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def images_sha256(images: torch.Tensor) -> str:
    """sha256 of a uint8 image tensor's shape and pixels: the identity of the data the features are taken of."""
    array = np.ascontiguousarray(images.cpu().numpy())
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def reference_cache_key(
    network: FeatureNetwork, data: ImageDataset, dataset: str, split: str, count: int, device: torch.device
) -> dict[str, str]:
    """Everything that changes the reference features; two runs share a cache entry only if all of it agrees."""
    channels, image_size, _ = data.shape
    return {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "split": split,
        "data_sha256": images_sha256(data.images),  # the pixels after loading: root, files, resize, size
        "channels": str(channels),
        "image_size": str(image_size),
        "order": f"randperm seed {REFERENCE_SEED}",
        "count": str(count),
        "network": network.name,
        "network_sha256": network.sha256,
        "preprocessing": network.preprocessing,
        "feature_code": str(FEATURE_CODE_VERSION),
        "genlab_core": package_version("genlab-core"),
        "torch_fidelity": package_version("torch-fidelity"),
        "torch": torch.__version__,
        "device": device.type,
    }


def cache_path(key: dict[str, str]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_root() / f"{key['dataset']}-{key['split']}-{digest[:32]}.safetensors"


def _read_cache(path: Path, key: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """The cached tensors if ``path`` holds features for exactly ``key``; None for a miss or a damaged file."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata() != key:
                return None
        return load_file(str(path))
    except Exception:  # a damaged or foreign file is recomputed and replaced, never trusted
        return None


def cache_root() -> Path:
    return Path(os.environ.get("GENLAB_CACHE") or Path.home() / ".cache" / "genlab" / "eval")


def reference_features(
    network: FeatureNetwork, dataset: str, split: str, count: int, shape: tuple[int, int, int], data_dir: str,
    batch_size: int, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:  # fmt: skip
    """Features of the first ``count`` images of a fixed permutation of a split; (features, logits, count).

    ``count`` is capped at the split's size; the count used is returned. ``shape`` is the samples' (C, H, W):
    the images are resized to H and must have C channels. Cached on disk under a key of every input that changes
    the result (``reference_cache_key``); the split is loaded every time, since its pixels are part of the key.
    """
    channels, image_size, _ = shape
    data = load_dataset(dataset, split, data_dir=data_dir or None, image_size=image_size)
    if data.shape[0] != channels:
        raise GenlabError(f"the samples have {channels} channel(s), {dataset} has {data.shape[0]}")
    used = min(count, len(data))
    key = reference_cache_key(network, data, dataset, split, used, torch.device(device))
    path = cache_path(key)
    cached = _read_cache(path, key)
    if cached is not None:
        return cached["features"], cached.get("logits"), len(cached["features"])
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(REFERENCE_SEED))
    features, logits = extract_features(network, data.images[order[:used]], batch_size, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"features": features} if logits is None else {"features": features, "logits": logits}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(temporary), metadata=key)
    temporary.replace(path)
    return features, logits, used


def score(generated: torch.Tensor, reference: torch.Tensor, config: EvalConfig) -> dict[str, float]:
    """FID, KID (mean, std), precision and recall of one feature set against another."""
    kid_mean, kid_std = kernel_distance(generated, reference, config.kid_subsets, config.kid_subset_size)
    precision, recall = precision_recall(generated, reference, config.neighbourhood)
    return {
        "fid": frechet_distance(feature_statistics(generated), feature_statistics(reference)),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }


def evaluate(config: EvalConfig) -> dict:
    """Score the samples and write the JSON report; returns the report."""
    samples = read_samples(config.samples, config.num_samples)
    run = samples.run_config or {}
    dataset = config.dataset or run.get("dataset")
    if not dataset:
        raise GenlabError("--dataset is required when --samples is an .npz and not a run folder")
    if dataset not in DATASETS:
        raise GenlabError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    data_dir = config.data_dir or run.get("data_dir") or ""
    device = resolve_device(config.device)
    channels, height, width = samples.images.shape[1:]
    if height != width:
        raise GenlabError(f"samples must be square, got {height}x{width}")
    path = config.inception if config.features == "inception" else config.classifier
    network = load_feature_network(config.features, dataset, path)
    count = len(samples.images)
    reference, _, reference_count = reference_features(
        network, dataset, config.reference, count, (channels, height, width), data_dir, config.batch_size, device
    )
    generated, generated_logits = extract_features(network, samples.images, config.batch_size, device)
    report: dict = {
        "samples": str(samples.path),
        "num_samples": count,
        "reference": {"dataset": dataset, "split": config.reference, "count": reference_count, "size": height},
        "feature_network": {"name": network.name, "sha256": network.sha256},
        "scores": score(generated, reference, config),
        "notes": [],
    }
    if reference_count < count:
        report["notes"].append(
            f"the reference is {reference_count} images ({dataset} {config.reference} has no more), fewer than the "
            f"{count} samples"
        )
    if generated_logits is not None:
        mean, std = inception_score(generated_logits)
        report["scores"].update(inception_score=mean, inception_score_std=std)
    else:
        report["inception_score"] = f"not available: {network.name} has no logits"
    if config.floor:
        other_split = OTHER_SPLIT[config.reference]
        other, other_logits, other_count = reference_features(
            network, dataset, other_split, count, (channels, height, width), data_dir, config.batch_size, device
        )
        floor_count = min(reference_count, other_count)
        floor = score(other[:floor_count], reference[:floor_count], config)
        if other_logits is not None:
            floor["inception_score"] = inception_score(other_logits[:floor_count])[0]
        report["floor"] = {"split": other_split, "count": floor_count, "scores": floor}
        if floor_count < count:
            smaller = other_split if other_count <= reference_count else config.reference
            report["notes"].append(
                f"the data floor is at {floor_count} images ({dataset} {smaller} has no more), not at the {count} "
                "samples: FID is biased upwards at small counts (and KID's spread and precision/recall change with "
                "the count), so this floor is not comparable to the scores"
            )
    out = Path(config.out) if config.out else samples.path.with_name(
        f"eval-{config.features}-{config.reference}-{count}.json"
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    report["report"] = str(out)
    return report


def format_report(report: dict) -> str:
    reference, network = report["reference"], report["feature_network"]
    lines = [
        f"samples: {report['num_samples']} from {report['samples']}",
        f"reference: {reference['dataset']} {reference['split']}, {reference['count']} images at "
        f"{reference['size']}x{reference['size']}",
        f"feature network: {network['name']} (sha256 {network['sha256'][:16]})",
    ]
    floor = report.get("floor")
    if floor:
        lines.append(f"{'metric':<16}{'samples':>12}{'data floor':>14}   (floor: {floor['count']} {floor['split']} "
                     f"images vs {floor['count']} {reference['split']})")  # fmt: skip
    for name, value in report["scores"].items():
        floor_value = floor["scores"].get(name) if floor else None
        floor_text = f"{floor_value:>14.4f}" if floor_value is not None else ""
        lines.append(f"{name:<16}{value:>12.4f}{floor_text}")
    if "inception_score" in report:
        lines.append(f"inception score: {report['inception_score']}")
    lines.extend(f"note: {note}" for note in report.get("notes", []))
    lines.append(f"report: {report['report']}")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    print(format_report(evaluate(parse_config(EvalConfig, argv, prog="genlab-eval"))))
