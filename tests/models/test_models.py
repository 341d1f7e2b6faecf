"""The models: the Classifier contract on every input size, where ModelOptions put normalization and
dropout, the papers' sizes (LeNet-5 and ResNet parameter counts), loading torchvision weights, and
one short training run each on the real digits data."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from torch import nn
from torchvision.models.resnet import BasicBlock

from conftest import compose_config, train_in_process
from regbench.config import ConfigError
from regbench.models import ModelOptions, build_model
from regbench.models.base import DropoutPlacement, is_weight_matrix
from regbench.models.cifar_resnet import ResNetConfig, Shortcut, ZeroPadShortcut
from regbench.models.convnet import ConvNetConfig
from regbench.models.lenet import LeNetConfig
from regbench.models.torchvision_resnet import ResNet18Config, ResNet34Config

CONFIGS = {"lenet": LeNetConfig, "convnet": ConvNetConfig, "resnet": ResNetConfig,
           "resnet18": ResNet18Config, "resnet34": ResNet34Config}
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
CASES = [(name, shape) for name in CONFIGS for shape in SHAPES] + [
    ("resnet18", (3, 64, 64)), ("resnet34", (3, 64, 64))]
BATCH = 4


def build(name: str, input_shape=(1, 8, 8), num_classes: int = 10,
          options: ModelOptions | None = None, **fields) -> nn.Module:
    return build_model(CONFIGS[name](**fields), input_shape, num_classes, options or ModelOptions())


def batch_norm(width: int, kind: str) -> nn.Module:
    return nn.BatchNorm2d(width) if kind == "conv" else nn.BatchNorm1d(width)


def dropout(kind: str) -> nn.Module:
    # "last_conv" (weighted channel dropout's site) gets nothing, as every kind but that one does.
    return {"linear": nn.Dropout(0.5), "conv": nn.Dropout2d(0.1)}.get(kind)


def call_order(model: nn.Module, shape: tuple) -> str:
    """Type names of the leaf modules in the order a forward pass calls them (Identity left out)."""
    called: list[str] = []
    hooks = [module.register_forward_hook(lambda m, i, o: called.append(type(m).__name__))
             for module in model.modules()
             if not list(module.children()) and not isinstance(module, nn.Identity)]
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, *shape))
    for hook in hooks:
        hook.remove()
    return " ".join(called)


def count(model: nn.Module, kind: type) -> int:
    return sum(type(module) is kind for module in model.modules())


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the Classifier contract -------------------------------------------------------------------
def expected_feature_shapes(name: str, shape: tuple) -> dict[str, tuple]:
    """Hand-computed sizes of every feature layer (without the batch dimension)."""
    side = shape[1]
    if name == "lenet":  # "same" padding where the map is smaller than LeNet-5's (32, then 14)
        conv = {8: 16 * 2 * 2, 28: 16 * 5 * 5, 32: 16 * 5 * 5}[side]
        return {"penultimate": (84,), "penultimate_preact": (84,), "conv_features": (conv,)}
    if name == "convnet":  # "same" convolutions, two 2x2 pools: 64 x side/4 x side/4
        conv = {8: 64 * 2 * 2, 28: 64 * 7 * 7, 32: 64 * 8 * 8}[side]
        return {"penultimate": (1024,), "penultimate_preact": (1024,), "conv_features": (conv,)}
    if name == "resnet":  # stages 2 and 3 halve the map, rounding up
        return {"penultimate": (64,), **{
            f"stage{k}": (16 * 2 ** (k - 1), math.ceil(side / 2 ** (k - 1)),
                          math.ceil(side / 2 ** (k - 1))) for k in (1, 2, 3)}}
    # torchvision: the stem quarters the image, layers 2-4 halve it, rounding up
    return {"penultimate": (512,), **{
        f"layer{k}": (64 * 2 ** (k - 1), math.ceil(side / 2 ** (k + 1)),
                      math.ceil(side / 2 ** (k + 1))) for k in (1, 2, 3, 4)}}


@pytest.mark.parametrize("name,shape", CASES)
def test_classifier_contract_on_every_input_size(name, shape):
    model = build(name, shape, num_classes=7).eval()
    images = torch.randn(BATCH, *shape)
    seen: dict[str, tuple] = {}

    def record(layer_name: str):
        def hook(module, inputs, output) -> None:
            seen[layer_name] = tuple(output.shape)
        return hook

    for layer_name, layer in model.feature_layers().items():
        layer.register_forward_hook(record(layer_name))
    with torch.no_grad():
        logits = model(images)
        features = model.forward_features(images)
        assert torch.allclose(model.forward_head(features), logits)
    assert logits.shape == (BATCH, 7)
    assert features.shape == (BATCH, model.num_features)
    assert seen == {layer: (BATCH, *size) for layer, size in expected_feature_shapes(name, shape).items()}


@pytest.mark.parametrize("name", ["lenet", "convnet"])
def test_penultimate_preact_is_the_hidden_layer_before_its_relu(name):
    model = build(name, (1, 28, 28)).eval()
    stored = []

    def store(module, inputs, output) -> None:
        # A copy: the in-place ReLU that follows would overwrite the layer's output.
        stored.append(output.clone())

    model.feature_layers()["penultimate_preact"].register_forward_hook(store)
    with torch.no_grad():
        features = model.forward_features(torch.randn(BATCH, 1, 28, 28))
    assert (stored[0] < 0).any()
    assert torch.equal(torch.relu(stored[0]), features)


def test_lenet_on_mnist_sized_input_is_lenet5():
    model = build("lenet", (1, 28, 28))
    # LeNet-5 with a fully connected C3 has 61,706 parameters; conv1 pads 28x28 to LeNet's 32x32.
    assert parameters(model) == 61_706
    assert model.body.conv1[0].padding == (2, 2) and model.body.conv2[0].padding == (0, 0)
    assert build("lenet", (3, 32, 32)).body.conv1[0].padding == (0, 0)


@pytest.mark.parametrize("name", ["lenet", "convnet"])
def test_too_small_images_are_refused(name):
    with pytest.raises(ConfigError, match=f"model={name} needs images of at least 4x4"):
        build(name, (1, 3, 3))


# --- where ModelOptions put normalization and dropout ------------------------------------------
CONV = "Conv2d ReLU MaxPool2d"
LENET_CALLS = {
    "plain": f"{CONV} {CONV} Flatten Linear ReLU Linear ReLU Linear",
    "dropout": f"{CONV} Dropout2d {CONV} Dropout2d Flatten Linear ReLU Dropout Linear ReLU Dropout Linear",
    "after_bn": "Conv2d BatchNorm2d ReLU MaxPool2d Conv2d BatchNorm2d ReLU MaxPool2d Flatten "
                "Linear BatchNorm1d ReLU Linear BatchNorm1d ReLU Dropout Linear",
    "before_bn": "Conv2d BatchNorm2d ReLU MaxPool2d Dropout2d Conv2d BatchNorm2d ReLU MaxPool2d "
                 "Dropout2d Flatten Linear BatchNorm1d ReLU Dropout Linear BatchNorm1d ReLU Dropout "
                 "Linear",
}
CONVNET_CALLS = {
    "plain": f"{CONV} {CONV} Flatten Linear ReLU Linear",
    "dropout": f"{CONV} Dropout2d {CONV} Dropout2d Flatten Linear ReLU Dropout Linear",
    "after_bn": "Conv2d BatchNorm2d ReLU MaxPool2d Conv2d BatchNorm2d ReLU MaxPool2d Flatten "
                "Linear BatchNorm1d ReLU Dropout Linear",
    "before_bn": "Conv2d BatchNorm2d ReLU MaxPool2d Dropout2d Conv2d BatchNorm2d ReLU MaxPool2d "
                 "Dropout2d Flatten Linear BatchNorm1d ReLU Dropout Linear",
}
OPTIONS = {
    "plain": dict(),
    "dropout": dict(dropout=dropout),
    "after_bn": dict(norm=batch_norm, dropout=dropout, dropout_placement=DropoutPlacement.after_bn),
    "before_bn": dict(norm=batch_norm, dropout=dropout, dropout_placement=DropoutPlacement.before_bn),
}


@pytest.mark.parametrize("name,calls", [("lenet", LENET_CALLS), ("convnet", CONVNET_CALLS)])
@pytest.mark.parametrize("setting", list(OPTIONS))
def test_small_convnets_place_norm_and_dropout_as_options_say(name, calls, setting):
    model = build(name, (1, 28, 28), options=ModelOptions(**OPTIONS[setting]))
    assert call_order(model, (1, 28, 28)) == calls[setting]
    # Layers followed by a normalization have no bias; the head always has one.
    layers = [m for m in model.body.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all((m.bias is None) == ("bn" in setting) for m in layers)
    assert model.head.bias is not None


def test_input_dropout_comes_first():
    model = build("lenet", options=ModelOptions(input_dropout=lambda: nn.Dropout(0.2)))
    assert call_order(model, (1, 8, 8)).startswith("Dropout Conv2d")


@pytest.mark.parametrize("name,blocks,norms", [("resnet", 9, 19), ("resnet18", 8, 20)])
def test_resnets_use_batchnorm_or_the_regularizers_norm(name, blocks, norms):
    plain = build(name)
    assert count(plain, nn.BatchNorm2d) == norms and count(plain, nn.Dropout) == 0
    assert all(m.momentum == 0.1 for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    slow = build(name, options=ModelOptions(norm=lambda width, kind: nn.BatchNorm2d(width, momentum=0.01)))
    assert count(slow, nn.BatchNorm2d) == norms
    assert all(m.momentum == 0.01 for m in slow.modules() if isinstance(m, nn.BatchNorm2d))
    assert sum(isinstance(m, BasicBlock) for m in slow.modules()) == blocks


# torchvision's ResNet flattens with torch.flatten, not a module.
@pytest.mark.parametrize("name,blocks,tail", [("resnet", 9, "AdaptiveAvgPool2d Flatten Dropout Linear"),
                                              ("resnet18", 8, "AdaptiveAvgPool2d Dropout Linear")])
@pytest.mark.parametrize("placement", ["after_bn", "before_bn"])
def test_resnet_dropout_goes_after_the_pooling_and_between_convs_only_before_bn(name, blocks, tail,
                                                                                  placement):
    for norm in (None, batch_norm):  # ResNets have BatchNorm either way
        model = build(name, options=ModelOptions(norm=norm, dropout=dropout,
                                                 dropout_placement=DropoutPlacement(placement)))
        assert count(model, nn.Dropout) == 1
        assert count(model, nn.Dropout2d) == (blocks if placement == "before_bn" else 0)
        assert call_order(model, (1, 8, 8)).endswith(tail)
        first_block = next(m for m in model.modules() if isinstance(m, BasicBlock))
        middle = " Dropout2d " if placement == "before_bn" else " "
        assert call_order(first_block, (first_block.conv1.in_channels, 4, 4)) == (
            f"Conv2d BatchNorm2d ReLU{middle}Conv2d BatchNorm2d ReLU")


# --- ResNet sizes ------------------------------------------------------------------------------
# He et al. 2016, Table 6 (CIFAR-10): depth -> parameters in millions, option A shortcuts.
HE_PARAMETERS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}


@pytest.mark.parametrize("depth,millions", HE_PARAMETERS.items())
def test_cifar_resnet_depth_blocks_and_parameters_match_he_et_al(depth, millions):
    model = build("resnet", (3, 32, 32), depth=depth)
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 3 * (depth - 2) // 6
    assert count(model, nn.Conv2d) + count(model, nn.Linear) == depth  # weighted layers
    assert round(parameters(model) / 1e6, 1 if depth == 110 else 2) == millions


def test_resnet_width_and_projection_shortcut():
    wide = build("resnet", (3, 32, 32), width=2)
    assert wide.num_features == 128
    projection = build("resnet", (3, 32, 32), shortcut=Shortcut.projection)
    # Option B adds a 1x1 conv + BN where stages 2 and 3 begin.
    assert count(projection, nn.Conv2d) == 21 and count(projection, ZeroPadShortcut) == 0
    assert count(build("resnet", (3, 32, 32)), ZeroPadShortcut) == 2


def test_zero_pad_shortcut_keeps_every_second_pixel_and_adds_zero_channels():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = ZeroPadShortcut(stride=2, extra_channels=2)(x)
    assert out.shape == (1, 4, 2, 2)
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    assert torch.equal(out[0, 1], torch.tensor([[16.0, 18.0], [24.0, 26.0]]))
    assert torch.equal(out[0, 2:], torch.zeros(2, 2, 2))


@pytest.mark.parametrize("name", ["resnet", "resnet18"])
def test_init_follows_torchvision_and_zero_init_residual_is_optional(name):
    default = build(name)
    assert all(torch.equal(m.bn2.weight, torch.ones_like(m.bn2.weight))
               for m in default.modules() if isinstance(m, BasicBlock))
    zeroed = build(name, zero_init_residual=True)
    assert all(not m.bn2.weight.any() for m in zeroed.modules() if isinstance(m, BasicBlock))
    conv = next(m for m in default.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * 9)).
    expected = math.sqrt(2 / (conv.out_channels * 9))
    assert abs(conv.weight.std().item() - expected) < 0.25 * expected


@pytest.mark.parametrize("depth", [21, 2])
def test_bad_resnet_depth_is_refused(depth):
    with pytest.raises(ConfigError, match="model.depth"):
        OmegaConf.to_object(compose_config(["model=resnet", f"model.depth={depth}"]))


@pytest.mark.parametrize("name,factory", [("resnet18", torchvision.models.resnet18),
                                          ("resnet34", torchvision.models.resnet34)])
def test_torchvision_resnets_are_torchvisions(name, factory):
    reference = factory(weights=None, num_classes=1000)
    model = build(name, (3, 224, 224), num_classes=1000)
    assert parameters(model) == parameters(reference)  # 11,689,512 and 21,797,672
    ours = {k.removeprefix("body.resnet.").replace("head.", "fc.") for k in model.state_dict()}
    assert ours == set(reference.state_dict())
    # Grayscale images get a 1-channel first convolution.
    assert build(name, (1, 28, 28)).body.resnet.conv1.in_channels == 1


# --- weights_path ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None, num_classes=1000).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


def test_weights_path_loads_a_torchvision_state_dict(resnet18_file):
    path, reference = resnet18_file
    same_classes = build("resnet18", (3, 32, 32), 1000, weights_path=str(path)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(same_classes(images), reference(images), atol=1e-5)
    other_classes = build("resnet18", (3, 32, 32), 10, weights_path=str(path))
    assert other_classes.head.weight.shape == (10, 512)
    assert torch.equal(other_classes.body.resnet.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    gray = build("resnet18", (1, 28, 28), 10, weights_path=str(path))
    assert torch.allclose(gray.body.resnet.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))


def test_weights_path_refuses_missing_garbled_and_mismatched_files(resnet18_file, tmp_path):
    path, _ = resnet18_file
    garbled = tmp_path / "garbled.pth"
    garbled.write_text("not a checkpoint")
    cases = [(tmp_path / "missing.pth", "resnet18", "no such file"),
             (garbled, "resnet18", "not a readable state dict"),
             (path, "resnet34", "does not fit model=resnet34")]
    for file, name, reason in cases:
        with pytest.raises(ConfigError, match=reason) as error:
            build(name, (3, 32, 32), 10, weights_path=str(file))
        assert str(error.value).startswith("model.weights_path=") and "\n" not in str(error.value)


# --- configs and real training runs ------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_model_config_composes_and_refuses_unknown_keys(name):
    settings = OmegaConf.to_object(compose_config([f"model={name}"]))
    assert isinstance(settings.model, CONFIGS[name]) and settings.model.name == name
    with pytest.raises(ConfigCompositionException):
        compose_config([f"model={name}", "model.nonexistent=1"])


# The small convnets learn the digits in 3 short epochs; the ResNets run one epoch on 64 images.
LEARN = ["trainer.epochs=3", "trainer.batch_size=16", "trainer.checkpoint=false"]
TINY = ["trainer.epochs=1", "dataset.train_size=64", "trainer.batch_size=32",
        "trainer.checkpoint=false"]
RUNS = {"lenet": LEARN, "convnet": LEARN, "resnet": TINY, "resnet18": TINY, "resnet34": TINY}


@pytest.mark.parametrize("name", list(RUNS))
def test_training_on_digits_completes(name, tmp_path):
    metrics = train_in_process(tmp_path / "run", [f"model={name}", *RUNS[name]])
    assert metrics["status"] == "completed" and metrics["model"] == name
    assert math.isfinite(metrics["test/nll"]) and 0 <= metrics["test/acc"] <= 1
    if RUNS[name] is LEARN:
        assert metrics["test/acc"] > 0.8  # chance is 0.1


@pytest.mark.skipif(not __import__("regbench.machine", fromlist=["cpu_has_bf16"]).cpu_has_bf16(),
                    reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_a_bf16_cpu_step_has_a_finite_loss_and_keeps_fp32_parameters():
    from regbench.cli.compose import compose_settings
    from regbench.run.engine import Run
    run = Run.build(compose_settings(["model=lenet", "trainer.amp=true", "trainer.epochs=1",
                                      "trainer.num_threads=1", "trainer.progress=false"]))
    assert run.amp_dtype == torch.bfloat16
    shapes = {name: (p.shape, p.dtype) for name, p in run.model.named_parameters()}
    images, labels = next(iter(run.data.train))
    terms, logits = run.loss_terms(images, labels, epoch=0, progress=0.0)
    assert logits.dtype == torch.float32 and all(torch.isfinite(v) for v in terms.values())
    record = run.train_epoch(0)
    assert math.isfinite(record["train/loss"])
    assert {name: (p.shape, p.dtype) for name, p in run.model.named_parameters()} == shapes


@pytest.mark.parametrize("load,expected", [(0.0, 2), (0.4, 2), (0.8, 1), (2.0, 1), (7.5, 1)])
def test_automatic_threads_leave_busy_cores_alone(monkeypatch, load, expected):
    from regbench import machine
    monkeypatch.setattr(machine, "available_cores", lambda: 2)
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (load, load, load))
    assert machine.free_cores() == expected


def test_a_run_with_num_threads_0_takes_the_free_cores(monkeypatch):
    from regbench.cli.compose import compose_settings
    from regbench.run import engine
    monkeypatch.setattr(engine, "free_cores", lambda: 1)
    previous = torch.get_num_threads()
    try:
        engine.Run.build(compose_settings(["trainer.num_threads=0", "model.hidden_sizes=[8]",
                                           "trainer.progress=false"]))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_only_conv_and_linear_weights_are_weight_matrices():
    # The rule the weight penalties share (regularizers/base.py: is_penalized).
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    matrices = [name for name, p in model.named_parameters() if is_weight_matrix(name, p)]
    assert matrices == ["0.weight", "3.weight"]
