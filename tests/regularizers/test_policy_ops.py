"""The policies' shared core: the operation tables are torchvision's, every operation applied to a
batch grouped by (operation, magnitude) gives exactly torchvision's per-image result, one
torchvision call per group; gray images skip Color (logged once); float or 2-channel batches are
refused in one line; only training batches pass through a policy."""

from __future__ import annotations

import logging

import pytest
import torch
from torchvision.transforms import v2

from conftest import train_in_process
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS
from regbench.regularizers import policy_ops as P
from regbench.regularizers.randaugment import RandAugment, RandAugmentConfig

# Our table, torchvision's class whose private table it copies, the bins torchvision uses.
TABLES = {
    "autoaugment": (P.AUTOAUGMENT_OPS, v2.AutoAugment, 10),
    "randaugment": (P.RANDAUGMENT_OPS, v2.RandAugment, 31),
    "trivialaugment": (P.TRIVIALAUGMENT_WIDE_OPS, v2.TrivialAugmentWide, 31),
    "augmix": (P.augmix_operations(all_ops=False), None, 10),
    "augmix_all": (P.augmix_operations(all_ops=True), v2.AugMix, 10),
}


def torchvision_space(name: str) -> dict:
    if name == "augmix":
        return v2.AugMix._PARTIAL_AUGMENTATION_SPACE
    return TABLES[name][1]._AUGMENTATION_SPACE


@pytest.mark.parametrize("name", TABLES)
@pytest.mark.parametrize("height,width", [(32, 32), (8, 8), (28, 20)])
def test_operation_tables_are_torchvisions(name, height, width):
    ops, _, bins = TABLES[name]
    space = torchvision_space(name)
    assert [op.name for op in ops] == list(space)  # same operations, same order (draws index it)
    for op in ops:
        magnitudes, signed = space[op.name]
        assert op.signed == signed
        expected = magnitudes(bins, height, width)
        if name == "trivialaugment" and op.name.startswith("Translate"):
            # The deliberate difference: up to the image's size, torchvision's 32 px on 32 px.
            size = width if op.name == "TranslateX" else height
            expected = torch.linspace(0.0, float(size), bins)
        if expected is None:
            assert op.magnitudes is None
        else:
            assert torch.equal(op.magnitudes(bins, height, width), expected)


def distinct_images(count: int, channels: int, size: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8,
                         generator=generator)


