"""The service's inspection records (serve.py --records): every 200 from /predict has exactly one record with its
image; reading them needs the token; bad requests are clean 4xx that change nothing. The same tests on SQLite and on
PostgreSQL (a throwaway cluster on 127.0.0.1). The app runs in this process (FastAPI's TestClient)."""
import base64
import json

import pytest
from fastapi.testclient import TestClient

from conftest import read_json, run_cli

CATEGORY = "synthetic_leather"
TOKEN = "test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def predictor(small_model):
    from src.inference.predict import load_model
    return load_model(str(small_model[0]))


@pytest.fixture
def records(records_url, tmp_path):
    from src.records.store import RecordStore
    store = RecordStore(tmp_path / "records", records_url)
    yield store
    store.close()


def client_of(predictor, records, **options):
    from src.app.serve import create_app
    return TestClient(create_app(predictor, max_batch=1, records=records, token=TOKEN, **options))


def images(small_dataset):
    folder = small_dataset / CATEGORY / "test"
    return [(folder / kind / name).read_bytes() for kind, name in (("good", "000.png"), ("stain", "000.png"),
                                                                   ("scratch", "001.png"))]


def test_every_answer_has_its_record_and_reading_them_needs_the_token(predictor, records, small_dataset):
    client = client_of(predictor, records)
    answers = []
    for number, data in enumerate(images(small_dataset)):
        response = client.post("/predict", files={"file": ("x.png", data, "image/png")},
                               data={"client": json.dumps({"line": "L1", "part_id": f"P-{number}"})})
        assert response.status_code == 200, response.text
        answers.append(response.json())
    for body in (client.get("/records").json(), client.get("/records", headers={"Authorization": "Bearer no"}).json()):
        assert body["error"] == "unauthorized"
    assert client.get("/records").status_code == 401
    page = client.get("/records", headers=AUTH).json()
    assert page["total"] == 3 and {item["id"] for item in page["items"]} == {a["record_id"] for a in answers}
    for answer, data in zip(answers, images(small_dataset)):
        record = client.get(f"/records/{answer['record_id']}", headers=AUTH).json()
        assert record["label"] == answer["label"] and record["raw_score"] == pytest.approx(answer["raw_score"])
        assert record["model"] == answer["model"] and record["regions"] == answer["regions"]
        assert record["client"]["line"] == "L1" and record["latency_ms"] > 0
        assert client.get(f"/records/{answer['record_id']}/image", headers=AUTH).content == data
        assert client.get(f"/records/{answer['record_id']}/map", headers=AUTH).content.startswith(b"\x89PNG")
    labels = [answer["label"] for answer in answers]
    for label in set(labels):
        assert client.get("/records", params={"label": label}, headers=AUTH).json()["total"] == labels.count(label)
    assert client.get("/records", params={"limit": 1, "offset": 2}, headers=AUTH).json()["items"][0]["id"] == \
        answers[0]["record_id"]   # newest first
    counts = client.get("/records/counts", headers=AUTH).json()["counts"]
    assert sum(entry["count"] for entry in counts) == 3
    assert client.get("/records", params={"model_version": 2}, headers=AUTH).json()["total"] == 0
    assert client.get("/records", params={"since": "2100-01-01T00:00:00Z"}, headers=AUTH).json()["total"] == 0
    # exported oldest first, through the service and, without it, by records.py
    assert client.get("/records/export").status_code == 401
    exported = client.get("/records/export", params={"format": "json"}, headers=AUTH)
    assert exported.status_code == 200 and [r["id"] for r in exported.json()] == [a["record_id"] for a in answers]
    command = run_cli("records.py", "--records", str(records.folder), "--db", records.url, "--format", "json")
    assert command.returncode == 0, command.stderr
    assert json.loads(command.stdout) == exported.json()
    csv = client.get("/records/export", params={"format": "csv", "label": labels[0]}, headers=AUTH).text
    assert len(csv.strip().splitlines()) == 1 + labels.count(labels[0])


