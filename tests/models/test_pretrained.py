"""Pretrained weights of the torchvision ResNets (models/pretrained.py, torchvision_resnet.py):
model.weights=imagenet through torchvision's real weights API from a temporary torch.hub cache (no
network), the one-line refusals offline, one download for jobs starting together, local files and
the old weights_path, ResNet-50's layout, the weights' input statistics in a real run, and what
regularizers may do to a pretrained body."""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config, train_in_process
from regbench.cli.command_line import check_command_line
from regbench.config import ConfigError
from regbench.models import ModelOptions, build_model
from regbench.models import pretrained as pretrained_module
from regbench.models.torchvision_resnet import ResNet18Config, ResNet34Config, ResNet50Config

# torchvision's cache file names of the ImageNet weights (the URLs' base names).
RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET34_FILE = "resnet34-b627a593.pth"
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $TORCH_HOME (torch.hub reads it when called); any download fails as offline."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # no set_dir() left over from elsewhere

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def checkpoints(home: Path) -> Path:
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def resnet34_reference() -> nn.Module:
    """torchvision's resnet34 with random (seeded) weights, standing in for the ImageNet ones."""
    torch.manual_seed(34)
    reference = torchvision.models.resnet34(weights=None).eval()
    with torch.no_grad():  # BN statistics other than 0 and 1, so loading them shows
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return reference


def pooled_features(reference: nn.Module, images: torch.Tensor) -> torch.Tensor:
    trunk = nn.Sequential(*list(reference.children())[:-1])  # everything before fc
    return trunk(images).flatten(1)


def test_imagenet_weights_load_through_torchvisions_weights_api_from_the_hub_cache(
        torch_home, resnet34_reference, monkeypatch):
    torch.save(resnet34_reference.state_dict(), checkpoints(torch_home) / RESNET34_FILE)
    calls = []
    real = torchvision.models._api.load_state_dict_from_url
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url",
                        lambda url, **kwargs: calls.append((url, kwargs)) or real(url, **kwargs))
    model = build_model(ResNet34Config(weights="imagenet"), (3, 32, 32), 10, ModelOptions()).eval()
    assert calls == [(f"https://download.pytorch.org/models/{RESNET34_FILE}",
                      {"progress": False, "check_hash": True, "weights_only": True})]
    with torch.no_grad():
        assert torch.allclose(model.forward_features(IMAGES),
                              pooled_features(resnet34_reference, IMAGES), atol=1e-5)
        # The new 10-class head on the same features gives the same logits as torchvision's
        # network with that head as its fc.
        reference = copy.deepcopy(resnet34_reference)
        reference.fc = model.head
        assert torch.allclose(model(IMAGES), reference(IMAGES), atol=1e-5)
    assert model.input_statistics == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_a_missing_file_offline_is_refused_in_one_line_naming_the_file_url_and_folder(torch_home):
    with pytest.raises(ConfigError) as error:
        build_model(ResNet34Config(weights="imagenet"), (3, 32, 32), 10, ModelOptions())
    folder = torch_home / "hub" / "checkpoints"
    assert one_line(error) == (
        f"model.weights=imagenet: {RESNET34_FILE} is not in {folder} and the download failed "
        f"(<urlopen error [Errno -3] Temporary failure in name resolution>); download it from "
        f"https://download.pytorch.org/models/{RESNET34_FILE} into that folder (or connect to the "
        f"internet)")
    assert os.listdir(folder) == []  # no lock file, no partial download left behind
    # model.download=false: refused when the settings are read, before any data is loaded.
    with pytest.raises(ConfigError, match=f"{RESNET34_FILE} is not in .* and model.download=false; "
                                          f"download it from .* into that folder") as error:
        ResNet34Config(weights="imagenet", download=False)
    one_line(error)


def test_a_damaged_cached_file_is_refused_in_one_line(torch_home):
    (checkpoints(torch_home) / RESNET18_FILE).write_bytes(b"<html>captive portal</html>")
    with pytest.raises(ConfigError, match=f"{RESNET18_FILE} is not a readable state dict .*; "
                                          f"delete it to download it again") as error:
        build_model(ResNet18Config(weights="imagenet"), (3, 32, 32), 10, ModelOptions())
    one_line(error)


