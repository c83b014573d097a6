"""Scoring a labelled image set from elsewhere (another clinic, another camera) with the
deployed students, nothing refitted.

A set is a folder of images (whatever PIL opens: JPEG, PNG, BMP, TIFF, WebP; any size and
aspect ratio) and a CSV naming each image with either a 0/1 melanoma ``label`` or a HAM10000
``dx`` code, and optionally a ``lesion_id``. Every image is decoded and resized exactly as the
prepare stage decodes HAM10000 (:func:`data.decode`), then scored by each model with the
temperature and the threshold chosen on the HAM10000 validation split (the operating-point
file of the model_card stage). The external labels are used for scoring only: nothing is fitted
on them, so the figures say what a user of the shipped model would see at that clinic.

Bad input is refused with the file, the row and what was expected; images that are missing or
unreadable are skipped and counted, and too many of them stop the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline_lib import data, prediction
from pipeline_lib.operating_point import ModelOperatingPoint

IMAGE_COLUMNS = ("image", "image_id", "file", "filename", "path")
LABEL_COLUMNS = ("label", "melanoma")


class ExternalSetError(ValueError):
    """The labels file or the image folder of an external set is unusable; the message names
    the file, column, row or value and what was expected."""


@dataclass
class ExternalSet:
    """The decoded images of an external set and their labels, in the same order."""

    images: np.ndarray  # uint8 (N, 3, S, S), decoded as the prepare stage does
    table: pd.DataFrame  # image, file, label (0/1), dx ("" when not given), lesion_id
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image", "reason"}
    n_listed: int = 0  # rows of the labels file
    grouped_by: str = "image"  # the bootstrap's unit: "lesion" with a lesion_id column

    @property
    def has_dx(self) -> bool:
        return bool((self.table["dx"] != "").all())


def _column(table: pd.DataFrame, given: str | None, known: tuple[str, ...], path: Path) -> str:
    if given is not None:
        if given not in table.columns:
            raise ExternalSetError(
                f"{path}: no column {given!r}; columns are {', '.join(table.columns)}"
            )
        return given
    found = [c for c in known if c in table.columns]
    if not found:
        raise ExternalSetError(
            f"{path}: no image column (expected one of {', '.join(known)}); "
            f"columns are {', '.join(table.columns)}"
        )
    return found[0]


def _row(i: int) -> str:
    return f"line {i + 2}"  # the header is line 1


def read_labels(path: str | os.PathLike, image_column: str | None = None) -> pd.DataFrame:
    """The labels CSV as ``image, label, dx, lesion_id`` (strings; ``label`` int 0/1).

    Raises:
        ExternalSetError: for a missing file, no image or label column, an empty image name,
            a label other than 0/1, an unknown dx code, a label that contradicts its dx, or
            duplicate image names.
    """
    path = Path(path)
    if not path.is_file():
        raise ExternalSetError(f"labels file {path} not found (expected a CSV)")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ExternalSetError(f"{path}: not a readable CSV ({err})") from err
    raw.columns = [str(c).strip() for c in raw.columns]
    if raw.empty:
        raise ExternalSetError(f"{path}: no rows")
    image_col = _column(raw, image_column, IMAGE_COLUMNS, path)
    images = raw[image_col].str.strip()
    if (images == "").any():
        i = int(np.flatnonzero(images == "")[0])
        raise ExternalSetError(f"{path}, {_row(i)}: empty {image_col!r}")
    label_col = next((c for c in LABEL_COLUMNS if c in raw.columns), None)
    if label_col is None and "dx" not in raw.columns:
        raise ExternalSetError(
            f"{path}: no label column: expected a 0/1 melanoma column ({' or '.join(LABEL_COLUMNS)}) "
            f"or a HAM10000 dx column (codes {', '.join(data.DX_CODES)}); "
            f"columns are {', '.join(raw.columns)}"
        )
    dx = pd.Series([""] * len(raw))
    if "dx" in raw.columns:
        dx = raw["dx"].str.strip().str.lower()
        bad = ~dx.isin(data.DX_CODES)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ExternalSetError(
                f"{path}, {_row(i)}: dx {raw['dx'].iloc[i]!r} is not a HAM10000 code "
                f"({', '.join(data.DX_CODES)})"
            )
    if label_col is not None:
        values = raw[label_col].str.strip()
        bad = ~values.isin(["0", "1"])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ExternalSetError(
                f"{path}, {_row(i)}: {label_col} {values.iloc[i]!r} is not 0 or 1 (1 = melanoma)"
            )
        label = values.astype(int)
        if "dx" in raw.columns:
            clash = label != (dx == data.MELANOMA).astype(int)
            if clash.any():
                i = int(np.flatnonzero(clash)[0])
                raise ExternalSetError(
                    f"{path}, {_row(i)}: {label_col} {label.iloc[i]} contradicts dx "
                    f"{dx.iloc[i]!r} (1 exactly when dx is 'mel')"
                )
    else:
        label = (dx == data.MELANOMA).astype(int)
    duplicated = images[images.duplicated(keep=False)]
    if len(duplicated):
        names = sorted(set(duplicated))
        raise ExternalSetError(
            f"{path}: image(s) listed more than once in {image_col!r}: "
            f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''} ({len(names)} in all)"
        )
    lesion = raw["lesion_id"].str.strip() if "lesion_id" in raw.columns else images
    if (lesion == "").any():
        i = int(np.flatnonzero(lesion == "")[0])
        raise ExternalSetError(f"{path}, {_row(i)}: empty lesion_id (leave the column out instead)")
    table = pd.DataFrame(
        {"image": images.values, "label": label.values, "dx": dx.values, "lesion_id": lesion.values}
    )
    table.attrs["grouped_by"] = "lesion" if "lesion_id" in raw.columns else "image"
    return table


def index_folder(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """Every image file under ``folder`` (recursively) by relative path, file name and stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExternalSetError(f"image folder {folder} not found")
    index: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in prediction.IMAGE_SUFFIXES:
            keys = {p.relative_to(folder).as_posix(), p.name, p.stem}
            for key in keys:
                index.setdefault(key, []).append(p)
    return index


