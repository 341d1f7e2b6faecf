"""BatchNorm folding: the folded layer is the BN'd layer's affine map by hand, folded models give
the unfolded logits, unsafe pairs are left alone, and ``python -m regbench.fold`` checks, saves
and times a real run."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_cli
from regbench.cli.compose import compose_settings
from regbench.fold import fold_batchnorm, foldable_pairs, load_folded
from regbench.run.engine import Run
from regbench.run.spec import FOLDED_FILE

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_fold.py"


def trained_statistics(norm: nn.modules.batchnorm._BatchNorm, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    count = norm.num_features
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(count, generator=generator))
        norm.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
        norm.weight.copy_(torch.randn(count, generator=generator))
        norm.bias.copy_(torch.randn(count, generator=generator))


def test_linear_fold_is_the_batchnorm_affine_map_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, eps=1e-5)).double().eval()
    linear, norm = model
    trained_statistics(norm)
    # y = gamma (Wx + b - mu) / sqrt(var + eps) + beta, so W' = s W and b' = s (b - mu) + beta.
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    expected_weight = scale[:, None] * linear.weight
    expected_bias = scale * (linear.bias - norm.running_mean) + norm.bias
    assert fold_batchnorm(model) == [("0", "1")]
    assert isinstance(model[1], nn.Identity)
    torch.testing.assert_close(model[0].weight, expected_weight)
    torch.testing.assert_close(model[0].bias, expected_bias)


def test_conv_without_bias_gets_the_folded_bias():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3)).double().eval()
    conv, norm = model
    trained_statistics(norm, seed=1)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    expected_weight = scale[:, None, None, None] * conv.weight
    expected_bias = norm.bias - scale * norm.running_mean
    fold_batchnorm(model)
    torch.testing.assert_close(model[0].weight, expected_weight)
    torch.testing.assert_close(model[0].bias, expected_bias)


class SharedOutput(nn.Module):
    """conv -> BN, with the conv's output also read by the residual add: folding would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.norm = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


def test_pairs_whose_layer_output_is_read_twice_or_that_use_batch_statistics_are_left_alone():
    assert foldable_pairs(SharedOutput().eval()) == []
    batch_stats = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    assert foldable_pairs(batch_stats) == []
    # BN before the layer (pre-activation order) is not a foldable pair either.
    assert foldable_pairs(nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 4)).eval()) == []


@pytest.mark.parametrize("overrides, pairs", [
    (["model=resnet"], 19),  # stem + 9 blocks x 2 (zero-pad shortcuts have no BN)
    (["model=resnet", "model.shortcut=projection"], 21),  # + the two projection shortcuts
    (["model=resnet18"], 20),  # conv1 + 8 blocks x 2 + 3 downsamples
    (["model=lenet", "regularizer=batchnorm"], 4),
    (["model=mlp", "model.hidden_sizes=[64,32]", "regularizer=[batchnorm,dropout]"], 2),
])
def test_folded_models_give_the_unfolded_logits(overrides, pairs):
    run = Run.build(compose_settings([*overrides, "trainer.num_threads=1"]))
    model = run.model
    model.train()  # a few batches in train mode give every BN non-trivial running statistics
    with torch.no_grad():
        for _, (images, _) in zip(range(3), run.data.train):
            model(run.prepare(images))
    model.eval()
    folded = copy.deepcopy(model)
    assert len(fold_batchnorm(folded)) == pairs
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    images = run.prepare(next(iter(run.data.test))[0])
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), atol=1e-5, rtol=1e-5)
        # The folded model keeps its class: the features are the same too.
        torch.testing.assert_close(folded.forward_features(images), model.forward_features(images),
                                   atol=1e-5, rtol=1e-5)


def trained_run(tmp_path: Path, name: str, overrides: list[str]) -> Path:
    run_dir = tmp_path / name
    result = run_cli([*overrides, "trainer.epochs=2", "trainer.progress=false",
                      "trainer.num_threads=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.slow
def test_fold_cli_checks_saves_and_times_a_trained_run(tmp_path):
    run_dir = trained_run(tmp_path, "run", ["model=lenet", "regularizer=batchnorm"])
    result = run_cli([str(run_dir), "--repeats", "3"], cwd=tmp_path, module="regbench.fold")
    assert result.returncode == 0, result.stderr
    match = re.search(r"max \|logit difference\| ([0-9.e+-]+)", result.stdout)
    assert match is not None, result.stdout
    assert float(match.group(1)) < 1e-4
    assert "folded 4 conv/linear -> BatchNorm pair(s)" in result.stdout
    assert re.search(r"speedup \d+\.\d+x", result.stdout), result.stdout

    saved = torch.load(run_dir / FOLDED_FILE, weights_only=True)
    assert saved["max_logit_difference"] < 1e-4 and len(saved["folded_pairs"]) == 4
    assert not any("running_mean" in key for key in saved["model"])
    # folded.pt in a rebuilt model gives the trained model's test logits.
    run = Run.build(compose_settings(["model=lenet", "regularizer=batchnorm", "trainer.num_threads=1"]))
    run.model.load_state_dict(torch.load(run_dir / "last.pt", weights_only=True)["model"])
    run.model.eval()
    folded = load_folded(run_dir)
    images = run.prepare(next(iter(run.data.test))[0])
    with torch.no_grad():
        torch.testing.assert_close(folded(images), run.model(images), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    """A trained MLP without BatchNorm whose dataset.root is relative (my_data): nothing to fold,
    and a data root that fold must find from elsewhere. Read by two tests, written by neither."""
    return trained_run(tmp_path_factory.mktemp("fold"), "plain",
                       ["model.hidden_sizes=[32]", "dataset.root=my_data"])


@pytest.mark.slow
def test_fold_cli_refuses_a_model_without_batchnorm_and_a_folder_without_a_run(tmp_path, plain_run):
    run_dir = plain_run
    result = run_cli([str(run_dir)], cwd=tmp_path, module="regbench.fold")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nothing to fold" in result.stderr
    assert not (run_dir / FOLDED_FILE).exists()
    result = run_cli([str(tmp_path / "missing")], cwd=tmp_path, module="regbench.fold")
    assert result.returncode == 2 and "last.pt does not exist" in result.stderr


@pytest.mark.slow
def test_bench_fold_writes_a_table_and_json(tmp_path):
    out = tmp_path / "fold.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "2", "--cases", "0",
                             "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ResNet-20" in result.stdout and "speedup" in result.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpu"]
    (case,) = report["cases"]
    assert case["folded_pairs"] == 19 and case["max_logit_difference"] < 1e-4
    assert [len(case["seconds"][name]) for name in ("unfolded", "folded")] == [2, 2]
    assert case["speedup"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("content,message", [
    ("a: [\n", "overrides.yaml cannot be read"),
    ("a: 1\n", "is not a list of key=value lines"),
    ("- trainer.epochz=1\n", "holds overrides this regbench cannot compose (Could not override "
                            "'trainer.epochz'"),
])
def test_fold_refuses_malformed_saved_overrides_in_one_line(tmp_path, content, message):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"")
    (run_dir / ".hydra" / "overrides.yaml").write_text(content)
    result = run_cli([str(run_dir)], cwd=tmp_path, module="regbench.fold")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "hydra.run.dir" not in result.stderr


@pytest.mark.slow
def test_fold_finds_a_relative_data_root_from_another_working_directory(plain_run):
    from regbench.fold import run_config

    elsewhere = plain_run.parent / "elsewhere"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)
        assert run_config(Path("../plain")).dataset.root == str(plain_run.parent / "my_data")
