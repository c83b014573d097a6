"""The markdown numbers, intervals and tables shared by the evaluate report and the model card."""

import math

import numpy as np

from pipeline_lib import formatting


def test_number_marks_missing_and_undefined_values():
    assert formatting.number(0.12345) == "0.123"
    assert formatting.number(1234.5, ".0f") == "1234"
    assert formatting.number(np.float64(0.5)) == "0.500"
    for value in (None, math.nan, np.float64("nan"), math.inf):
        assert formatting.number(value) == "-"


def test_with_ci_shows_the_interval_only_when_there_is_one():
    entry = {"auc": 0.8512, "auc_low": 0.8, "auc_high": 0.9}
    assert formatting.with_ci(entry, "auc") == "0.851 [0.800, 0.900]"
    assert formatting.with_ci({"auc": 0.8512}, "auc") == "0.851"
    assert formatting.with_ci(entry | {"auc_low": math.nan}, "auc") == "0.851"
    assert formatting.with_ci({"auc": math.nan, "auc_low": math.nan}, "auc") == "-"


def test_table():
    assert formatting.table(["a", "b"], [["1", "2"], ["3", "4"]]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | 2 |",
        "| 3 | 4 |",
    ]