def resolve(name: str, index: dict[str, list[Path]]) -> Path | str:
    """The file an image name refers to, or why there is none."""
    found = index.get(name) or index.get(Path(name).as_posix())
    if not found:
        return "no such image file in the folder"
    if len(found) > 1:
        return f"ambiguous: {', '.join(str(p) for p in found[:3])}"
    return found[0]


def load(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    cache_size: int,
    max_bad_fraction: float = 0.05,
    image_column: str | None = None,
    progress: bool = True,
) -> ExternalSet:
    """Read the labels, find and decode every image as the prepare stage does.

    Args:
        cache_size: the prepare stage's square decode size (the operating point records it).
        max_bad_fraction: above this fraction of missing or unreadable images, stop.

    Raises:
        ExternalSetError: bad labels (see :func:`read_labels`), too many bad images, or a set
            whose usable images are all melanomas or all benign (ROC-AUC is undefined).
    """
    table = read_labels(labels_csv, image_column)
    grouped = table.attrs["grouped_by"]
    index = index_folder(images_dir)
    decoded, keep, files, skipped = [], [], [], []
    bar = tqdm(table["image"], desc="decode", unit="img", disable=not progress)
    for i, name in enumerate(bar):
        where = resolve(name, index)
        if isinstance(where, str):
            skipped.append({"image": name, "reason": where})
            continue
        try:
            decoded.append(prediction.decode(where, cache_size))
        except prediction.InputError as err:
            skipped.append({"image": name, "reason": str(err)})
            continue
        keep.append(i)
        files.append(str(where))
    if len(skipped) > max_bad_fraction * len(table):
        listed = "; ".join(f"{s['image']}: {s['reason']}" for s in skipped[:5])
        raise ExternalSetError(
            f"{len(skipped)} of {len(table)} images of {labels_csv} are missing or unreadable "
            f"under {images_dir} (more than the allowed fraction {max_bad_fraction:g}): {listed}"
        )
    kept = table.iloc[keep].reset_index(drop=True)
    kept.insert(1, "file", files)
    for value, what in ((0, "benign (label 0)"), (1, "melanoma (label 1, dx 'mel')")):
        if not (kept["label"] == value).any():
            raise ExternalSetError(
                f"{labels_csv}: no {what} image among the {len(kept)} usable ones: ROC-AUC, "
                "PR-AUC and the sensitivity/specificity pair are undefined on one class"
            )
    return ExternalSet(np.stack(decoded), kept, skipped, len(table), grouped)


@dataclass
class Scored:
    """One model's calibrated scores of an external set and its val operating point."""

    probabilities: np.ndarray  # melanoma, calibrated with the val temperature
    point: ModelOperatingPoint  # the val temperature, threshold and figures
    dx: np.ndarray | None = None  # (N, 7) calibrated dx probabilities of a dx model

    @property
    def threshold(self) -> float:
        """Chosen on val for the target sensitivity."""
        return self.point.threshold


def score(ext: ExternalSet, scorers: dict[str, prediction.Scorer]) -> dict[str, Scored]:
    """Every model's scores of the set, with the temperature and threshold chosen on val."""
    out = {}
    for name, scorer in scorers.items():
        p, dx = scorer.scores(ext.images)
        out[name] = Scored(p, scorer.point, dx)
    return out


