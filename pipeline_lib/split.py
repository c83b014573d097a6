"""Lesion-grouped, melanoma-stratified train/val/test split."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")


def assign(
    table: pd.DataFrame, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> pd.Series:
    """Assign every image to ``train``, ``val`` or ``test``; no lesion spans two splits.

    The data are cut into ``1 / gcd``-sized stratified group folds (20 folds for 15%/15%) with
    scikit-learn's :class:`StratifiedGroupKFold`; whole folds go to test and val.

    Args:
        table: needs ``lesion_id`` and ``label`` columns.
        seed: the only source of randomness; the same seed gives the same split.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"split fractions val={val_fraction}, test={test_fraction} must be in (0, 1) "
            "and sum to less than 1"
        )
    n_folds = 20
    n_test = round(test_fraction * n_folds)
    n_val = round(val_fraction * n_folds)
    if (
        n_test < 1
        or n_val < 1
        or abs(n_test / n_folds - test_fraction) > 1e-9
        or abs(n_val / n_folds - val_fraction) > 1e-9
    ):
        raise ValueError("split fractions must be multiples of 0.05")
    # Sort first so that the split does not depend on the metadata's row order.
    order = np.lexsort((table["image_id"].to_numpy(), table["lesion_id"].to_numpy()))
    sorted_table = table.iloc[order]
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(table), dtype=int)
    for k, (_, idx) in enumerate(
        folds.split(np.zeros(len(table)), sorted_table["label"], sorted_table["lesion_id"])
    ):
        fold_of[order[idx]] = k
    names = np.where(fold_of < n_test, "test", np.where(fold_of < n_test + n_val, "val", "train"))
    return pd.Series(names, index=table.index, name="split")


def describe(table: pd.DataFrame, split: pd.Series, seed: int) -> dict:
    """Counts, lesions and melanoma share per split, and the seed."""
    out: dict = {"seed": seed}
    for name in SPLITS:
        part = table[split == name]
        out[name] = {
            "images": int(len(part)),
            "lesions": int(part["lesion_id"].nunique()),
            "melanoma_images": int(part["label"].sum()),
            "melanoma_share": float(part["label"].mean()) if len(part) else float("nan"),
        }
    return out
