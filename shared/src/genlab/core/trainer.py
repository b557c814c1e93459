"""The one training loop of genlab, on accelerate.

A project hands the loop what differs between papers: its models, and one or more update rules (an optimizer,
the loss it minimises, how often). A VAE has one rule; a GAN has two (the critic, repeated n_critic times, then
the generator). Everything else lives here once: devices and processes (``accelerate launch`` / torchrun),
bf16/fp16 autocast, gradient accumulation and clipping, warm-up and LR schedules, EMA of weights, optional
torch.compile, a progress bar, TensorBoard and metrics.jsonl, sample grids and evaluation every N steps,
atomic checkpoints every N steps and on SIGINT/SIGTERM, exact resume, and a clean stop on a non-finite loss.

Exact resume needs no saved random-number state: step ``s`` on process ``r`` reseeds torch from
(seed, s, r), and the batch stream is a function of (seed, number of batches drawn).

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from genlab.core.checkpoint import (
    TRAINING_STATE,
    latest_checkpoint,
    load_module_weights,
    resolve_device,
    save_checkpoint,
    write_text_atomic,
)
from genlab.core.config import CONFIG_FILE, config_to_dict, option
from genlab.core.data import Batch, BatchStream, ImageDataset
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
        resolve_device(self.device)


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
        # The process group first: every process must agree on the run folder before the loggers open it.
        state = PartialState(cpu=config.device == "cpu")
        self.rank, self.world_size = state.process_index, state.num_processes
        self.run_dir = self._resolve_run_dir(config)
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
        torch.manual_seed(config.seed)  # the same initial weights on every process
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "samples").mkdir(exist_ok=True)
            saved = {"project": project, "config": config_to_dict(config)}
            saved.update(json.loads(json.dumps(config_extra or {}, default=_jsonable)))
            write_text_atomic(self.run_dir / CONFIG_FILE, json.dumps(saved, indent=1))
        self.accelerator.wait_for_everyone()

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
        state = json.loads((checkpoint / "state.json").read_text())
        if state.get("project") != self.project:
            raise GenlabError(f"{checkpoint} is a checkpoint of project {state.get('project')!r}, not {self.project!r}")
        for name in self.models:
            load_module_weights(self.unwrap(name), checkpoint / name)
        for name, ema in self.ema_models.items():
            load_module_weights(ema, checkpoint / f"{name}_ema")
        training = torch.load(checkpoint / TRAINING_STATE, map_location="cpu", weights_only=True)
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

    # ---- the loop ----

    def _handle_signal(self, signum: int, _frame: Any) -> None:
        self._stop_signal = signum

    def _stop_requested(self) -> bool:
        """Whether a SIGINT/SIGTERM arrived. One process: checked every step at no cost. Several: the flag is
        agreed on by an all-reduce every 10 steps, so that every process stops (and checkpoints) at the same step."""
        if self.world_size == 1:
            return self._stop_signal is not None
        if self.step % 10:
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

    def _update_ema(self) -> None:
        decay = self.config.ema_decay
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
        self, rule: UpdateRule, totals: dict[str, torch.Tensor], counts: dict[str, int], finite: torch.Tensor
    ) -> torch.Tensor:
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
                finite = finite & torch.isfinite(loss.detach())
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
        return finite

    def _log(self, record: dict[str, float], step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        self.accelerator.log(record, step=step)
        with open(self.run_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps({"step": step, **record}) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop logged lines from after the checkpoint: the resumed run writes them again."""
        path = self.run_dir / METRICS_FILE
        if not self.accelerator.is_main_process or not path.is_file():
            return
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))

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

    def fit(
        self,
        data: ImageDataset,
        sample_fn: Callable[[Trainer], torch.Tensor] | None = None,
        eval_fn: Callable[[Trainer], dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Train to ``config.steps``; returns the last logged values and the final evaluation."""
        from tqdm.auto import tqdm

        config = self.config
        if not self.rules:
            raise ValueError("no update rule: call add_update before fit")
        self.stream = BatchStream(data.to(self.device), config.batch_size, config.seed, self.rank, self.world_size)
        self._resume_draws = None
        if config.resume:
            checkpoint = latest_checkpoint(Path(config.resume))
            if checkpoint is None:
                raise GenlabError(f"{config.resume} has no checkpoint to resume from")
            self.load(checkpoint)
            self.stream.load_state_dict(self._resume_draws)
            self._truncate_metrics(self.step)
            if self.accelerator.is_main_process:
                print(f"resumed {self.run_dir} at step {self.step}", flush=True)
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers("tensorboard")
        previous_handlers = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        totals: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        logged: dict[str, float] = {}
        images_since_log, clock = 0, time.perf_counter()
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
                for rule in self.rules:
                    if self.step % rule.every == 0:
                        finite = self._run_rule(rule, totals, counts, finite)
                for rule in self.rules:
                    rule.scheduler.step()  # the schedule is a function of the training step, for every rule
                if self.ema_models:
                    self._update_ema()
                self.step += 1
                images_since_log += config.batch_size * config.grad_accum
                progress.update(1)
                out_of_time = self._out_of_time(deadline)
                at_end = self.step == config.steps or out_of_time
                stop = self._stop_requested()
                log_now = self.step % config.log_every == 0 or at_end or stop
                checkpoint_now = (config.checkpoint_every and self.step % config.checkpoint_every == 0) or at_end
                do_sample = bool(config.sample_every and self.step % config.sample_every == 0) or at_end
                do_eval = bool(config.eval_every and self.step % config.eval_every == 0) or at_end
                if log_now or checkpoint_now or do_sample or do_eval:  # never sample or save from NaN weights
                    all_finite = (
                        finite
                        if self.world_size == 1
                        else self.accelerator.reduce(finite.float(), "sum") == self.world_size
                    )
                    if not bool(all_finite):
                        where = f"last good checkpoint: {last_good}" if last_good else "no checkpoint had been written"
                        raise NonFiniteLossError(
                            f"non-finite loss at or before step {self.step} ({', '.join(t for t in totals)}); "
                            f"training stopped, {where}"
                        )
                if log_now:
                    elapsed = time.perf_counter() - clock
                    if self.world_size > 1:  # each process saw its share of the batch: log the global mean
                        reduced = self.accelerator.reduce(torch.stack([totals[k] for k in totals]), reduction="mean")
                        totals = dict(zip(totals, reduced, strict=True))
                    logged = {key: float(value) / counts[key] for key, value in totals.items()}
                    for rule in self.rules:
                        logged[f"{rule.name}/lr"] = rule.scheduler.get_last_lr()[0]
                    logged["images_per_second"] = images_since_log / max(elapsed, 1e-9)
                    logged["epoch"] = self.stream.epoch
                    self._log(logged, self.step)
                    first = next(iter(totals))
                    progress.set_postfix({first: f"{logged[first]:.4g}"}, refresh=False)
                    totals, counts, images_since_log, clock = {}, {}, 0, time.perf_counter()
                logged.update(self._sample_and_eval(sample_fn, eval_fn, do_sample, do_eval))
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
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.accelerator.end_training()
        return logged


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot save {type(value).__name__} in config.json")