@pytest.mark.parametrize("name", ["autoaugment", "trivialaugment", "augmix_all"])
@pytest.mark.parametrize("channels", [1, 3])
def test_batched_operations_equal_torchvisions_per_image_call(name, channels):
    """Every (operation, bin, sign) of a table drawn for some image of one batch; each output image
    equals torchvision's own operation (v2's _apply_image_or_video_transform, what its policies
    call) on that image alone with that magnitude."""
    ops, policy_class, bins = TABLES[name]
    interpolation = "bilinear" if name.startswith("augmix") else "nearest"
    table = P.OperationTable(ops, bins, 12, 12, interpolation)
    combos = [(op, b, s) for op in range(-1, len(ops)) for b in (0, bins // 2, bins - 1)
              for s in (0, 1)]
    # In a shuffled order, so that the groups' images are spread over the batch.
    order = torch.randperm(len(combos), generator=torch.Generator().manual_seed(0))
    combos = [combos[i] for i in order]
    draws = P.Draws(torch.tensor([c[0] for c in combos]), torch.tensor([c[1] for c in combos]),
                    torch.tensor([bool(c[2]) for c in combos]))
    images = distinct_images(len(combos), channels)
    out = table.apply(images, draws)
    reference = (policy_class or v2.AugMix)()
    for index, (op, b, negate) in enumerate(combos):
        if op < 0:
            assert torch.equal(out[index], images[index])
            continue
        magnitude = table.magnitude(op, b, bool(negate and ops[op].signed))
        expected = reference._apply_image_or_video_transform(
            images[index], ops[op].name, magnitude, interpolation=interpolation, fill={})
        assert torch.equal(out[index], expected), (ops[op].name, b, negate)


def test_each_group_of_equal_draws_is_one_torchvision_call(monkeypatch):
    calls: list[tuple[str, int]] = []
    for name, function in list(P.PIXEL_OPERATIONS.items()):
        def spy(x, m, i, name=name, function=function):
            calls.append((name, len(x)))
            return function(x, m, i)
        monkeypatch.setitem(P.PIXEL_OPERATIONS, name, spy)
    table = P.OperationTable(P.RANDAUGMENT_OPS, 31, 12, 12, "nearest")
    names = [op.name for op in P.RANDAUGMENT_OPS]
    # 7 images: Rotate +9 twice, Rotate -9 once, Equalize three times (signs and bins ignored:
    # it has no magnitude), one untouched image.
    ops = [names.index(n) for n in ["Rotate", "Equalize"] * 3]
    draws = P.Draws(torch.tensor(ops + [-1]), torch.tensor([9, 9, 9, 3, 9, 30, 9]),
                    torch.tensor([False, False, False, True, True, True, False]))
    table.apply(distinct_images(7, 3), draws)
    assert sorted(calls) == [("Equalize", 3), ("Rotate", 1), ("Rotate", 2)]


def test_a_batch_where_no_image_draws_an_operation_is_returned_as_it_is():
    table = P.OperationTable(P.RANDAUGMENT_OPS, 31, 12, 12, "nearest")
    images = distinct_images(4, 3)
    draws = P.Draws(torch.full((4,), -1), torch.zeros(4, dtype=torch.long),
                    torch.zeros(4, dtype=torch.bool))
    assert table.apply(images, draws) is images


def test_torchvision_v2_policies_draw_one_set_of_operations_for_a_whole_batch():
    """Why policy_ops.py batches per image itself: if this ever fails, torchvision draws per
    sample and could be used directly."""
    torch.manual_seed(0)
    batch = distinct_images(1, 3, size=16).expand(32, -1, -1, -1).clone()
    for policy in (v2.RandAugment(), v2.TrivialAugmentWide(), v2.AutoAugment()):
        out = policy(batch)
        assert all(torch.equal(out[0], image) for image in out)


def randaugment() -> RandAugment:
    return REGULARIZERS.get("randaugment")(RandAugmentConfig())


def test_gray_images_skip_color_and_say_so_once(caplog):
    regularizer = randaugment()
    with caplog.at_level(logging.INFO, logger="regbench.regularizers.policy_ops"):
        for _ in range(3):
            regularizer.transform_batch(distinct_images(8, 1), torch.zeros(8, dtype=torch.long))
    assert [op.name for op in regularizer.usable_ops] == [
        op.name for op in P.RANDAUGMENT_OPS if op.name != "Color"]
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines == ["randaugment: 1-channel images, so Color skipped (saturation needs colour)"]
    rgb = randaugment()
    rgb.transform_batch(distinct_images(8, 3), torch.zeros(8, dtype=torch.long))
    assert len(rgb.usable_ops) == len(P.RANDAUGMENT_OPS)


def test_float_and_two_channel_batches_are_refused_in_one_line():
    labels = torch.zeros(4, dtype=torch.long)
    message = (r"^regularizer\.randaugment needs uint8 images but got torch\.float32 .* list "
               r"randaugment before mixup")
    with pytest.raises(ConfigError, match=message) as error:
        randaugment().transform_batch(torch.rand(4, 3, 8, 8), labels)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"gray or RGB images .* \[4, 2, 8, 8\]"):
        randaugment().transform_batch(torch.zeros(4, 2, 8, 8, dtype=torch.uint8), labels)


@pytest.mark.slow
def test_only_training_batches_pass_through_a_policy(tmp_path, monkeypatch):
    seen: list[int] = []
    original = RandAugment.transform_batch

    def spy(self, images, labels):
        seen.append(len(labels))
        return original(self, images, labels)

    monkeypatch.setattr(RandAugment, "transform_batch", spy)
    metrics = train_in_process(tmp_path / "run", ["regularizer=randaugment", "trainer.epochs=1",
                                                  "evaluation.calibrators=[]"])
    assert metrics["status"] == "completed"
    # digits: 1257 training images, 19 full batches of 64; validation, test and the clean pass
    # over the training split never go through it.
    assert seen == [64] * 19
