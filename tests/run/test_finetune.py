"""Fine-tuning (run/finetune.py): a frozen body keeps its weights over a step while the head trains,
its BatchNorm layers follow trainer.train_bn, the body unfreezes at trainer.freeze_epochs, the
backward pass stops at the head when nothing in the body trains, a run resumed in the frozen phase
ends exactly as an uninterrupted one, and the refusals and the warning come before training."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from conftest import FAST, train_in_process
from regbench.cli.compose import compose_settings
from regbench.config import ConfigError
from regbench.run import finetune
from regbench.run.engine import InterruptedRun, Run

# A ResNet-18 from random initialization on the 8x8 digits (1x1 maps from layer2 on): freezing does
# not care whether the weights are pretrained, and the ImageNet layout has BatchNorm everywhere.
RESNET = ["model=resnet18", "dataset.train_size=64", "dataset.val_size=0", "trainer.batch_size=32"]


def build(*overrides: str) -> Run:
    return Run.build(compose_settings([*FAST, *RESNET, *overrides]))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {name for name, value in module.state_dict().items()
            if not torch.equal(value, before[name])}


def batchnorm_keys(module: nn.Module) -> set[str]:
    """State-dict keys of the BatchNorm layers: weight, bias and the running statistics."""
    return {f"{name}.{key}" for name, layer in module.named_modules()
            if finetune.is_batchnorm(layer) for key in layer.state_dict()}


def test_a_frozen_body_without_train_bn_is_unchanged_by_an_epoch_and_the_head_trains():
    run = build("trainer.freeze_epochs=1", "trainer.train_bn=false")
    body, head = snapshot(run.model.body), snapshot(run.model.head)
    run.train_epoch(0)
    assert changed(body, run.model.body) == set()  # weights and running statistics alike
    assert changed(head, run.model.head) == {"weight", "bias"}
    assert all(p.grad is None for p in run.model.body.parameters())
    assert all(not layer.training for layer in run.model.body.modules()
               if finetune.is_batchnorm(layer))


def test_with_train_bn_only_the_bodys_batchnorm_layers_train_while_frozen():
    # fastai's train_bn=True: BatchNorm weights, biases and running statistics move; every
    # convolution of the body keeps its weights and gets no gradient.
    run = build("trainer.freeze_epochs=1", "trainer.train_bn=true")
    body = snapshot(run.model.body)
    run.train_epoch(0)
    batchnorm = batchnorm_keys(run.model.body)
    moved = changed(body, run.model.body)
    assert moved and moved <= batchnorm
    assert {key for key in moved if key.endswith("running_mean")}  # statistics follow the batches
    assert {key for key in moved if key.endswith(".weight")}  # and the affine parameters train
    convolutions = [m for m in run.model.body.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions and all(conv.weight.grad is None for conv in convolutions)


def test_the_body_unfreezes_at_freeze_epochs_and_every_layer_then_trains():
    run = build("trainer.freeze_epochs=1", "trainer.epochs=2", "trainer.train_bn=false")
    run.train_epoch(0)
    body = snapshot(run.model.body)
    run.train_epoch(1)
    conv1 = "resnet.conv1.weight"
    assert conv1 in changed(body, run.model.body)
    assert all(p.requires_grad for p in run.model.parameters())
    assert all(layer.training for layer in run.model.body.modules() if finetune.is_batchnorm(layer))


@pytest.mark.parametrize("train_bn, records_the_body", [(False, False), (True, True)])
def test_the_backward_pass_stops_at_the_head_when_nothing_in_the_body_trains(train_bn,
                                                                             records_the_body):
    # The body's output has no autograd history when no body parameter needs a gradient: nothing
    # of the body is recorded, so the backward pass computes the head's gradients only.
    run = build("trainer.freeze_epochs=1", f"trainer.train_bn={str(train_bn).lower()}")
    recorded: list[bool] = []
    run.model.body.register_forward_hook(
        lambda module, args, output: recorded.append(output.requires_grad))
    run.train_epoch(0)
    assert recorded == [records_the_body] * 2  # 64 images in batches of 32


@pytest.mark.parametrize("train_bn", ["true", "false"])
def test_a_run_resumed_in_the_frozen_phase_ends_as_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                        train_bn):
    # 4 epochs, the body frozen for 3; stopped during epoch 3, so the checkpoint is epoch 2's: the
    # resumed run must freeze again for epoch 3, then unfreeze for epoch 4.
    from test_run_lifecycle import interrupt_during_epoch, without_timings  # one SIGTERM helper

    job = ["model.hidden_sizes=[32]", "regularizer=batchnorm", "trainer.epochs=4",
           "trainer.freeze_epochs=3", f"trainer.train_bn={train_bn}"]
    reference = train_in_process(tmp_path / "reference", job)
    interrupt_during_epoch(monkeypatch, epoch=3)
    with pytest.raises(InterruptedRun):
        train_in_process(tmp_path / "run", job)
    monkeypatch.undo()
    resumed = train_in_process(tmp_path / "run", job)
    assert without_timings(resumed) == without_timings(reference)


def test_freezing_a_random_body_for_the_whole_run_keeps_it_as_initialized_and_learns_less():
    # The same seed, 3 epochs on digits with a narrow MLP: with the body frozen throughout, its
    # weights at the end are its initial ones and only a linear head on 16 random features
    # learns, so the training loss ends higher than when every layer trains.
    narrow = ["model.hidden_sizes=[16]", "trainer.epochs=3"]
    initial = snapshot(Run.build(compose_settings([*FAST, *narrow])).model.body)
    frozen = Run.build(compose_settings([*FAST, *narrow, "trainer.freeze_epochs=3"]))
    frozen.fit()
    unfrozen = Run.build(compose_settings([*FAST, *narrow]))
    unfrozen.fit()
    assert changed(initial, frozen.model.body) == set()
    assert frozen.history[-1]["train/loss"] > 1.5 * unfrozen.history[-1]["train/loss"]


def test_freezing_a_randomly_initialized_body_is_warned_about_once(caplog):
    run = build("trainer.freeze_epochs=1", "trainer.epochs=2")
    with caplog.at_level(logging.INFO, logger=finetune.__name__):
        run.train_epoch(0)
        run.train_epoch(1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["trainer.freeze_epochs=1 with randomly initialized weights: the frozen "
                        "body is random; set model.weights to start from pretrained ones"]
    assert any("epoch 2: the body is unfrozen" in r.getMessage() for r in caplog.records)


def test_freeze_epochs_beyond_the_run_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^trainer\.freeze_epochs=5 is not allowed: an integer "
                                          r"in \[0, trainer\.epochs=3\]"):
        compose_settings([*FAST, "trainer.freeze_epochs=5"])


def test_freezing_a_model_without_a_body_and_head_is_refused_in_one_line():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(4, 3))

    trainer = compose_settings([*FAST, "trainer.freeze_epochs=2"]).trainer
    with pytest.raises(ConfigError) as error:
        finetune.freeze_body(Plain(), 0, trainer)
    assert str(error.value) == ("trainer.freeze_epochs=2 is not allowed: the model Plain has no "
                                "body/head split to freeze; use 0")


def test_every_registered_model_has_the_body_and_head_that_freezing_needs():
    from regbench.models import MODELS

    for name in MODELS.names():
        model = Run.build(compose_settings([*FAST, f"model={name}", "dataset.train_size=32",
                                            "dataset.val_size=0"])).model
        assert finetune.split_body(model, 1) is model.body, name
        body_or_head = [n.split(".")[0] in ("body", "head") for n, _ in model.named_parameters()]
        assert all(body_or_head), name
