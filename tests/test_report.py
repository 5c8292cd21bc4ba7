import csv

from peso.report import ResultsLog
from peso.train import BlockReport


def report(losses: list[float]) -> BlockReport:
    n = len(losses)
    return BlockReport(n, 1, losses, [1.0] * n, [0.0] * n)


def test_training_csv_numbers_each_training_of_a_block_and_reads_folders_from_before_the_column(tmp_path):
    log = ResultsLog(tmp_path)
    # a row replayed from a unit written before `pass` existed
    log.extend(0, [], [{"method": "single", "seed": 0, "block": 1, "epoch": 1, "valid_loss": 9.0}], {})
    log.training("select", 0, 1, report([3.0, 2.0]))  # two trainings of one block, as peso-select's
    log.training("select", 0, 1, report([4.0]))
    log.training("select", 0, 2, report([5.0]))  # the next block starts again at 1
    log.training("single", 0, 2, report([6.0]))
    log.flush()
    rows = list(csv.DictReader((tmp_path / "training.csv").open()))
    got = [(r["method"], r["block"], r["pass"], r["epoch"], r["valid_loss"]) for r in rows]
    assert got == [
        ("single", "1", "", "1", "9.0"),
        ("select", "1", "1", "1", "3.0"),
        ("select", "1", "1", "2", "2.0"),
        ("select", "1", "2", "1", "4.0"),
        ("select", "2", "1", "1", "5.0"),
        ("single", "2", "1", "1", "6.0"),
    ]
