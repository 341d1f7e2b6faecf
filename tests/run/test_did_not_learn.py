"""did_not_learn: a run whose final training accuracy is not significantly above chance (always
answering the most frequent class) says so in metrics.json and in one warning line."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import read_metrics, run_cli
from regbench.run.engine import Evaluation, did_not_learn
from regbench.run.spec import DID_NOT_LEARN


def evaluation(predictions: list[int], labels: list[int], classes: int = 10) -> Evaluation:
    logits = torch.nn.functional.one_hot(torch.tensor(predictions), classes).float()
    return Evaluation(logits, torch.tensor(labels), torch.zeros(len(labels), 1))


def test_one_answer_for_every_image_of_balanced_classes_did_not_learn(caplog):
    labels = [k % 10 for k in range(1000)]
    with caplog.at_level(logging.WARNING):
        assert did_not_learn(evaluation([3] * 1000, labels))
    assert "did not learn: final training accuracy 0.1000 is not significantly above 0.1000" in caplog.text


def test_a_few_points_above_chance_on_a_thousand_images_learned():
    # 150 right of 1000 at chance 0.1: binomial p ~ 1e-6.
    labels = [k % 10 for k in range(1000)]
    predictions = [label if k < 150 else (label + 1) % 10 for k, label in enumerate(labels)]
    assert not did_not_learn(evaluation(predictions, labels))


def test_always_answering_the_majority_class_did_not_learn_though_it_is_90_percent_right():
    labels = [0] * 900 + [1] * 100
    assert not did_not_learn(evaluation(labels, labels, classes=2))
    assert did_not_learn(evaluation([0] * 1000, labels, classes=2))


@pytest.mark.slow
def test_a_run_that_cannot_learn_gets_did_not_learn_true_in_metrics_json_and_one_warning(tmp_path):
    # lr 1e-9 (lr=0 is refused) leaves the network as initialized, and its answers cannot match
    # random labels: chance whatever the seed.
    run_dir = tmp_path / "run"
    result = run_cli(["optimizer.lr=1e-9", "dataset.corruption=random_labels", "trainer.epochs=1",
                      "trainer.num_threads=1", "evaluation.figures=false",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and metrics[DID_NOT_LEARN] is True
    output = result.stdout + result.stderr
    assert output.count("did not learn: final training accuracy") == 1
    assert "Traceback" not in output
