"""The HTTP service end to end: the real uvicorn server on 127.0.0.1 (an ephemeral port), started and stopped here."""
import base64
import concurrent.futures
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, chromium
from src.app.serve import launch, shut_down

CATEGORY = "synthetic_leather"


@pytest.fixture(scope="module")
def dataset(small_dataset):
    return small_dataset


@pytest.fixture(scope="module")
def model_dir(small_model):
    return small_model[0]


@pytest.fixture(scope="module")
def server(model_dir):
    process, url = launch(model_dir, "--max_upload_mb", "0.5", "--max_pixels", "1000000")
    yield url
    shut_down(process)


def image_bytes(dataset, kind="stain", name="001.png"):
    return (dataset / CATEGORY / "test" / kind / name).read_bytes()


def post_file(url, data, **fields):
    return httpx.post(f"{url}/predict", files={"file": ("image.png", data, "image/png")}, data=fields, timeout=60)


def post_json(url, data, **options):
    return httpx.post(f"{url}/predict", json={"image": base64.b64encode(data).decode(), **options}, timeout=60)


def png_header_only(width, height):
    """A PNG that declares ``width`` x ``height`` pixels in its header and holds almost no data (a bomb)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_multipart_and_json_return_what_predict_returns(server, model_dir, dataset):
    from src.inference.predict import load_model
    path = dataset / CATEGORY / "test" / "stain" / "001.png"
    (expected,) = load_model(str(model_dir)).predict(str(path))
    for response in (post_file(server, path.read_bytes()), post_json(server, path.read_bytes())):
        assert response.status_code == 200, response.text
        body = response.json()
        assert abs(body["raw_score"] - expected.fields["raw_score"]) <= 1e-6 * abs(expected.fields["raw_score"])
        assert abs(body["image_score"] - expected.fields["image_score"]) <= 1e-6
        for key in ("label", "image_threshold", "review_threshold", "review_image_score", "pixel_threshold",
                    "regions", "model", "image_size", "map_size"):
            assert body[key] == expected.fields[key], key


def test_the_service_scores_by_the_models_image_score_policy(model_dir, dataset, tmp_path):
    import shutil
    from src.inference.predict import load_model
    other = tmp_path / "model"
    shutil.copytree(model_dir, other, ignore=shutil.ignore_patterns("eval"))
    meta = json.loads((other / "model.json").read_text())
    meta["image_score"] = {"policy": "topk_mean", "k": 3}
    (other / "model.json").write_text(json.dumps(meta))
    path = dataset / CATEGORY / "test" / "stain" / "001.png"
    (expected,) = load_model(str(other)).predict(str(path))
    (default,) = load_model(str(model_dir)).predict(str(path))
    assert abs(expected.fields["raw_score"] - default.fields["raw_score"]) > 1e-3 * abs(default.fields["raw_score"])
    process, url = launch(other)
    try:
        body = post_file(url, path.read_bytes()).json()
    finally:
        shut_down(process)
    assert abs(body["raw_score"] - expected.fields["raw_score"]) <= 1e-6 * abs(expected.fields["raw_score"])


def test_overlay_and_map_come_back_as_png_and_npy_without_pickle(server, dataset):
    from src.data.sample import decode_image
    body = post_json(server, image_bytes(dataset), return_map=True, return_overlay=True).json()
    overlay = decode_image(base64.b64decode(body["overlay_png"]), "overlay")
    assert overlay.shape[0] == 256 and overlay.shape[1] > 2 * 256   # a 64-pixel image, enlarged 4x
    raw_map = np.load(io.BytesIO(base64.b64decode(body["map"])), allow_pickle=False)
    assert raw_map.dtype == np.float16 and raw_map.shape == (64, 64) and body["map_format"] == "npy"
    png = post_file(server, image_bytes(dataset), return_map="true", map_format="png").json()
    assert decode_image(base64.b64decode(png["map"]), "map").shape == (64, 64, 3)


@pytest.mark.parametrize("case, status, error", [
    ("too_large", 413, "too_large"), ("content_type", 415, "unsupported_media_type"),
    ("not_an_image", 400, "bad_image"), ("truncated", 400, "bad_image"), ("bad_base64", 400, "bad_base64"),
    ("bomb", 413, "too_many_pixels"), ("no_file_field", 400, "bad_request"), ("bad_json", 422, "bad_request")])
def test_bad_requests_get_their_status_and_the_service_goes_on(server, dataset, case, status, error):
    good = image_bytes(dataset)
    if case == "too_large":
        response = post_file(server, good + b"\0" * (700 * 1024))
    elif case == "content_type":
        response = httpx.post(f"{server}/predict", content=good, headers={"content-type": "image/png"})
    elif case == "not_an_image":
        response = post_file(server, b"hello, this is text")
    elif case == "truncated":
        response = post_file(server, good[:len(good) // 2])
    elif case == "bad_base64":
        response = httpx.post(f"{server}/predict", json={"image": "!!not base64!!"})
    elif case == "bomb":
        response = post_file(server, png_header_only(20000, 20000))
    elif case == "no_file_field":
        response = httpx.post(f"{server}/predict", files={"other": ("a.png", good, "image/png")})
    else:
        response = httpx.post(f"{server}/predict", content=b'{"image": ', headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["detail"]
    assert post_file(server, good).status_code == 200   # still serving


def test_health_model_metrics_and_the_page(server):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    model = httpx.get(f"{server}/model").json()
    assert model["category"] == CATEGORY and model["thresholds"]["image"] > 0
    metrics = httpx.get(f"{server}/metrics").text
    assert "patchcore_requests_total" in metrics and "patchcore_request_seconds_bucket" in metrics
    assert "patchcore_queue_depth" in metrics
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "PatchCore inspection" in page.text and "/predict" in page.text


def test_a_full_queue_answers_503_with_retry_after(model_dir, dataset):
    process, url = launch(model_dir, "--max_batch", "1", "--queue", "1")
    try:
        data = image_bytes(dataset)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: post_file(url, data), range(32)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"] == "busy"
        assert post_file(url, data).status_code == 200
    finally:
        shut_down(process)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=2048), st.text(max_size=200).map(str.encode)))
def test_random_bodies_never_get_a_5xx(server, body):
    for response in (post_file(server, body),
                     httpx.post(f"{server}/predict", content=body, headers={"content-type": "application/json"}),
                     httpx.post(f"{server}/predict", content=json.dumps({"image": body.decode("latin-1")}),
                                headers={"content-type": "application/json"})):
        assert response.status_code < 500, response.text


@pytest.mark.browser
def test_the_page_shows_the_score_and_label_of_an_uploaded_image(server, model_dir, dataset, tmp_path):
    """Headless Debian Chromium (scripts/setup_browser.sh) drives the page; a screenshot is kept in
    test-artifacts/serve_page.png."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from src.inference.predict import load_model
    path = dataset / CATEGORY / "test" / "stain" / "001.png"
    (expected,) = load_model(str(model_dir)).predict(str(path))
    driver = chromium(tmp_path / "profile")
    try:
        driver.get(f"{server}/")
        WebDriverWait(driver, 30).until(lambda d: "loading" not in d.find_element(By.ID, "model").text)
        assert CATEGORY in driver.find_element(By.ID, "model").text
        driver.find_element(By.ID, "files").send_keys(str(path))
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result .score"))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result canvas"))
        score = driver.find_element(By.CSS_SELECTOR, ".result .score").text
        label = driver.find_element(By.CSS_SELECTOR, ".result .label").text
        assert score == f"{expected.fields['image_score']:.3f}" and label == expected.fields["label"]
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(artifacts / "serve_page.png"))
    finally:
        driver.quit()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["png", "jpg"]), st.floats(min_value=0.0, max_value=0.999))
def test_truncated_png_and_jpeg_are_400_never_5xx(server, dataset, kind, keep):
    import cv2
    from src.data.sample import Sample
    rgb = Sample(str(dataset / CATEGORY / "test" / "stain" / "001.png")).load_image()
    encoded = cv2.imencode(f".{kind}", rgb[:, :, ::-1])[1].tobytes()
    response = post_file(server, encoded[:int(len(encoded) * keep)])
    assert response.status_code == 400, response.text
