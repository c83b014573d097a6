"""``melanoma-kd``: score lesion photos with the trained student (``predict``), on a web page
(``serve``), or score a labelled image set from another clinic (``evaluate``).

Both read the pipeline's outputs (``make repro``); the defaults point at this checkout's
``data/`` folder, the paths written in ``dvc.yaml``, and each can be overridden by a flag.

``predict`` imports the runtimes only (:mod:`pipeline_lib.runtime`), never the training loop
or the exporters: it starts in a couple of seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline_lib import external, operating_point, prediction, runtime

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {
    "operating_point": REPO / "data/model_card/operating_point.json",
    "checkpoint": REPO / "data/distill/model.pt",
    "pte": REPO / "data/quantize/student_int8.pte",
    "onnx": REPO / "data/quantize/student_int8.onnx",
}
# Expected, user-facing failures: reported in one line, without a traceback.
USER_ERRORS = (
    prediction.InputError,
    operating_point.OperatingPointError,
    runtime.ModelFileError,
    external.ExternalSetError,
)


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", choices=prediction.MODEL_NAMES, default="int8",
        help="int8: ExecuTorch .pte (default); int8-onnx: ONNX Runtime; float: PyTorch checkpoint",
    )  # fmt: skip
    _path_flags(parser)


def _path_flags(parser: argparse.ArgumentParser) -> None:
    for name, path in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=Path, default=path, help=f"default: {path}")


def _paths(args: argparse.Namespace) -> prediction.ModelPaths:
    return prediction.ModelPaths(args.operating_point, args.checkpoint, args.pte, args.onnx)


def _explanation_paths(out: Path, files: list[Path]) -> list[Path]:
    """``out`` itself for one photo; ``<out stem>_<photo stem>.png`` beside it for several."""
    if len(files) == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{f.stem}.png") for f in files]


def predict(args: argparse.Namespace) -> int:
    files = prediction.image_files(args.images)
    began = time.perf_counter()
    scorer = prediction.Scorer(
        args.model, _paths(args), explain=args.explain is not None, threads=torch.get_num_threads()
    )
    loaded = time.perf_counter() - began
    point = scorer.point
    explanations = _explanation_paths(args.explain, files) if args.explain else None
    progress = len(files) > 1 and any(Path(i).is_dir() for i in args.images)
    if not args.json:
        print(f"model: {args.model} ({scorer.file})")
        print(
            f"operating point, chosen on the validation split for {point.target_sensitivity:.0%} "
            f"sensitivity: calibrated p(melanoma) >= {point.threshold:.4f} is {prediction.SUSPICIOUS}; "
            f"at it, val sensitivity {point.val_sensitivity:.3f}, specificity "
            f"{point.val_specificity:.3f} ({point.n_val} images, {point.n_val_melanoma} melanomas)"
        )
    results, errors = [], []
    for item in scorer.predict_files(files, explanations, progress=progress):
        if isinstance(item, prediction.InputError):
            errors.append(str(item))
            print(f"error: {item}", file=sys.stderr)
            continue
        results.append(item)
        if not args.json:
            line = f"{item.image}: p(melanoma) = {item.probability:.3f}  {item.decision}"
            if item.top_classes:
                line += (
                    "  (most likely: "
                    + ", ".join(f"{c['dx']} {c['probability']:.2f}" for c in item.top_classes)
                    + ")"
                )
            if item.explanation:
                line += f"  (Grad-CAM: {item.explanation})"
            (tqdm.write if progress else print)(line)  # tqdm.write keeps the bar intact
    seconds = time.perf_counter() - began - loaded
    per_image = 1000 * seconds / max(len(results), 1)
    if args.json:
        summary = {
            "model": args.model, "model_file": str(scorer.file),
            "operating_point": {
                k: getattr(point, k) for k in (
                    "threshold", "temperature", "target_sensitivity", "val_sensitivity",
                    "val_specificity", "val_roc_auc", "n_val", "n_val_melanoma",
                )
            },
            "predictions": [
                asdict(r) | {
                    "threshold": point.threshold, "val_sensitivity": point.val_sensitivity,
                    "val_specificity": point.val_specificity,
                } for r in results
            ],
            "errors": errors, "model_load_seconds": loaded, "ms_per_image": per_image,
            "disclaimer": prediction.DISCLAIMER,
        }  # fmt: skip
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{len(results)} image(s) scored in {seconds:.2f} s ({per_image:.1f} ms per image"
            f"{', Grad-CAM included' if explanations else ''}; model loaded in {loaded:.2f} s)."
        )
        print(prediction.DISCLAIMER)
    return 1 if errors else 0


def serve(args: argparse.Namespace) -> int:
    from pipeline_lib import webapp  # Flask is needed by this subcommand only

    scorer = prediction.Scorer(args.model, _paths(args), explain=True)
    app = webapp.create_app(scorer, args.max_upload_mb)
    print(f"melanoma-kd: open http://{args.host}:{args.port} ({prediction.DISCLAIMER})")
    app.run(host=args.host, port=args.port, threaded=True)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    results = external.run(
        args.images, args.labels, args.out, args.models, _paths(args), args.name,
        args.bootstrap, args.seed, args.ece_bins, args.max_bad_fraction, args.image_column,
        threads=torch.get_num_threads(),
    )  # fmt: skip
    print((args.out / "report.md").read_text())
    print(f"report: {args.out}/report.md (figures in report.json, plots beside it)")
    if results["n_skipped"]:
        print(f"{results['n_skipped']} image(s) skipped: listed in the report", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="melanoma-kd", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "predict", help="score lesion photos",
        description="Print each photo's calibrated melanoma probability and the decision at the "
        "operating point chosen on val. " + prediction.DISCLAIMER,
    )  # fmt: skip
    p.add_argument("images", nargs="+", help="photos, or folders whose images are all scored")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument(
        "--explain", type=Path, metavar="OUT.png",
        help="write the float student's Grad-CAM heat map over the photo (OUT_<photo>.png each "
        "when several photos)",
    )  # fmt: skip
    _model_flags(p)
    p.set_defaults(run=predict)
    s = commands.add_parser("serve", help="a local web page that scores an uploaded photo")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="larger uploads get 413")
    _model_flags(s)
    s.set_defaults(run=serve)
    e = commands.add_parser(
        "evaluate", help="score a labelled image set from elsewhere (another clinic or camera)",
        description="Score every image of a folder against a CSV of labels with each student's "
        "temperature and threshold chosen on the HAM10000 validation split (nothing is refitted "
        "on the set), and write ROC-AUC, PR-AUC, ECE, sensitivity and specificity with bootstrap "
        "intervals, ROC and reliability plots and an error gallery to OUT.",
    )  # fmt: skip
    e.add_argument(
        "--images", type=Path, required=True, help="folder of images (searched recursively)"
    )
    e.add_argument(
        "--labels", type=Path, required=True,
        help="CSV: an image column (image, image_id, file, filename or path: a file name, with or "
        "without suffix, or a path under --images), a 0/1 label (or melanoma) column or a HAM10000 "
        "dx column, and optionally lesion_id (then the bootstrap resamples lesions)",
    )  # fmt: skip
    e.add_argument(
        "--out", type=Path, required=True, help="report folder (replaced when it exists)"
    )
    e.add_argument("--name", help="the set's name in the report (default: the folder's name)")
    e.add_argument(
        "--models", nargs="+", choices=prediction.MODEL_NAMES, default=["int8", "int8-onnx"],
        help="the models to score (default: both int8 exports)",
    )  # fmt: skip
    e.add_argument("--image-column", help="the CSV's image column, when not one of the above")
    e.add_argument(
        "--max-bad-fraction", type=float, default=0.05,
        help="missing or unreadable images are skipped and listed; above this fraction, stop",
    )  # fmt: skip
    e.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs"
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--ece-bins", type=int, default=15)
    _path_flags(e)
    e.set_defaults(run=evaluate)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as err:
        print(f"melanoma-kd {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
