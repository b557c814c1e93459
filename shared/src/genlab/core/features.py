"""Feature networks for sample-quality metrics (FID, KID, precision/recall, Inception Score).

Every network here takes 8-bit images, (N, C, H, W) uint8 in 0..255, and returns (features (N, F), logits
(N, K) or None). Each carries a ``name`` and the ``sha256`` of its weights, so every score can say exactly
which network produced it.

- ``TFInception``: the TF-Inception network of the FID paper (Heusel et al. 2017), pool3, 2048-d. Offline it
  is a TorchScript file (``../shared/tools/fetch-weights`` lays one out) with no preprocessing inside, so the
  wrapper does it: grey to RGB, resize to 299x299 on the 0..255 scale with the bilinear resize of the original
  TensorFlow FID graph (TF1 ``resize_bilinear``, no half-pixel centres), then (x - 128) / 128.
  Online, without a file, torch-fidelity's port of the same network loads by name.
- ``DigitClassifier``: a small CNN that genlab trains itself on a 28x28 grey data set (``genlab-classifier``);
  its 128-d penultimate layer gives a fast FID on the CPU, and its logits an Inception Score.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_model
from torch import nn

from genlab.core.errors import GenlabError

# The version of the code in this file that turns images into features. Bump it whenever a change here alters the
# features a network gives for the same images and weights (preprocessing, the layer read, the dtype): it is part
# of genlab-eval's cache key, so reference features computed by the old code are not served for the new.
FEATURE_CODE_VERSION = 1
INCEPTION_FILE = "inception-2015-12-05.torchscript.pt"
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
CLASSIFIER_WEIGHTS = "model.safetensors"
CLASSIFIER_CONFIG = "config.json"
FeatureKind = Literal["inception", "classifier"]


def weights_root() -> Path:
    """Where fetch-weights and genlab-classifier put networks: $GENLAB_WEIGHTS, else ~/.cache/genlab/weights."""
    return Path(os.environ.get("GENLAB_WEIGHTS") or Path.home() / ".cache" / "genlab" / "weights")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tf1_axis(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    source = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)  # output i samples input i * in/out
    low = source.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    return low, high, (source - low).float()


def tf1_bilinear_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, size, size) as TF1's resize_bilinear(align_corners=False) computes it.

    The original FID Inception graph resizes with this op: output pixel i reads input coordinate i * H / size,
    without the half-pixel offset of torch's ``interpolate`` (which shifts the image by half an input pixel and
    changes the features measurably), and clamps at the last row and column.
    """
    low, high, weight = _tf1_axis(images.shape[2], size)
    rows = images[:, :, low] * (1 - weight)[:, None] + images[:, :, high] * weight[:, None]  # (N, C, size, W)
    low, high, weight = _tf1_axis(images.shape[3], size)
    return rows[..., low] * (1 - weight) + rows[..., high] * weight  # (N, C, size, size)


class FeatureNetwork(nn.Module):
    """uint8 images (N, C, H, W) -> (features (N, F), logits (N, K) or None), always in eval mode."""

    name: str
    sha256: str
    num_features: int
    has_logits: bool
    preprocessing: str = ""  # what happens to the uint8 images before the weights see them, for the cache key

    def train(self, mode: bool = True) -> FeatureNetwork:
        # A feature network in training mode (batch statistics, dropout) gives scores that depend on the batch.
        return super().train(False)

    def describe(self) -> str:
        return f"{self.name} (sha256 {self.sha256[:12]})"


