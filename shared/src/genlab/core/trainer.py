"""The one training loop of genlab, on accelerate.

A project hands the loop what differs between papers: its models, and one or more update rules (an optimizer,
the loss it minimises, how often). A VAE has one rule; a GAN has two (the critic, repeated n_critic times, then
the generator). Everything else lives here once: devices and processes (``accelerate launch`` / torchrun),
bf16/fp16 autocast, gradient accumulation and clipping, warm-up and LR schedules, EMA of weights, optional
torch.compile, a progress bar, TensorBoard and metrics.jsonl, sample grids and evaluation every N steps,
atomic checkpoints every N steps and on SIGINT/SIGTERM, exact resume, and a clean stop on a non-finite loss.

Exact resume needs no saved random-number state: step ``s`` on process ``r`` reseeds torch from
(seed, s, r), and the batch stream is a function of (seed, number of batches drawn).

``Trainer(config, ...)`` seeds torch from ``config.seed``: build the networks after it, so ``--seed`` fixes the
initial weights in every project the same way. Nothing is written until ``fit`` has checked everything (the data
against the batch size, a resumed checkpoint and the settings it may and may not change), so a refused command
leaves a run folder as it found it.

    trainer = Trainer(config, project="vae", config_extra={"model": model_config})
    model = trainer.add_model("vae", VAE(model_config))
    trainer.add_update("elbo", torch.optim.Adam(model.parameters(), lr=config.lr), loss_fn, models=["vae"])
    trainer.fit(train_data, sample_fn=..., eval_fn=...)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import signal
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from genlab.core.checkpoint import (
    STATE,
    TRAINING_STATE,
    latest_checkpoint,
    load_module_weights,
    load_training_state,
    read_json,
    read_run_info,
    resolve_device,
    save_checkpoint,
    write_text_atomic,
)
from genlab.core.config import CONFIG_FILE, config_to_dict, option
from genlab.core.data import Batch, BatchStream, ImageDataset, SequenceDataset
from genlab.core.errors import GenlabError
from genlab.core.visualise import save_grid

LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Flags every train script shares; a project's config subclasses this and adds its model's."""

    dataset: str = option("mnist", "data set name (mnist, fashion_mnist, cifar10, celeba, twemoji, synthetic, ...)")
    data_dir: str = option("", "data root (default: $GENLAB_DATA, else ~/.cache/genlab/data)")
    image_size: int | None = option(None, "resize images to this size (None keeps the data set's)")
    steps: int = option(10_000, "optimizer steps to train for (the total, also when resuming)")
    batch_size: int = option(128, "global batch per micro-step, summed over processes")
    lr: float = option(1e-3, "peak learning rate")
    seed: int = option(0, "random seed: data order, initialisation and noise")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to train (auto: GPU if any)")
    run_dir: str = option("", "run folder (default: runs/<project>/<dataset>-<time>)")
    preset: str = option("", "named group of settings, e.g. 'paper' (see the project's README)")
    resume: str = option("", "run folder to continue from its latest checkpoint, with its saved config")
    precision: Literal["no", "bf16", "fp16"] = option("no", "autocast precision")
    grad_accum: int = option(1, "micro-steps of gradient accumulation per optimizer step")
    grad_clip: float = option(0.0, "clip the global gradient norm to this (0: off)")
    ema_decay: float = option(0.0, "decay of the EMA of weights (0: no EMA)")
    ema_warmup: bool = option(
        False,
        "ramp the EMA decay up as min(decay, (1 + step) / (10 + step)), so early "
        "averages forget the random initialisation (diffusion training)",
    )
    warmup_steps: int = option(0, "linear learning-rate warm-up steps")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("constant", "learning-rate shape after warm-up")
    compile: bool = option(False, "torch.compile the models")
    log_every: int = option(100, "log losses every N steps")
    sample_every: int = option(1000, "write a sample grid every N steps (0: only at the end)")
    eval_every: int = option(0, "evaluate every N steps (0: only at the end)")
    checkpoint_every: int = option(1000, "checkpoint every N steps (and always at the end and on SIGINT/SIGTERM)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep (0: all)")
    progress: bool = option(True, "show a progress bar")
    time_limit: float = option(0.0, "stop after this many minutes of training as if --steps ended there (0: none)")

    def validate(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise GenlabError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        non_negative = ("grad_clip", "warmup_steps", "sample_every", "eval_every", "checkpoint_every", "time_limit")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise GenlabError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise GenlabError(f"--lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise GenlabError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.image_size is not None and self.image_size <= 0:
            raise GenlabError(f"--image-size must be positive, got {self.image_size}")
        for name in ("run_dir", "resume"):
            path = Path(getattr(self, name)) if getattr(self, name) else None
            if path is not None and path.exists() and not path.is_dir():
                raise GenlabError(f"--{name.replace('_', '-')} {path} is a file, not a run folder")
        if self.resume and self.run_dir and Path(self.run_dir).resolve() != Path(self.resume).resolve():
            raise GenlabError(
                f"--run-dir {self.run_dir} and --resume {self.resume} name two folders: a resumed run stays in its "
                "folder (copy the folder first to branch a run)"
            )
        resolve_device(self.device)

    # Flags that a resumed run may change: how long it trains, how often it logs and saves, where it runs, where
    # its data lives. Everything else (learning rates, batch size, seed, sizes) is fixed by the optimizer state
    # and the data order already in the checkpoint. A project adds its evaluation-only flags.
    resumable: typing.ClassVar[tuple[str, ...]] = (
        "steps", "time_limit", "log_every", "sample_every", "eval_every", "checkpoint_every", "keep_checkpoints",
        "progress", "device", "compile", "data_dir", "resume", "run_dir",
    )  # fmt: skip


@dataclass
class UpdateRule:
    """One optimizer and the loss it minimises, run ``repeats`` times on steps where step % every == 0."""

    name: str
    optimizer: Any
    loss: LossFn
    models: list[str]
    scheduler: torch.optim.lr_scheduler.LRScheduler
    repeats: int = 1
    every: int = 1
    after_step: Callable[[], None] | None = None


class NonFiniteLossError(GenlabError):
    """Training produced a NaN or inf loss; the last good checkpoint is kept."""


def _mix_seed(*parts: int) -> int:
    mixed = 0
    for part in parts:
        mixed = (mixed * 1_000_003 + part + 1) % (2**61 - 1)
    return mixed


def learning_rate_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the peak LR at step s: linear warm-up, then constant, cosine or linear decay to 0."""

    def multiplier(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        progress = min(progress, 1.0)
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.lr_schedule == "linear":
            return 1.0 - progress
        return 1.0

    return multiplier


class Trainer:
    """The training loop. See the module docstring for the division of labour with a project."""

    def __init__(self, config: TrainConfig, project: str, config_extra: dict[str, Any] | None = None) -> None:
        from accelerate import Accelerator, PartialState
        from accelerate.utils import ProjectConfiguration

        self.config = config
        self.project = project
        self.config_extra: dict[str, Any] = {}
        self.record(**(config_extra or {}))
        # The process group first: every process must agree on the run folder before the loggers open it.
        state = PartialState(cpu=config.device == "cpu")
        self.rank, self.world_size = state.process_index, state.num_processes
        self.run_dir = self._resolve_run_dir(config)
        self.resume_from = self._check_resume() if config.resume else None
        self.accelerator = Accelerator(
            cpu=config.device == "cpu",
            mixed_precision=config.precision,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir)),
        )
        self.device = self.accelerator.device
        self.models: dict[str, nn.Module] = {}
        self.ema_models: dict[str, nn.Module] = {}
        self.rules: list[UpdateRule] = []
        self.step = 0
        self.stream: BatchStream | None = None
        self._stop_signal: int | None = None
        torch.manual_seed(config.seed)  # the networks are built after this: the same initial weights everywhere

    def _resolve_run_dir(self, config: TrainConfig) -> Path:
        from accelerate.utils import broadcast_object_list

        if config.resume:
            return Path(config.resume)
        if config.run_dir:
            if latest_checkpoint(Path(config.run_dir)) is not None:  # never train over a run's work
                raise GenlabError(
                    f"{config.run_dir} already holds a trained run: continue it with --resume {config.run_dir}, "
                    "or choose another --run-dir"
                )
            return Path(config.run_dir)
        stamp = [datetime.now().strftime("%Y%m%d-%H%M%S")]
        if self.world_size > 1:
            broadcast_object_list(stamp)  # one folder name for all processes
        return Path("runs") / self.project / f"{config.dataset}-{stamp[0]}"

    def _check_resume(self) -> Path:
        """Everything a resume needs, checked before anything is written: the run is this project's, it has a
        readable checkpoint short of --steps, and only the flags in ``config.resumable`` differ from the run's."""
        run, config = self.run_dir, self.config
        info = self._saved_info = read_run_info(run)
        if info.get("project") != self.project:
            raise GenlabError(f"{run} is a run of project {info.get('project')!r}, not {self.project!r}")
        checkpoint = latest_checkpoint(run)
        if checkpoint is None:
            raise GenlabError(f"{run} has no checkpoint to resume from")
        step = read_json(checkpoint / STATE, "the checkpoint cannot be resumed").get("step")
        if not isinstance(step, int):
            raise GenlabError(f"{checkpoint / STATE} is damaged: it has no step")
        if step >= config.steps:
            raise GenlabError(f"{run} is already at step {step} of --steps {config.steps}: raise --steps to go on")
        asked, saved = config_to_dict(config), info["config"]
        changed = [
            f"--{name.replace('_', '-')} {asked[name]} (the run has {saved.get(name)})"
            for name in asked
            if name not in config.resumable and asked[name] != saved.get(name)
        ]
        if changed:
            raise GenlabError(
                f"cannot resume {run} with other settings: {'; '.join(changed)}. A resumed run may change only "
                f"{', '.join('--' + n.replace('_', '-') for n in config.resumable if n not in ('resume', 'run_dir'))}"
            )
        return checkpoint

    def _check_recorded(self) -> None:
        """On resume, what the script recorded beside the config (the architecture) must equal the run's."""
        info = self._saved_info
        changed = [key for key, value in self.config_extra.items() if key in info and value != info[key]]
        if changed:
            raise GenlabError(f"cannot resume {self.run_dir}: its {', '.join(changed)} differs from this command's")

    def record(self, **values: Any) -> None:
        """Values saved in config.json beside the config (a model's architecture, a recipe), so sample and resume
        can rebuild the run; a resume whose values differ is refused. Call before ``fit``."""
        self.config_extra.update(json.loads(json.dumps(values, default=_jsonable)))

    def _write_run_folder(self) -> None:
        """The resolved config and the samples folder, once every check has passed."""
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "samples").mkdir(exist_ok=True)
            saved = {"project": self.project, "config": config_to_dict(self.config), **self.config_extra}
            write_text_atomic(self.run_dir / CONFIG_FILE, json.dumps(saved, indent=1))
        self.accelerator.wait_for_everyone()

    # ---- what a project declares ----

    def add_model(self, name: str, model: nn.Module, ema: bool = True) -> nn.Module:
        """Place a model (DDP-wrapped when there are several processes); keep an EMA copy if --ema-decay > 0."""
        model = model.to(self.device)
        if ema and self.config.ema_decay > 0:
            self.ema_models[name] = copy.deepcopy(model).requires_grad_(False).eval()
        prepared = self.accelerator.prepare(model)
        if self.config.compile:
            prepared = torch.compile(prepared)
        self.models[name] = prepared
        return prepared

    def add_update(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        loss: LossFn,
        models: list[str],
        repeats: int = 1,
        every: int = 1,
        after_step: Callable[[], None] | None = None,
        lr_lambda: Callable[[int], float] | None = None,
    ) -> None:
        """An update rule: ``optimizer`` minimises ``loss(batch) -> (loss, logged terms)`` over ``models``.

        ``lr_lambda(step)`` (default: the warm-up and --lr-schedule) multiplies the learning rate at training step
        ``step``, however often the rule runs (``repeats``, ``every``).
        """
        unknown = [m for m in models if m not in self.models]
        if unknown:
            raise ValueError(f"update {name!r} names models that were not added: {unknown}")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda or learning_rate_lambda(self.config))
        optimizer = self.accelerator.prepare(optimizer)
        self.rules.append(UpdateRule(name, optimizer, loss, models, scheduler, repeats, every, after_step))

    def unwrap(self, name: str) -> nn.Module:
        return self.accelerator.unwrap_model(self.models[name], keep_torch_compile=False)

    def eval_model(self, name: str) -> nn.Module:
        """The weights to sample and evaluate with: the EMA copy if there is one, else the trained model."""
        return self.ema_models[name] if name in self.ema_models else self.unwrap(name)

    # ---- checkpoints ----

    def _training_state(self) -> dict[str, Any]:
        return {
            "optimizers": [rule.optimizer.state_dict() for rule in self.rules],
            "schedulers": [rule.scheduler.state_dict() for rule in self.rules],
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
        }

    def save(self) -> Path | None:
        """Checkpoint now (main process writes; every process waits). Returns the folder on the main process."""
        self.accelerator.wait_for_everyone()
        folder = None
        if self.accelerator.is_main_process:
            modules = {name: self.unwrap(name) for name in self.models}
            modules.update({f"{name}_ema": ema for name, ema in self.ema_models.items()})
            state = {"draws": self.stream.state_dict() if self.stream else None, "project": self.project}
            folder = save_checkpoint(
                self.run_dir, self.step, modules, self._training_state(), state, self.config.keep_checkpoints
            )
        self.accelerator.wait_for_everyone()
        return folder

    def load(self, checkpoint: Path) -> None:
        """Restore models, EMA, optimizers, schedulers, scaler, step and data position from a checkpoint."""
        state = read_json(checkpoint / STATE, "the checkpoint cannot be resumed")
        if state.get("project") != self.project:
            raise GenlabError(f"{checkpoint} is a checkpoint of project {state.get('project')!r}, not {self.project!r}")
        for name in self.models:
            load_module_weights(self.unwrap(name), checkpoint / name)
        for name, ema in self.ema_models.items():
            load_module_weights(ema, checkpoint / f"{name}_ema")
        training = load_training_state(checkpoint / TRAINING_STATE)
        try:
            if len(training["optimizers"]) != len(self.rules):
                raise GenlabError(
                    f"{checkpoint} has {len(training['optimizers'])} optimizers, this model {len(self.rules)}"
                )
            for rule, optimizer_state, scheduler_state in zip(
                self.rules, training["optimizers"], training["schedulers"], strict=True
            ):
                rule.optimizer.load_state_dict(optimizer_state)
                rule.scheduler.load_state_dict(scheduler_state)
            if training["scaler"] is not None and self.accelerator.scaler is not None:
                self.accelerator.scaler.load_state_dict(training["scaler"])
            self.step = int(state["step"])
            self._resume_draws = state["draws"]
        except (KeyError, TypeError, ValueError) as error:
            raise GenlabError(f"{checkpoint} does not fit this run's optimizers ({type(error).__name__})") from None

    # ---- the loop ----

    def _handle_signal(self, signum: int, _frame: Any) -> None:
        """The first SIGINT/SIGTERM asks for a checkpoint at the end of the step; a second one stops at once."""
        if self._stop_signal is not None:
            raise SystemExit(128 + signum)
        self._stop_signal = signum
        if self.accelerator.is_main_process:
            print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                  "(send it again to stop at once, without one)", file=sys.stderr, flush=True)  # fmt: skip

    def _stop_requested(self, now: bool = False) -> bool:
        """Whether a SIGINT/SIGTERM arrived. One process: checked every step at no cost. Several: the flag is
        agreed on by an all-reduce every 10 steps (and whenever ``now``, at steps every process reaches alike),
        so that every process stops (and checkpoints) at the same step."""
        if self.world_size == 1:
            return self._stop_signal is not None
        if self.step % 10 and not now:
            return False
        flag = torch.tensor([0.0 if self._stop_signal is None else 1.0], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _reseed(self, seed: int) -> None:
        """Seed this process's generator for the step. Only the training device's: torch.manual_seed would also
        queue seeds for every uninitialised backend (CUDA, XPU, MTIA), recording a stack trace each, every step."""
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        elif self.device.type == "mps":
            torch.mps.manual_seed(seed)

    def ema_decay_at(self, step: int) -> float:
        """The EMA decay used after optimizer step ``step`` (0-based): --ema-decay, or with --ema-warmup the
        warm-up min(decay, (1 + step) / (10 + step)) of TensorFlow's ExponentialMovingAverage(num_updates), under
        which the first averages follow the weights closely instead of the random initialisation."""
        decay = self.config.ema_decay
        return min(decay, (1 + step) / (10 + step)) if self.config.ema_warmup else decay

    def _update_ema(self) -> None:
        decay = self.ema_decay_at(self.step)
        for name, ema in self.ema_models.items():
            model = self.unwrap(name)
            with torch.no_grad():
                ema_params = list(ema.parameters())
                torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)
                for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
                    ema_buffer.copy_(buffer)

    def _sync_context(self, rule: UpdateRule, last_micro_step: bool):
        if last_micro_step or self.world_size == 1:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for name in rule.models:
            stack.enter_context(self.accelerator.no_sync(self.models[name]))
        return stack

    def _run_rule(
        self, rule: UpdateRule, totals: dict[str, torch.Tensor], counts: dict[str, int], losses: list[torch.Tensor]
    ) -> None:
        """Run one update rule (``repeats`` optimizer steps); each loss it computed is appended to ``losses``."""
        accumulation = self.config.grad_accum
        written: set[str] = set()
        for _ in range(rule.repeats):
            # Start from zero: another rule's loss may have reached these models (a GAN's generator loss runs
            # through the discriminator) and left gradients that are not this rule's.
            rule.optimizer.zero_grad(set_to_none=True)
            for micro in range(accumulation):
                batch = self.stream.next()
                with self._sync_context(rule, micro == accumulation - 1), self.accelerator.autocast():
                    loss, terms = rule.loss(batch)
                self.accelerator.backward(loss / accumulation)
                losses.append(loss.detach())
                for key, value in {"loss": loss, **terms}.items():
                    tag = f"{rule.name}/{key}"
                    written.add(tag)
                    totals[tag] = totals.get(tag, 0.0) + value.detach().float() / (accumulation * rule.repeats)
            if self.config.grad_clip > 0:
                parameters = [p for name in rule.models for p in self.models[name].parameters()]
                norm = self.accelerator.clip_grad_norm_(parameters, self.config.grad_clip)
                tag = f"{rule.name}/grad_norm"
                totals[tag] = totals.get(tag, 0.0) + norm.detach() / rule.repeats
                written.add(tag)
            rule.optimizer.step()
            rule.optimizer.zero_grad(set_to_none=True)
            if rule.after_step is not None:
                rule.after_step()
        for tag in written:
            counts[tag] = counts.get(tag, 0) + 1  # logged values are means over this rule's own runs

    def _check_finite(self, losses: dict[str, list[torch.Tensor]], last_good: Path | None) -> None:
        """Stop on the step a loss goes NaN or infinite, naming it; the weights it made are never saved or used.

        One reduction of the step's few scalar losses: free on the CPU, one small synchronisation on a GPU
        (the step's own optimizer update already waits for the same values)."""
        flags = torch.stack([torch.isfinite(torch.stack(values)).all() for values in losses.values()])
        all_finite = flags.all().float()
        if self.world_size > 1:
            all_finite = self.accelerator.reduce(all_finite, "sum") / self.world_size
        if bool(all_finite == 1):
            return
        bad = [name for name, ok in zip(losses, flags.tolist(), strict=True) if not ok] or ["on another process"]
        where = f"last good checkpoint: {last_good}" if last_good else "no checkpoint had been written"
        raise NonFiniteLossError(
            f"non-finite loss {', '.join(f'{name}/loss' for name in bad)} at step {self.step + 1}; "
            f"training stopped, {where}"
        )

    def _log(self, record: dict[str, float], step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        self.accelerator.log(record, step=step)
        with open(self.run_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps({"step": step, **record}) + "\n")

    def _metrics_up_to(self, step: int) -> str | None:
        """metrics.jsonl without the lines from after ``step`` (a resumed run writes them again), or None if the
        run has no such file. A damaged line is a one-line error: read before anything is written."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return None
        kept = []
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record_step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise GenlabError(f"{path} line {number} is damaged ({line[:40]!r}): remove it, then resume") from None
            if record_step <= step:
                kept.append(line + "\n")
        return "".join(kept)

    def _sample_and_eval(
        self,
        sample_fn: Callable[[Trainer], torch.Tensor] | None,
        eval_fn: Callable[[Trainer], dict[str, float]] | None,
        do_sample: bool,
        do_eval: bool,
    ) -> dict[str, float]:
        results: dict[str, float] = {}
        if self.accelerator.is_main_process and (do_sample or do_eval):
            modes = {name: model.training for name, model in self.models.items()}
            for model in self.models.values():
                model.eval()
            with torch.no_grad():
                if do_sample and sample_fn is not None:
                    images = sample_fn(self)
                    save_grid(images, self.run_dir / "samples" / f"step_{self.step:08d}.png")
                if do_eval and eval_fn is not None:
                    results = {f"eval/{k}": float(v) for k, v in eval_fn(self).items()}
            for name, model in self.models.items():
                model.train(modes[name])
            if results:
                self._log(results, self.step)
        self.accelerator.wait_for_everyone()
        return results

    def _out_of_time(self, deadline: float | None) -> bool:
        """Whether the --time-limit has passed; every process stops at the same step (the first to run out)."""
        if deadline is None:
            return False
        late = torch.tensor(float(time.monotonic() >= deadline), device=self.device)
        if self.world_size > 1:
            late = self.accelerator.reduce(late, "sum")
        return bool(late > 0)

    def _prepare(self, data: ImageDataset | SequenceDataset) -> None:
        """Check everything, then write: the batch stream, the resumed checkpoint, metrics.jsonl, config.json."""
        config = self.config
        self.stream = BatchStream(data.to(self.device), config.batch_size, config.seed, self.rank, self.world_size)
        self._resume_draws = None
        metrics = None
        if self.resume_from is not None:
            self._check_recorded()
            self.load(self.resume_from)
            self.stream.load_state_dict(self._resume_draws)
            metrics = self._metrics_up_to(self.step)
        self._write_run_folder()
        if self.accelerator.is_main_process:
            if metrics is not None:
                write_text_atomic(self.run_dir / METRICS_FILE, metrics)
            # On resume, TensorBoard drops the events after the checkpoint: the replayed steps are logged again.
            purge = {"tensorboard": {"purge_step": self.step + 1}} if self.resume_from is not None else {}
            self.accelerator.init_trackers("tensorboard", init_kwargs=purge)
            if self.resume_from is not None:
                print(f"resumed {self.run_dir} at step {self.step}", flush=True)

    def fit(
        self,
        data: ImageDataset | SequenceDataset,
        sample_fn: Callable[[Trainer], torch.Tensor] | None = None,
        eval_fn: Callable[[Trainer], dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Train to ``config.steps``; returns the last logged values and the final evaluation."""
        if not self.rules:
            raise ValueError("no update rule: call add_update before fit")
        previous_handlers = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._prepare(data)
            return self._loop(sample_fn, eval_fn)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)

    def _loop(
        self,
        sample_fn: Callable[[Trainer], torch.Tensor] | None,
        eval_fn: Callable[[Trainer], dict[str, float]] | None,
    ) -> dict[str, float]:
        from tqdm.auto import tqdm

        config = self.config
        totals: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        logged: dict[str, float] = {}
        draws_at_log, clock = self.stream.draws, time.perf_counter()
        bar_clock, draws_at_bar = clock, self.stream.draws
        last_good = latest_checkpoint(self.run_dir)
        progress = tqdm(
            total=config.steps, initial=self.step, disable=not (config.progress and self.accelerator.is_main_process),
            dynamic_ncols=True, desc=self.project,
        )  # fmt: skip
        for model in self.models.values():
            model.train()
        deadline = time.monotonic() + 60 * config.time_limit if config.time_limit else None
        try:
            while self.step < config.steps:
                self._reseed(_mix_seed(config.seed, self.step, self.rank))
                losses: dict[str, list[torch.Tensor]] = {}
                for rule in self.rules:
                    if self.step % rule.every == 0:
                        self._run_rule(rule, totals, counts, losses.setdefault(rule.name, []))
                self._check_finite(losses, last_good)
                for rule in self.rules:
                    rule.scheduler.step()  # the schedule is a function of the training step, for every rule
                if self.ema_models:
                    self._update_ema()
                self.step += 1
                progress.update(1)
                if progress.disable is False and time.perf_counter() - bar_clock >= 1.0:
                    bar_clock, draws_at_bar = self._show_progress(progress, totals, counts, bar_clock, draws_at_bar)
                out_of_time = self._out_of_time(deadline)
                at_end = self.step == config.steps or out_of_time
                stop = self._stop_requested()
                log_now = self.step % config.log_every == 0 or at_end or stop
                checkpoint_now = (config.checkpoint_every and self.step % config.checkpoint_every == 0) or at_end
                do_sample = bool(config.sample_every and self.step % config.sample_every == 0) or at_end
                do_eval = bool(config.eval_every and self.step % config.eval_every == 0) or at_end
                if log_now:
                    elapsed = time.perf_counter() - clock
                    if self.world_size > 1:  # each process saw its share of the batch: log the global mean
                        reduced = self.accelerator.reduce(torch.stack([totals[k] for k in totals]), reduction="mean")
                        totals = dict(zip(totals, reduced, strict=True))
                    logged = {key: float(value) / counts[key] for key, value in totals.items()}
                    for rule in self.rules:
                        logged[f"{rule.name}/lr"] = rule.scheduler.get_last_lr()[0]
                    # images drawn from the data, so a rule that repeats (a critic's n_critic) counts every batch
                    drawn = (self.stream.draws - draws_at_log) * config.batch_size
                    logged["images_per_second"] = drawn / max(elapsed, 1e-9)
                    logged["epoch"] = self.stream.epoch
                    self._log(logged, self.step)
                    totals, counts, draws_at_log, clock = {}, {}, self.stream.draws, time.perf_counter()
                logged.update(self._sample_and_eval(sample_fn, eval_fn, do_sample, do_eval))
                if do_sample or do_eval:  # a signal that arrived while sampling or evaluating is not lost
                    stop = stop or self._stop_requested(now=True)
                if checkpoint_now or stop:
                    last_good = self.save() or last_good
                if stop:
                    if self.accelerator.is_main_process:
                        print(
                            f"stopped by signal at step {self.step}; checkpoint saved, continue with "
                            f"--resume {self.run_dir}",
                            flush=True,
                        )
                    raise SystemExit(128 + (self._stop_signal or signal.SIGTERM))
                if out_of_time:
                    if self.accelerator.is_main_process:
                        print(f"time limit of {config.time_limit:g} min reached at step {self.step}", flush=True)
                    break
        finally:
            progress.close()
            self.accelerator.end_training()
        return logged

    def _show_progress(
        self, progress: Any, totals: dict[str, torch.Tensor], counts: dict[str, int], since: float, draws: int
    ) -> tuple[float, int]:
        """Every rule's mean loss since the last log and the images drawn per second, about once a second."""
        now = time.perf_counter()
        shown = {
            rule.name: f"{float(totals[tag]) / counts[tag]:.4g}"
            for rule in self.rules
            if (tag := f"{rule.name}/loss") in totals
        }
        shown["img/s"] = f"{(self.stream.draws - draws) * self.config.batch_size / max(now - since, 1e-9):.0f}"
        progress.set_postfix(shown, refresh=True)
        return now, self.stream.draws


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot save {type(value).__name__} in config.json")
