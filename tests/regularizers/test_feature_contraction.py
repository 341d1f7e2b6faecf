"""Feature contraction: the penalty's normalization matches a hand calculation, the hook reads the
chosen layer (before the in-place ReLU), bad layer names are refused, and training with it shrinks
the features on real data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose_config, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.models import ModelOptions, build_model
from regbench.models.mlp import MLPConfig
from regbench.regularizers import REGULARIZERS, StepOutput
from regbench.regularizers.feature_contraction import FeatureContractionConfig


def contraction(**options):
    return REGULARIZERS.get("feature_contraction")(FeatureContractionConfig(**options))


def tiny_mlp(hidden_sizes=(5, 4)):
    torch.manual_seed(0)
    return build_model(MLPConfig(hidden_sizes=list(hidden_sizes)), (1, 2, 2), 3, ModelOptions())


def training_step(regularizer, model, inputs: torch.Tensor) -> tuple[torch.Tensor, StepOutput]:
    """One forward the way the training loop does it; returns the term and the step."""
    model.train()
    features = model.forward_features(inputs)
    logits = model.forward_head(features)
    labels = torch.zeros(len(inputs), dtype=torch.long)
    step = StepOutput(inputs=inputs, labels=labels, logits=logits, features=features, model=model,
                      epoch=0, progress=0.0)
    terms = regularizer.loss_terms(step)
    assert list(terms) == ["feature_contraction"]
    return terms["feature_contraction"], step


INPUTS = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]], [[[-1.0, 0.0], [2.0, -0.5]]]])


def test_normalization_by_hand_matches_the_authors_example():
    # Features f = (1, 2, 2) and (0, 0, 3): ||f||^2 = 9 each, D = 3 -> mean ||f||^2 / (2 D) = 1.5;
    # gamma 0.5 -> 0.75, the example's sum f^2 / (4 B D) = 18 / 24.
    features = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 3.0]])
    regularizer = contraction(gamma=0.5, layer="penultimate")
    regularizer.on_model_built(tiny_mlp())
    step = StepOutput(inputs=torch.zeros(2, 4), labels=torch.zeros(2, dtype=torch.long),
                      logits=torch.zeros(2, 3), features=features, model=torch.nn.Identity(),
                      epoch=0, progress=0.0)
    value = regularizer.loss_terms(step)["feature_contraction"]
    assert value.item() == pytest.approx(0.75, abs=1e-7)
    assert value.item() == pytest.approx(features.pow(2).sum().item() / (4 * 2 * 3), abs=1e-7)


def test_auto_hooks_the_penultimate_pre_activation():
    model = tiny_mlp()
    regularizer = contraction(gamma=2.0)
    regularizer.on_model_built(model)
    assert regularizer.layer == "penultimate_preact"
    value, step = training_step(regularizer, model, INPUTS)
    # By hand: flatten, first block, then the last block's linear layer alone (before its ReLU),
    # through F.linear so that the hook does not fire again.
    last_linear = model.body[-1][0]
    with torch.no_grad():
        preact = F.linear(model.body[-2](INPUTS.flatten(1)), last_linear.weight, last_linear.bias)
    assert (preact < 0).any(), "the example must have negative pre-activations to tell them apart"
    expected = 2.0 * preact.pow(2).sum(dim=1).mean() / (2 * preact.shape[1])
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    # The in-place ReLU that follows did not change what the hook stored.
    assert torch.equal(step.features, preact.clamp(min=0))
    # The penalty reaches the weights through the hooked layer, and the stored features are let go.
    value.backward()
    assert model.body[-2][0].weight.grad.abs().sum() > 0
    assert regularizer.hooked_features is None


def test_hook_stores_nothing_in_eval_mode():
    model = tiny_mlp()
    regularizer = contraction()
    regularizer.on_model_built(model)
    model.eval()
    with torch.no_grad():
        model(INPUTS)
    assert regularizer.hooked_features is None


def test_penultimate_uses_the_step_features_without_a_hook():
    model = tiny_mlp()
    regularizer = contraction(gamma=1.0, layer="penultimate")
    regularizer.on_model_built(model)
    assert not any(module._forward_hooks for module in model.modules())
    value, step = training_step(regularizer, model, INPUTS)
    expected = step.features.pow(2).sum(dim=1).mean() / (2 * step.features.shape[1])
    assert value.item() == pytest.approx(expected.item(), abs=1e-7)


def test_auto_falls_back_to_penultimate_without_a_pre_activation_layer():
    model = tiny_mlp(hidden_sizes=())  # a linear classifier: no hidden block to hook
    assert "penultimate_preact" not in model.feature_layers()
    regularizer = contraction()
    regularizer.on_model_built(model)
    assert regularizer.layer == "penultimate"


def test_unknown_layer_is_refused_listing_the_offered_names():
    regularizer = contraction(layer="fc9")
    with pytest.raises(ConfigError) as error:
        regularizer.on_model_built(tiny_mlp())
    message = str(error.value)
    assert "regularizer.feature_contraction.layer='fc9'" in message
    assert "auto" in message and "penultimate, penultimate_preact" in message
    assert "\n" not in message


def test_unknown_layer_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"regularizer\.feature_contraction\.layer='fc9'"):
        train_in_process(tmp_path / "run", ["regularizer=feature_contraction",
                                            "regularizer.feature_contraction.layer=fc9"])
    assert not (tmp_path / "run" / "history.jsonl").exists()


def test_config_composes_with_defaults_and_overrides():
    config = OmegaConf.to_object(compose_config(["regularizer=feature_contraction"])).regularizer[
        "feature_contraction"]
    assert (config.gamma, config.layer) == (0.5, "auto")
    config = OmegaConf.to_object(compose_config([
        "regularizer=feature_contraction", "regularizer.feature_contraction.gamma=0.1",
        "regularizer.feature_contraction.layer=penultimate"])).regularizer["feature_contraction"]
    assert (config.gamma, config.layer) == (0.1, "penultimate")


def test_negative_gamma_is_refused_naming_the_key():
    cfg = compose_config(["regularizer=feature_contraction",
                          "regularizer.feature_contraction.gamma=-1"])
    with pytest.raises(ConfigError, match=r"regularizer\.feature_contraction\.gamma=-1"):
        OmegaConf.to_object(cfg)


@pytest.mark.slow
def test_contraction_lowers_test_feature_norm_on_digits(tmp_path):
    common = ["trainer.epochs=5", "trainer.num_threads=1", "seed=0"]
    baseline = train_in_process(tmp_path / "none", ["regularizer=none", *common])
    contracted = train_in_process(tmp_path / "fc", ["regularizer=feature_contraction", *common])
    # Measured (seeds 0-3, gamma 0.5 on the pre-ReLU features): the head's input norm drops by
    # about 30 % (16.9 -> 11.8 for seed 0).
    assert contracted["test/feature_norm"] < 0.85 * baseline["test/feature_norm"]
    assert contracted["test/acc"] > 0.9  # still learns the task


@pytest.mark.slow
def test_a_run_with_the_preset_logs_a_positive_term_every_epoch(tmp_path):
    _, history = train_end_to_end(tmp_path, ["regularizer=feature_contraction"])
    assert all(record["train/loss_feature_contraction"] > 0 for record in history)
