"""The one data entry point: ``load_dataset(name, split)`` returns a whole image data set held in memory.

Images are kept as 8-bit integers, shape (N, C, H, W), on the training device; each batch is converted to the
value range a model asks for when it is drawn:

    "unit"    float in [0, 1]            x / 255
    "signed"  float in [-1, 1]           x / 127.5 - 1
    "binary"  {0., 1.}, drawn afresh     Bernoulli(x / 255)  (dynamic binarisation, a new draw every batch)
    "uint8"   int64 in 0..255            for discrete likelihoods (256-way softmax, dequantisation)
    "float"   as stored                  data that is already float, e.g. 2-D toy points as (N, 2, 1, 1)

Where the files come from: ``data_dir``, else $GENLAB_DATA, else ~/.cache/genlab/data. torchvision downloads
MNIST, Fashion-MNIST and CIFAR-10 there when they are missing (set GENLAB_NO_DOWNLOAD=1 to forbid it). A data
set that is missing and cannot be downloaded is a one-line GenlabError naming the folder and the files it needs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genlab.core.errors import GenlabError

ValueRange = Literal["unit", "signed", "binary", "uint8", "float"]
Split = Literal["train", "test"]

DEFAULT_ROOT = Path.home() / ".cache" / "genlab" / "data"
SYNTHETIC_CLASSES = ("square", "disk", "cross", "ring")


@dataclass
class Batch:
    """One batch: images in the data set's value range, with labels and captions where the data has them."""

    images: torch.Tensor  # (B, C, H, W)
    labels: torch.Tensor | None = None  # (B,)
    captions: list[str] | None = None


