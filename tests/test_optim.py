"""The learning-rate schedule by hand: warmup, step, cosine and none (``optim.lr_factor``), torch's
OneCycleLR as ``build_scheduler`` sets it up, the optimizer each ``optimizer=`` option builds, and
discriminative learning rates (``optimizer.body_lr_factor``) under every schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import FAST
from regbench.cli.compose import compose_settings
from regbench.config import ConfigError
from regbench.optim import (
    AdamConfig,
    AdamWConfig,
    Schedule,
    SGDConfig,
    build_optimizer,
    build_scheduler,
    lr_factor,
    param_groups,
)
from regbench.regularizers import REGULARIZERS
from regbench.regularizers.l2 import L2Config
from regbench.run.engine import Run

STEPS_PER_EPOCH = 10


def factor(step: int, epochs: int = 12, **options) -> float:
    """lr_factor at ``step`` of a run of ``epochs`` epochs of STEPS_PER_EPOCH steps."""
    cfg = SGDConfig(**options)
    return lr_factor(cfg, step, epochs * STEPS_PER_EPOCH, STEPS_PER_EPOCH)


def lrs_at(cfg: SGDConfig, steps: list[int], epochs: int) -> dict[int, float]:
    """The lr the scheduler gives after each of ``steps`` optimizer steps (one per batch)."""
    optimizer = build_optimizer(cfg, [{"params": [torch.nn.Parameter(torch.zeros(1))]}])
    scheduler = build_scheduler(cfg, optimizer, epochs, STEPS_PER_EPOCH)
    seen = {}
    for step in range(max(steps) + 1):
        if step in steps:
            seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("schedule", [Schedule.none, Schedule.step, Schedule.cosine])
def test_warmup_rises_linearly_from_the_start_factor_to_the_full_lr(schedule):
    # 2 warmup epochs = 20 steps from 0.1: step 0 -> 0.1, step 10 -> 0.1 + 0.9 * 10/20 = 0.55,
    # step 19 -> 0.1 + 0.9 * 19/20 = 0.955, and step 20 is the schedule's first step (factor 1).
    options = dict(schedule=schedule, warmup_epochs=2, warmup_start_factor=0.1)
    assert factor(0, **options) == pytest.approx(0.1)
    assert factor(10, **options) == pytest.approx(0.55)
    assert factor(19, **options) == pytest.approx(0.955)
    assert factor(20, **options) == pytest.approx(1.0)


def test_warmup_of_a_fraction_of_an_epoch_rounds_to_whole_steps():
    # 0.25 epochs of 10 steps = 2.5, rounded to 2 steps: 0.5, then 0.5 + 0.5 * 1/2 = 0.75, then 1.
    options = dict(schedule=Schedule.none, warmup_epochs=0.25, warmup_start_factor=0.5)
    assert [factor(step, **options) for step in range(4)] == pytest.approx([0.5, 0.75, 1.0, 1.0])


def test_cosine_halves_the_lr_at_the_middle_of_the_run_after_warmup():
    # 12 epochs = 120 steps, 2 warmup epochs = 20: the cosine runs over the 100 steps after them.
    # Step 70 is half-way: 0.5 * (1 + cos(pi / 2)) = 0.5; step 45 a quarter of the way:
    # 0.5 * (1 + cos(pi / 4)) = 0.5 + sqrt(2) / 4.
    options = dict(schedule=Schedule.cosine, warmup_epochs=2)
    assert factor(20, **options) == pytest.approx(1.0)
    assert factor(45, **options) == pytest.approx(0.5 + math.sqrt(2) / 4)
    assert factor(70, **options) == pytest.approx(0.5)
    assert factor(120, **options) == pytest.approx(0.0, abs=1e-12)


def test_cosine_without_warmup_runs_from_the_full_lr_to_zero_at_the_end_of_the_run():
    # 10 epochs = 100 steps: step 25 -> 0.5 * (1 + cos(pi / 4)), step 75 -> 0.5 * (1 - cos(pi / 4));
    # past the end the factor stays 0 (progress is capped at 1).
    options = dict(schedule=Schedule.cosine)
    assert factor(0, epochs=10, **options) == pytest.approx(1.0)
    assert factor(25, epochs=10, **options) == pytest.approx(0.5 + math.sqrt(2) / 4)
    assert factor(75, epochs=10, **options) == pytest.approx(0.5 - math.sqrt(2) / 4)
    assert factor(100, epochs=10, **options) == pytest.approx(0.0, abs=1e-12)
    assert factor(130, epochs=10, **options) == pytest.approx(0.0, abs=1e-12)


def test_step_multiplies_the_lr_by_gamma_every_step_epochs():
    # Every 3 epochs = 30 steps, times 0.1: 1 up to step 29, 0.1 from 30, 0.01 from 60.
    options = dict(schedule=Schedule.step, step_epochs=3, step_gamma=0.1)
    assert factor(0, **options) == pytest.approx(1.0)
    assert factor(29, **options) == pytest.approx(1.0)
    assert factor(30, **options) == pytest.approx(0.1)
    assert factor(59, **options) == pytest.approx(0.1)
    assert factor(60, **options) == pytest.approx(0.01)


def test_step_counts_its_epochs_from_the_start_of_the_run_warmup_included():
    # One warmup epoch (10 steps), steps every 3 epochs: the first drop is at step 30, not 40.
    options = dict(schedule=Schedule.step, step_epochs=3, step_gamma=0.5, warmup_epochs=1)
    assert factor(10, **options) == pytest.approx(1.0)
    assert factor(29, **options) == pytest.approx(1.0)
    assert factor(30, **options) == pytest.approx(0.5)


def test_no_schedule_keeps_the_full_lr_after_warmup():
    options = dict(schedule=Schedule.none, warmup_epochs=1)
    assert [factor(step, **options) for step in (10, 50, 119, 120)] == pytest.approx([1.0] * 4)
    assert factor(0, schedule=Schedule.none) == pytest.approx(1.0)


def test_the_scheduler_sets_each_batchs_lr_to_the_base_lr_times_lr_factor():
    # lr 0.05, 10 epochs = 100 steps, a 1-epoch warmup from 0.1, then cosine: 0.005 at step 0,
    # 0.05 at step 10, and half of it (0.025) at step 55, half-way through the 90 cosine steps.
    cfg = SGDConfig(lr=0.05, schedule=Schedule.cosine, warmup_epochs=1, warmup_start_factor=0.1)
    seen = lrs_at(cfg, [0, 5, 10, 55], epochs=10)
    assert seen[0] == pytest.approx(0.005)
    assert seen[5] == pytest.approx(0.05 * (0.1 + 0.9 * 5 / 10))
    assert seen[10] == pytest.approx(0.05)
    assert seen[55] == pytest.approx(0.025)


def test_onecycle_starts_at_a_25th_of_the_lr_peaks_at_pct_start_and_ends_10000_times_lower():
    # torch's OneCycleLR with its defaults: initial lr = max_lr / div_factor (25), the peak max_lr
    # (the configured lr) at step pct_start * total - 1, then a cosine down to
    # initial lr / final_div_factor (1e4) at the last step. lr 0.05, 10 epochs = 100 steps,
    # pct_start 0.3: 0.002 at step 0, 0.05 at step 29, 2e-7 at step 99. Half-way up (step 14.5)
    # the cosine rise gives the mean of 0.002 and 0.05; steps 14 and 15 straddle it.
    cfg = SGDConfig(lr=0.05, schedule=Schedule.onecycle, onecycle_pct_start=0.3)
    seen = lrs_at(cfg, [0, 14, 15, 29, 99], epochs=10)
    assert seen[0] == pytest.approx(0.002)
    assert seen[14] < (0.002 + 0.05) / 2 < seen[15]
    assert seen[29] == pytest.approx(0.05)
    assert seen[99] == pytest.approx(2e-7)


@pytest.mark.parametrize("cfg,expected", [
    (SGDConfig(nesterov=True), torch.optim.SGD),
    (AdamConfig(), torch.optim.Adam),
    (AdamWConfig(), torch.optim.AdamW),
])
def test_each_optimizer_option_builds_its_torch_optimizer_without_its_own_weight_decay(cfg, expected):
    # Weight decay is the l2 regularizer's: an optimizer's own default (AdamW's 1e-2) never applies.
    optimizer = build_optimizer(cfg, [{"params": [torch.nn.Parameter(torch.zeros(1))]}])
    assert type(optimizer) is expected
    group = optimizer.param_groups[0]
    assert group["lr"] == cfg.lr and group["weight_decay"] == 0.0
    if expected is torch.optim.SGD:
        assert group["momentum"] == 0.9 and group["nesterov"] is True
    else:
        assert group["betas"] == (0.9, 0.999)


def test_a_group_keeps_the_weight_decay_a_regularizer_gave_it():
    optimizer = build_optimizer(AdamWConfig(), [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 1e-4},
        {"params": [torch.nn.Parameter(torch.zeros(1))]}])
    assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-4, 0.0]


# --- discriminative learning rates: optimizer.body_lr_factor --------------------------------------

class BodyAndHead(nn.Module):
    """The split every regbench model has (models/base.Classifier): ``body`` then ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)  # registered first, as in TorchvisionResNet
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def lr_of(optimizer: torch.optim.Optimizer, parameter: nn.Parameter) -> float:
    return next(group["lr"] for group in optimizer.param_groups
                if any(p is parameter for p in group["params"]))


