from conftest import train_in_process


def test_default_config_trains_on_digits(tmp_path):
    metrics = train_in_process(tmp_path / "run")
    assert metrics["status"] == "completed"
    assert metrics["dataset"] == "digits" and metrics["regularizer"] == ["none"]
    assert metrics["test/acc"] > 0.8
