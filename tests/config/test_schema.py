"""Every option of every config group composes into a valid, typed config; mistakes are refused."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from conftest import compose_config
from regbench.cli.compose import config_dir
from regbench.config import Config, ConfigError

GROUPS = ["dataset", "model", "optimizer", "regularizer"]
# Options that need a value only the user can give.
REQUIRED = {("dataset", "imagefolder"): ["dataset.root=/some/folder"]}


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option", [(group, option) for group in GROUPS for option in options(group)]
)
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}", *REQUIRED.get((group, option), [])])
    settings = OmegaConf.to_object(cfg)
    assert isinstance(settings, Config)
    if group == "regularizer":
        assert list(settings.regularizer) == [option]
    else:
        assert getattr(settings, group).name == option


def test_defaults_are_the_documented_ones():
    settings = OmegaConf.to_object(compose_config())
    assert settings.dataset.name == "digits"
    assert settings.model.name == "mlp" and settings.model.hidden_sizes == [1024, 1024]
    assert settings.optimizer.name.value == "sgd"
    assert list(settings.regularizer) == ["none"]
    assert settings.trainer.device == "auto" and settings.seed == 0


def test_dataset_root_defaults_to_env_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("REGBENCH_DATA", str(tmp_path))
    assert OmegaConf.to_object(compose_config()).dataset.root == str(tmp_path)
    monkeypatch.delenv("REGBENCH_DATA")
    assert OmegaConf.to_object(compose_config()).dataset.root == "data"


def test_misspelled_key_is_refused():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["trainer.epoch=3"])
    assert "Key 'epoch' not in 'TrainerConfig'" in str(error.value.__cause__)


def test_wrong_type_is_refused():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["trainer.batch_size=many"])
    assert isinstance(error.value.__cause__, ValidationError)


def test_unknown_schedule_is_refused():
    with pytest.raises(ConfigCompositionException):
        compose_config(["optimizer.schedule=exponential"])


@pytest.mark.parametrize("override,key", [
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("dataset.val_size=-1", "dataset.val_size"),
    ("trainer.device=tpu", "trainer.device"),
])
def test_out_of_range_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        OmegaConf.to_object(compose_config([override]))


def test_multi_select_keeps_each_regularizer_under_its_own_key():
    if "label_smoothing" not in options("regularizer") or "dropout" not in options("regularizer"):
        pytest.skip("needs the dropout and label_smoothing options")
    cfg = compose_config(["regularizer=[dropout,label_smoothing]",
                          "regularizer.label_smoothing.epsilon=0.2"])
    assert set(cfg.regularizer) == {"dropout", "label_smoothing"}
    assert cfg.regularizer.label_smoothing.epsilon == 0.2


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_grid_is_valid(experiment):
    """Each value of each preset's sweep composes into a valid config (checked like a command line)."""
    from hydra import compose, initialize_config_dir

    from regbench.cli.command_line import check_command_line

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert "seed" in params and len(str(params.seed).split(",")) >= 3
    check_command_line(["-m", f"experiment={experiment}", *(f"{k}={v}" for k, v in params.items())])


@pytest.mark.parametrize("search", options("hparams_search"))
def test_every_hparams_search_composes(search):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    (key,) = cfg.hydra.sweeper.params
    assert key.startswith(f"regularizer.{search}.")
    assert list(cfg.regularizer) == [search] and cfg.objective == "val/acc"