def test_jobs_starting_together_download_the_file_once(torch_home, monkeypatch):
    downloads = []

    def slow_download(url, dst, hash_prefix=None, progress=True):
        # As torch.hub does: a temporary file, renamed when complete.
        downloads.append((url, hash_prefix))
        time.sleep(0.3)
        torch.save({"conv1.weight": torch.ones(1)}, f"{dst}.partial")
        os.replace(f"{dst}.partial", dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", slow_download)
    results = []
    jobs = [threading.Thread(target=lambda: results.append(
        pretrained_module.imagenet_state_dict("resnet18", download=True))) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert downloads == [(f"https://download.pytorch.org/models/{RESNET18_FILE}", "f37072fd")]
    assert len(results) == 3 and all(torch.equal(r["conv1.weight"], torch.ones(1)) for r in results)
    assert os.listdir(torch_home / "hub" / "checkpoints") == [RESNET18_FILE]


def test_each_resnet_gets_torchvisions_default_imagenet_weights():
    weights = {name: pretrained_module.weights_enum(name) for name in ("resnet18", "resnet34",
                                                                      "resnet50")}
    assert weights == {"resnet18": torchvision.models.ResNet18_Weights.DEFAULT,
                       "resnet34": torchvision.models.ResNet34_Weights.DEFAULT,
                       "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2}
    assert weights["resnet50"].url.endswith("/resnet50-11ad3fa6.pth")


@pytest.mark.parametrize("value", ["imagenet21k", "IMAGENET", "resnet34"])
def test_unknown_weights_names_are_refused_in_one_line(value):
    with pytest.raises(ConfigError) as error:
        OmegaConf.to_object(compose_config(["model=resnet34", f"model.weights={value}"]))
    assert one_line(error) == (
        f"model.weights={value!r} is not allowed: null (random initialization), imagenet "
        f"(torchvision's ImageNet weights) or the path of a state-dict file in torchvision's "
        f"format (e.g. ./resnet34.pth)")


def test_weights_for_a_model_without_them_are_refused_in_one_line():
    with pytest.raises(ConfigCompositionException):
        compose_config(["model=mlp", "model.weights=imagenet"])
    with pytest.raises(ConfigError) as error:
        check_command_line(["model=mlp", "model.weights=imagenet"])
    assert "Key 'weights' not in 'MLPConfig'" in one_line(error)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[Path, nn.Module]:
    torch.manual_seed(18)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


def test_a_local_file_loads_as_model_weights_and_weights_path_is_its_deprecated_alias(
        resnet18_file, caplog):
    path, reference = resnet18_file
    new = build_model(ResNet18Config(weights=str(path)), (3, 32, 32), 10, ModelOptions()).eval()
    with caplog.at_level(logging.WARNING, logger="regbench"):
        old = build_model(ResNet18Config(weights_path=str(path)), (3, 32, 32), 10,
                          ModelOptions()).eval()
    assert [r.getMessage() for r in caplog.records] == [
        f"model.weights_path is deprecated: read as model.weights={path} (its new name)"]
    with torch.no_grad():
        expected = pooled_features(reference, IMAGES)
        assert torch.allclose(new.forward_features(IMAGES), expected, atol=1e-5)
        assert torch.allclose(old.forward_features(IMAGES), expected, atol=1e-5)
    assert new.input_statistics == old.input_statistics == (
        [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with pytest.raises(ConfigError, match="model.weights_path='.*' is not allowed: null when "
                                          "model.weights is set") as error:
        ResNet18Config(weights=str(path), weights_path=str(path))
    one_line(error)


def test_a_gray_model_sums_the_rgb_filters_and_normalizes_with_the_mean_statistics(resnet18_file):
    path, reference = resnet18_file
    gray = build_model(ResNet18Config(weights=str(path)), (1, 32, 32), 10, ModelOptions()).eval()
    assert torch.equal(gray.body.resnet.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    # (0.485 + 0.456 + 0.406) / 3 and (0.229 + 0.224 + 0.225) / 3
    assert gray.input_statistics == ([0.449], [0.226])
    # With one mean and std on all three channels the summed filters are exact: the gray network
    # on (x - m) / s equals the RGB network on the same normalized image in all three channels.
    image = torch.rand(2, 1, 32, 32)
    normalized = (image - 0.449) / 0.226
    with torch.no_grad():
        assert torch.allclose(gray.forward_features(normalized),
                              pooled_features(reference, normalized.expand(-1, 3, -1, -1)),
                              atol=1e-4)


def test_resnet50_with_places_for_dropout_and_stochastic_depth_is_torchvisions():
    reference = torchvision.models.resnet50(weights=None)
    options = ModelOptions(dropout=lambda site: nn.Dropout2d(0.1) if site == "conv" else None,
                           dropout_placement="before_bn", stochastic_depth_survival=0.5)
    model = build_model(ResNet50Config(), (3, 64, 64), 1000, options)
    ours = {key.removeprefix("body.resnet.").replace("head.", "fc."): value.shape
            for key, value in model.state_dict().items()}
    assert ours == {key: value.shape for key, value in reference.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    # 16 Bottlenecks, each with a dropout and a stochastic depth layer; the last block drops its
    # branch with probability 1 - 0.5, block l of 16 with l / 16 of that.
    blocks = [m for m in model.body.resnet.modules() if hasattr(m, "stochastic_depth")]
    assert len(blocks) == 16 and all(isinstance(b.dropout, nn.Dropout2d) for b in blocks)
    assert blocks[-1].stochastic_depth.p == 0.5 and blocks[0].stochastic_depth.p == 0.5 / 16
    # A forward pass goes through every block's places once.
    called = []
    for block in blocks:
        for place in (block.dropout, block.stochastic_depth):
            place.register_forward_hook(lambda module, i, o: called.append(module))
    with torch.no_grad():
        model(IMAGES)
    assert len(called) == 32 and len({id(module) for module in called}) == 32
    # In eval mode the places are identities: the same output as torchvision's network.
    model.eval()
    reference.load_state_dict({k.removeprefix("body.resnet.").replace("head.", "fc."): v
                               for k, v in model.state_dict().items()})
    with torch.no_grad():
        assert torch.allclose(model(IMAGES), reference.eval()(IMAGES), atol=1e-4)


def test_a_normalization_regularizer_may_not_change_the_pretrained_batchnorm(resnet18_file):
    path, reference = resnet18_file
    other_eps = ModelOptions(norm=lambda width, kind: nn.BatchNorm2d(width, eps=1e-3))
    with pytest.raises(ConfigError) as error:
        build_model(ResNet18Config(weights=str(path)), (3, 32, 32), 10, other_eps)
    assert one_line(error) == (
        f"regularizer.batchnorm.eps=0.001 is not allowed with model.weights={path}: the pretrained "
        f"BatchNorm layers were trained with eps=1e-05 (keep the default)")
    group_norm = ModelOptions(norm=lambda width, kind: nn.GroupNorm(8, width))
    with pytest.raises(ConfigError, match="replaces the pretrained BatchNorm2d layers with "
                                          "GroupNorm"):
        build_model(ResNet18Config(weights=str(path)), (3, 32, 32), 10, group_norm)
    # Its momentum only sets how fast the loaded statistics follow the new data: honoured.
    slow = ModelOptions(norm=lambda width, kind: nn.BatchNorm2d(width, momentum=0.01))
    model = build_model(ResNet18Config(weights=str(path)), (3, 32, 32), 10, slow)
    assert model.body.resnet.bn1.momentum == 0.01
    assert torch.equal(model.body.resnet.bn1.running_var, reference.bn1.running_var)


def test_the_log_says_what_the_regularizers_do_to_a_pretrained_body(resnet18_file, caplog):
    path, _ = resnet18_file
    layers = {"conv": lambda: nn.Dropout2d(0.1), "linear": lambda: nn.Dropout(0.5)}
    options = ModelOptions(dropout=lambda site: layers[site]() if site in layers else None,
                           dropout_placement="before_bn", stochastic_depth_survival=0.8)
    with caplog.at_level(logging.INFO, logger="regbench.models"):
        build_model(ResNet18Config(weights=str(path)), (3, 32, 32), 10, options)
    assert caplog.records[-1].getMessage() == (
        f"model.weights={path}: the body starts from the loaded weights (its 20 BatchNorm layers "
        f"with their loaded statistics, momentum 0.1 while they train); the regularizers add 8 "
        f"dropout layers and stochastic depth on 8 residual blocks to it, acting in training only "
        f"(no parameters: the loaded network is unchanged at test time); the head: linear, 10 "
        f"classes, new (random weights), after Dropout on the pooled features")


def test_a_run_from_imagenet_weights_normalizes_with_their_statistics(
        torch_home, tmp_path, caplog):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(),
               checkpoints(torch_home) / RESNET18_FILE)
    with caplog.at_level(logging.INFO, logger="regbench"):
        metrics = train_in_process(tmp_path / "run", [
            "model=resnet18", "model.weights=imagenet", "trainer.epochs=1",
            "dataset.train_size=32", "trainer.batch_size=32", "trainer.checkpoint=false",
            "evaluation.calibrators=[]"])
    assert metrics["status"] == "completed"
    lines = [r.getMessage() for r in caplog.records]
    assert ("inputs normalized with the pretrained weights' statistics: mean [0.449], std [0.226] "
            "(instead of the dataset's [0.305], [0.376])") in lines