def evaluate(
    ext: ExternalSet, scored: dict[str, Scored], n_bootstrap: int, seed: int, n_bins: int
) -> dict:
    """The holdout report's figures on the external set, at the val-chosen operating points.

    ROC-AUC, PR-AUC and ECE with 95% bootstrap intervals (lesions resampled when the labels
    give a ``lesion_id``, images otherwise), Brier, and sensitivity and specificity at the
    val threshold with intervals; for a dx model with dx labels, the 7-way figures too.
    """
    from pipeline_lib import bootstrap, evaluation, metrics

    y = ext.table["label"].to_numpy()
    weights = bootstrap.lesion_weights(
        ext.table["lesion_id"], n_bootstrap, np.random.default_rng(seed)
    )
    models = {}
    for name, s in scored.items():
        models[name] = {
            **evaluation.holdout_figures(y, s.probabilities, s.threshold, weights, n_bins),
            "val": {
                k: getattr(s.point, k)
                for k in (
                    "val_roc_auc",
                    "val_sensitivity",
                    "val_specificity",
                    "val_ece",
                    "temperature",
                    "target_sensitivity",
                )
            },  # fmt: skip
            "file": s.point.file,
        }
        if s.dx is not None and ext.has_dx:
            models[name]["dx"] = metrics.dx_figures(ext.table["dx"], s.dx)
    return {
        "n_listed": ext.n_listed,
        "n_scored": len(y),
        "n_melanoma": int(y.sum()),
        "n_lesions": int(ext.table["lesion_id"].nunique()),
        "n_skipped": len(ext.skipped),
        "skipped": ext.skipped,
        "bootstrap": {"resamples": n_bootstrap, "unit": ext.grouped_by, "seed": seed},
        "models": models,
    }


def markdown(results: dict, name: str) -> str:
    """The report of one external set as markdown: per model, the external figures beside the
    model's val figures, and the 7-way figures of dx models."""
    from pipeline_lib import formatting, report

    ci = formatting.with_ci
    r = results
    lines = [
        f"# External set `{name}`",
        "",
        f"{r['n_scored']} images scored ({r['n_melanoma']} melanomas, {r['n_lesions']} "
        f"{'lesions' if r['bootstrap']['unit'] == 'lesion' else 'distinct images'}) of "
        f"{r['n_listed']} listed; {r['n_skipped']} skipped (missing or unreadable). 95% intervals "
        f"from {r['bootstrap']['resamples']} bootstrap resamples of "
        f"{r['bootstrap']['unit']}s. Every model uses the temperature and the threshold chosen on "
        "the HAM10000 validation split; nothing was fitted on this set.",
        "",
    ]
    rows = []
    for model, m in r["models"].items():
        op, val = m["at_target_sensitivity"], m["val"]
        rows.append(
            [f"`{model}`", ci(m, "roc_auc"), formatting.number(val["val_roc_auc"]),
             ci(m, "pr_auc"), ci(m, "ece"), f"{op['threshold']:.3f}", ci(op, "sensitivity"),
             formatting.number(val["val_sensitivity"]), ci(op, "specificity"),
             formatting.number(val["val_specificity"])]
        )  # fmt: skip
    lines += formatting.table(
        ["model", "ROC-AUC", "val ROC-AUC", "PR-AUC", "ECE", "threshold (from val)",
         "sensitivity", "val sensitivity", "specificity", "val specificity"],
        rows,
    )  # fmt: skip
    for model, m in r["models"].items():
        if "dx" not in m:
            continue
        lines += ["", *report.dx_table(m["dx"], model)]
    if r["skipped"]:
        lines += ["", "Skipped images:", ""]
        lines += [f"- `{s['image']}`: {s['reason']}" for s in r["skipped"][:20]]
        if len(r["skipped"]) > 20:
            lines.append(f"- ... {len(r['skipped']) - 20} more (report.json lists all)")
    return "\n".join(lines) + "\n"


