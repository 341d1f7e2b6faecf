"""DropBlock: contiguous b x b blocks from seeds where a whole block fits, the share of dropped
units against a hand computation, rescaling, the linear keep-probability schedule from the loop's
progress, placement by forward hooks on each conv model, off in eval mode, refusals, the effect on
a run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy import stats

from conftest import compose_config, read_history, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.models import build_model
from regbench.models.base import ModelOptions
from regbench.models.cifar_resnet import ResNetConfig
from regbench.regularizers import RunContext, StepOutput
from regbench.regularizers.dropblock import (
    DropBlock,
    DropBlock2d,
    DropBlockConfig,
    DropBlockHook,
    block_mask,
    drop_block,
    seed_rate,
)


def dropblock(model: str = "resnet", **settings) -> DropBlock:
    regularizer = DropBlock(DropBlockConfig(**settings))
    regularizer.setup(RunContext(dataset="digits", model=model, num_classes=10, epochs=1,
                                 optimizer="sgd"))
    return regularizer


def hooked(model: torch.nn.Module) -> dict[str, float]:
    """{module name: its DropBlock layer's share of the rate} for every hooked module."""
    return {name: hook.share for name, module in model.named_modules()
            for hook in module._forward_hooks.values() if isinstance(hook, DropBlockHook)}


def step_at(progress: float) -> StepOutput:
    empty = torch.zeros(1)
    return StepOutput(empty, empty.long(), empty, empty, torch.nn.Identity(), 0, progress)


def test_each_seed_becomes_a_contiguous_block():
    seeds = torch.zeros(1, 1, 6, 6)  # an 8 x 8 map with 3 x 3 blocks: corners at 0..5
    seeds[0, 0, 2, 3] = 1
    mask = block_mask(seeds, 3, 3)
    expected = torch.zeros(8, 8)
    expected[2:5, 3:6] = 1
    assert mask.shape == (1, 1, 8, 8) and torch.equal(mask[0, 0], expected)
    # Even and rectangular blocks too: a 2 x 4 block at the last corner (6, 4) of an 8 x 8 map.
    seeds = torch.zeros(1, 1, 7, 5)
    seeds[0, 0, 6, 4] = 1
    expected = torch.zeros(8, 8)
    expected[6:8, 4:8] = 1
    assert torch.equal(block_mask(seeds, 2, 4)[0, 0], expected)


@pytest.mark.parametrize("block_height, block_width", [(7, 7), (3, 3), (2, 4), (1, 5)])
def test_the_mask_is_the_max_pool_of_the_padded_seeds(block_height, block_width):
    # The reference's (and timm's) formulation: a stride-1 max-pool of the seeds over the block.
    torch.manual_seed(0)
    seeds = (torch.rand(4, 3, 16 - block_height + 1, 12 - block_width + 1) < 0.1).float()
    padded = F.pad(seeds, (block_width - 1, block_width - 1, block_height - 1, block_height - 1))
    pooled = F.max_pool2d(padded, (block_height, block_width), stride=1)
    assert torch.equal(block_mask(seeds, block_height, block_width), pooled)


def test_every_dropped_unit_lies_in_a_whole_dropped_block_inside_the_map():
    torch.manual_seed(0)
    out = drop_block(torch.ones(4, 8, 16, 16), drop_prob=0.3, block_size=5)
    dropped = (out == 0).float()
    assert 0 < dropped.mean() < 1
    # Opening by a 5 x 5 square leaves a union of whole blocks unchanged: the corners of the
    # fully dropped 5 x 5 windows, painted back as blocks, give the dropped units again.
    whole_blocks = -F.max_pool2d(-dropped, 5, stride=1)
    assert torch.equal(block_mask(whole_blocks, 5, 5), dropped)


def expected_drop_share(drop_prob: float, size: int, block: int) -> float:
    """By hand: unit i (of a side) is covered by the blocks with corners max(0, i - b + 1) ..
    min(i, size - b), and dropped unless none of its n_row * n_col seeds fires."""
    gamma = drop_prob * size**2 / block**2 / (size - block + 1) ** 2
    covering = torch.tensor([min(i, size - block) - max(0, i - block + 1) + 1
                             for i in range(size)], dtype=torch.float64)
    return (1 - (1 - gamma) ** (covering[:, None] * covering[None, :])).mean().item()


def test_drop_share_matches_the_hand_computation_over_many_draws():
    torch.manual_seed(0)
    assert seed_rate(0.1, 16, 16, 7, 7) == pytest.approx(0.1 * 256 / 49 / 100)
    share = expected_drop_share(0.1, 16, 7)
    assert 0.08 < share < 0.1  # overlapping blocks drop a little less than 1 - keep
    dropped = (drop_block(torch.ones(256, 16, 16, 16), 0.1, 7) == 0).double()
    per_map = dropped.mean(dim=(2, 3)).flatten()  # the maps are independent draws
    assert per_map.mean().item() == pytest.approx(share, abs=4 * per_map.std().item() / 4096**0.5)


def test_a_block_as_large_as_the_map_drops_whole_maps_with_the_drop_rate():
    # b is clipped to a 4 x 4 map: gamma = drop rate, one seed per map, the map dropped or kept.
    torch.manual_seed(0)
    dropped = drop_block(torch.ones(500, 8, 4, 4), 0.1, 7) == 0
    whole = dropped.all(dim=(2, 3))
    assert torch.equal(whole, dropped.any(dim=(2, 3)))
    assert stats.binomtest(int(whole.sum()), whole.numel(), 0.1).pvalue > 1e-3


def test_kept_units_are_rescaled_so_the_mean_is_kept():
    torch.manual_seed(0)
    out = drop_block(torch.ones(8, 4, 12, 12), 0.2, 3)
    kept = out[out != 0]
    # Every kept unit scaled by numel / kept: the tensor's mean stays exactly 1.
    assert kept.numel() < out.numel()
    assert torch.allclose(kept, torch.full_like(kept, out.numel() / kept.numel()))
    assert out.mean().item() == pytest.approx(1.0, abs=1e-5)


def test_module_drops_in_training_only_and_not_at_rate_zero():
    x = torch.randn(2, 3, 8, 8)
    layer = DropBlock2d(drop_prob=0.5, block_size=3)
    assert not torch.equal(layer(x), x)
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(DropBlock2d(drop_prob=0.0)(x), x)


def test_keep_probability_falls_linearly_from_one_and_group_3_gets_a_quarter():
    regularizer = dropblock()
    regularizer.on_model_built(build_model(ResNetConfig(), (1, 8, 8), 10, ModelOptions()))
    for progress, rate in [(0.0, 0.0), (0.5, 0.05), (1.0, 0.1)]:
        regularizer.loss_terms(step_at(progress))
        assert regularizer.drop_rate(progress) == pytest.approx(rate)
        rates = {hook.share: hook.layer.drop_prob for hook in regularizer.hooks}
        assert rates == pytest.approx({1.0: rate, 0.25: rate / 4})
    constant = dropblock(linear_schedule=False, keep_prob=0.8)
    assert [constant.drop_rate(p) for p in (0.0, 0.5)] == pytest.approx([0.2, 0.2])


def test_drop_share_at_the_scheduled_rate_on_a_hooked_layer():
    regularizer = dropblock("lenet")
    model = build_model(compose_model("lenet"), (1, 32, 32), 10, ModelOptions())
    regularizer.on_model_built(model)
    regularizer.loss_terms(step_at(0.5))  # drop rate 0.05 from the next forward on
    (hook,) = regularizer.hooks
    layer = hook.layer
    torch.manual_seed(0)
    dropped = (layer(torch.ones(512, 16, 10, 10)) == 0).double().mean(dim=(2, 3)).flatten()
    share = expected_drop_share(0.05, 10, 7)
    assert dropped.mean().item() == pytest.approx(share, abs=4 * dropped.std().item() / 8192**0.5)


def compose_model(name: str):
    return OmegaConf.to_object(compose_config([f"model={name}"])).model


RESNET_BLOCKS = {"resnet": ("body.stage2", "body.stage3", 3),
                 "resnet18": ("body.resnet.layer3", "body.resnet.layer4", 2)}


@pytest.mark.parametrize("name", ["resnet", "resnet18"])
def test_resnets_are_hooked_in_every_block_of_the_last_two_groups(name):
    regularizer = dropblock(name)
    model = build_model(compose_model(name), (3, 32, 32), 10, ModelOptions())
    regularizer.on_model_built(model)
    group3, group4, blocks = RESNET_BLOCKS[name]
    expected = {}
    for group, share in ((group3, 0.25), (group4, 1.0)):
        for block in range(blocks):
            expected.update({f"{group}.{block}.bn1": share, f"{group}.{block}.bn2": share})
        expected[f"{group}.0.downsample"] = share  # the first block's shortcut changes shape
    assert hooked(model) == expected


@pytest.mark.parametrize("name, options, site", [
    ("lenet", ModelOptions(), "body.conv2.0"),
    ("convnet", ModelOptions(), "body.conv2.0"),
    # With a normalization layer: after it, before the ReLU.
    ("convnet", ModelOptions(norm=lambda width, kind: torch.nn.BatchNorm2d(width)), "body.conv2.1"),
])
def test_lenet_and_convnet_are_hooked_after_the_last_convolution(name, options, site):
    regularizer = dropblock(name)
    model = build_model(compose_model(name), (1, 28, 28), 10, options)
    regularizer.on_model_built(model)
    assert hooked(model) == {site: 1.0}


def test_hooks_drop_in_training_mode_only():
    torch.manual_seed(0)
    model = build_model(ResNetConfig(), (3, 32, 32), 10, ModelOptions())
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    before = model(x)
    regularizer = dropblock()
    regularizer.on_model_built(model)
    regularizer.loss_terms(step_at(0.99))
    assert torch.equal(model(x), before)
    # Train mode with BatchNorm kept in eval (its batch statistics would differ anyway).
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    assert not torch.allclose(model(x), before)


def test_the_rate_follows_the_training_progress_and_resumes(tmp_path):
    from regbench.cli.compose import compose_settings
    from regbench.run.engine import Run

    run = Run.build(compose_settings(["regularizer=dropblock", "model=lenet", "trainer.epochs=4",
                                      "trainer.num_threads=1"]))
    run.train_epoch(0)
    (regularizer,) = run.regularizers
    # After the first of 4 epochs the last step's progress is (S - 1) / S / 4.
    steps = run.steps_per_epoch
    assert regularizer.progress == pytest.approx((steps - 1) / steps / 4)
    assert regularizer.hooks[0].layer.drop_prob == pytest.approx(0.1 * regularizer.progress)
    resumed = Run.build(compose_settings(["regularizer=dropblock", "model=lenet",
                                          "trainer.epochs=4", "trainer.num_threads=1"]))
    resumed.load_state_dict(run.state_dict())
    assert resumed.regularizers[0].hooks[0].layer.drop_prob == regularizer.hooks[0].layer.drop_prob


@pytest.mark.parametrize("key, value", [("keep_prob", "0"), ("keep_prob", "1"),
                                        ("keep_prob", "1.5"), ("block_size", "0")])
def test_bad_values_are_refused_in_one_line(key, value):
    cfg = compose_config(["regularizer=dropblock", f"regularizer.dropblock.{key}={value}"])
    with pytest.raises(ConfigError, match=rf"regularizer\.dropblock\.{key}={value}") as error:
        OmegaConf.to_object(cfg)
    assert "\n" not in str(error.value)


def test_the_mlp_is_refused_in_one_line_before_training(tmp_path):
    with pytest.raises(ConfigError) as error:
        train_in_process(tmp_path, ["regularizer=dropblock", "model=mlp"])
    message = str(error.value)
    assert "\n" not in message and "model=mlp" in message and "no convolution" in message
    assert not (tmp_path / "history.jsonl").exists()


@pytest.mark.slow
def test_dropblock_makes_training_harder_on_digits(tmp_path):
    common = ["model=convnet", "seed=0", "evaluation.calibrators=[]"]
    train_in_process(tmp_path / "none", ["regularizer=none", *common])
    dropped = train_in_process(tmp_path / "dropblock", ["regularizer=dropblock",
                                                        "regularizer.dropblock.keep_prob=0.7",
                                                        *common])
    # Same seed: the first epoch is almost unchanged (the rate starts at 0), the last one's
    # training loss is higher. Measured (seed 0, 3 epochs, keep 0.7): first epoch 2.042 without,
    # 2.052 with; last 0.239 and 0.298.
    baseline, with_dropblock = read_history(tmp_path / "none"), read_history(tmp_path / "dropblock")
    assert with_dropblock[0]["train/loss"] == pytest.approx(baseline[0]["train/loss"], rel=0.05)
    assert with_dropblock[-1]["train/loss"] > baseline[-1]["train/loss"] * 1.1
    assert dropped["test/acc"] > 0.8


@pytest.mark.slow
def test_a_cifar_resnet_run_with_dropblock_and_augmentation_completes(tmp_path):
    metrics, _ = train_end_to_end(tmp_path, ["regularizer=[dropblock,augmentation]", "model=resnet"],
                                epochs=1)
    assert sorted(metrics["regularizer"]) == ["augmentation", "dropblock"]