def test_the_body_steps_at_lr_times_body_lr_factor_and_the_head_at_lr():
    # Plain SGD, every gradient 1: one step moves each body parameter by -lr * 0.1 = -0.01 and each
    # head parameter by -lr = -0.1; the head's group comes first (the lr a run logs is group 0's).
    model = BodyAndHead()
    cfg = SGDConfig(lr=0.1, momentum=0.0, body_lr_factor=0.1)
    optimizer = build_optimizer(cfg, param_groups(model, []))
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.1, 0.01])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    for name, parameter in model.named_parameters():
        step = -0.01 if name.startswith("body.") else -0.1
        assert torch.allclose(parameter.detach(), before[name] + step), name


def test_body_lr_factor_keeps_the_weight_decay_groups_of_the_regularizers():
    # Decoupled L2 on the weights only: four groups, (head, body) x (decayed, not), each with its
    # weight decay, at lr for the head and lr * 0.01 for the body.
    model = BodyAndHead()
    l2 = REGULARIZERS.get("l2")(L2Config(coef=0.05, decoupled=True))
    l2.on_model_built(model)
    cfg = AdamWConfig(lr=1e-3, body_lr_factor=0.01)
    optimizer = build_optimizer(cfg, param_groups(model, [l2]))
    assert len(optimizer.param_groups) == 4
    for name, parameter in model.named_parameters():
        group = next(g for g in optimizer.param_groups if any(p is parameter for p in g["params"]))
        decayed = parameter.ndim > 1
        assert group["weight_decay"] == (0.05 if decayed else 0.0), name
        assert group["lr"] == pytest.approx(1e-5 if name.startswith("body.") else 1e-3), name


