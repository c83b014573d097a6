"""One-page web app: upload a lesion photo, see the calibrated probability, the decision at the
val operating point and the Grad-CAM heat map over the photo.

Uploads are scored in memory and never written to disk. A file that is not an image is
answered 400, one above the upload limit 413, each with a message the page shows; the server
keeps serving after either.
"""

from __future__ import annotations

import base64
import threading
import time
from importlib import resources

from flask import Flask, jsonify, render_template_string, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from pipeline_lib import data, gradcam, prediction


def _error(message: str, status: int):
    return jsonify(error=message), status


def create_app(scorer: prediction.Scorer, max_upload_mb: float = 10.0) -> Flask:
    """The Flask app around ``scorer`` (built with ``explain=True``).

    Args:
        max_upload_mb: uploads above this many megabytes (10^6 bytes) are refused with 413.
    """
    if not scorer.explains:
        raise ValueError("the web app draws heat maps: build the scorer with explain=True")
    app = Flask(__name__)
    max_bytes = int(max_upload_mb * 1e6)
    app.config["MAX_CONTENT_LENGTH"] = max_bytes
    page = (resources.files("pipeline_lib") / "webapp.html").read_text()
    lock = threading.Lock()  # one model, its Grad-CAM hooks and runtime are not thread-safe
    limit = f"{max_upload_mb:g} MB"

    @app.get("/")
    def index():
        return render_template_string(
            page, disclaimer=prediction.DISCLAIMER, max_mb=f"{max_upload_mb:g}", max_bytes=max_bytes
        )

    @app.post("/predict")
    def predict():
        upload = request.files.get("image")
        if upload is None or not upload.filename:
            return _error("no file received: choose a JPEG or PNG lesion photo", 400)
        content = upload.read()
        if not content:
            return _error(f"{upload.filename} is empty: choose a JPEG or PNG lesion photo", 400)
        began = time.perf_counter()
        try:
            image = prediction.decode(content, scorer.point.cache_size, upload.filename)
        except prediction.InputError as err:
            return _error(str(err), 400)
        with lock:
            probs, dx = scorer.scores(image[None])
            p = float(probs[0])
            ms = 1000 * (time.perf_counter() - began)
            heat = scorer.explain(content, image)
        suspicious, decision = scorer.decide(p)
        point = scorer.point
        png = base64.b64encode(gradcam.png_bytes(heat)).decode()
        return jsonify(
            image=upload.filename, probability=p, suspicious=suspicious, decision=decision,
            threshold=point.threshold, val_sensitivity=point.val_sensitivity,
            val_specificity=point.val_specificity, target_sensitivity=point.target_sensitivity,
            model=scorer.model, milliseconds=ms, heatmap=f"data:image/png;base64,{png}",
            disclaimer=prediction.DISCLAIMER,
            top_classes=None if dx is None else data.top_classes(dx[0]),
        )  # fmt: skip

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_err):
        return _error(f"the file is larger than the {limit} upload limit", 413)

    @app.errorhandler(HTTPException)
    def other(err: HTTPException):
        return _error(f"{err.name}: {err.description}", err.code or 500)

    return app
