"""The training-curves PNG written beside dvclive's TSVs."""

import math

from pipeline_lib import tracking


def test_plot_curves_writes_a_png_and_nothing_else(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 0.9, "val_roc_auc": 0.70},
        {"epoch": 2, "train_loss": 0.6, "val_roc_auc": 0.80},
        {"epoch": 3, "train_loss": 0.5, "val_roc_auc": math.nan},  # one-class val: no AUC
    ]
    path = tmp_path / "live" / "curves.png"
    tracking.plot_curves(history, 2, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]