def test_a_factor_of_one_builds_the_groups_the_regularizers_gave():
    model = BodyAndHead()
    l2 = REGULARIZERS.get("l2")(L2Config(decoupled=True))
    l2.on_model_built(model)
    optimizer = build_optimizer(AdamWConfig(), param_groups(model, [l2]))
    assert len(optimizer.param_groups) == 2  # decayed and not, body and head together
    assert all("in_body" not in group for group in optimizer.param_groups)


@pytest.mark.parametrize("options", [
    dict(schedule=Schedule.none, warmup_epochs=1),
    dict(schedule=Schedule.step, step_epochs=2, warmup_epochs=1),
    dict(schedule=Schedule.cosine, warmup_epochs=1),
    dict(schedule=Schedule.onecycle),
])
def test_every_schedule_keeps_the_body_at_its_factor_of_the_heads_lr(options):
    model = BodyAndHead()
    cfg = SGDConfig(lr=0.05, body_lr_factor=0.2, **options)
    optimizer = build_optimizer(cfg, param_groups(model, []))
    scheduler = build_scheduler(cfg, optimizer, 6, STEPS_PER_EPOCH)
    head, body = model.head.weight, model.body[0].weight
    for step in range(6 * STEPS_PER_EPOCH):
        assert lr_of(optimizer, body) == pytest.approx(0.2 * lr_of(optimizer, head)), step
        optimizer.step()
        scheduler.step()


def test_onecycle_gives_the_body_its_own_start_and_peak():
    # OneCycleLR with one max_lr per group: the body starts at 0.2 * 0.05 / 25 = 4e-4 and peaks at
    # 0.2 * 0.05 = 0.01 at step pct_start * 100 - 1 = 29 (the head: 0.002 and 0.05).
    model = BodyAndHead()
    cfg = SGDConfig(lr=0.05, body_lr_factor=0.2, schedule=Schedule.onecycle)
    optimizer = build_optimizer(cfg, param_groups(model, []))
    scheduler = build_scheduler(cfg, optimizer, 10, STEPS_PER_EPOCH)
    seen = {}
    for step in range(30):
        seen[step] = [group["lr"] for group in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx([0.002, 4e-4])
    assert seen[29] == pytest.approx([0.05, 0.01])


@pytest.mark.parametrize("factor", ["0", "-0.1", "inf", "nan"])
def test_a_body_lr_factor_that_is_not_positive_and_finite_is_refused_in_one_line(factor):
    with pytest.raises(ConfigError) as error:
        compose_settings([f"optimizer.body_lr_factor={factor}"])
    message = str(error.value)
    assert message.startswith(f"optimizer.body_lr_factor={float(factor)!r} is not allowed: "
                              f"a number > 0 and finite") and "\n" not in message


def test_a_small_body_lr_factor_moves_the_body_less_in_a_real_run():
    # The same seed, 3 epochs on digits: the body's weights end closer to their initial values
    # with factor 0.01 than with 1 (by about the factor), and the logged lr is the head's.
    def body_travel(factor: float) -> float:
        run = Run.build(compose_settings([*FAST, "model.hidden_sizes=[64]",
                                          f"optimizer.body_lr_factor={factor}"]))
        initial = [p.detach().clone() for p in run.model.body.parameters()]
        run.fit()
        assert run.history[0]["lr"] == pytest.approx(0.05)  # sgd's lr, the head's
        return sum((p.detach() - q).norm() ** 2 for p, q in zip(run.model.body.parameters(),
                                                               initial)).sqrt().item()

    assert body_travel(0.01) < 0.2 * body_travel(1.0)
