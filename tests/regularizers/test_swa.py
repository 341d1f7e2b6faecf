"""SWA: the average is the mean of the epoch-end weights from the start epoch on, the learning
rate switches to SWALR there, update_bn recomputes BatchNorm statistics, the run resumes exactly
after SIGTERM, and on digits with a high constant learning rate the average's test NLL is lower."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import (
    FAST,
    assert_resumes_exactly_after_sigterm,
    compose_config,
    read_history,
    train_end_to_end,
    train_in_process,
)
from regbench.cli.compose import compose_settings
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS, RunContext
from regbench.regularizers.swa import SwaConfig
from regbench.run.averaging import recompute_batchnorm
from regbench.run.engine import Run

SMALL = ["model.hidden_sizes=[64]", "evaluation.calibrators=[]"]
HIGH_LR = ["optimizer.lr=0.5", "optimizer.schedule=none"]




def swa_run(model: nn.Module, epochs: int, steps_per_epoch: int, lr: float = 0.1, **options):
    """An SWA regularizer on ``model`` with SGD and a linear-decay LambdaLR (1 - step / 100)."""
    swa = REGULARIZERS.get("swa")(SwaConfig(**options))
    swa.setup(RunContext(dataset="digits", model="mlp", num_classes=2, epochs=epochs,
                         optimizer="sgd"))
    swa.on_model_built(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 100)
    return swa, optimizer, swa.wrap_scheduler(optimizer, schedule, steps_per_epoch)


def test_the_average_is_the_mean_of_the_epoch_end_weights_from_the_start_epoch():
    model = nn.Linear(1, 1, bias=False)
    # 4 epochs of 2 steps, start 0.5: epochs 3 and 4 are averaged, after steps 6 and 8.
    swa, _, _ = swa_run(model, epochs=4, steps_per_epoch=2, start=0.5)
    for step in range(1, 9):
        model.weight.data.fill_(float(step ** 2))
        swa.on_step_end(model)
        if step == 6:
            assert swa.averaged_weights()["weight"].item() == 36.0  # the first snapshot
    assert swa.snapshots == 2
    assert swa.averaged_weights()["weight"].item() == (36 + 64) / 2


def test_the_learning_rate_switches_to_swalr_at_the_start_epoch():
    model = nn.Linear(1, 1)
    # 4 epochs of 3 steps, start 0.5: steps 1-6 follow the schedule, 0.1 * (1 - (n - 1) / 100);
    # from step 7 SWALR anneals from step 6's lr L0 = 0.095 to 0.5 * 0.1 = 0.05 over one epoch
    # (3 steps) by cos: L0 + (1 - cos(pi j / 3)) / 2 * (0.05 - L0) = 0.08375, 0.06125, then 0.05.
    swa, optimizer, schedule = swa_run(model, epochs=4, steps_per_epoch=3, start=0.5)
    used = []
    for _ in range(12):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [0.1 * (1 - n / 100) for n in range(6)] + [0.08375, 0.06125, 0.05, 0.05, 0.05, 0.05]
    assert used == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("anneal_epochs, strategy", [(2, "linear"), (0, "cos")])
def test_the_schedule_resumes_exactly_before_and_after_the_switch(anneal_epochs, strategy):
    def fresh(model: nn.Module):
        return swa_run(model, epochs=4, steps_per_epoch=3, start=0.5, anneal_epochs=anneal_epochs,
                       anneal_strategy=strategy)[1:]

    def lrs_used(resume_at: int) -> list[float]:
        model = nn.Linear(1, 1)
        optimizer, schedule = fresh(model)
        used = []
        for step in range(12):
            if step == resume_at:  # a fresh optimizer and schedule from a weights-only checkpoint
                buffer = io.BytesIO()
                torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()},
                           buffer)
                buffer.seek(0)
                state = torch.load(buffer, weights_only=True)
                optimizer, schedule = fresh(model)
                optimizer.load_state_dict(state["optimizer"])
                schedule.load_state_dict(state["schedule"])
            used.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return used

    uninterrupted = lrs_used(resume_at=-1)
    assert lrs_used(resume_at=4) == uninterrupted  # before the switch (after step 6)
    assert lrs_used(resume_at=7) == uninterrupted  # one step after it, SWALR made
    assert lrs_used(resume_at=10) == uninterrupted


def test_update_bn_recomputes_batchnorm_statistics_as_a_hand_pass_does():
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    batches = [(torch.randn(8, 3, generator=generator), torch.zeros(8)) for _ in range(5)]
    model[1].running_mean.fill_(100.0)  # stale statistics, as an average of weights has
    model[1].running_var.fill_(100.0)
    model.eval()
    recompute_batchnorm(model, batches, lambda images: images, torch.device("cpu"))
    # By hand: update_bn's cumulative average (momentum None) of each batch's mean and unbiased
    # variance of the BatchNorm input.
    with torch.no_grad():
        inputs = [model[0](images) for images, _ in batches]
    assert torch.allclose(model[1].running_mean, torch.stack([x.mean(0) for x in inputs]).mean(0))
    assert torch.allclose(model[1].running_var, torch.stack([x.var(0) for x in inputs]).mean(0))
    assert model[1].momentum == 0.1 and not model.training  # both as they were


@pytest.mark.parametrize("key, value", [("start", "1.0"), ("start", "1.5"), ("start", "-0.1"),
                                        ("lr_factor", "0.0"), ("lr_factor", "-0.5"),
                                        ("anneal_epochs", "-1"), ("anneal_strategy", "exp")])
def test_bad_values_are_refused_in_one_line(key, value):
    cfg = compose_config(["regularizer=swa", f"regularizer.swa.{key}={value}"])
    shown = re.escape(value) if key != "anneal_strategy" else f"'{value}'"  # the value's repr
    one_line = rf"^regularizer\.swa\.{key}={shown} is not allowed: [^\n]+$"
    with pytest.raises(ConfigError, match=one_line):
        OmegaConf.to_object(cfg)


@pytest.mark.slow
def test_the_average_lowers_test_nll_at_a_high_constant_learning_rate(tmp_path):
    metrics = train_in_process(tmp_path, [*SMALL, *HIGH_LR, "regularizer=swa", "trainer.epochs=6",
                                          "regularizer.swa.start=0.5", "seed=0"])
    assert metrics["swa/snapshots"] == 3 and metrics["swa/start_epoch"] == 4
    assert metrics["test/nll"] < metrics["test_raw/nll"] - 0.02
    history = read_history(tmp_path)
    # The constant 0.5 for epochs 1-3; epoch 4 starts one step into the anneal; then 0.5 * 0.5.
    first_step = 0.5 + (1 - math.cos(math.pi / 19)) / 2 * (0.25 - 0.5)
    assert [r["lr"] for r in history] == pytest.approx([0.5, 0.5, 0.5, first_step, 0.25, 0.25])
    # Without BatchNorm val/ is the average from the first averaged epoch on.
    assert ["val_raw/nll" in r for r in history] == [False] * 3 + [True] * 3
    assert history[3]["val/nll"] == history[3]["val_raw/nll"]  # one snapshot: the weights
    assert history[5]["val/nll"] != history[5]["val_raw/nll"]


@pytest.mark.slow
def test_with_batchnorm_the_test_phase_has_statistics_of_the_average_over_the_training_split():
    settings = compose_settings([*FAST, *SMALL, "regularizer=[batchnorm,swa]", "trainer.epochs=2",
                                 "regularizer.swa.start=0.5"])
    run = Run.build(settings)
    run.fit()
    assert not any(key.startswith("val_raw/") for r in run.history for key in r)  # stale stats
    order = run.data.train.generator.get_state()
    average = {k: v.clone() for k, v in run.regularizers[1].average.module.state_dict().items()}
    assert "test_raw/nll" in run.end_of_training()
    # By hand: the averaged weights in train mode over the training split in the same order, each
    # BatchNorm's input means and unbiased variances averaged over the batches.
    norms = [m for m in run.model.modules() if isinstance(m, nn.BatchNorm1d)]
    found = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.model.load_state_dict(average)
    run.model.train()
    seen: dict[nn.Module, list[torch.Tensor]] = {norm: [] for norm in norms}
    handles = [norm.register_forward_pre_hook(lambda m, args: seen[m].append(args[0]))
               for norm in norms]
    run.data.train.generator.set_state(order)
    with torch.no_grad():
        for images, _ in run.data.train:
            run.model(run.prepare(images.to(run.device)))
    for handle in handles:
        handle.remove()
    for name, module in run.model.named_modules():
        if module in seen:
            inputs = seen[module]
            assert torch.allclose(found[f"{name}.running_mean"],
                                  torch.stack([x.mean(0) for x in inputs]).mean(0), atol=1e-5)
            assert torch.allclose(found[f"{name}.running_var"],
                                  torch.stack([x.var(0) for x in inputs]).mean(0), atol=1e-4)
        if isinstance(module, nn.Linear):
            assert torch.equal(found[f"{name}.weight"], average[f"{name}.weight"])


@pytest.mark.slow
def test_a_run_interrupted_by_sigterm_in_the_swa_phase_resumes_to_the_uninterrupted_metrics(
        tmp_path, monkeypatch):
    # 4 epochs, start 0.5: epochs 3-4 averaged; the signal comes in epoch 4, after SWALR took over
    # and epoch 3 was averaged (its state kept in memory at the default interval, written at exit).
    job = [*SMALL, *HIGH_LR, "regularizer=swa", "trainer.epochs=4", "regularizer.swa.start=0.5"]
    assert_resumes_exactly_after_sigterm(tmp_path, monkeypatch, job, epoch=4)


@pytest.mark.slow
def test_a_run_with_swa_and_batchnorm_records_one_snapshot_and_raw_test_metrics(tmp_path):
    metrics, history = train_end_to_end(tmp_path, ["regularizer=[batchnorm,swa]", *SMALL])
    assert metrics["swa/snapshots"] == 1 and "test_raw/acc" in metrics
    assert not any(key.startswith("val_raw/") for record in history for key in record)  # BatchNorm
