"""AutoAugment: the three learned policies are torchvision's; each image draws its own sub-policy
uniformly and each step happens with its probability (binomial bounds over many draws); Color steps
do nothing on gray images; an unknown policy is refused; the SVHN policy makes digits' training
batches harder."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException
from scipy import stats
from torchvision.transforms import v2

from conftest import compose_config, read_history, train_in_process
from regbench.regularizers import REGULARIZERS
from regbench.regularizers import autoaugment as A
from regbench.regularizers.policy_ops import AUTOAUGMENT_OPS

TORCHVISION = {A.AutoAugmentPolicy.cifar10: v2.AutoAugmentPolicy.CIFAR10,
               A.AutoAugmentPolicy.svhn: v2.AutoAugmentPolicy.SVHN,
               A.AutoAugmentPolicy.imagenet: v2.AutoAugmentPolicy.IMAGENET}


@pytest.mark.parametrize("policy", list(A.AutoAugmentPolicy))
def test_the_policies_are_torchvisions(policy):
    steps = A.sub_policies(policy)
    assert len(steps) == 25
    assert steps == [tuple(s) for s in v2.AutoAugment(TORCHVISION[policy])._policies]


@pytest.mark.parametrize("name", list(A.AutoAugmentPolicy))
def test_each_image_draws_a_sub_policy_and_each_step_happens_with_its_probability(name):
    torch.manual_seed(0)
    policy = A.PolicyTensors.of(name, AUTOAUGMENT_OPS)
    images = 50_000
    chosen, steps = A.autoaugment_draws(images, policy)
    counts = torch.bincount(chosen, minlength=25)
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3  # sub-policies uniform
    for step, draws in enumerate(steps):
        assert torch.equal(draws.bins, policy.bins[chosen, step])
        happened = draws.ops >= 0
        # The operation that happens is the sub-policy's.
        assert torch.equal(draws.ops[happened], policy.ops[chosen[happened], step])
        fired = torch.bincount(chosen[happened], minlength=25).numpy()
        p = policy.probabilities[:, step].double().numpy()
        # Within 4.5 standard deviations of Binomial(n, p); exactly n p where p is 0 or 1.
        low, high = stats.binom.interval(1 - 7e-6, counts.numpy(), p)
        assert ((low <= fired) & (fired <= high)).all(), (step, fired, low, high)
        assert (fired[p == 1.0] == counts.numpy()[p == 1.0]).all() and (fired[p == 0.0] == 0).all()


def test_sub_policy_steps_name_the_right_operations_and_bins():
    policy = A.PolicyTensors.of(A.AutoAugmentPolicy.svhn, AUTOAUGMENT_OPS)
    # SVHN's first sub-policy: (ShearX 0.9 4), (Invert 0.2 -).
    assert [AUTOAUGMENT_OPS[i].name for i in policy.ops[0]] == ["ShearX", "Invert"]
    assert policy.probabilities[0].tolist() == pytest.approx([0.9, 0.2])
    assert policy.bins[0].tolist() == [4, 0]


def test_color_steps_do_nothing_on_gray_images():
    regularizer = REGULARIZERS.get("autoaugment")(A.AutoAugmentConfig())
    torch.manual_seed(0)
    gray = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    out, _ = regularizer.transform_batch(gray, torch.zeros(64, dtype=torch.long))
    assert out.shape == gray.shape
    names = [op.name for op in regularizer.policy_ops]
    assert "Color" not in names
    # CIFAR-10's sub-policy 7 is (Color 0.4 3), (Brightness 0.6 7): its Color step is -1 (none).
    assert regularizer.policy.ops[6].tolist() == [-1, names.index("Brightness")]
    # Images of one batch go through different sub-policies.
    assert len({out[i].numpy().tobytes() for i in range(64)}) > 10


def test_an_unknown_policy_is_refused():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["regularizer=autoaugment", "regularizer.autoaugment.policy=mnist"])
    assert "cifar10" in str(error.value.__cause__) and "imagenet" in str(error.value.__cause__)


@pytest.mark.slow
def test_the_svhn_policy_makes_the_training_batches_harder_on_digits(tmp_path):
    common = ["seed=0", "evaluation.calibrators=[]"]
    train_in_process(tmp_path / "none", ["regularizer=none", *common])
    train_in_process(tmp_path / "aa", ["regularizer=autoaugment",
                                       "regularizer.autoaugment.policy=svhn", *common])
    last = {name: read_history(tmp_path / name)[-1]["train/acc"] for name in ("none", "aa")}
    # Measured (seed 0, 3 epochs, MLP): 0.965 without, 0.682 with the SVHN policy (0.787 with
    # CIFAR-10's, whose colour steps are weaker on gray digits).
    assert last["aa"] < last["none"] - 0.15
