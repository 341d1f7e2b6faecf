"""The training loop. It knows the regularizer hooks, never a particular regularizer, dataset or model."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from regbench.calibration import fit_temperature
from regbench.config import TrainerConfig
from regbench.datasets.base import DataBundle, normalize
from regbench.metrics import classification_metrics, to_floats
from regbench.recording import RunRecorder
from regbench.regularizers.base import Regularizer, StepOutput

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, terms: dict[str, float]) -> None:
        super().__init__(f"loss is not finite at epoch {epoch}, step {step} ({terms})")
        self.epoch, self.step, self.terms = epoch, step, terms


class InterruptedRun(RuntimeError):
    """A signal asked the run to stop; the last completed epoch is checkpointed."""

    def __init__(self, signal_name: str, epoch: int, step: int) -> None:
        super().__init__(f"interrupted by {signal_name} during epoch {epoch}, step {step}")
        self.signal_name, self.epoch, self.step = signal_name, epoch, step


@dataclass
class Evaluation:
    """A whole split's outputs, kept on the device."""

    logits: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor

    def metrics(self, prefix: str) -> dict[str, float]:
        return to_floats(classification_metrics(self.logits, self.labels), prefix)

    def __len__(self) -> int:
        return len(self.labels)


class WithFeatures(nn.Module):
    """(logits, penultimate features) in one call, so torch.compile sees one graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(inputs)
        return self.model.forward_head(features), features


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: bool) -> Optional[torch.dtype]:
    """Mixed precision only on CUDA: bf16 where supported (no loss scaling needed), else fp16."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all conv/linear weight matrices (biases and normalization parameters excluded)."""
    squares = [p.detach().float().pow(2).sum() for n, p in model.named_parameters()
               if n.endswith("weight") and p.ndim > 1]
    return torch.stack(squares).sum().sqrt().item()


def epoch_summary(record: dict[str, Any], epochs: int) -> str:
    """One readable progress line per epoch; history.jsonl and TensorBoard have every value."""
    terms = " ".join(f"{key.removeprefix('train/loss_')} {value:.4f}" for key, value in record.items()
                     if key.startswith("train/loss_") and key != "train/loss_ce")
    train = f"train loss {record['train/loss']:.4f} acc {record['train/acc']:.4f}"
    parts = [f"epoch {record['epoch']}/{epochs}", train + (f" ({terms})" if terms else "")]
    if "val/acc" in record:
        parts.append(f"val loss {record['val/loss']:.4f} acc {record['val/acc']:.4f} "
                     f"ece {record['val/ece']:.4f} confidence {record['val/mean_confidence']:.3f}")
    parts.append(f"lr {record['lr']:.3g}  {record['seconds']:.2f} s")
    return " | ".join(parts)


@dataclass
class Run:
    """The objects of one training run, built from its settings (train.build_run)."""

    data: DataBundle
    regularizers: list[Regularizer]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any


