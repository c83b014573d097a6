"""PNG plots (they render offline in `dvc plots show`, unlike the vega charts)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline_lib import artifacts, metrics  # noqa: E402


def save(fig: plt.Figure, path: str | Path) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def reliability_diagram(
    labels, probs_by_name: dict, n_bins: int, path: str | Path, title: str = ""
) -> None:
    """Observed melanoma frequency against mean predicted probability, same bins as the ECE."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for name, probs in probs_by_name.items():
        rel = metrics.reliability(labels, probs, n_bins)
        ax.plot(
            rel["mean_prob"],
            rel["frac_pos"],
            "o-",
            label=f"{name} (ECE {metrics.ece(labels, probs, n_bins):.3f})",
        )
    ax.set(
        xlabel="mean predicted melanoma probability",
        ylabel="observed melanoma frequency",
        xlim=(0, 1),
        ylim=(0, 1),
        title=title,
    )
    ax.legend(loc="upper left")
    save(fig, path)


def roc_curves(curves, aucs: dict[str, float], path: str | Path, title: str = "") -> None:
    """ROC curves of several models in one PNG.

    Args:
        curves: long table with ``model``, ``fpr`` and ``tpr`` columns.
        aucs: ROC-AUC per model, shown in the legend.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for name, curve in curves.groupby("model", sort=False):
        ax.plot(curve["fpr"], curve["tpr"], lw=1.5, label=f"{name} (AUC {aucs[name]:.3f})")
    ax.set(xlabel="false positive rate", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=8)
    save(fig, path)
