"""The web page in a real headless Chromium (Debian's), driven by Playwright.

Skipped when /usr/bin/chromium or Playwright is missing, unless MELANOMA_KD_REQUIRE_BROWSER=1
(CI sets it, after installing chromium), where it fails instead.
"""

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tiny_student import build, write_photos
from werkzeug.serving import make_server

from pipeline_lib import prediction, webapp

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
# --disable-background-networking and friends: without them Chromium's own connections are
# refused in bulk on a closed network and slow every page.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LIMIT_MB = 0.05
TIMEOUT_MS = 60_000  # a busy 2-core machine can be slow to score the first photo


def _unavailable(reason: str) -> None:
    if os.environ.get("MELANOMA_KD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and MELANOMA_KD_REQUIRE_BROWSER=1 requires the browser test")
    pytest.skip(f"{reason}: install Debian's chromium (apt-get install chromium) to run it")


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def server(prepared, tmp_path_factory):
    """The app on a free localhost port, in a thread, around a tiny float student."""
    paths = build(tmp_path_factory.mktemp("student"), prepared, exports=False)
    app = webapp.create_app(prediction.Scorer("float", paths, explain=True), LIMIT_MB)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/", paths
    httpd.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(sync_playwright, server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server[0])
        yield page
        browser.close()


def _expected_probability(paths: prediction.ModelPaths, photo: Path) -> float:
    scorer = prediction.Scorer("float", paths)
    return float(scorer.probabilities(prediction.decode(photo, scorer.point.cache_size)[None])[0])


def _shows_result(page) -> None:
    page.wait_for_selector("#result", state="visible")
    assert page.is_hidden("#error")
    # The heat map <img> is displayed and its PNG decoded.
    page.wait_for_function(
        "() => { const i = document.getElementById('heatmap'); "
        "return i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0; }"
    )


def test_upload_bad_upload_and_upload_again(page, server, tmp_path):
    _, paths = server
    first, second = write_photos(tmp_path / "photos", 2)
    assert "not a diagnosis" in page.text_content("#disclaimer")

    page.set_input_files("#file", str(first))
    _shows_result(page)
    shown = page.text_content("#probability")
    assert shown.startswith(f"{_expected_probability(paths, first):.3f} (")
    decision = page.text_content("#decision")
    assert decision in (prediction.SUSPICIOUS, prediction.NOT_SUSPICIOUS)
    assert "validation split" in page.text_content("#operating")
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)

    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    page.set_input_files("#file", str(text))
    page.wait_for_selector("#error", state="visible")
    assert "notes.txt: not a readable image" in page.text_content("#error")
    assert page.is_hidden("#result")

    page.set_input_files("#file", str(second))  # the server still serves
    _shows_result(page)
    assert page.text_content("#probability").startswith(
        f"{_expected_probability(paths, second):.3f} ("
    )


def test_too_large_file_is_refused_with_a_message(page, server, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * int(LIMIT_MB * 1e6 + 1000))
    page.set_input_files("#file", str(big))
    page.wait_for_selector("#error", state="visible")
    assert f"larger than the {LIMIT_MB:g} MB upload limit" in page.text_content("#error")


def test_server_answers_413_over_http(server):
    """The limit holds for clients that skip the page's own check."""
    body = b"\xff" * int(LIMIT_MB * 1e6 + 1000)
    request = urllib.request.Request(
        server[0] + "predict", data=body, method="POST",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 413
    assert b"upload limit" in err.value.read()
