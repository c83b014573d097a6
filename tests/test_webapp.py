"""The web app through Flask's test client: a good upload, refused uploads, and serving on."""

import base64
import io

import pytest
from PIL import Image
from tiny_student import build, write_photos

from pipeline_lib import operating_point, prediction, webapp

LIMIT_MB = 0.05  # 50 kB: the synthetic photos are a few kB


@pytest.fixture(scope="module")
def paths(prepared, tmp_path_factory) -> prediction.ModelPaths:
    return build(tmp_path_factory.mktemp("student"), prepared, exports=False)


@pytest.fixture(scope="module")
def client(paths):
    scorer = prediction.Scorer("float", paths, explain=True)
    return webapp.create_app(scorer, max_upload_mb=LIMIT_MB).test_client()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> bytes:
    return write_photos(tmp_path_factory.mktemp("photos"), 1)[0].read_bytes()


def _upload(client, content: bytes, name: str):
    return client.post("/predict", data={"image": (io.BytesIO(content), name)})


def test_page_has_the_upload_and_the_disclaimer(client):
    page = client.get("/").get_data(as_text=True)
    assert 'type="file"' in page and "drop" in page
    assert prediction.DISCLAIMER in page
    assert f"at most {LIMIT_MB:g} MB" in page


def test_good_upload_gives_probability_decision_and_heat_map(client, paths, photo):
    response = _upload(client, photo, "lesion.jpg")
    assert response.status_code == 200
    answer = response.get_json()
    op = operating_point.read(paths.operating_point, "float")
    assert 0 <= answer["probability"] <= 1
    assert answer["suspicious"] == (answer["probability"] >= op.threshold)
    assert answer["decision"] in (prediction.SUSPICIOUS, prediction.NOT_SUSPICIOUS)
    assert answer["threshold"] == op.threshold
    assert answer["val_sensitivity"] == op.val_sensitivity
    assert answer["val_specificity"] == op.val_specificity
    header, encoded = answer["heatmap"].split(",", 1)
    assert header == "data:image/png;base64"
    heat = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert heat.size == Image.open(io.BytesIO(photo)).size


def test_same_photo_same_answer_as_predict(client, paths, photo):
    scorer = prediction.Scorer("float", paths)
    expected = scorer.probabilities(prediction.decode(photo, scorer.point.cache_size)[None])[0]
    answer = _upload(client, photo, "lesion.jpg").get_json()
    assert answer["probability"] == pytest.approx(float(expected), rel=1e-6)


def test_refuses_a_text_file_then_keeps_serving(client, photo):
    response = _upload(client, b"just some text", "notes.txt")
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert "notes.txt: not a readable image" in message and "JPEG or PNG" in message
    assert _upload(client, photo, "lesion.jpg").status_code == 200


def test_refuses_a_file_above_the_limit_then_keeps_serving(client, photo):
    response = _upload(client, b"\xff" * int(LIMIT_MB * 1e6 + 1000), "huge.jpg")
    assert response.status_code == 413
    assert (
        response.get_json()["error"] == f"the file is larger than the {LIMIT_MB:g} MB upload limit"
    )
    assert _upload(client, photo, "lesion.jpg").status_code == 200


def test_refuses_an_empty_request_and_an_empty_file(client):
    response = client.post("/predict", data={})
    assert response.status_code == 400 and "no file received" in response.get_json()["error"]
    response = _upload(client, b"", "empty.jpg")
    assert response.status_code == 400 and "empty.jpg is empty" in response.get_json()["error"]


def test_needs_a_scorer_that_explains(paths):
    with pytest.raises(ValueError, match="explain=True"):
        webapp.create_app(prediction.Scorer("float", paths))
