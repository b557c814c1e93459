"""genlab.core.data: real loaders on tiny data the tests write (IDX files, an imagefolder of PNGs), value ranges,
and the exactly resumable, multi-process BatchStream."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.core.data import (
    DATASETS,
    BatchStream,
    ImageDataset,
    SequenceDataset,
    data_root,
    iterate_batches,
    load_dataset,
    load_text,
    synthetic_shapes,
    with_mirror_images,
)
from genlab.core.errors import GenlabError

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write MNIST's IDX format: magic 2051 (images) / 2049 (labels), big-endian dims, raw uint8 payload."""
    folder.mkdir(parents=True, exist_ok=True)
    image_name, label_name = IDX_NAMES[split]
    n, h, w = images.shape
    (folder / image_name).write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    (folder / label_name).write_bytes(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


def make_idx_split(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    images[0] = 0  # some edge values for the range checks
    images[1] = 255
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    return images, labels


@pytest.fixture
def idx_root(tmp_path: Path) -> dict[str, object]:
    """MNIST and FashionMNIST raw folders with 6 train and 4 test images each (different contents)."""
    splits = {}
    for offset, folder in enumerate(("MNIST", "FashionMNIST")):
        for split, count in (("train", 6), ("test", 4)):
            images, labels = make_idx_split(10 * offset + (split == "test"), count)
            write_idx(tmp_path / folder / "raw", split, images, labels)
            splits[(folder, split)] = (images, labels)
    return {"root": tmp_path, "splits": splits}


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_files_read_through_torchvision(idx_root: dict, name: str, folder: str, split: str) -> None:
    """The real torchvision class reads the IDX bytes back exactly: pixels, labels, (N, 1, 28, 28) uint8."""
    images, labels = idx_root["splits"][(folder, split)]
    dataset = load_dataset(name, split, data_dir=idx_root["root"], download=False)
    assert dataset.images.dtype == torch.uint8
    assert tuple(dataset.images.shape) == (len(images), 1, 28, 28)
    assert dataset.shape == (1, 28, 28) and dataset.num_dims == 784
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(images))
    assert torch.equal(dataset.labels, torch.from_numpy(labels).long())
    assert dataset.labels.dtype == torch.int64
    assert dataset.num_classes == 10 and dataset.split == split and dataset.name == name


def test_value_ranges_match_their_definitions(idx_root: dict) -> None:
    """unit = x/255, signed = x/127.5 - 1, uint8 = the bytes as int64; each range's bounds are reached."""
    raw = torch.from_numpy(idx_root["splits"][("MNIST", "train")][0])[:, None]  # (N, 1, 28, 28)
    indices = torch.arange(raw.shape[0])
    unit = load_dataset("mnist", data_dir=idx_root["root"], download=False, value_range="unit").batch(indices).images
    assert unit.dtype == torch.float32
    torch.testing.assert_close(unit, raw.float() / 255.0)
    assert unit.min() == 0.0 and unit.max() == 1.0
    signed = load_dataset("mnist", data_dir=idx_root["root"], download=False, value_range="signed")
    signed_images = signed.batch(indices).images
    torch.testing.assert_close(signed_images, raw.float() / 127.5 - 1.0)
    assert signed_images.min() == -1.0 and signed_images.max() == 1.0
    uint8 = load_dataset("mnist", data_dir=idx_root["root"], download=False, value_range="uint8").batch(indices)
    assert uint8.images.dtype == torch.int64
    assert torch.equal(uint8.images, raw.long())


def test_binary_range_is_dynamic_bernoulli() -> None:
    """binary: values in {0, 1}, mean close to the intensity x/255, and two draws of the same images differ."""
    intensity = 77  # 77 / 255 ~ 0.302
    images = torch.full((32, 1, 28, 28), intensity, dtype=torch.uint8)
    dataset = ImageDataset("flat", "train", images, None, None, None, "binary")
    stream = BatchStream(dataset, global_batch_size=32, seed=3)  # one batch per epoch: the same images each draw
    first, second = stream.next().images, stream.next().images
    for draw in (first, second):
        assert set(draw.unique().tolist()) == {0.0, 1.0}
        # 25088 Bernoulli(0.302) pixels: the standard error of the mean is ~0.003.
        assert abs(draw.mean().item() - intensity / 255) < 0.015
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="noise"):
        dataset.convert(images)  # binarisation without noise is a programming error, not silent