def _gallery(ext: ExternalSet, s: Scored, size: int, model: str, path: Path) -> None:
    """The deployed model's worst errors: missed melanomas with the lowest probability, false
    alarms with the highest."""
    from pipeline_lib.plotting import plt, save

    y, p = ext.table["label"].to_numpy().astype(bool), s.probabilities
    missed = np.flatnonzero(y & (p < s.threshold))
    alarms = np.flatnonzero(~y & (p >= s.threshold))
    rows = {
        "missed melanomas\n(lowest p)": missed[np.argsort(p[missed], kind="stable")][:size],
        "false alarms\n(highest p)": alarms[np.argsort(-p[alarms], kind="stable")][:size],
    }
    fig, axes = plt.subplots(2, size, figsize=(1.5 * size + 1, 3.8), squeeze=False)
    for r, (label, idx) in enumerate(rows.items()):
        axes[r, 0].set_ylabel(label, fontsize=7)
        for c, ax in enumerate(axes[r]):
            ax.set(xticks=[], yticks=[])
            if c < len(idx):
                i = idx[c]
                ax.imshow(ext.images[i].transpose(1, 2, 0))
                dx = ext.table["dx"].iloc[i]
                ax.set_title(
                    f"p {p[i]:.2f}{f', {dx}' if dx else ''}\n{ext.table['image'].iloc[i][:16]}",
                    fontsize=6,
                )
            else:
                ax.axis("off")
    fig.suptitle(f"{model}: errors at the val threshold {s.threshold:.3f}", fontsize=8)
    save(fig, path)


def write_report(
    results: dict,
    ext: ExternalSet,
    scored: dict[str, Scored],
    out: str | os.PathLike,
    name: str,
    n_bins: int,
    gallery_size: int = 8,
) -> None:
    """report.json, report.md, predictions.csv, roc.png, reliability.png, gallery.png (and
    dx_confusion.png for a dx model) in ``out``: written into a temporary folder beside it and
    moved into place at the end, so an interrupted run leaves no half-written report."""
    import shutil
    import tempfile

    from pipeline_lib import artifacts, plotting, report

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        artifacts.write_json(tmp / "report.json", results)
        (tmp / "report.md").write_text(markdown(results, name))
        table = ext.table.copy()
        for model, s in scored.items():
            table[f"p_{model}"] = s.probabilities
            table[f"suspicious_{model}"] = s.probabilities >= s.threshold
            if s.dx is not None:
                table[f"top_dx_{model}"] = [data.DX_CODES[i] for i in s.dx.argmax(1)]
                for i, code in enumerate(data.DX_CODES):
                    table[f"p_{code}_{model}"] = s.dx[:, i]
        artifacts.write_csv(tmp / "predictions.csv", table)
        y = ext.table["label"].to_numpy()
        probs = {m: s.probabilities for m, s in scored.items()}
        roc, _ = report.curves(y, probs)
        aucs = {m: results["models"][m]["roc_auc"] for m in scored}
        plotting.roc_curves(roc, aucs, tmp / "roc.png", title=f"External set {name}")
        plotting.reliability_diagram(
            y, probs, n_bins, tmp / "reliability.png", f"External set {name}"
        )
        first = next(iter(scored))
        _gallery(ext, scored[first], gallery_size, first, tmp / "gallery.png")
        for model, m in results["models"].items():
            if "dx" in m:
                _confusion_plot(m["dx"], model, tmp / f"dx_confusion_{model}.png")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _confusion_plot(dx: dict, model: str, path: Path) -> None:
    from pipeline_lib.plotting import plt, save

    counts = np.asarray(dx["confusion"], dtype=float)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), c in np.ndenumerate(counts):
        ax.text(j, i, str(int(c)), ha="center", va="center", fontsize=8)
    ticks = range(len(dx["classes"]))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=dx["classes"], yticklabels=dx["classes"],
           xlabel="most likely dx", ylabel="true dx", title=f"{model}: 7-way diagnosis")  # fmt: skip
    save(fig, path)


def run(
    images_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out: str | os.PathLike,
    models: list[str],
    paths: prediction.ModelPaths,
    name: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
    max_bad_fraction: float = 0.05,
    image_column: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Load, score, evaluate and write the report of one external set; return the figures."""
    scorers = {m: prediction.Scorer(m, paths, threads=threads) for m in models}
    sizes = {s.point.cache_size for s in scorers.values()}
    if len(sizes) != 1:
        raise ExternalSetError(f"the models were trained on different decode sizes {sizes}")
    ext = load(images_dir, labels_csv, sizes.pop(), max_bad_fraction, image_column, progress)
    scored = score(ext, scorers)
    results = evaluate(ext, scored, n_bootstrap, seed, n_bins)
    write_report(results, ext, scored, out, name or Path(images_dir).name, n_bins)
    return results


def summary(results: dict) -> dict:
    """The figures of an external report that ``dvc metrics diff`` compares."""
    keep = ("roc_auc", "roc_auc_low", "roc_auc_high", "pr_auc", "ece")
    out: dict = {k: results[k] for k in ("n_scored", "n_melanoma", "n_skipped")}
    for model, m in results["models"].items():
        op = m["at_target_sensitivity"]
        out[model] = {k: m[k] for k in keep} | {
            "sensitivity": op["sensitivity"],
            "specificity": op["specificity"],
        }
        if "dx" in m:
            out[model]["dx_balanced_accuracy"] = m["dx"]["balanced_accuracy"]
    return out
