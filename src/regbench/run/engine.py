"""One training run: built from its settings, trained, tested, and checkpointable as a whole.

``Run.build(settings)`` makes every object of a run (data, regularizers, model, optimizer,
scheduler, grad scaler); ``fit`` trains the epochs that are left, ``test`` evaluates once at the
end, and ``state_dict``/``load_state_dict`` hold everything needed to continue exactly where a run
stopped (weights, optimizer, scheduler, scaler, regularizers, data order, RNG states, history,
early stop). ``stop_on_signals`` turns SIGINT/SIGTERM into a clean stop in either phase.

The loop knows the regularizer hooks, never a particular regularizer, dataset or model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from regbench.config import Config
from regbench.datasets import build_data
from regbench.datasets.base import DataBundle, normalize
from regbench.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    to_floats,
)
from regbench.evaluation.panel import calibration_panel, metric_key
from regbench.evaluation.wrong_class import wrong_class_metrics
from regbench.machine import autocast_dtype, free_cores, resolve_device, seed_everything
from regbench.models import ModelOptions, build_model
from regbench.models.base import is_weight_matrix
from regbench.optim import build_optimizer, build_scheduler, param_groups
from regbench.regularizers import (
    Regularizer,
    RunContext,
    StepOutput,
    build_regularizers,
)
from regbench.run import finetune, shift_stage
from regbench.run.averaging import (
    RAW,
    averaging_regularizer,
    recompute_batchnorm,
    swapped_in,
)
from regbench.run.checkpoint import rng_state, set_rng_state
from regbench.run.ood_stage import OodSets
from regbench.run.probes import (
    fit_metrics,
    scale_invariance_record,
    variance_shift_metrics,
)
from regbench.run.recorder import RunRecorder
from regbench.run.spec import (
    DID_NOT_LEARN,
    EPOCHS,
    GAP_ACC,
    GAP_NLL,
    TEST_ACC,
    TEST_ECE,
    TEST_NLL,
    TRAIN_ACC,
)

log = logging.getLogger(__name__)

STOPPED_EARLY = "stopped_early"  # history key: a regularizer ended training after this epoch


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, terms: dict[str, float]) -> None:
        super().__init__(f"loss is not finite at epoch {epoch}, step {step} ({terms})")
        self.epoch, self.step, self.terms = epoch, step, terms


class InterruptedRun(RuntimeError):
    """A signal asked the run to stop; the last completed epoch is checkpointed."""

    def __init__(self, signal_name: str, epoch: int, step: int, phase: str = "training") -> None:
        where = f"during epoch {epoch}, step {step}" if phase == "training" else \
            f"during the test phase after epoch {epoch}"
        super().__init__(f"interrupted by {signal_name} {where}")
        self.signal_name, self.epoch, self.step, self.phase = signal_name, epoch, step, phase


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


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all conv/linear weight matrices (biases and normalization parameters excluded)."""
    squares = [p.detach().float().pow(2).sum() for n, p in model.named_parameters()
               if is_weight_matrix(n, p)]
    return torch.stack(squares).sum().sqrt().item()


def epoch_summary(record: dict[str, Any], epochs: int) -> str:
    """One readable progress line per epoch; history.jsonl and TensorBoard have every value."""
    terms = " ".join(f"{key.removeprefix('train/loss_')} {value:.4f}" for key, value in record.items()
                     if key.startswith("train/loss_") and key != "train/loss_ce")
    train = f"train loss {record['train/loss']:.4f} acc {record['train/acc']:.4f}"
    parts = [f"epoch {record['epoch']}/{epochs}", train + (f" ({terms})" if terms else "")]
    if "val/acc" in record:
        parts.append(f"val nll {record['val/nll']:.4f} acc {record['val/acc']:.4f} "
                     f"ece {record['val/ece']:.4f} confidence {record['val/mean_confidence']:.3f}")
    parts.append(f"lr {record['lr']:.3g}  {record['seconds']:.2f} s")
    return " | ".join(parts)


def all_finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(value) for value in values)


# did_not_learn: the final training accuracy is not significantly above chance, the accuracy of
# always answering the training split's most frequent class (1/K when balanced), by a one-sided
# exact binomial test at the conventional 5 % (Combrisson & Jerbi 2015, "Exceeding chance level by
# chance", J. Neurosci. Methods: the chance level of a finite number of examples).
CHANCE_ALPHA = 0.05