def test_binary_respects_black_and_white() -> None:
    """A pixel at 0 is never 1 and a pixel at 255 is always 1 under binarisation."""
    images = torch.zeros(4, 1, 3, 3, dtype=torch.uint8)
    images[:, :, 0] = 255
    dataset = ImageDataset("bw", "train", images, None, None, None, "binary")
    batch = next(iterate_batches(dataset, 4, noise_seed=1)).images
    assert torch.equal(batch, images.float() / 255)


def write_png_folder(folder: Path, count: int = 12, size: int = 8) -> list[dict]:
    """An imagefolder: train/metadata.jsonl (file_name, text, label) and RGBA PNGs whose pixel (0, 0) is transparent.

    File names are written out of order so that sorting by name matters. Returns the records sorted by name.
    """
    train = folder / "train"
    train.mkdir(parents=True)
    records = []
    for i in reversed(range(count)):
        array = np.zeros((size, size, 4), dtype=np.uint8)
        array[..., 0] = 10 * i  # red encodes the index
        array[..., 1] = 200 - 5 * i
        array[..., 2] = 3 * i
        array[..., 3] = 255
        array[0, 0] = (0, 0, 0, 0)  # fully transparent black: must come out white
        name = f"img_{i:03d}.png"
        Image.fromarray(array, mode="RGBA").save(train / name)
        records.append({"file_name": name, "text": f"emoji number {i}", "label": i % 3})
    (train / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return sorted(records, key=lambda r: r["file_name"])


def expected_image(index: int, size: int = 8) -> torch.Tensor:
    image = torch.empty(3, size, size, dtype=torch.uint8)
    image[0], image[1], image[2] = 10 * index, 200 - 5 * index, 3 * index
    image[:, 0, 0] = 255
    return image


@pytest.mark.parametrize("name", ["imagefolder", "twemoji"])
def test_imagefolder_reads_pngs_captions_labels(tmp_path: Path, name: str) -> None:
    """PNG folder in HF imagefolder layout: pixels (transparency on white), captions and labels, held-out split."""
    folder = tmp_path / "twemoji" if name == "twemoji" else tmp_path / "icons"
    records = write_png_folder(folder)
    data_dir = tmp_path if name == "twemoji" else folder
    train = load_dataset(name, "train", data_dir=data_dir)
    test = load_dataset(name, "test", data_dir=data_dir)
    assert train.images.dtype == torch.uint8 and train.shape == (3, 8, 8)
    # Every 10th image by sorted file name is held out: indices 0 and 10 of 12.
    test_ids = [0, 10]
    train_ids = [i for i in range(12) if i not in test_ids]
    assert len(test) == 2 and len(train) == 10
    assert test.captions == [records[i]["text"] for i in test_ids]
    assert train.captions == [records[i]["text"] for i in train_ids]
    assert set(train.captions).isdisjoint(test.captions)
    assert sorted(train.captions + test.captions) == sorted(r["text"] for r in records)
    assert train.labels.tolist() == [records[i]["label"] for i in train_ids]
    assert test.labels.tolist() == [records[i]["label"] for i in test_ids]
    assert train.num_classes == test.num_classes == 3
    for position, index in enumerate(train_ids):
        assert torch.equal(train.images[position], expected_image(index))
    for position, index in enumerate(test_ids):
        assert torch.equal(test.images[position], expected_image(index))
    assert (train.images[:, :, 0, 0] == 255).all() and (test.images[:, :, 0, 0] == 255).all()


def test_imagefolder_explicit_test_split(tmp_path: Path) -> None:
    """With test/metadata.jsonl on disk, train is the whole train folder and test the test folder."""
    write_png_folder(tmp_path / "staging", count=3)
    (tmp_path / "staging" / "train").rename(tmp_path / "test")
    write_png_folder(tmp_path, count=12)
    train = load_dataset("imagefolder", "train", data_dir=tmp_path)
    test = load_dataset("imagefolder", "test", data_dir=tmp_path)
    assert len(train) == 12 and len(test) == 3
    assert test.captions == ["emoji number 0", "emoji number 1", "emoji number 2"]


def test_image_size_resizes(tmp_path: Path, idx_root: dict) -> None:
    """image_size resizes to (size, size) and keeps a flat image's value (antialiased bilinear, rounded)."""
    mnist = load_dataset("mnist", data_dir=idx_root["root"], download=False, image_size=14)
    assert tuple(mnist.images.shape) == (6, 1, 14, 14) and mnist.images.dtype == torch.uint8
    assert (mnist.images[0] == 0).all() and (mnist.images[1] == 255).all()  # the all-black / all-white images
    write_png_folder(tmp_path / "twemoji", count=3)
    emoji = load_dataset("twemoji", data_dir=tmp_path, image_size=4)
    assert emoji.shape == (3, 4, 4) and len(emoji) == 2  # img_000 is held out for test
    # Away from the white corner the colour is flat, so resizing keeps it.
    assert torch.equal(emoji.images[0, :, 2:, 2:], expected_image(1, 4)[:, 2:, 2:])


def test_mixed_size_folder_needs_image_size(tmp_path: Path) -> None:
    """A folder of differently sized PNGs is refused with advice to pass --image-size, and loads when it is given."""
    write_png_folder(tmp_path / "twemoji", count=4, size=8)
    Image.new("RGB", (6, 6), (1, 2, 3)).save(tmp_path / "twemoji" / "train" / "img_002.png")
    with pytest.raises(GenlabError, match="--image-size"):
        load_dataset("twemoji", data_dir=tmp_path)
    dataset = load_dataset("twemoji", data_dir=tmp_path, image_size=4)
    assert dataset.shape == (3, 4, 4) and len(dataset) == 3
    assert (dataset.images[1] == torch.tensor([1, 2, 3], dtype=torch.uint8)[:, None, None]).all()


def test_unknown_dataset_lists_known_names() -> None:
    """An unknown name is a GenlabError that lists every known data set."""
    with pytest.raises(GenlabError) as info:
        load_dataset("imagenet", download=False)
    message = str(info.value)
    assert "imagenet" in message
    for name in DATASETS:
        assert name in message


@pytest.mark.parametrize(
    ("name", "subfolder", "files"),
    [
        ("mnist", "MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("fashion_mnist", "FashionMNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("cifar10", "cifar-10-batches-py", ["data_batch_1", "test_batch"]),
        ("twemoji", "twemoji", ["metadata.jsonl"]),
        ("imagefolder", "", ["metadata.jsonl"]),
    ],
)
def test_missing_data_offline_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, subfolder: str, files: list[str]
) -> None:
    """Absent data with downloads forbidden: a one-line GenlabError naming the folder and the files it needs."""
    monkeypatch.setenv("GENLAB_NO_DOWNLOAD", "1")
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(GenlabError) as info:
        load_dataset(name, data_dir=root)  # download=True by default: the variable must forbid it
    message = str(info.value)
    assert "\n" not in message
    assert str(root / subfolder if subfolder else root) in message
    for file in files:
        assert file in message


def test_genlab_data_env_is_the_default_root(idx_root: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With data_dir None, $GENLAB_DATA is the root; an explicit data_dir wins over it."""
    monkeypatch.setenv("GENLAB_DATA", str(idx_root["root"]))
    assert data_root(None) == Path(idx_root["root"])
    dataset = load_dataset("mnist", "test", download=False)
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(idx_root["splits"][("MNIST", "test")][0]))
    elsewhere = tmp_path / "elsewhere"
    assert data_root(elsewhere) == elsewhere
    monkeypatch.setenv("GENLAB_NO_DOWNLOAD", "1")
    with pytest.raises(GenlabError, match="elsewhere"):
        load_dataset("mnist", data_dir=elsewhere)


def test_synthetic_is_deterministic_and_labelled() -> None:
    """Same seed -> same images; labels and captions agree; the two splits differ; RGB variant has 3 channels."""
    first, second = load_dataset("synthetic"), load_dataset("synthetic")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.shape == (1, 28, 28) and first.images.dtype == torch.uint8
    assert set(first.labels.unique().tolist()) == {0, 1, 2, 3}
    labels = first.labels.tolist()
    assert all(caption.endswith(first.class_names[k]) for caption, k in zip(first.captions, labels, strict=True))
    assert first.images.float().std() > 50  # real shapes, not blank images
    test = load_dataset("synthetic", "test")
    assert len(test) < len(first) and not torch.equal(test.images[:8], first.images[:8])
    images_a, labels_a, captions_a = synthetic_shapes(16, seed=5)
    images_b, labels_b, _ = synthetic_shapes(16, seed=6)
    assert not torch.equal(images_a, images_b) and not torch.equal(labels_a, labels_b)
    assert torch.equal(images_a, synthetic_shapes(16, seed=5)[0]) and len(captions_a) == 16
    rgb = load_dataset("synthetic_rgb", "test")
    assert rgb.shape == (3, 32, 32) and rgb.num_classes == 4


def toy_dataset(count: int, value_range: str = "unit", shape: tuple[int, ...] = (1, 2, 2)) -> ImageDataset:
    """Image i is filled with intensity 5 + 10 * (i % 25) and labelled i, so a batch's labels name its images."""
    images = (5 + 10 * (torch.arange(count) % 25)).to(torch.uint8).view(count, 1, 1, 1).expand(count, *shape)
    return ImageDataset("toy", "train", images.contiguous(), torch.arange(count), None, None, value_range)


def draw(stream: BatchStream, count: int) -> list:
    return [stream.next() for _ in range(count)]


def test_batch_stream_is_deterministic_given_seed() -> None:
    """Two streams with the same seed draw identical batches (order and binarisation); another seed differs."""
    dataset = toy_dataset(24, "binary")
    a, b = draw(BatchStream(dataset, 6, seed=1), 9), draw(BatchStream(dataset, 6, seed=1), 9)
    c = draw(BatchStream(dataset, 6, seed=2), 9)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.labels, y.labels) and torch.equal(x.images, y.images)
    assert any(not torch.equal(x.labels, z.labels) for x, z in zip(a, c, strict=True))


def test_batch_stream_covers_each_image_once_per_epoch() -> None:
    """Each epoch is a permutation: every image exactly once; successive epochs use different orders."""
    dataset = toy_dataset(24)
    stream = BatchStream(dataset, 6, seed=0)
    assert stream.batches_per_epoch == 4
    epochs = []
    for epoch in range(3):
        labels = torch.cat([batch.labels for batch in draw(stream, 4)])
        assert sorted(labels.tolist()) == list(range(24))
        epochs.append(labels)
        assert stream.epoch == epoch + 1
    assert not torch.equal(epochs[0], epochs[1])
    batch = BatchStream(dataset, 6).next()
    torch.testing.assert_close(batch.images, dataset.images[batch.labels].float() / 255)  # images match labels


def test_batch_stream_resumes_exactly() -> None:
    """A fresh stream loaded with a state_dict draws what the uninterrupted stream draws next, across epochs."""
    dataset = toy_dataset(20, "binary")
    original = BatchStream(dataset, 4, seed=7)
    draw(original, 3)
    state = original.state_dict()
    expected = draw(original, 6)  # crosses the epoch boundary at draw 5
    resumed = BatchStream(dataset, 4, seed=7)
    resumed.load_state_dict(state)
    for want, got in zip(expected, draw(resumed, 6), strict=True):
        assert torch.equal(want.labels, got.labels) and torch.equal(want.images, got.images)
    with pytest.raises(GenlabError):
        BatchStream(dataset, 4, seed=8).load_state_dict(state)
    with pytest.raises(GenlabError):
        BatchStream(dataset, 5, seed=7).load_state_dict(state)


def test_batch_stream_ranks_split_the_global_batch() -> None:
    """world_size=2: rank 0 and rank 1 batches concatenated equal the one-process batch, binarisation included."""
    dataset = toy_dataset(24, "binary", shape=(1, 4, 4))
    single = BatchStream(dataset, 8, seed=4)
    ranks = [BatchStream(dataset, 8, seed=4, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):
        whole = single.next()
        parts = [stream.next() for stream in ranks]
        assert all(len(part.labels) == 4 for part in parts)
        assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
        assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
    with pytest.raises(GenlabError, match="divide"):
        BatchStream(dataset, 7, world_size=2)
    with pytest.raises(GenlabError, match="exceeds"):
        BatchStream(dataset, 32)


@pytest.mark.parametrize("value_range", ["unit", "binary"])
def test_iterate_batches_covers_every_example_once(value_range: str) -> None:
    """Evaluation batches visit every example exactly once, in order, with a smaller last batch."""
    dataset = toy_dataset(23, value_range)
    batches = list(iterate_batches(dataset, 5))
    assert [len(b.labels) for b in batches] == [5, 5, 5, 5, 3]
    assert torch.cat([b.labels for b in batches]).tolist() == list(range(23))
    images = torch.cat([b.images for b in batches])
    if value_range == "unit":
        torch.testing.assert_close(images, dataset.images.float() / 255)
    else:
        assert set(images.unique().tolist()) <= {0.0, 1.0}


def test_float_data_passes_through_the_batch_stream() -> None:
    """Value range "float" (2-D toy points as (N, 2, 1, 1)): batches hold the stored values, unconverted."""
    points = torch.randn(40, 2, 1, 1)
    data = ImageDataset("toy", "train", points, None, None, None, "float")
    batch = BatchStream(data, 8, seed=0).next()
    assert batch.images.dtype == torch.float32 and batch.images.shape == (8, 2, 1, 1)
    assert any(torch.equal(image, point) for image in batch.images[:1] for point in points)


def test_mirror_images_double_the_split_with_each_image_flipped_left_to_right() -> None:
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).reshape(2, 1, 2, 3)
    data = ImageDataset("toy", "train", images, torch.tensor([4, 7]), ["a", "b"], None, "unit")
    doubled = with_mirror_images(data)
    assert len(doubled) == 4 and doubled.labels.tolist() == [4, 7, 4, 7] and doubled.captions == ["a", "b", "a", "b"]
    assert torch.equal(doubled.images[:2], images)
    assert doubled.images[2, 0].tolist() == [[2, 1, 0], [5, 4, 3]]  # columns reversed, rows kept
    assert torch.equal(with_mirror_images(ImageDataset("toy", "train", images, None, None, None, "unit")).images,
                       doubled.images)  # fmt: skip


# ---- token sequences: text windows and token grids ----


def test_text_is_split_by_position_and_read_as_every_window(tmp_path: Path) -> None:
    text = "abcabcabcd" * 10  # 100 characters, vocabulary a b c d
    (tmp_path / "input.txt").write_text(text)
    train = load_text(tmp_path / "input.txt", "train", window=5)
    test = load_text(tmp_path / "input.txt", "test", window=5)
    assert train.vocabulary == ["a", "b", "c", "d"] == test.vocabulary
    assert len(train.tokens) == 90 and len(test.tokens) == 10  # the first 90% trains
    decoded = "".join(train.vocabulary[i] for i in train.tokens.tolist())
    assert decoded == text[:90] and "".join(test.vocabulary[i] for i in test.tokens.tolist()) == text[90:]
    assert len(train) == 86 and train.shape == (5,)  # every start position of a whole window
    batch = train.batch(torch.tensor([0, 85, 7])).images  # (3, 5)
    assert ["".join(train.vocabulary[i] for i in row) for row in batch.tolist()] == [text[0:5], text[85:90], text[7:12]]


def test_text_beyond_ascii_keeps_one_token_per_character_in_code_point_order(tmp_path: Path) -> None:
    text = "Zoë saw 🙂 — ça va?\n" * 5  # two-, three- and four-byte UTF-8 characters
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    train = load_text(tmp_path / "input.txt", "train", window=3)
    test = load_text(tmp_path / "input.txt", "test", window=3)
    assert train.vocabulary == sorted(set(text)) and train.vocabulary[-1] == "🙂"
    cut = int(len(text) * 0.9)
    assert "".join(train.vocabulary[i] for i in train.tokens.tolist()) == text[:cut]
    assert "".join(test.vocabulary[i] for i in test.tokens.tolist()) == text[cut:]


def test_a_batch_stream_draws_each_window_once_per_epoch(tmp_path: Path) -> None:
    tokens = torch.arange(20)
    data = SequenceDataset("stream", "train", tokens, window=4)  # 17 windows
    stream = BatchStream(data, global_batch_size=4, seed=0)
    batches = [stream.next().images for _ in range(stream.batches_per_epoch)]  # each (4, 4): consecutive tokens
    assert all(torch.equal(b, b[:, :1] + torch.arange(4)) for b in batches)
    starts = [int(start) for b in batches for start in b[:, 0]]
    assert len(set(starts)) == 16 and set(starts) <= set(range(17))  # 4 batches of 4, no start twice
    rows = SequenceDataset("grids", "train", torch.arange(12).view(6, 2), labels=torch.arange(6) * 10)
    batch = rows.batch(torch.tensor([4, 1]))
    assert batch.images.tolist() == [[8, 9], [2, 3]] and batch.labels.tolist() == [40, 10]


def test_text_that_is_missing_or_too_short_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(GenlabError, match="no text file"):
        load_text(tmp_path / "absent.txt", "train", window=5)
    (tmp_path / "short.txt").write_text("abcdefghij")
    with pytest.raises(GenlabError, match="fewer than one window"):
        load_text(tmp_path / "short.txt", "test", window=5)  # the test split holds 1 character
