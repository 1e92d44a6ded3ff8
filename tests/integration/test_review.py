"""The review loop's API (src/app/review.py) in this process (FastAPI's TestClient), on a copy of the small plain
model: reviews, a model update built by the commands, activation and rollback. Bad requests are clean 4xx that change
nothing: not the model folder, not the reviews, not the audit log. (The whole loop through the page, in Chromium:
test_review_page.py.)"""
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import folder_digests, write_png

CATEGORY = "synthetic_leather"
TOKEN = "review-token-42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def service(small_model, tmp_path):
    """(client, store, model folder): a copy of the small model served with records, a token and its versions."""
    from src.app.review import VersionControl
    from src.app.serve import create_app
    from src.inference.predict import load_model
    from src.records.store import RecordStore
    model_dir = tmp_path / "model"
    shutil.copytree(small_model[0], model_dir)
    store = RecordStore(tmp_path / "records")
    control = VersionControl(model_dir, lambda number: load_model(str(model_dir), version=number))
    client = TestClient(create_app(load_model(str(model_dir)), max_batch=1, records=store, token=TOKEN,
                                   versions=control))
    yield client, store, model_dir
    store.close()


def flagged_record(client, small_dataset):
    """The id of an NG or REVIEW record: the defect test images predicted until one is flagged."""
    folder = small_dataset / CATEGORY / "test"
    for path in sorted(folder.glob("*/*.png"), key=lambda p: p.parent.name == "good"):
        answer = client.post("/predict", files={"file": ("x.png", path.read_bytes(), "image/png")}).json()
        if answer["label"] != "OK":
            return answer["record_id"]
    raise AssertionError("no test image is flagged")


def state(client, store, model_dir):
    """Everything a bad request must leave as it was."""
    return (folder_digests(model_dir), client.get("/review/queue", headers=AUTH).json(),
            client.get("/audit", headers=AUTH).json(), client.get("/versions", headers=AUTH).json())


def test_bad_review_and_version_requests_are_clean_4xx_that_change_nothing(service, small_dataset):
    client, store, model_dir = service
    record = flagged_record(client, small_dataset)
    assert client.post(f"/records/{record}/review", json={"verdict": "defect", "user": "anna"},
                       headers=AUTH).status_code == 200
    before = state(client, store, model_dir)
    requests = {
        "unknown record": (client.post, "/records/" + "0" * 32 + "/review", {"verdict": "defect", "user": "a"}, 404),
        "double review": (client.post, f"/records/{record}/review", {"verdict": "false_alarm", "user": "b"}, 409),
        "unknown verdict": (client.post, f"/records/{record}/review", {"verdict": "maybe", "user": "b"}, 422),
        "no user": (client.post, f"/records/{record}/review", {"verdict": "defect"}, 422),
        "unknown version": (client.post, "/versions/7/activate", {"user": "anna"}, 404),
        "active version": (client.post, "/versions/1/activate", {"user": "anna"}, 409),
        "rollback past the first": (client.post, "/versions/rollback", {"user": "anna"}, 409),
        "nothing to teach": (client.post, "/updates", {"user": "anna"}, 409),
        "unknown update": (client.get, "/updates/99", None, 404),
    }
    for case, (method, path, body, status) in requests.items():
        arguments = {} if body is None else {"json": body}
        response = method(path, headers=AUTH, **arguments)
        assert response.status_code == status, (case, response.text)
        assert response.json()["error"] and response.json()["detail"], case
        unauthorised = method(path, **arguments)   # no token: refused before anything else
        assert unauthorised.status_code == 401 and unauthorised.json()["error"] == "unauthorized", case
        wrong = method(path, headers={"Authorization": "Bearer wrong"}, **arguments)
        assert wrong.status_code == 401, case
        assert state(client, store, model_dir) == before, case
    for path in ("/review/queue", "/versions", "/audit"):
        assert client.get(path).status_code == 401


