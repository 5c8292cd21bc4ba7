"""benchmarks/select_lambdas.py: the lambda a peso-select run kept per block, against its training log."""

import csv
import sys
from pathlib import Path

from tests.conftest import tiny_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import select_lambdas  # noqa: E402


def test_the_kept_lambda_is_the_one_of_lowest_best_validation_loss(tmp_path, capsys):
    run = tiny_run(tmp_path, ["single", {"name": "peso-select", "lams": [1.0e4, 0.0], "label": "sel"}])
    (row,) = select_lambdas.choices(run)
    assert (row["method"], row["seed"], row["block"]) == ("sel", 0, 1)
    log = [r for r in csv.DictReader((run / "training.csv").open()) if r["method"] == "sel"]
    losses = [float(r["valid_loss"]) for r in log]
    half = len(losses) // 2  # two candidates, the same epochs each
    assert row["best_valid_loss"] == {"10000.0": min(losses[:half]), "0.0": min(losses[half:])}
    assert row["kept"] == (1.0e4 if min(losses[:half]) < min(losses[half:]) else 0.0)
    single = [
        float(r["valid_loss"])
        for r in csv.DictReader((run / "training.csv").open())
        if (r["method"], r["block"]) == ("single", "1")
    ]
    assert losses[half:] == single  # lambda 0 is `single`, epoch for epoch
    capsys.readouterr()
    assert select_lambdas.main([str(run)]) == 0
    assert "| sel | 0 | 1 |" in capsys.readouterr().out


def test_a_folder_peso_did_not_write_is_one_line_and_exit_2(tmp_path, capsys):
    assert select_lambdas.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.yaml" in err[0] and "fix:" in err[0]
