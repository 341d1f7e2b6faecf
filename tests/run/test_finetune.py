"""Fine-tuning (run/finetune.py): a frozen body keeps its weights over a step while the head trains,
its BatchNorm layers follow trainer.train_bn, the body unfreezes at trainer.freeze_epochs, the
backward pass stops at the head when nothing in the body trains, a run resumed in the frozen phase
ends exactly as an uninterrupted one, the refusals and the warning come before training, and
experiment=pets_finetune composes and trains a step on synthetic Pets files with ImageNet weights
from a temporary torch.hub cache."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image
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


def test_a_run_resumed_in_the_frozen_phase_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    # 4 epochs, the body frozen for 3; stopped during epoch 3, so the checkpoint is epoch 2's: the
    # resumed run must freeze again for epoch 3 (its BatchNorm layers back in eval mode, with
    # train_bn=false), then unfreeze for epoch 4.
    from test_run_lifecycle import interrupt_during_epoch, without_timings  # one SIGTERM helper

    job = ["model.hidden_sizes=[32]", "regularizer=batchnorm", "trainer.epochs=4",
           "trainer.freeze_epochs=3", "trainer.train_bn=false"]
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
    from regbench.models import MODELS, ModelOptions, build_model

    for name in MODELS.names():
        settings = compose_settings([f"model={name}"])
        model = build_model(settings.model, (1, 8, 8), 10, ModelOptions())
        assert finetune.split_body(model, 1) is model.body, name
        assert all(n.split(".")[0] in ("body", "head") for n, _ in model.named_parameters()), name


# --- experiment=pets_finetune -------------------------------------------------------------------

# torchvision's cache file name of ResNet34_Weights.IMAGENET1K_V1.
RESNET34_FILE = "resnet34-b627a593.pth"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_pets(root: Path, per_split: dict[str, int]) -> None:
    """Pets' on-disk layout (oxford-iiit-pet/images/*.jpg, annotations/{trainval,test}.txt) with 3
    breeds of solid-colour images of varied sizes."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 3, 1)]
    number = 0
    for split, count in per_split.items():
        lines = []
        for breed, class_id, species in breeds:
            for _ in range(count):
                number += 1
                colour = (60 * class_id, 255 - 60 * class_id, (37 * number) % 256)
                size = (40 + 3 * (number % 5), 36 + 4 * (number % 3))
                Image.new("RGB", size, colour).save(base / "images" / f"{breed}_{number}.jpg")
                lines.append(f"{breed}_{number} {class_id} {species} {class_id}")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def imagenet_resnet34(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ResNet-34 state dict (random, seeded) under torchvision's cache file name in a temporary
    $TORCH_HOME, read through the real weights API; a download would fail as offline."""
    import torchvision

    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # no set_dir() left over from elsewhere

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(34)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), folder / RESNET34_FILE)


def test_the_pets_preset_composes_and_trains_a_step_on_synthetic_pets_files(tmp_path,
                                                                            imagenet_resnet34):
    write_pets(tmp_path / "data", {"trainval": 4, "test": 2})
    settings = compose_settings([
        "experiment=pets_finetune", "regularizer=[augmentation,l2,label_smoothing]", "seed=1",
        f"dataset.root={tmp_path / 'data'}", "dataset.download=false", "model.download=false",
        "dataset.image_size=32", "dataset.val_size=3", "trainer.num_threads=1",
        "trainer.progress=false", "evaluation.figures=false"])
    # fastai v1's Pets recipe, as the preset sets it.
    trainer, optimizer = settings.trainer, settings.optimizer
    assert (trainer.epochs, trainer.freeze_epochs, trainer.train_bn, trainer.batch_size) == \
        (4, 4, True, 64)
    assert (optimizer.name.value, optimizer.lr, optimizer.body_lr_factor, optimizer.betas,
            optimizer.schedule.value) == ("adamw", 3e-3, 0.1, [0.9, 0.99], "onecycle")
    assert (settings.model.name, settings.model.weights, settings.model.head.value) == \
        ("resnet34", "imagenet", "fastai")
    assert settings.regularizer["l2"].decoupled and settings.regularizer["l2"].coef == 1e-2
    assert settings.regularizer["label_smoothing"].epsilon == 0.1

    run = Run.build(settings)
    assert (run.data.mean, run.data.std) == (IMAGENET_MEAN, IMAGENET_STD)
    conv1, head = run.model.body.resnet.conv1.weight, list(run.model.head.parameters())
    before = conv1.detach().clone(), [p.detach().clone() for p in head]
    run.train_epoch(0)  # 9 training images: one step
    assert torch.equal(conv1, before[0])  # the pretrained body stays as loaded
    assert all(not torch.equal(p, q) for p, q in zip(head, before[1]) if p.requires_grad)
    # The body's BatchNorm parameters train at a tenth of the head's lr.
    bn1 = run.model.body.resnet.bn1.weight
    (bn1_lr,) = [group["lr"] for group in run.optimizer.param_groups
                 if any(p is bn1 for p in group["params"])]
    assert bn1_lr == pytest.approx(0.1 * run.optimizer.param_groups[0]["lr"])