@dataclass
class ImageDataset:
    """A whole split of an image data set, 8-bit (or float, for value range "float"), in memory on one device."""

    name: str
    split: Split
    images: torch.Tensor  # (N, C, H, W) uint8, or float for value range "float"
    labels: torch.Tensor | None  # (N,) int64
    captions: list[str] | None
    class_names: list[str] | None
    value_range: ValueRange

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    @property
    def num_dims(self) -> int:
        """Dimensions per image, C * H * W: the denominator of bits/dim."""
        return math.prod(self.shape)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageDataset:
        labels = None if self.labels is None else self.labels.to(device)
        return ImageDataset(
            self.name, self.split, self.images.to(device), labels, self.captions, self.class_names,
            self.value_range,
        )  # fmt: skip

    def convert(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """8-bit images -> the value range; "binary" needs uniform ``noise`` of the same shape."""
        return convert_range(images, self.value_range, noise)

    def batch(self, indices: torch.Tensor, noise: torch.Tensor | None = None) -> Batch:
        """The batch at ``indices`` (a tensor on the data's device), converted to the value range."""
        images = self.convert(self.images[indices], noise)
        labels = None if self.labels is None else self.labels[indices]
        captions = None if self.captions is None else [self.captions[i] for i in indices.tolist()]
        return Batch(images, labels, captions)


@dataclass
class SequenceDataset:
    """Token sequences for the training loop, as ImageDataset is for images: rows of one length (image token grids
    in raster order, with their labels), or every window of ``window`` tokens of one long stream (text). A batch
    holds (B, L) int64 token ids in ``Batch.images``."""

    name: str
    split: Split
    tokens: torch.Tensor  # (N, L) int64 rows, or (S,) int64 one stream
    window: int = 0  # > 0: the sequences are the S - window + 1 windows of the stream
    labels: torch.Tensor | None = None  # (N,) int64, rows only
    vocabulary: list[str] | None = None  # a character per token id, for text
    value_range: str = "tokens"

    def __post_init__(self) -> None:
        if self.window and (self.tokens.dim() != 1 or len(self.tokens) < self.window):
            raise GenlabError(
                f"{self.name} {self.split}: {len(self.tokens)} tokens, fewer than one window of {self.window}"
            )

    def __len__(self) -> int:
        return len(self.tokens) - self.window + 1 if self.window else len(self.tokens)

    @property
    def shape(self) -> tuple[int]:
        """(L,): the length of one sequence."""
        return (self.window,) if self.window else (self.tokens.shape[1],)

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def to(self, device: torch.device | str) -> SequenceDataset:
        labels = None if self.labels is None else self.labels.to(device)
        return SequenceDataset(self.name, self.split, self.tokens.to(device), self.window, labels, self.vocabulary)

    def batch(self, indices: torch.Tensor, noise: torch.Tensor | None = None) -> Batch:
        """The sequences at ``indices`` (a tensor on the data's device) as (B, L) int64."""
        if self.window:
            offsets = torch.arange(self.window, device=indices.device)
            return Batch(self.tokens[indices[:, None] + offsets])  # (B, window): windows starting at indices
        return Batch(self.tokens[indices], None if self.labels is None else self.labels[indices])


def load_text(path: str | Path, split: Split, window: int, train_fraction: float = 0.9) -> SequenceDataset:
    """A text file as characters: the vocabulary is the file's distinct characters in code-point order, the first
    ``train_fraction`` of the file (by position) is the train split, the rest the test split, and the sequences
    are all windows of ``window`` characters."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenlabError(f"no text file at {path}: pass --text FILE, or put shakespeare/input.txt under the data root")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise GenlabError(f"{path} is not readable UTF-8 text ({error})") from None
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # one per character, in a vectorised pass
    vocabulary_points = np.unique(code_points)  # sorted: the vocabulary in code-point order
    cut = int(len(text) * train_fraction)
    part = code_points[:cut] if split == "train" else code_points[cut:]
    tokens = torch.from_numpy(np.searchsorted(vocabulary_points, part).astype(np.int64))
    vocabulary = [chr(point) for point in vocabulary_points.tolist()]
    return SequenceDataset(path.stem, split, tokens, window, vocabulary=vocabulary)


def convert_range(images: torch.Tensor, value_range: ValueRange, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Convert uint8 images to one of the documented value ranges ("float" data passes through)."""
    if value_range == "float":
        return images
    if value_range == "uint8":
        return images.long()
    unit = images.float() / 255.0
    if value_range == "unit":
        return unit
    if value_range == "signed":
        return unit * 2.0 - 1.0
    if value_range == "binary":
        if noise is None:
            raise ValueError("dynamic binarisation needs uniform noise of the batch's shape")
        return (noise < unit).float()
    raise ValueError(f"unknown value range {value_range!r}")


def data_root(data_dir: str | Path | None = None) -> Path:
    """Where data sets live: the flag, else $GENLAB_DATA, else the user's cache folder."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("GENLAB_DATA"):
        return Path(os.environ["GENLAB_DATA"]).expanduser()
    return DEFAULT_ROOT


def _download_allowed(download: bool) -> bool:
    return download and os.environ.get("GENLAB_NO_DOWNLOAD", "") not in ("1", "true", "yes")


def _missing(name: str, folder: Path, files: str, downloadable: bool) -> GenlabError:
    how = "and it could not be downloaded (offline?)" if downloadable else "(it cannot be downloaded)"
    return GenlabError(
        f"data set {name!r} not found in {folder} {how}: put {files} there, "
        "or point --data-dir / GENLAB_DATA at a folder that has it"
    )


_MNIST_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"


def _torchvision_mnist(cls_name: str, key: str, root: Path, split: Split, download: bool):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:
        dataset = cls(str(root), train=split == "train", download=download)
    except Exception as error:  # torchvision raises RuntimeError or URLError; both mean "not there"
        raise _missing(key, root / cls_name / "raw", _MNIST_FILES, download) from error
    images = dataset.data.unsqueeze(1).contiguous()  # (N, 28, 28) -> (N, 1, 28, 28)
    return images, dataset.targets.long(), None, list(dataset.classes)


def _cifar10(root: Path, split: Split, download: bool):
    import torchvision

    try:
        dataset = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=download)
    except Exception as error:
        raise _missing(
            "cifar10", root / "cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta", download
        ) from error
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return images, torch.tensor(dataset.targets, dtype=torch.long), None, list(dataset.classes)


def _celeba(root: Path, split: Split, download: bool, image_size: int):
    import torchvision
    from torchvision.transforms import v2

    # The usual 64x64 CelebA of the generative-model literature: a 140-pixel centre crop, then resize.
    transform = v2.Compose([v2.CenterCrop(140), v2.Resize(image_size, antialias=True), v2.PILToTensor()])
    try:
        dataset = torchvision.datasets.CelebA(
            str(root), split="train" if split == "train" else "test", target_type=[], transform=transform,
            download=download,
        )  # fmt: skip
    except Exception as error:
        raise _missing(
            "celeba", root / "celeba",
            "img_align_celeba/, list_eval_partition.txt, list_attr_celeba.txt, identity_CelebA.txt, "
            "list_bbox_celeba.txt, list_landmarks_align_celeba.txt", False,
        ) from error  # fmt: skip
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return images, None, None, None


def _read_rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "P"):
            # Composite transparency on white, the convention of emoji and icon sets.
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)
        array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _imagefolder(name: str, folder: Path, split: Split, image_size: int | None = None):
    """Hugging Face's ``imagefolder`` layout: <split>/metadata.jsonl with file_name, optional text and label.

    A folder with only a train split is divided deterministically: every 10th image (sorted by file name) is
    held out as the test split, the rest is train.
    """
    metadata_path = folder / split / "metadata.jsonl"
    # Only a train split on disk: both splits come from it, test = every 10th image, train = the rest.
    held_out = not (folder / "test" / "metadata.jsonl").is_file()
    if held_out:
        metadata_path = folder / "train" / "metadata.jsonl"
    if not metadata_path.is_file():
        raise _missing(name, folder, "train/metadata.jsonl (test/ optional) and the images it lists", False)
    records = [json.loads(line) for line in metadata_path.read_text().splitlines() if line.strip()]
    records.sort(key=lambda record: record["file_name"])
    # Class names from every record of the file, so that both held-out splits agree on the number of classes.
    all_labels = [int(r["label"]) for r in records if "label" in r]
    if held_out:
        records = [r for i, r in enumerate(records) if (i % 10 == 0) == (split == "test")]
    images, sizes = [], set()
    for record in records:
        image = _read_rgb(metadata_path.parent / record["file_name"])
        if image_size is not None:  # resize one by one, so that a folder of mixed sizes can be stacked
            image = _resize(image[None], image_size)[0]
        sizes.add(tuple(image.shape))
        images.append(image)
    if len(sizes) > 1:
        raise GenlabError(f"images in {folder} differ in size ({sorted(sizes)[:3]}...): pass --image-size")
    labels = None
    if records and all("label" in r for r in records):
        labels = torch.tensor([int(r["label"]) for r in records], dtype=torch.long)
    captions = [r["text"] for r in records] if records and all("text" in r for r in records) else None
    class_names = None
    if (folder / "categories.json").is_file():
        class_names = list(json.loads((folder / "categories.json").read_text()))
    elif labels is not None:
        class_names = [str(i) for i in range(max(all_labels) + 1)]
    return torch.stack(images), labels, captions, class_names


def synthetic_shapes(
    count: int, size: int = 28, channels: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Small images of four shapes (square, disk, cross, ring) at random places, sizes and colours.

    Structured enough that a model learns it in seconds, deterministic given the seed. Returns uint8 images
    (count, channels, size, size), labels (count,) and captions like "a red disk".
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SYNTHETIC_CLASSES), (count,), generator=generator)
    radius = size * (0.18 + 0.14 * torch.rand(count, generator=generator))  # (N,)
    centre = radius[:, None] + (size - 2 * radius[:, None]) * torch.rand(count, 2, generator=generator)  # (N, 2)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = coords[None, :, None] - centre[:, 0, None, None]  # (N, size, 1)
    dx = coords[None, None, :] - centre[:, 1, None, None]  # (N, 1, size)
    r = radius[:, None, None]
    distance = torch.sqrt(dx**2 + dy**2)
    shapes = torch.stack(
        [
            (dx.abs() <= r) & (dy.abs() <= r),  # square
            distance <= r,  # disk
            ((dx.abs() <= r / 3) & (dy.abs() <= r)) | ((dy.abs() <= r / 3) & (dx.abs() <= r)),  # cross
            (distance <= r) & (distance >= 0.55 * r),  # ring
        ],
        dim=1,
    )  # (N, 4, size, size)
    mask = shapes[torch.arange(count), labels].float()  # (N, size, size)
    if channels == 1:
        images = mask[:, None] * 255.0
        captions = [f"a {SYNTHETIC_CLASSES[k]}" for k in labels.tolist()]
    else:
        palette = torch.tensor([[220, 40, 40], [40, 160, 60], [40, 80, 220], [240, 180, 20]], dtype=torch.float32)
        names = ("red", "green", "blue", "yellow")
        colour_index = torch.randint(len(palette), (count,), generator=generator)
        colour = palette[colour_index][:, :, None, None]  # (N, 3, 1, 1)
        images = 255.0 * (1 - mask[:, None]) + colour * mask[:, None]  # shape in colour on white
        captions = [
            f"a {names[c]} {SYNTHETIC_CLASSES[k]}" for c, k in zip(colour_index.tolist(), labels.tolist(), strict=True)
        ]
    return images.round().clamp(0, 255).to(torch.uint8), labels, captions


def _resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    resized = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


DATASETS = (
    "mnist",
    "fashion_mnist",
    "cifar10",
    "celeba",
    "twemoji",
    "imagefolder",
    "synthetic",
    "synthetic_rgb",
)


def load_dataset(
    name: str,
    split: Split = "train",
    *,
    data_dir: str | Path | None = None,
    value_range: ValueRange = "unit",
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
) -> ImageDataset:
    """Load a whole split of a data set by name, held in memory on ``device``.

    Names: mnist, fashion_mnist, cifar10, celeba (64x64 unless ``image_size``), twemoji (the imagefolder at
    <root>/twemoji), imagefolder (the imagefolder at the root itself, e.g. ``--data-dir path/to/folder``),
    synthetic (1x28x28 grey shapes) and synthetic_rgb (3x32x32 coloured shapes on white).
    """
    if name not in DATASETS:
        raise GenlabError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise GenlabError(f"unknown split {split!r}; known splits: train, test")
    root = data_root(data_dir)
    download = _download_allowed(download)
    if name == "mnist":
        images, labels, captions, classes = _torchvision_mnist("MNIST", name, root, split, download)
    elif name == "fashion_mnist":
        images, labels, captions, classes = _torchvision_mnist("FashionMNIST", name, root, split, download)
    elif name == "cifar10":
        images, labels, captions, classes = _cifar10(root, split, download)
    elif name == "celeba":
        images, labels, captions, classes = _celeba(root, split, download, image_size or 64)
    elif name == "twemoji":
        images, labels, captions, classes = _imagefolder(name, root / "twemoji", split, image_size)
    elif name == "imagefolder":
        images, labels, captions, classes = _imagefolder(name, root, split, image_size)
    else:
        channels, size = (1, 28) if name == "synthetic" else (3, 32)
        count, seed = (4096, 0) if split == "train" else (1024, 1)
        images, labels, captions = synthetic_shapes(count, size, channels, seed)
        classes = list(SYNTHETIC_CLASSES)
    if image_size is not None:
        images = _resize(images, image_size)
    return ImageDataset(name, split, images.to(device), None if labels is None else labels.to(device),
                        captions, classes, value_range)  # fmt: skip


def with_mirror_images(data: ImageDataset) -> ImageDataset:
    """The data set followed by every image mirrored left to right, labels and captions repeated: horizontal-flip
    augmentation as a fixed doubling of the split, so that it also reaches a model trained on a frozen first stage's
    latents (which are not flipped by flipping the latent). Uniform draws from the doubled set see each image flipped
    with probability 1/2, as a random flip per draw would."""
    labels = None if data.labels is None else data.labels.repeat(2)
    captions = None if data.captions is None else data.captions * 2
    images = torch.cat([data.images, data.images.flip(-1)])  # (2N, C, H, W)
    return ImageDataset(data.name, data.split, images, labels, captions, data.class_names, data.value_range)


class BatchStream:
    """An endless, exactly resumable stream of batches drawn from an in-memory data set on its device.

    Batch number ``draw`` is a pure function of (seed, draw): epoch ``e = draw // batches_per_epoch`` uses the
    permutation seeded by (seed, e), and dynamic binarisation uses noise seeded by (seed, draw). So the state
    is one integer, and resuming at draw n gives the batches an uninterrupted run would have drawn. With
    several processes, each takes its contiguous share of the same global batch, so the union of their
    batches equals the one-process batch.
    """

    def __init__(
        self,
        dataset: ImageDataset | SequenceDataset,
        global_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch_size % world_size:
            raise GenlabError(f"batch size {global_batch_size} does not divide among {world_size} processes")
        if global_batch_size > len(dataset):
            raise GenlabError(f"batch size {global_batch_size} exceeds the data set's {len(dataset)} examples")
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.batches_per_epoch = len(dataset) // global_batch_size
        self.draws = 0
        self._epoch = -1
        self._permutation: torch.Tensor | None = None

    @property
    def epoch(self) -> float:
        return self.draws / self.batches_per_epoch

    def _generator(self, *key: int, device: torch.device | str = "cpu") -> torch.Generator:
        # A distinct, reproducible stream per key; 2**61 - 1 keeps the mixed seed in range.
        mixed = self.seed
        for part in key:
            mixed = (mixed * 1_000_003 + part + 1) % (2**61 - 1)
        return torch.Generator(device=device).manual_seed(mixed)

    def next(self) -> Batch:
        epoch, position = divmod(self.draws, self.batches_per_epoch)
        if epoch != self._epoch:
            permutation = torch.randperm(len(self.dataset), generator=self._generator(0, epoch))
            self._permutation = permutation.to(self.dataset.device)
            self._epoch = epoch
        start = position * self.global_batch_size + self.rank * self.local_batch_size
        indices = self._permutation[start : start + self.local_batch_size]
        noise = None
        if self.dataset.value_range == "binary":
            device = self.dataset.device
            global_shape = (self.global_batch_size, *self.dataset.shape)
            noise = torch.rand(global_shape, generator=self._generator(1, self.draws, device=device), device=device)
            noise = noise[self.rank * self.local_batch_size : (self.rank + 1) * self.local_batch_size]
        self.draws += 1
        return self.dataset.batch(indices, noise)

    def state_dict(self) -> dict[str, int]:
        return {"draws": self.draws, "seed": self.seed, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed or state["global_batch_size"] != self.global_batch_size:
            raise GenlabError("cannot resume: the checkpoint was made with another seed or batch size")
        self.draws = int(state["draws"])


def iterate_batches(dataset: ImageDataset | SequenceDataset, batch_size: int, noise_seed: int = 0):
    """Every image once, in order, in batches: for evaluation (the last batch may be smaller)."""
    generator = torch.Generator(device=dataset.device).manual_seed(noise_seed)
    for start in range(0, len(dataset), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(dataset)), device=dataset.device)
        noise = None
        if dataset.value_range == "binary":
            shape = (len(indices), *dataset.shape)
            noise = torch.rand(shape, generator=generator, device=dataset.device)
        yield dataset.batch(indices, noise)
