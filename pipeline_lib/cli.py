"""``melanoma-kd``: score lesion photos with the trained student (``predict``) or on a web page
(``serve``).

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

from pipeline_lib import operating_point, prediction, runtime

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {
    "operating_point": REPO / "data/model_card/operating_point.json",
    "checkpoint": REPO / "data/distill/model.pt",
    "pte": REPO / "data/quantize/student_int8.pte",
    "onnx": REPO / "data/quantize/student_int8.onnx",
}
# Expected, user-facing failures: reported in one line, without a traceback.
USER_ERRORS = (prediction.InputError, operating_point.OperatingPointError, runtime.ModelFileError)


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", choices=prediction.MODEL_NAMES, default="int8",
        help="int8: ExecuTorch .pte (default); int8-onnx: ONNX Runtime; float: PyTorch checkpoint",
    )  # fmt: skip
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
