"""Per-epoch logging with dvclive and the training-curves PNG; dvc.yaml declares the plots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dvclive import Live

from pipeline_lib import artifacts


def open_live(directory: str) -> Live:
    """A dvclive logger writing under ``directory`` without touching dvc.yaml."""
    # dvcyaml=False: otherwise Live rewrites the pipeline's dvc.yaml (docs/profiling.md).
    return Live(directory, dvcyaml=False, save_dvc_exp=False, report=None)


def epoch_logger(live: Live) -> Callable[[dict[str, float]], None]:
    """A ``log`` callback for :func:`pipeline_lib.training.fit` that writes one dvclive step."""

    def log(row: dict[str, float]) -> None:
        for key, value in row.items():
            if key == "epoch":
                continue
            split, _, name = key.partition("_")
            live.log_metric(f"{split}/{name}" if split in ("train", "val") else key, value)
        live.next_step()

    return log


def plot_curves(history: list[dict[str, float]], best_epoch: int, path: str | Path) -> None:
    """Train loss and val ROC-AUC per epoch as a PNG, the chosen epoch marked.

    Args:
        history: :attr:`pipeline_lib.training.FitResult.history` (``epoch``, ``train_loss``
            and ``val_roc_auc`` in each row).
    """
    # A Figure without pyplot: no global backend state in the training process.
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    loss_ax, auc_ax = fig.subplots(1, 2)
    for ax, key, label in (
        (loss_ax, "train_loss", "train loss"),
        (auc_ax, "val_roc_auc", "val ROC-AUC"),
    ):
        ax.plot(epochs, [row[key] for row in history], "o-")
        ax.axvline(best_epoch, color="k", ls="--", lw=1, label=f"chosen epoch {best_epoch}")
        ax.set(xlabel="epoch", ylabel=label, title=f"{label} per epoch")
        ax.grid(alpha=0.3)
    auc_ax.legend(fontsize=8)
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