class TFInception(FeatureNetwork):
    """The FID Inception network (pool3, 2048-d) from a TorchScript file that expects preprocessed input."""

    has_logits = False
    num_features = INCEPTION_FEATURES
    preprocessing = "grey to rgb; tf1 bilinear resize to 299 on 0..255; (x - 128) / 128; pool3"

    def __init__(self, network: nn.Module, name: str, sha256: str) -> None:
        super().__init__()
        self.network = network
        self.name = name
        self.sha256 = sha256
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> TFInception:
        path = Path(path)
        if not path.is_file():
            raise GenlabError(f"no Inception network at {path}: run ../shared/tools/fetch-weights, or give the file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                network = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise GenlabError(f"{path} is not a TorchScript feature network ({first})") from None
        network.eval()
        inception = cls(network, f"tf-inception-pool3:{path.name}", file_sha256(path))
        probe = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
        try:
            features, _ = inception(probe)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise GenlabError(f"{path} does not take 3x299x299 images: not the FID Inception ({first})") from None
        if features.shape != (1, INCEPTION_FEATURES):
            raise GenlabError(
                f"{path} gives features of shape {tuple(features.shape)[1:]}, not ({INCEPTION_FEATURES},): "
                "not the FID Inception network"
            )
        return inception

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float (N, 3, 299, 299) in [-1, 127/128]: resize first, then (x - 128) / 128."""
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (N, 1, H, W) -> (N, 3, H, W)
        x = tf1_bilinear_resize(x, INCEPTION_SIZE)
        return (x - 128.0) / 128.0

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.network(self.preprocess(images)).reshape(len(images), -1), None


class TorchFidelityInception(FeatureNetwork):
    """The same network by name, through torch-fidelity's port of it (pool3 and the 1008 logits).

    The weights are downloaded once into torch's hub cache, checked against the sha256 prefix in their file
    name, and proven to be plain tensors by a ``weights_only=True`` load before torch-fidelity reads them.
    """

    has_logits = True
    num_features = INCEPTION_FEATURES
    preprocessing = "grey to rgb; torch-fidelity inception-v3-compat's own (its version is in the cache key)"
    url = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"

    def __init__(self) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = Path(torch.hub.get_dir()) / "checkpoints" / self.url.rsplit("/", 1)[1]
        try:
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(self.url, str(path), hash_prefix="6726825d", progress=False)
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any failure to fetch means the same thing to the user
            raise GenlabError(
                f"cannot load the Inception network by name ({type(error).__name__}); offline, lay out the file "
                f"with ../shared/tools/fetch-weights, or pass --inception PATH, or set GENLAB_INCEPTION"
            ) from None
        self.network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path), verbose=False
        )
        self.name = "torch-fidelity:inception-v3-compat"
        self.sha256 = file_sha256(path)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # (N, 1, H, W) -> (N, 3, H, W)
        features, logits = self.network(images.contiguous())
        return features, logits


class DigitClassifier(nn.Module):
    """A small CNN for 28x28 grey images: 1x28x28 -> 128-d features -> class logits."""

    def __init__(self, num_classes: int = 10, width: int = 32, num_features: int = 128) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "width": width, "num_features": num_features}
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),  # 28 -> 14
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),  # -> 7
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, num_features), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, 1, 28, 28) in [0, 1] -> (features (N, F), logits (N, K))."""
        features = self.body(x)
        return features, self.head(self.dropout(features))


class ClassifierFeatures(FeatureNetwork):
    """A trained DigitClassifier as a feature network (penultimate layer and logits)."""

    has_logits = True
    preprocessing = "x / 255 at 1x28x28; penultimate layer and logits"

    def __init__(self, classifier: DigitClassifier, name: str, sha256: str) -> None:
        super().__init__()
        self.classifier = classifier
        self.name = name
        self.sha256 = sha256
        self.num_features = classifier.config["num_features"]
        self.eval()

    @classmethod
    def from_folder(cls, folder: str | Path) -> ClassifierFeatures:
        folder = Path(folder)
        weights, config_file = folder / CLASSIFIER_WEIGHTS, folder / CLASSIFIER_CONFIG
        if not weights.is_file() or not config_file.is_file():
            raise GenlabError(
                f"no genlab classifier in {folder} (needs {CLASSIFIER_WEIGHTS} and {CLASSIFIER_CONFIG}): "
                "train one with genlab-classifier --dataset <name>"
            )
        try:
            saved = json.loads(config_file.read_text())
            classifier = DigitClassifier(**saved["model"])
            load_model(classifier, str(weights))
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise GenlabError(f"{folder} does not hold a genlab classifier ({first})") from None
        sha256 = file_sha256(weights)
        if saved.get("sha256") not in (None, sha256):
            raise GenlabError(f"{weights} does not match the sha256 in its config.json: the file has changed")
        return cls(classifier, f"genlab-classifier:{saved.get('dataset', folder.name)}", sha256)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[1:] != (1, 28, 28):
            raise GenlabError(f"the genlab classifier takes 1x28x28 images, got {tuple(images.shape[1:])}")
        return self.classifier(images.float() / 255.0)


def classifier_folder(dataset: str) -> Path:
    return weights_root() / f"genlab-classifier-{dataset}"


def load_feature_network(kind: FeatureKind, dataset: str, path: str = "") -> FeatureNetwork:
    """The feature network by kind: a given path, else the default place, else (Inception only) by name."""
    if kind == "classifier":
        return ClassifierFeatures.from_folder(path or classifier_folder(dataset))
    if kind != "inception":
        raise GenlabError(f"unknown feature network {kind!r}; known: inception, classifier")
    path = path or os.environ.get("GENLAB_INCEPTION", "")
    if path:
        return TFInception.from_file(path)
    if (weights_root() / INCEPTION_FILE).is_file():
        return TFInception.from_file(weights_root() / INCEPTION_FILE)
    return TorchFidelityInception()


@torch.no_grad()
def extract_features(
    network: FeatureNetwork, images: torch.Tensor, batch_size: int = 100, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features (and logits) of every image, in batches; float64 on the CPU, (N, F) and (N, K) or None."""
    if images.dtype != torch.uint8:
        raise GenlabError(f"feature networks take uint8 images in 0..255, got {images.dtype}")
    network = network.to(device).eval()
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        batch_features, batch_logits = network(images[start : start + batch_size].to(device))
        features.append(batch_features.double().cpu())
        if batch_logits is not None:
            logits.append(batch_logits.double().cpu())
    return torch.cat(features), torch.cat(logits) if logits else None
