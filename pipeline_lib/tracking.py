"""Per-epoch logging with dvclive; the pipeline's own dvc.yaml declares the plots."""

from __future__ import annotations

from collections.abc import Callable

from dvclive import Live


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
