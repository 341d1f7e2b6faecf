"""train.py's last lines: the summary a user reads after a run."""

from __future__ import annotations

from pathlib import Path

from regbench.run.spec import DID_NOT_LEARN
from regbench.train import print_summary

METRICS = {"test/acc": 0.1, "test/ece": 0.05, "test/nll": 2.3, "test/mean_confidence": 0.99,
           "epochs": 10, "seconds": 1.0, "train/acc": 0.11}


def test_a_run_that_did_not_learn_says_so_in_its_summary(capsys):
    print_summary({**METRICS, DID_NOT_LEARN: True}, Path("outputs/runs/x"))
    assert ("warning: this run did not learn: its final training accuracy 0.1100 stayed near chance"
            in capsys.readouterr().out)
    print_summary({**METRICS, DID_NOT_LEARN: False}, Path("outputs/runs/x"))
    assert "did not learn" not in capsys.readouterr().out


def test_a_null_metric_prints_as_nan_instead_of_a_traceback(capsys):
    print_summary({**METRICS, "test/nll": None}, Path("outputs/runs/x"))
    assert "nll nan," in capsys.readouterr().out