class Trainer:
    def __init__(self, run: Run, cfg: TrainerConfig, device: torch.device, show_progress: bool,
                 recorder: RunRecorder) -> None:
        self.model = run.model
        self.data = run.data
        self.regularizers = run.regularizers
        self.optimizer = run.optimizer
        self.scheduler = run.scheduler
        self.cfg = cfg
        self.device = device
        self.show_progress = show_progress
        self.recorder = recorder
        self.amp_dtype = autocast_dtype(device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # channels_last speeds up convolutions on CUDA; a no-op layout for MLPs.
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
        step_model = WithFeatures(run.model)
        self.step_model = torch.compile(step_model) if cfg.compile else step_model
        self.steps_per_epoch = len(run.data.train)
        # Checking the loss every step costs a device sync on CUDA; on CPU it is free.
        self.finite_check_every = 1 if device.type == "cpu" else 50
        # Set by a signal handler (train.stop_on_signals); checked after every step.
        self.stop_signal: Optional[str] = None

    # --- one batch -------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        inputs = normalize(images, self.data.mean, self.data.std)
        return inputs.contiguous(memory_format=self.memory_format) if inputs.ndim == 4 else inputs

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor, epoch: int,
                   progress: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs = self.prepare(images)
        with self.autocast():
            logits, features = self.step_model(inputs)
        logits = logits.float()
        terms = {"ce": F.cross_entropy(logits, labels)}
        step = StepOutput(inputs, labels, logits, features.float(), self.model, epoch, progress)
        for regularizer in self.regularizers:
            for key, value in regularizer.loss_terms(step).items():
                if key in terms:
                    raise RuntimeError(f"loss term {key!r} is added twice ({regularizer.name})")
                terms[key] = value
        return terms, logits

    # --- one epoch -------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        # The epoch's logits and labels stay on the device for the epoch-level train/ metrics.
        epoch_logits: list[torch.Tensor] = []
        epoch_labels: list[torch.Tensor] = []
        seen = 0
        batches = tqdm(self.data.train, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}",
                       leave=False, disable=not self.show_progress, dynamic_ncols=True)
        for step, (images, labels) in enumerate(batches):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            for regularizer in self.regularizers:
                images, labels = regularizer.transform_batch(images, labels)
            progress = (epoch + step / self.steps_per_epoch) / self.cfg.epochs
            terms, logits = self.loss_terms(images, labels, epoch, progress)
            loss = torch.stack(list(terms.values())).sum()
            if step % self.finite_check_every == 0 and not torch.isfinite(loss):
                raise DivergedError(epoch + 1, step, {k: v.item() for k, v in terms.items()})
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            # Sums stay on the device; they are transferred once per epoch.
            batch = len(labels)
            seen += batch
            for key, value in terms.items():
                sums[key] = sums.get(key, 0) + value.detach() * batch
            sums["loss"] = sums.get("loss", 0) + loss.detach() * batch
            epoch_logits.append(logits.detach())
            epoch_labels.append(labels)
            if self.show_progress and step % 10 == 0:
                batches.set_postfix(loss=f"{loss.item():.4f}")
            if self.stop_signal is not None:
                raise InterruptedRun(self.stop_signal, epoch + 1, step + 1)
        # train/ per epoch: the batches as the optimizer saw them (train mode, augmented); the clean
        # eval-mode pass over the training split happens once, in test(), for honest gaps.
        means = classification_metrics(torch.cat(epoch_logits), torch.cat(epoch_labels))
        means.update({key if key == "loss" else f"loss_{key}": value / seen for key, value in sums.items()})
        result = to_floats(means, "train")
        if not all(map(torch.isfinite, torch.tensor(list(result.values())))):
            raise DivergedError(epoch + 1, self.steps_per_epoch, result)
        return result

    @torch.no_grad()
    def evaluate(self, batches: Iterable) -> Evaluation:
        self.model.eval()
        logits, labels, features = [], [], []
        for images, targets in batches:
            inputs = self.prepare(images.to(self.device, non_blocking=True))
            with self.autocast():
                batch_logits, batch_features = self.step_model(inputs)
            logits.append(batch_logits.float())
            features.append(batch_features.float())
            labels.append(targets.to(self.device, non_blocking=True))
        return Evaluation(torch.cat(logits), torch.cat(labels), torch.cat(features))

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # --- the whole run ---------------------------------------------------------------------
    def validate(self, epoch: int) -> dict[str, float]:
        """Validation metrics and prediction histograms for one epoch."""
        if len(self.data.val) == 0:
            return {}
        val = self.evaluate(self.data.val)
        self.recorder.log_prediction_histograms("val", val.logits, val.labels, epoch)
        return val.metrics("val")

    def fit(self, start_epoch: int, on_epoch: Callable[[dict[str, Any]], None]) -> int:
        """Train from ``start_epoch``; ``on_epoch`` checkpoints each finished epoch.
        Returns the number of epochs trained in total."""
        epoch = start_epoch
        for epoch in range(start_epoch, self.cfg.epochs):
            started = time.perf_counter()
            lr = self.current_lr()
            record: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            trained = time.perf_counter()
            record.update(self.validate(epoch + 1))
            record["lr"] = lr
            record["train_seconds"] = trained - started
            record["eval_seconds"] = time.perf_counter() - trained
            record["seconds"] = time.perf_counter() - started
            # Every regularizer sees the epoch's end, even when an earlier one asks to stop.
            stop = [r.on_epoch_end(epoch, record, self.model) for r in self.regularizers]
            # Kept in the history, so a resumed run does not train past an early stop.
            record["stopped_early"] = any(stop)
            self.recorder.log_epoch(record)
            on_epoch(record)
            log.info(epoch_summary(record, self.cfg.epochs))
            if any(stop):
                log.info("stopping early after epoch %d", epoch + 1)
                return epoch + 1
        return max(epoch + 1, start_epoch)

    def test(self, step: int) -> dict[str, float]:
        """Final metrics: the test split (touched only here), the train split in eval mode, the
        generalization gaps and temperature scaling fitted on the validation split."""
        extra: dict[str, float] = {}
        for regularizer in self.regularizers:
            extra.update(regularizer.on_fit_end(self.model))
        test = self.evaluate(self.data.test)
        metrics = test.metrics("test")
        metrics["test/feature_norm"] = test.features.norm(dim=1).mean().item()
        metrics["test/weight_norm"] = weight_norm(self.model)
        metrics.update(self.evaluate(self.data.train_eval).metrics("train"))
        metrics["gap/acc"] = metrics["train/acc"] - metrics["test/acc"]
        metrics["gap/loss"] = metrics["test/loss"] - metrics["train/loss"]
        if len(self.data.val) > 0:
            val = self.evaluate(self.data.val)
            metrics.update(val.metrics("val"))
            temperature = fit_temperature(val.logits, val.labels)
            scaled = to_floats(classification_metrics(test.logits / temperature, test.labels), "test")
            metrics.update({"temperature": temperature, "test/ece_ts": scaled["test/ece"],
                            "test/nll_ts": scaled["test/nll"]})
        self.recorder.log_figures("test", test.logits, test.labels, metrics["test/ece"], step)
        metrics.update(extra)
        return metrics
