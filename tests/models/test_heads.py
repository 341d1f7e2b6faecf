"""model.head=fastai (models/heads.py): fastai's create_head layer by layer, its concatenated
pooling by hand, its start, where regularizers put their layers in it, and a short real run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import train_in_process
from regbench.cli.command_line import check_command_line
from regbench.config import ConfigError
from regbench.models import ModelOptions, build_model
from regbench.models.heads import AdaptiveConcatPool2d, HeadKind
from regbench.models.layers import GaussianDropout, WeightedChannelDropout
from regbench.models.torchvision_resnet import ResNet18Config, ResNet50Config


def fastai_model(options: ModelOptions | None = None, config=ResNet18Config, classes: int = 37,
                 shape=(3, 32, 32)) -> nn.Module:
    return build_model(config(head=HeadKind.fastai), shape, classes, options or ModelOptions())


def layer_summary(head: nn.Sequential) -> list[tuple]:
    summary = []
    for layer in head:
        if isinstance(layer, nn.BatchNorm1d):
            summary.append(("BatchNorm1d", layer.num_features))
        elif isinstance(layer, nn.Dropout):
            summary.append(("Dropout", layer.p))
        elif isinstance(layer, nn.Linear):
            biased = layer.bias is not None
            summary.append(("Linear", layer.in_features, layer.out_features, biased))
        else:
            summary.append((type(layer).__name__,))
    return summary


@pytest.mark.parametrize("config,features", [(ResNet18Config, 512), (ResNet50Config, 2048)])
def test_the_fastai_head_is_create_heads_layers_on_concatenated_pooling(config, features):
    model = fastai_model(config=config)
    assert isinstance(model.body.resnet.avgpool, AdaptiveConcatPool2d)
    assert model.num_features == 2 * features
    assert layer_summary(model.head) == [
        ("BatchNorm1d", 2 * features), ("Dropout", 0.25), ("Linear", 2 * features, 512, False),
        ("ReLU",), ("BatchNorm1d", 512), ("Dropout", 0.5), ("Linear", 512, 37, False)]
    # Every layer with parameters that a pretrained body does not have sits in the head.
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"body", "head"}
    assert not any(isinstance(m, nn.Linear) for m in model.body.modules())


def test_concatenated_pooling_is_the_max_then_the_mean_of_each_channel():
    maps = torch.tensor([[[[1.0, 5.0], [3.0, -1.0]], [[0.0, 0.0], [2.0, 2.0]]]])  # 1 x 2 x 2 x 2
    # By hand: channel 0 max 5, mean 2; channel 1 max 2, mean 1; fastai's order is max first.
    assert AdaptiveConcatPool2d()(maps).flatten().tolist() == [5.0, 2.0, 2.0, 1.0]
    model = fastai_model().eval()
    images = torch.randn(2, 3, 64, 64)
    layer4 = {}
    model.body.resnet.layer4.register_forward_hook(lambda m, i, output: layer4.update(x=output))
    with torch.no_grad():
        features = model.forward_features(images)
    expected = torch.cat([layer4["x"].amax(dim=(2, 3)), layer4["x"].mean(dim=(2, 3))], dim=1)
    assert features.shape == (2, 1024) and torch.allclose(features, expected, atol=1e-6)


def test_the_fastai_head_starts_as_fastai_initializes_it():
    torch.manual_seed(0)
    head = fastai_model(config=ResNet50Config).head
    for norm in (head.norm1, head.norm2):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 1e-3)
    # He-normal with fan_in: std sqrt(2 / fan_in); 2M weights pin the std within 1 %.
    assert head.hidden.weight.std().item() == pytest.approx(math.sqrt(2 / 4096), rel=0.01)
    assert head.classifier.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.1)


def test_the_regularizers_layers_go_into_the_fastai_head():
    made = []

    def gaussian(site):
        made.append(site)
        return GaussianDropout(0.3) if site == "linear" else None

    # after_bn: only the dropout before the classifier, whose output feeds no normalization.
    after = fastai_model(ModelOptions(dropout=gaussian))
    assert isinstance(after.head.dropout2, GaussianDropout)
    assert type(after.head.dropout1) is nn.Dropout and after.head.dropout1.p == 0.25
    assert isinstance(after.body.dropout, nn.Identity)  # no second dropout on the pooled features
    before = fastai_model(ModelOptions(dropout=gaussian, dropout_placement="before_bn"))
    assert isinstance(before.head.dropout1, GaussianDropout)
    assert isinstance(before.head.dropout2, GaussianDropout)
    # A normalization regularizer's factory makes the head's BatchNorm1d layers.
    slow = fastai_model(ModelOptions(norm=lambda width, kind: (
        nn.BatchNorm2d if kind == "conv" else nn.BatchNorm1d)(width, momentum=0.01)))
    assert slow.head.norm1.momentum == slow.head.norm2.momentum == 0.01
    assert slow.head.norm1.bias[0].item() == pytest.approx(1e-3)
    # Weighted channel dropout before the concatenated pooling feeds the head's first
    # BatchNorm1d, so only placement=before_bn puts it there.
    wcd = lambda site: WeightedChannelDropout(0.5, 0.5) if site == "last_conv" else None  # noqa: E731
    assert isinstance(fastai_model(ModelOptions(dropout=wcd)).body.resnet.avgpool,
                      AdaptiveConcatPool2d)
    placed = fastai_model(ModelOptions(dropout=wcd, dropout_placement="before_bn"))
    assert isinstance(placed.body.resnet.avgpool[0], WeightedChannelDropout)


def test_an_unknown_head_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        check_command_line(["model=resnet34", "model.head=fast"])
    assert str(error.value) == ("Error merging override model.head=fast Invalid value 'fast', "
                                "expected one of [linear, fastai]")


def test_a_digits_run_with_the_fastai_head_and_dropout_trains(tmp_path):
    metrics = train_in_process(tmp_path / "run", [
        "model=resnet18", "model.head=fastai", "regularizer=dropout", "trainer.epochs=1",
        "dataset.train_size=64", "trainer.batch_size=32", "trainer.checkpoint=false",
        "evaluation.calibrators=[]"])
    assert metrics["status"] == "completed" and math.isfinite(metrics["test/nll"])