def did_not_learn(train: Evaluation) -> bool:
    """Whether the predictions on the training split are no better than chance; warns when so."""
    from scipy.stats import binomtest  # not at start-up (DEVELOPERS.md, Start-up)

    examples = len(train)
    chance = torch.bincount(train.labels).max().item() / examples
    correct = int((train.logits.argmax(dim=1) == train.labels).sum().item())
    p_value = binomtest(correct, examples, chance, alternative="greater").pvalue
    if p_value < CHANCE_ALPHA:
        return False
    log.warning("did not learn: final training accuracy %.4f is not significantly above %.4f, "
                "always answering the most frequent class (binomial test p = %.2g; metrics.json: %s)",
                correct / examples, chance, p_value, DID_NOT_LEARN)
    return True


class Run:
    """The objects and the state of one training run (build it with ``Run.build``)."""

    def __init__(self, settings: Config, device: torch.device, data: DataBundle,
                 regularizers: list[Regularizer], model: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, show_progress: bool = False) -> None:
        self.settings = settings
        self.epochs = settings.trainer.epochs
        self.device = device
        self.data = data
        self.regularizers = regularizers
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.show_progress = show_progress
        self.amp_dtype = autocast_dtype(device, settings.trainer.amp, settings.model.name)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # channels_last speeds up convolutions on CUDA; a no-op layout for MLPs.
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
        step_model = WithFeatures(model)
        if settings.trainer.compile:
            # A process that runs several jobs (joblib's workers) would reuse the previous run's
            # compiled graph, skipping forward hooks the new run's regularizers added (DropBlock).
            torch._dynamo.reset()
        self.step_model = torch.compile(step_model) if settings.trainer.compile else step_model
        self.steps_per_epoch = len(data.train)
        # Checking the loss every step costs a device sync on CUDA; on CPU it is free.
        self.finite_check_every = 1 if device.type == "cpu" else 50
        # One record per finished epoch (what history.jsonl holds).
        self.history: list[dict[str, Any]] = []
        # Set by a signal handler (stop_on_signals); checked after every step and test stage.
        self.stop_signal: Optional[str] = None
        # The test phase's calibration panel: test probabilities per calibrator (validation_metrics).
        self.panel: dict[str, torch.Tensor] = {}
        # evaluation.ood's sets, checked and loaded by build before training (run/ood_stage.py).
        self.ood_sets = OodSets()

    @classmethod
    def build(cls, settings: Config, show_progress: bool = False) -> "Run":
        """Threads, seeds, device, then data -> regularizers -> model -> optimizer -> schedule."""
        trainer = settings.trainer
        torch.set_num_threads(trainer.num_threads or free_cores())
        seed_everything(settings.seed, trainer.deterministic)
        device = resolve_device(trainer.device)
        shift_stage.check_shift_settings(settings)  # refused before the data is loaded
        data = build_data(settings.dataset, trainer.batch_size, device, settings.seed)
        shift_stage.check_shift_images(settings, data.input_shape)
        ood_sets = OodSets.build(settings, data)
        context = RunContext(
            dataset=settings.dataset.name, model=settings.model.name, num_classes=data.num_classes,
            epochs=trainer.epochs, optimizer=settings.optimizer.name.value,
            val_size=data.val_size,
        )
        regularizers = build_regularizers(settings.regularizer, context)
        options = ModelOptions()
        for regularizer in regularizers:
            regularizer.configure_model(options)
        model = build_model(settings.model, data.input_shape, data.num_classes, options).to(device)
        finetune.use_weights_statistics(model, data)
        if trainer.freeze_epochs:
            finetune.split_body(model, trainer.freeze_epochs)  # refused here, before training
        for regularizer in regularizers:
            regularizer.on_model_built(model)
        optimizer = build_optimizer(settings.optimizer, param_groups(model, regularizers))
        scheduler = build_scheduler(settings.optimizer, optimizer, trainer.epochs, len(data.train))
        for regularizer in regularizers:
            scheduler = regularizer.wrap_scheduler(optimizer, scheduler, len(data.train))
        run = cls(settings, device, data, regularizers, model, optimizer, scheduler, show_progress)
        run.ood_sets = ood_sets
        return run

    # --- where the run stands ----------------------------------------------------------------
    @property
    def epochs_done(self) -> int:
        return len(self.history)

    @property
    def training_finished(self) -> bool:
        """All epochs trained, or a regularizer stopped training early."""
        return self.epochs_done >= self.epochs or bool(
            self.history and self.history[-1].get(STOPPED_EARLY, False))

    def request_stop(self, signal_name: str) -> None:
        self.stop_signal = signal_name

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the last finished epoch. Tensors and plain Python
        only: checkpoints are loaded with ``weights_only=True``."""
        return {
            "epoch": self.epochs_done, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "regularizers": {r.name: r.state_dict() for r in self.regularizers},
            "data_order": self.data.train.generator.get_state(),
            "rng": rng_state(), "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put every piece of state back as it was at the end of the checkpointed epoch."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for regularizer in self.regularizers:
            regularizer.load_state_dict(state["regularizers"].get(regularizer.name, {}))
        self.data.train.generator.set_state(state["data_order"])
        set_rng_state(state["rng"])
        self.history = list(state["history"])

    # --- one batch -------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        inputs = normalize(images, self.data.mean, self.data.std)
        return inputs.contiguous(memory_format=self.memory_format) if inputs.ndim == 4 else inputs

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loss_terms(self, images: torch.Tensor, targets: torch.Tensor, epoch: int,
                   progress: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The objective's terms for one batch: the base loss (cross-entropy against the targets,
        or the one regularizer's that owns it) and every regularizer's terms. ``targets`` are
        class indices [B] or, after a mixing transform, class probabilities [B, K]."""
        inputs = self.prepare(images)
        with self.autocast():
            logits, features = self.step_model(inputs)
        logits = logits.float()
        labels, soft_targets = StepOutput.split_targets(targets)
        step = StepOutput(inputs, labels, logits, features.float(), self.model, epoch, progress,
                          soft_targets=soft_targets)
        owner = next((r for r in self.regularizers if r.owns_base_loss), None)
        if owner is None:
            terms = {"ce": F.cross_entropy(logits, step.targets)}
        else:
            terms = {owner.name: owner.base_loss(step)}
        for regularizer in self.regularizers:
            for key, value in regularizer.loss_terms(step).items():
                if key in terms:
                    raise RuntimeError(f"loss term {key!r} is added twice ({regularizer.name})")
                terms[key] = value
        return terms, logits

    # --- one epoch -------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training split; ``epoch`` is 0-based. Steps are counted from 1 in
        errors (the step that diverged or was interrupted)."""
        self.model.train()
        finetune.freeze_body(self.model, epoch, self.settings.trainer)
        sums: dict[str, torch.Tensor] = {}
        # The epoch's logits and labels stay on the device for the epoch-level train/ metrics.
        epoch_logits: list[torch.Tensor] = []
        epoch_labels: list[torch.Tensor] = []
        seen = 0
        batches = tqdm(self.data.train, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}",
                       leave=False, disable=not self.show_progress, dynamic_ncols=True)
        for step, (images, labels) in enumerate(batches, start=1):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            for regularizer in self.regularizers:
                images, labels = regularizer.transform_batch(images, labels)
            progress = (epoch + (step - 1) / self.steps_per_epoch) / self.epochs
            terms, logits = self.loss_terms(images, labels, epoch, progress)
            # Mixed (soft) targets: the epoch's train/ metrics use each one's dominant class.
            labels, _ = StepOutput.split_targets(labels)
            loss = torch.stack(list(terms.values())).sum()
            if (step - 1) % self.finite_check_every == 0 and not torch.isfinite(loss):
                raise DivergedError(epoch + 1, step, {k: v.item() for k, v in terms.items()})
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            for regularizer in self.regularizers:
                regularizer.on_step_end(self.model)
            # Sums stay on the device; they are transferred once per epoch.
            batch = len(labels)
            seen += batch
            for key, value in terms.items():
                sums[key] = sums.get(key, 0) + value.detach() * batch
            sums["loss"] = sums.get("loss", 0) + loss.detach() * batch
            epoch_logits.append(logits.detach())
            epoch_labels.append(labels)
            if self.show_progress and step % 10 == 1:
                batches.set_postfix(loss=f"{loss.item():.4f}")
            if self.stop_signal is not None:
                raise InterruptedRun(self.stop_signal, epoch + 1, step)
        # train/ per epoch: the batches as the optimizer saw them (train mode, augmented); the clean
        # eval-mode pass over the training split happens once, in test(), for honest gaps.
        means = classification_metrics(torch.cat(epoch_logits), torch.cat(epoch_labels))
        means.update({key if key == "loss" else f"loss_{key}": value / seen for key, value in sums.items()})
        result = to_floats(means, "train")
        if not all_finite(result.values()):
            raise DivergedError(epoch + 1, self.steps_per_epoch, result)
        return result

    def calibrate(self, val: Evaluation, test: Evaluation) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """The calibration panel: every metric of calibration_metrics.py on the test split, raw and
        after each calibrator of evaluation.calibrators fitted on the validation split."""
        names = [name.value for name in self.settings.evaluation.calibrators]
        return calibration_panel(val.logits, val.labels, test.logits, test.labels, names)

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

    def validate(self, epoch: int, recorder: Optional[RunRecorder]) -> dict[str, float]:
        """Validation metrics and prediction histograms for one epoch; of the averaged weights when
        a regularizer keeps an average (and of the trained ones under val_raw/)."""
        if len(self.data.val) == 0:
            return {}
        averaging = averaging_regularizer(self.regularizers)
        if averaging is None:
            val = self.evaluate(self.data.val)
            raw = {}
        else:
            with swapped_in(self.model, averaging.averaged_weights()):
                val = self.evaluate(self.data.val)
            raw = self.evaluate(self.data.val).metrics("val" + RAW) if averaging.evaluate_raw else {}
        if recorder is not None:
            recorder.log_prediction_histograms("val", val.logits, val.labels, epoch)
        return {**val.metrics("val"), **raw}

    # --- the whole run ---------------------------------------------------------------------
    def fit(self, recorder: Optional[RunRecorder] = None,
            on_epoch: Optional[Callable[["Run"], None]] = None) -> None:
        """Train the epochs that are left; ``on_epoch`` (e.g. a checkpoint) follows each one."""
        while not self.training_finished:
            epoch = self.epochs_done
            started = time.perf_counter()
            lr = self.current_lr()
            record: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            trained = time.perf_counter()
            record.update(self.validate(epoch + 1, recorder))
            record["lr"] = lr
            record.update(scale_invariance_record(self.model, lr, self.data.train_eval, self.device, self.prepare))
            record["train_seconds"] = trained - started
            record["eval_seconds"] = time.perf_counter() - trained
            record["seconds"] = time.perf_counter() - started
            # Every regularizer sees the epoch's end, even when an earlier one asks to stop.
            stop = [r.on_epoch_end(epoch, record, self.model) for r in self.regularizers]
            # Kept in the history, so a resumed run does not train past an early stop.
            record[STOPPED_EARLY] = any(stop) and epoch + 1 < self.epochs
            self.history.append(record)
            if recorder is not None:
                recorder.log_epoch(record)
            if on_epoch is not None:
                on_epoch(self)
            log.info(epoch_summary(record, self.epochs))
            if record[STOPPED_EARLY]:
                log.info("stopping early after epoch %d of %d", epoch + 1, self.epochs)

    def check_stop(self) -> None:
        """Between the stages of the test phase: stop there if a signal asked to."""
        if self.stop_signal is not None:
            raise InterruptedRun(self.stop_signal, self.epochs_done, 0, phase="test")

    def test(self, recorder: Optional[RunRecorder] = None) -> dict[str, Any]:
        """Final metrics, in named stages with a stop check between them: the regularizers' end of
        training, the test split (touched only here), the train split in eval mode and the gaps,
        the validation split and the calibration panel (calibrators fitted on it), the test split
        under corruption (evaluation.shift), the OOD sets (evaluation.ood), what the run records
        of its test phase, and the probes (variance shift, time to fit)."""
        self.check_stop()
        end_of_training = self.end_of_training()
        test = self.evaluate(self.data.test)
        metrics = self.test_split_metrics(test)
        for stage in (self.train_split_metrics, self.validation_metrics, self.shift_metrics):
            self.check_stop()
            metrics.update(stage(metrics, test))
        self.check_stop()
        metrics.update(self.ood_sets.evaluate(self, test, recorder))
        self.check_stop()
        if recorder is not None:
            self.record_test_phase(recorder, test, metrics)
        metrics.update(self.probe_metrics())
        metrics.update(end_of_training)
        metrics[EPOCHS] = self.epochs_done
        return metrics

    def end_of_training(self) -> dict[str, float]:
        """The regularizers' own end-of-training metrics (on_fit_end may change the model, e.g.
        restore the best epoch's weights, so it runs before any evaluation)."""
        metrics: dict[str, float] = {}
        for regularizer in self.regularizers:
            metrics.update(regularizer.on_fit_end(self.model))
        averaging = averaging_regularizer(self.regularizers)
        if averaging is not None:
            if averaging.evaluate_raw:
                metrics.update(self.evaluate(self.data.test).metrics("test" + RAW))
            self.model.load_state_dict(averaging.averaged_weights())
            if averaging.recompute_bn:
                recompute_batchnorm(self.model, self.data.train, self.prepare, self.device)
            log.info("the test phase measures %s's averaged weights", averaging.name)
        return metrics

    def test_split_metrics(self, test: Evaluation) -> dict[str, Any]:
        """test/ metrics, their bootstrap intervals (how much the test split's sampling alone moves
        accuracy and ECE), the feature and weight norms and the wrong-class views."""
        metrics: dict[str, Any] = test.metrics("test")
        intervals = bootstrap_intervals(test.logits, test.labels, seed=self.settings.seed)
        metrics.update({f"test/{key}": value for key, value in intervals.items()})
        metrics["test/feature_norm"] = test.features.norm(dim=1).mean().item()
        metrics["test/weight_norm"] = weight_norm(self.model)
        metrics.update(wrong_class_metrics(test.logits, test.labels))
        return metrics

    def train_split_metrics(self, metrics: dict[str, Any], test: Evaluation) -> dict[str, Any]:
        """train/ metrics of a clean eval-mode pass over the training split, the gaps, and whether
        the run learned at all (did_not_learn, with a warning when it did not)."""
        train_split = self.evaluate(self.data.train_eval)
        train = train_split.metrics("train")
        return {**train, GAP_ACC: train[TRAIN_ACC] - metrics[TEST_ACC],
                GAP_NLL: metrics[TEST_NLL] - train["train/nll"],
                DID_NOT_LEARN: did_not_learn(train_split)}

    def validation_metrics(self, metrics: dict[str, Any], test: Evaluation) -> dict[str, float]:
        """val/ metrics and the calibration panel (calibrators fitted on the validation split,
        measured on the test split); nothing without a validation split."""
        self.panel = {}
        if len(self.data.val) == 0:
            return {}
        val = self.evaluate(self.data.val)
        calibrated, self.panel = self.calibrate(val, test)
        found = val.metrics("val")
        return {**found, **{key: value for key, value in calibrated.items()
                            if key not in metrics and key not in found}}

    def shift_metrics(self, metrics: dict[str, Any], test: Evaluation) -> dict[str, float]:
        """evaluation.shift: the test split under corruption, with the validation split's
        temperature (run/shift_stage.py); nothing when it is null."""
        return shift_stage.shift_metrics(self, metrics)

    def record_test_phase(self, recorder: RunRecorder, test: Evaluation, metrics: dict[str, Any]) -> None:
        """test_calibration.json, test_logits.npz, and the figures when evaluation.figures is on."""
        recorder.write_calibration_summary(test.logits, test.labels)
        recorder.log_shift_by_severity(shift_stage.severity_curves(metrics))
        recorder.write_test_logits(test.logits, test.labels)
        if self.settings.evaluation.figures:
            self.draw_figures(recorder, test, self.panel, metrics)

    def probe_metrics(self) -> dict[str, float]:
        """The dropout/BatchNorm variance shift at test time and the time to fit (probes.py)."""
        return {**variance_shift_metrics(self.model, self.data.test, self.device, self.prepare),
                **fit_metrics(self.history, self.settings.trainer.fit_threshold)}

    def draw_figures(self, recorder: RunRecorder, test: Evaluation, panel: dict[str, torch.Tensor],
                     metrics: dict[str, Any]) -> None:
        """The test phase's figures (evaluation.figures): reliability diagram, confidence
        histogram, the calibration panel's diagrams, the wrong-class views."""
        recorder.log_test_figures(test.logits, test.labels, metrics[TEST_ECE], self.epochs_done)
        if panel:
            eces = {name: metrics[metric_key("ece", name)] for name in panel}
            recorder.log_reliability_panel(panel, test.labels, eces, self.epochs_done)
        recorder.log_wrong_class_views(test.logits, test.labels, test.features, self.data.classes,
                                       self.epochs_done)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


@contextlib.contextmanager
def stop_on_signals(run: Run) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGUSR2 (Ctrl-C, a scheduler's pre-emption, SLURM's warning before a
    time limit) let the current training step or test stage finish, then the run stops
    (InterruptedRun) with its last finished epoch checkpointed; a second signal stops at once,
    wherever the run is. The previous handlers (e.g. submitit's) are back when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if run.stop_signal is not None:
            if run.training_finished:
                raise InterruptedRun(name, run.epochs_done, 0, phase="test")
            raise InterruptedRun(name, run.epochs_done + 1, 0)
        run.request_stop(name)

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