def test_an_update_that_cannot_be_built_fails_with_the_commands_error_and_leaves_the_model_as_it_was(
        service, small_dataset, tmp_path):
    """A reviewed false alarm of another size: teach.py refuses it; the update is failed with its one-line error,
    the model folder and the served version are unchanged, and the next update may start."""
    import time
    client, store, model_dir = service
    other = tmp_path / "other.png"
    write_png(other, np.full((40, 56, 3), 128, np.uint8))
    before = folder_digests(model_dir)
    fields = {"image_sha256": "e" * 64, "raw_score": 99.0, "image_score": 0.9, "label": "NG", "regions": [],
              "model": client.get("/model").json()["model"], "latency_ms": 1.0}
    record = store.add(fields, other.read_bytes(), ".png")
    assert client.post(f"/records/{record}/review", json={"verdict": "false_alarm", "user": "anna"},
                       headers=AUTH).status_code == 200
    started = client.post("/updates", json={"user": "anna"}, headers=AUTH)
    assert started.status_code == 202 and started.json()["state"] == "building"
    assert started.json()["taught"] == [record]
    assert client.post("/updates", json={"user": "ben"}, headers=AUTH).status_code == 409   # one at a time
    deadline = time.monotonic() + 240
    while (update := client.get(f"/updates/{started.json()['id']}", headers=AUTH).json())["state"] == "building":
        assert time.monotonic() < deadline, "the update did not end"
        time.sleep(0.5)
    assert update["state"] == "failed" and "teach.py" in update["error"] and "56x40" in update["error"]
    assert folder_digests(model_dir) == before
    assert client.get("/versions", headers=AUTH).json()["serving"]["version"] == 1
    actions = [entry["action"] for entry in client.get("/audit", headers=AUTH).json()["entries"]]
    assert actions == ["update_failed", "update", "review"]


def test_a_version_built_without_activation_serves_only_once_activated_and_a_broken_one_is_refused(
        service, small_dataset):
    """teach_ok(activate=False) leaves model.json as it was; activating through the service switches the answers
    to it, a rollback switches them back (both audited); a version whose bank is gone is refused with 409 while
    the served version answers on."""
    from src.training.teach import teach_ok
    client, store, model_dir = service
    image = small_dataset / CATEGORY / "test" / "good" / "000.png"
    trained = folder_digests(model_dir)["model.json"]
    summary = teach_ok(str(model_dir), [str(image)], activate=False)
    assert summary["version"] == 2 and not summary["active"] and "not active" in summary["line"]
    assert folder_digests(model_dir)["model.json"] == trained
    post = lambda: client.post("/predict", files={"file": ("x.png", image.read_bytes(), "image/png")}).json()
    assert post()["model"]["version"] == 1
    switched = client.post("/versions/2/activate", json={"user": "anna"}, headers=AUTH)
    assert switched.status_code == 200 and switched.json() == {"serving": post()["model"], "previous": 1}
    assert post()["model"]["version"] == 2 and client.get("/model").json()["model"]["version"] == 2
    back = client.post("/versions/rollback", json={"user": "ben"}, headers=AUTH)
    assert back.status_code == 200 and post()["model"]["version"] == 1
    assert folder_digests(model_dir)["model.json"] == trained   # byte for byte the trained model again
    entries = client.get("/audit", headers=AUTH).json()["entries"]
    assert [(e["actor"], e["action"], e["details"]) for e in entries] == [
        ("ben", "rollback", {"from": 2, "to": 1}), ("anna", "activate", {"from": 1, "to": 2})]
    for path in (model_dir / "versions" / "2").rglob("*"):
        if path.is_file():
            path.unlink()   # version 2's banks are gone
    broken = client.post("/versions/2/activate", json={"user": "anna"}, headers=AUTH)
    assert broken.status_code == 409 and broken.json()["error"] == "cannot_activate", broken.text
    assert post()["model"]["version"] == 1 and folder_digests(model_dir)["model.json"] == trained


def test_the_comparison_counts_false_alarms_that_pass_and_confirmed_defects_that_would():
    from src.app.review import comparison

    def record(number, label):
        return {"id": f"r{number}", "image_file": f"r{number}.png", "label": label, "image_score": 0.8,
                "model": {"version": 1}}
    reviewed = [(record(1, "NG"), {"verdict": "false_alarm"}), (record(2, "REVIEW"), {"verdict": "false_alarm"}),
                (record(3, "NG"), {"verdict": "defect"}), (record(4, "NG"), {"verdict": "defect"})]
    decided = {"r1": {"label": "OK", "image_score": 0.2}, "r2": {"label": "REVIEW", "image_score": 0.45},
               "r3": {"label": "NG", "image_score": 0.9}, "r4": {"label": "OK", "image_score": 0.3}}
    result = comparison(reviewed, decided)
    assert result["summary"] == {"false_alarms": 2, "false_alarms_now_ok": 1, "defects": 2, "defects_now_ok": 1}
    assert [(row["record_id"], row["label"], row["candidate_label"]) for row in result["records"]] == [
        ("r1", "NG", "OK"), ("r2", "REVIEW", "REVIEW"), ("r3", "NG", "NG"), ("r4", "NG", "OK")]
