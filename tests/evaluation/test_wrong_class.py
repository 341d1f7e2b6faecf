"""Where the wrong-class probability goes: the class-probability matrix and the wrong-class entropy
against hand calculations, the projector sample, and label smoothing's effect on a real digits run
(the heat-map, the projector files and the scalar land in the run folder)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import train_in_process
from regbench.evaluation.wrong_class import (
    WRONG_CLASS_ENTROPY,
    class_probability_matrix,
    projector_sample,
    wrong_class_entropy,
)


def test_class_probability_matrix_is_the_mean_softmax_per_true_class():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 0, 2])
    matrix = class_probability_matrix(probabilities.log(), labels, num_classes=3)
    # Row 0: the mean of the two class-0 examples; row 2: the one class-2 example; no class 1.
    torch.testing.assert_close(matrix[0], torch.tensor([0.6, 0.3, 0.1]))
    torch.testing.assert_close(matrix[2], torch.tensor([0.1, 0.1, 0.8]))
    assert torch.isnan(matrix[1]).all()


def test_wrong_class_entropy_by_hand():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    labels = torch.tensor([0, 2])
    # Example 1: wrong classes 0.2, 0.1 -> q = (2/3, 1/3); example 2: 0.25, 0.25 -> uniform, ln 2.
    first = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    expected = (first + math.log(2)) / 2
    assert wrong_class_entropy(probabilities.log(), labels).item() == pytest.approx(expected, rel=1e-6)


def test_wrong_class_entropy_matches_scipy_and_survives_a_certain_prediction():
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(50, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (50,), generator=generator)
    probabilities = logits.softmax(dim=1).numpy()
    wrong = [np.delete(row, label) for row, label in zip(probabilities, labels.tolist())]
    expected = np.mean([entropy(row / row.sum()) for row in wrong])
    assert wrong_class_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)  # float32 inside
    # p_y rounds to 1 in float32 (1 - p_y = 0), yet the wrong classes are exactly uniform.
    certain = torch.tensor([[200.0, 0.0, 0.0, 0.0]])
    assert wrong_class_entropy(certain, torch.tensor([0])).item() == pytest.approx(math.log(3))


def test_projector_sample_takes_the_first_examples_with_their_metadata():
    features = torch.arange(12.0).reshape(6, 2)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    logits = torch.tensor([[2.0, 0], [0, 2], [2, 0], [2, 0], [0, 2], [0, 2]])
    points, rows = projector_sample(features, labels, logits, ["cat", "dog"], limit=4)
    torch.testing.assert_close(points, features[:4])
    assert rows == [["cat", "cat", "true"], ["dog", "dog", "true"], ["dog", "cat", "false"],
                    ["cat", "cat", "true"]]
    assert len(projector_sample(features, labels, logits, ["cat", "dog"])[1]) == 6


@pytest.mark.slow
def test_label_smoothing_spreads_the_wrong_class_mass_on_digits(tmp_path):
    common = ["trainer.epochs=10", "model.hidden_sizes=[64]", "seed=0"]
    baseline = train_in_process(tmp_path / "none", [*common, "regularizer=none"])
    smoothed = train_in_process(tmp_path / "ls", [*common, "regularizer=label_smoothing",
                                                  "regularizer.label_smoothing.epsilon=0.3",
                                                  "evaluation.figures=true"])
    uniform = math.log(9)  # ten digit classes: nine wrong ones
    assert baseline[WRONG_CLASS_ENTROPY] < smoothed[WRONG_CLASS_ENTROPY] <= uniform
    # Label smoothing's targets are uniform over the wrong classes: closer to ln 9 by a margin.
    assert uniform - smoothed[WRONG_CLASS_ENTROPY] < 0.5 * (uniform - baseline[WRONG_CLASS_ENTROPY])

    run_dir = tmp_path / "ls"
    assert (run_dir / "test_class_probabilities.png").is_file()
    config = (run_dir / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "test_penultimate:00010"' in config
    metadata = (run_dir / "00010" / "test_penultimate" / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "label\tpredicted\tcorrect" and len(metadata) == 1 + 360  # digits' test split
    # What TensorBoard's projector parses: the config proto, and one row of floats per example.
    from google.protobuf import text_format
    from tensorboard.plugins.projector import ProjectorConfig
    (embedding,) = text_format.Parse(config, ProjectorConfig()).embeddings
    tensors = np.loadtxt(run_dir / embedding.tensor_path, delimiter="\t", ndmin=2)
    assert tensors.shape == (360, 64) and np.isfinite(tensors).all()  # model.hidden_sizes=[64]
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    assert "test/class_probabilities" in events.Tags()["images"]
