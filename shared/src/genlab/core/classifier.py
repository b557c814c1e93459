"""``genlab-classifier``: train the feature network for fast FID on 28x28 grey data, through the one loop.

    genlab-classifier --dataset mnist            # -> ~/.cache/genlab/weights/genlab-classifier-mnist/
    genlab-classifier --dataset fashion_mnist

The trained network is written, beside its run folder, to a weights folder as model.safetensors and a
config.json that records the data set, the test accuracy and the sha256 of the weights; ``genlab-eval
--features classifier`` finds it there and names that hash in every report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_model

from genlab.core.checkpoint import write_text_atomic
from genlab.core.config import option, parse_config
from genlab.core.data import Batch, load_dataset
from genlab.core.errors import GenlabError, exit_on_user_error
from genlab.core.features import (
    CLASSIFIER_CONFIG,
    CLASSIFIER_WEIGHTS,
    DigitClassifier,
    classifier_folder,
    file_sha256,
)
from genlab.core.trainer import TrainConfig, Trainer

PROJECT = "classifier"


@dataclass
class ClassifierConfig(TrainConfig):
    """Train genlab's own feature network (a small CNN classifier) on a 28x28 grey data set."""

    steps: int = option(3000, "optimizer steps (about 6 epochs of MNIST at batch 128)")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate shape after warm-up")
    warmup_steps: int = option(100, "linear learning-rate warm-up steps")
    sample_every: int = option(0, "unused: a classifier draws no samples")
    out: str = option("", "weights folder (default: ~/.cache/genlab/weights/genlab-classifier-<dataset>)")


def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Share of images (N, 1, 28, 28) in [0, 1] whose arg-max logit is the label."""
    correct = 0
    for start in range(0, len(images), batch_size):
        _, logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train(config: ClassifierConfig) -> Path:
    """Train, then write the weights folder; returns its path."""
    data_dir = config.data_dir or None
    train_data = load_dataset(config.dataset, "train", data_dir=data_dir, value_range="unit")
    test_data = load_dataset(config.dataset, "test", data_dir=data_dir, value_range="unit")
    if train_data.shape != (1, 28, 28) or train_data.labels is None:
        raise GenlabError(f"the genlab classifier is for labelled 1x28x28 data; {config.dataset} is {train_data.shape}")
    out = Path(config.out) if config.out else classifier_folder(config.dataset)
    architecture = {"num_classes": train_data.num_classes, "width": 32, "num_features": 128}
    trainer = Trainer(config, project=PROJECT, config_extra={"model": architecture})
    model = trainer.add_model("classifier", DigitClassifier(**architecture), ema=False)

    def cross_entropy(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, logits = model(batch.images)
        loss = F.cross_entropy(logits, batch.labels)
        return loss, {"loss": loss.detach(), "accuracy": (logits.argmax(1) == batch.labels).float().mean()}

    trainer.add_update("classifier", torch.optim.Adam(model.parameters(), lr=config.lr), cross_entropy, ["classifier"])

    def eval_fn(trainer: Trainer) -> dict[str, float]:
        network = trainer.eval_model("classifier")
        return {"test_accuracy": accuracy(network, test_data.images.float().to(trainer.device) / 255.0,
                                          test_data.labels.to(trainer.device))}  # fmt: skip

    results = trainer.fit(train_data, eval_fn=eval_fn)
    if trainer.rank == 0:
        classifier = trainer.eval_model("classifier").cpu().eval()
        out.mkdir(parents=True, exist_ok=True)
        save_model(classifier, str(out / CLASSIFIER_WEIGHTS))
        saved = {
            "model": architecture,
            "dataset": config.dataset,
            "test_accuracy": results["eval/test_accuracy"],
            "steps": config.steps,
            "run": str(trainer.run_dir),
            "sha256": file_sha256(out / CLASSIFIER_WEIGHTS),
        }
        write_text_atomic(out / CLASSIFIER_CONFIG, json.dumps(saved, indent=1))
        print(f"test accuracy {saved['test_accuracy']:.4f}; weights in {out} (sha256 {saved['sha256'][:16]})")
    return out


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    train(parse_config(ClassifierConfig, argv, prog="genlab-classifier"))
