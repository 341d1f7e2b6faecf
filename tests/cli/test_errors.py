"""Bad input is refused in one line, before any training, with a non-zero exit; faults during a
sweep do not stop the other jobs."""

from __future__ import annotations

import pytest

from conftest import read_metrics, run_cli, train_in_process
from regbench.cli.command_line import check_command_line, split_command_line
from regbench.config import ConfigError

REGULARIZERS = ("augmentation, augmix, autoaugment, batchnorm, confidence_penalty, cutmix, cutout, "
                "dropblock, dropout, early_stopping, ema, feature_contraction, focal_loss, l1, l2, "
                "label_smoothing, logit_norm, mixup, none, randaugment, random_erasing, "
                "stochastic_depth, swa, trivialaugment")


@pytest.mark.parametrize("args,message", [
    (["regularizer=nonexistent"], f"unknown regularizer 'nonexistent'; choose one of: {REGULARIZERS}"),
    (["regularizer=[dropout,nonexistent]"], "unknown regularizer 'nonexistent'"),
    (["dataset=mnits"], "unknown dataset 'mnits'; choose one of: cifar10, cifar100, digits, "
                        "fashion_mnist, imagefolder, mnist, pets"),
    (["-m", "model=mlp,lenett"], "unknown model 'lenett'"),
    (["trainer.epoch=3"], "Key 'epoch' not in 'TrainerConfig' (did you mean trainer.epochs?)"),
    (["regularizer=dropout", "regularizer.dropout.pp=0.3"], "(did you mean regularizer.dropout.p?)"),
    (["regularizer=dropout,label_smoothing"],
     "regularizer=dropout,label_smoothing is a sweep (one run per value), which needs -m; to use "
     "them together in one run, write regularizer=[dropout,label_smoothing]; to sweep, add -m"),
    (["seed=0,1"], "seed=0,1 is a sweep (one run per value), which needs -m"),
    (["hparams_search=dropout", "hydra.sweeper.params.optimizer.lr=choice(0.1,0.2)"],
     "Hydra cannot sweep its own settings; to search a setting with Optuna, give its own key"),
    # Hydra's flags no longer switch the check off, wherever the overrides are placed.
    (["--help", "regularizer=bogus"], "unknown regularizer 'bogus'"),
    (["-m", "--info", "regularizer=bogus"], "unknown regularizer 'bogus'"),
    (["--cfg", "job", "regularizer=whatever"], "unknown regularizer 'whatever'"),
    (["--config-name", "config", "trainer.epochs=x"], "could not be converted to Integer"),
    (["--config-name", "nope"], "--config-name nope: no such config in regbench's configs; choose "
                                "one of: config"),
    (["trainer.epochs=2", "-m", "seed=0,1", "trainer.batch_size=0"],
     "trainer.batch_size=0 is not allowed"),
    (["trainer.batch_size=many"], "Value 'many' of type 'str' could not be converted to Integer"),
    (["optimizer.schedule=exp"], "Invalid value 'exp', expected one of [none, step, cosine, onecycle]"),
    (["regularizer=dropout", "regularizer.dropout.p=1.0"], "regularizer.dropout.p=1.0 is not allowed"),
    (["regularizer=label_smoothing", "regularizer.label_smoothing.epsilon=1.0"],
     "regularizer.label_smoothing.epsilon=1.0 is not allowed: a number in [0, 1)"),
    (["regularizer=confidence_penalty", "regularizer.confidence_penalty.beta=-1"],
     "regularizer.confidence_penalty.beta=-1.0 is not allowed"),
    (["regularizer=feature_contraction", "regularizer.feature_contraction.gamma=-1"],
     "regularizer.feature_contraction.gamma=-1.0 is not allowed"),
    (["regularizer=l2", "regularizer.l2.coef=-1"], "regularizer.l2.coef=-1.0 is not allowed"),
    (["regularizer=l1", "regularizer.l1.coef=-1"], "regularizer.l1.coef=-1.0 is not allowed"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed: a number > 0"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed: an integer >= 1"),
    (["-m", "seed=0,1", "trainer.batch_size=0"], "trainer.batch_size=0 is not allowed: an integer >= 1"),
    (["dataset.label_noise=1.5"], "dataset.label_noise=1.5 is not allowed: a fraction in [0, 1]"),
    (["regularizer.dropout.p=0.2"], "select it too: regularizer=dropout"),
    # Found by a hostile probe: tracebacks or silently accepted nonsense before.
    (["seed=-1"], "seed=-1 is not allowed: an integer in [0, 2**32)"),
    ([f"seed={2**32}"], "seed=4294967296 is not allowed"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not allowed: a number > 0, finite"),
    (["optimizer.lr=1e300"], "below 3.4e+38"),
    (["optimizer.step_gamma=-0.5"], "optimizer.step_gamma=-0.5 is not allowed: a factor in (0, 1]"),
    (["trainer.epochs=1e20"], "could not be converted to Integer"),
    (["trainer.epochs=100000000"], "at most 1,000,000"),
    (["model.hidden_sizes=[0]"], "model.hidden_sizes=[0] is not allowed: widths >= 1"),
    (["model.hidden_sizes=[-5]"], "model.hidden_sizes=[-5] is not allowed"),
    (["trainer.num_threads=100000"], "trainer.num_threads=100000 is not allowed: an integer in [0, "),
    (["trainer.device=cuda:abc"], "trainer.device='cuda:abc' is not allowed: auto, cpu, cuda, cuda:N or mps"),
    (["regularizer=[dropout,dropout]"], "regularizer=[dropout,dropout] names dropout twice"),
    (["hydra.run.dir=/tmp/caf\u00e9"], "must be quoted"),
])
def test_command_line_mistakes_are_refused_before_hydra_starts(args, message):
    with pytest.raises(ConfigError) as error:
        check_command_line(args)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_valid_command_lines_pass():
    check_command_line(["-m", "regularizer=[label_smoothing],[dropout,label_smoothing]", "seed=0,1",
                        "regularizer.label_smoothing.epsilon=0.2"])
    check_command_line(["--config-dir", "mine", "regularizer=whatever"])  # another config folder
    check_command_line(["--info", "config", "trainer.epochs=2"])
    check_command_line(["hparams_search=dropout", "optimizer.lr=choice(0.1,0.2)"])  # Optuna: no -m
    check_command_line(["-m", "regularizer=glob(*)", "hydra/launcher=joblib"])


def test_overrides_go_before_hydras_flags_wherever_the_user_placed_them():
    command_line = split_command_line(["trainer.epochs=2", "-m", "seed=0,1", "--info", "seed=3",
                                       "--config-name", "config", "--cfg", "job"])
    assert command_line.overrides == ["trainer.epochs=2", "seed=0,1", "seed=3"]
    assert command_line.for_hydra() == ["trainer.epochs=2", "seed=0,1", "seed=3", "-m", "--info",
                                        "--config-name", "config", "--cfg", "job"]
    assert split_command_line(["--info", "defaults", "seed=1"]).flags == ["--info", "defaults"]


@pytest.mark.parametrize("args", [["--help", "regularizer=bogus"], ["--config-name", "config", "trainer.epochs=x"]])
def test_hydra_flags_with_a_bad_override_print_one_line(tmp_path, args):
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("regbench: error: ")


@pytest.mark.slow
def test_overrides_after_flags_run_the_sweep_they_ask_for(tmp_path):
    result = run_cli(["trainer.epochs=1", "-m", "seed=0,1", "evaluation.figures=false",
                      "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [read_metrics(tmp_path / "sweep" / name)["epochs"] for name in ("0_seed=0", "1_seed=1")] == [1, 1]


@pytest.mark.slow
def test_cli_prints_one_line_and_trains_nothing(tmp_path):
    result = run_cli(["regularizer=nonexistent", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"regbench: error: unknown regularizer 'nonexistent'; choose one of: {REGULARIZERS}"]
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("overrides,message", [
    (["dataset.train_size=5000"], "dataset.train_size=5000 is not allowed: at most 1257"),
    (["dataset.val_size=2000"], "dataset.val_size=2000 is not allowed"),
    (["dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.5,0.5,0.5]"],
     "dataset.mean=[0.5, 0.5, 0.5] is not allowed: 1 value (digits images have 1 channel)"),
    (["dataset=mnist", "dataset.download=false"], "files not found under"),
    (["regularizer=l2", "regularizer.l2.decoupled=true"], "only with optimizer=adamw"),
    (["regularizer=early_stopping", "dataset.val_size=0"], "early_stopping"),
    (["regularizer=[none,dropout]"], "regularizer=none cannot be combined with others"),
    (["dataset.val_size=0"], "objective='val/acc' is not allowed: a test/ or train/ metric when "
                             "dataset.val_size=0"),
    (["trainer.device=cuda:7"], "trainer.device='cuda:7' is not allowed: this machine has"),
])
def test_run_level_mistakes_stop_before_training(tmp_path, data_root, overrides, message):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=None) as error:
        train_in_process(run_dir, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (run_dir / "history.jsonl").exists() or not (run_dir / "history.jsonl").read_text()
    assert not (run_dir / "last.pt").exists()


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    train_in_process(run_dir, ["trainer.epochs=1", "model.hidden_sizes=[32]"])
    with pytest.raises(ConfigError, match="belongs to a different run .*model"):
        train_in_process(run_dir, ["trainer.epochs=1", "model.hidden_sizes=[64]"])
    (run_dir / "metrics.json").unlink()  # an unfinished run folder: the resume path checks too
    with pytest.raises(ConfigError, match="belongs to a different run .*dataset"):
        train_in_process(run_dir, ["trainer.epochs=1", "model.hidden_sizes=[32]", "dataset.train_size=100"])


def test_corrupt_checkpoint_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read.*delete it"):
        train_in_process(run_dir, ["trainer.epochs=1"])


@pytest.mark.slow
def test_divergence_in_a_sweep_does_not_stop_the_other_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "optimizer.lr=1e9,0.05", "trainer.epochs=2", "trainer.progress=false",
                      "trainer.num_threads=1", "evaluation.figures=false", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path)
    assert result.returncode != 0  # the sweep says that something failed
    diverged, completed = read_metrics(sweep / "0_optimizer.lr=1000000000.0"), read_metrics(sweep / "1_optimizer.lr=0.05")
    assert diverged["status"] == "diverged"
    assert diverged["diverged_epoch"] == 1 and "not finite" in diverged["error"]
    assert completed["status"] == "completed"
    report = run_cli([str(sweep)], cwd=tmp_path, module="regbench.report")
    assert report.returncode == 0
    assert "diverged" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_single_diverged_run_exits_non_zero(tmp_path):
    result = run_cli(["optimizer.lr=1e9", "trainer.epochs=2", "trainer.progress=false",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("regbench: diverged: loss is not finite at epoch 1")
    assert len(result.stderr.strip().splitlines()) == 1
    assert read_metrics(tmp_path / "run")["status"] == "diverged"
