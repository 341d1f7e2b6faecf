"""TrivialAugment (wide): one operation per image drawn uniformly from 14, at a magnitude bin drawn
uniformly from 31; each image its own, applied as torchvision applies it; translations scale with
the image; on a real digits run the augmented training batches become harder."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats
from torchvision.transforms import v2

from conftest import compose_config, read_history, train_in_process
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS
from regbench.regularizers import trivialaugment as T
from regbench.regularizers.policy_ops import TRIVIALAUGMENT_WIDE_OPS, OperationTable


def test_trivialaugment_draws_one_operation_and_a_uniform_magnitude_bin_per_image():
    torch.manual_seed(0)
    draws = T.trivialaugment_draws(14 * 31 * 20, num_choices=14, num_bins=31)
    assert draws.ops.shape == draws.bins.shape == (14 * 31 * 20,)  # one step: one operation
    ops, bins = torch.bincount(draws.ops, minlength=14), torch.bincount(draws.bins, minlength=31)
    assert len(ops) == 14 and len(bins) == 31
    assert stats.chisquare(ops.numpy()).pvalue > 1e-3
    assert stats.chisquare(bins.numpy()).pvalue > 1e-3
    # The bin is drawn independently of the operation (uniform over all 14 x 31 pairs).
    pairs = torch.bincount(draws.ops * 31 + draws.bins, minlength=14 * 31)
    assert stats.chisquare(pairs.numpy()).pvalue > 1e-3


def trivialaugment() -> T.TrivialAugment:
    return REGULARIZERS.get("trivialaugment")(T.TrivialAugmentConfig())


def test_each_image_goes_through_its_one_drawn_operation(monkeypatch):
    recorded = []

    def record(*args):
        recorded.append(original(*args))
        return recorded[-1]

    original = T.trivialaugment_draws
    monkeypatch.setattr(T, "trivialaugment_draws", record)
    torch.manual_seed(2)
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    batch = image.expand(40, -1, -1, -1).clone()
    out, _ = trivialaugment().transform_batch(batch, torch.arange(40))
    draws, reference = recorded[0], v2.TrivialAugmentWide()
    for index in range(40):
        name = TRIVIALAUGMENT_WIDE_OPS[int(draws.ops[index])].name
        magnitudes, signed = reference._AUGMENTATION_SPACE[name]  # torchvision's, at 32 px
        values = magnitudes(31, 32, 32)
        value = 0.0 if values is None else float(values[int(draws.bins[index])])
        value = -value if signed and bool(draws.negate[index]) else value
        expected = reference._apply_image_or_video_transform(image[0], name, value,
                                                             interpolation="nearest", fill={})
        assert torch.equal(out[index], expected)
    assert len({out[i].numpy().tobytes() for i in range(40)}) > 10  # not one draw for the batch


def test_translations_scale_with_the_image_where_torchvision_uses_32_pixels():
    digits = OperationTable(TRIVIALAUGMENT_WIDE_OPS, 31, 8, 8, "nearest")
    x = [op.name for op in TRIVIALAUGMENT_WIDE_OPS].index("TranslateX")
    assert digits.magnitude(x, 30, False) == 8.0
    assert digits.magnitude(x, 15, True) == pytest.approx(-4.0)
    # torchvision's 32 px would move an 8 px digit out of the frame from bin 8 of 30 on.
    assert float(v2.TrivialAugmentWide._AUGMENTATION_SPACE["TranslateX"][0](31, 8, 8)[30]) == 32.0


def test_too_few_bins_are_refused_in_one_line():
    cfg = compose_config(["regularizer=trivialaugment",
                          "regularizer.trivialaugment.num_magnitude_bins=1"])
    with pytest.raises(ConfigError, match=r"^regularizer\.trivialaugment\.num_magnitude_bins=1 is "
                                          r"not allowed: an integer >= 2$"):
        OmegaConf.to_object(cfg)


@pytest.mark.slow
def test_trivialaugment_makes_the_training_batches_harder_on_digits(tmp_path):
    common = ["seed=0", "evaluation.calibrators=[]"]
    train_in_process(tmp_path / "none", ["regularizer=none", *common])
    train_in_process(tmp_path / "ta", ["regularizer=trivialaugment", *common])
    last = {name: read_history(tmp_path / name)[-1]["train/acc"] for name in ("none", "ta")}
    # Measured (seed 0, 3 epochs, MLP): 0.965 without, 0.646 with TrivialAugment.
    assert last["ta"] < last["none"] - 0.15