def test_bad_requests_are_clean_4xx_and_write_nothing(predictor, records, small_dataset):
    client = client_of(predictor, records)
    data = images(small_dataset)[0]
    big = {"note": "x" * 3000}
    assert client.post("/predict", json={"image": base64.b64encode(data).decode(), "client": big}).status_code == 413
    assert client.post("/predict", files={"file": ("x.png", data, "image/png")},
                       data={"client": "[1, 2]"}).status_code == 400
    for params in ({"label": "BAD"}, {"since": "yesterday"}, {"limit": 0}, {"limit": 501}, {"model_version": 0}):
        assert client.get("/records", params=params, headers=AUTH).status_code == 422, params
    assert client.get("/records/0123456789abcdef", headers=AUTH).status_code == 404
    assert client.get("/records/0123456789abcdef/image", headers=AUTH).status_code == 404
    assert client.get("/records/0123456789abcdef/picture", headers=AUTH).status_code == 422
    assert records.query()["total"] == 0 and list(records.images.iterdir()) == []
    protected = client_of(predictor, records, protect_predict=True)
    assert protected.post("/predict", files={"file": ("x.png", data, "image/png")}).status_code == 401
    assert records.query()["total"] == 0
    response = protected.post("/predict", files={"file": ("x.png", data, "image/png")}, headers=AUTH)
    assert response.status_code == 200 and records.query()["total"] == 1


def test_a_service_without_records_says_so(predictor, small_model):
    from src.app.serve import create_app
    client = TestClient(create_app(predictor, max_batch=1, token=TOKEN))
    assert client.get("/records", headers=AUTH).status_code == 404
    response = client.post("/predict", files={"file": ("x.png", open(read_json(small_model[0] / "model.json")[
        "train_samples"][0], "rb").read(), "image/png")})
    assert response.status_code == 200 and "record_id" not in response.json()


def test_killed_under_load_every_answer_keeps_its_record_and_no_file_is_left_half(small_model, small_dataset,
                                                                                   tmp_path):
    """serve.py with records, two clients posting, SIGKILL: after a restart every answered request has its record
    and image, every file in the image folder belongs to a record, and the service answers again."""
    import os
    import signal
    import threading
    import time

    import httpx
    from src.app.serve import launch, shut_down
    folder = tmp_path / "records"
    environment = dict(os.environ, PATCHCORE_TOKEN=TOKEN)
    process, url = launch(small_model[0], "--records", str(folder), "--max_batch", "2", env=environment)
    answered, stop = [], threading.Event()
    payloads = images(small_dataset)

    def client(number):
        with httpx.Client(timeout=30) as session:
            while not stop.is_set():
                try:
                    response = session.post(f"{url}/predict", files={"file": ("x.png", payloads[number % 3],
                                                                              "image/png")})
                except httpx.HTTPError:
                    return   # the server is gone
                if response.status_code == 200:
                    answered.append(response.json()["record_id"])
                number += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(answered) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stop.set()
    for thread in threads:
        thread.join()
    assert len(answered) >= 12
    process, url = launch(small_model[0], "--records", str(folder), "--max_batch", "2", env=environment)
    try:
        stored = httpx.get(f"{url}/records", params={"limit": 500}, headers=AUTH, timeout=30).json()["items"]
        by_id = {record["id"]: record for record in stored}
        assert set(answered) <= set(by_id)   # requests killed before their answer may or may not have committed
        for record_id in answered:
            assert httpx.get(f"{url}/records/{record_id}/image", headers=AUTH, timeout=30).status_code == 200
        files = sorted(path.name for path in (folder / "images").iterdir())
        assert files == sorted(name for record in stored for name in (record["image_file"], record["map_file"]))
        after = httpx.post(f"{url}/predict", files={"file": ("x.png", payloads[0], "image/png")}, timeout=60)
        assert after.status_code == 200 and after.json()["record_id"]
    finally:
        shut_down(process)
