"""src/records/reviews.py on SQLite and on PostgreSQL: one review per flagged record, the review queue, the false
alarms an update teaches, one update at a time, and an audit entry for every action."""
from datetime import timedelta

import pytest

from src.records.reviews import Conflict, NotFound
from src.records.store import RecordStore
from test_store import START, fields


@pytest.fixture
def store(records_url, tmp_path):
    opened = RecordStore(tmp_path / "records", records_url)
    yield opened
    opened.close()


def flagged(store, labels, sha=None):
    """Records of ``labels``, 12 hours apart, each with an image (its sha256 ``sha[k]`` when given)."""
    return [store.add(dict(fields(label), image_sha256=(sha[k] if sha else f"{k:064x}")), b"png", ".png",
                      created_at=START + timedelta(hours=12 * k)) for k, label in enumerate(labels)]


def test_a_flagged_record_is_reviewed_once_and_every_review_is_audited(store):
    ok, ng, review = flagged(store, ["OK", "NG", "REVIEW"])
    log = store.reviews
    done = log.review(ng, "false_alarm", "anna", note="glare on the edge")
    assert done["verdict"] == "false_alarm" and done["reviewer"] == "anna" and done["note"] == "glare on the edge"
    with pytest.raises(Conflict, match="reviewed already"):
        log.review(ng, "defect", "ben")
    with pytest.raises(Conflict, match="only NG and REVIEW"):
        log.review(ok, "defect", "ben")
    with pytest.raises(NotFound):
        log.review("0" * 32, "defect", "ben")
    with pytest.raises(ValueError):
        log.review(review, "maybe", "ben")
    log.review(review, "defect", "ben")
    entries = log.audit_log()
    assert [(e["actor"], e["action"], e["subject"]) for e in entries] == [("ben", "review", review),
                                                                         ("anna", "review", ng)]
    assert entries[1]["details"]["verdict"] == "false_alarm" and entries[1]["details"]["label"] == "NG"


def test_the_queue_holds_flagged_records_newest_first_with_their_reviews(store):
    ids = flagged(store, ["NG", "OK", "REVIEW", "NG"])
    log = store.reviews
    log.review(ids[0], "defect", "anna")
    queue = log.queue()
    assert queue["total"] == 3 and [item["id"] for item in queue["items"]] == [ids[3], ids[2], ids[0]]
    assert queue["items"][2]["review"]["verdict"] == "defect" and queue["items"][0]["review"] is None
    assert [item["id"] for item in log.queue(reviewed=False)["items"]] == [ids[3], ids[2]]
    assert [item["id"] for item in log.queue(reviewed=True)["items"]] == [ids[0]]
    assert [item["id"] for item in log.queue(label="REVIEW")["items"]] == [ids[2]]
    assert log.queue(since=START + timedelta(hours=30))["total"] == 1
    assert log.queue(limit=1, offset=1)["items"][0]["id"] == ids[2]


def test_an_update_teaches_each_untaught_false_alarm_once_and_only_one_builds_at_a_time(store):
    ids = flagged(store, ["NG", "REVIEW", "NG", "NG"], sha=["a" * 64, "b" * 64, "a" * 64, "c" * 64])
    log = store.reviews
    for record_id in ids[:3]:
        log.review(record_id, "false_alarm", "anna")
    log.review(ids[3], "defect", "anna")
    # oldest first, one per image content, none the active version taught already
    assert [record["id"] for record in log.false_alarms_to_teach([])] == [ids[0], ids[1]]
    assert [record["id"] for record in log.false_alarms_to_teach(["a" * 64])] == [ids[1]]
    update = log.start_update("anna", 1, [ids[0], ids[1]])
    with pytest.raises(Conflict, match="being built"):
        log.start_update("ben", 1, [ids[0]])
    assert log.update(update)["state"] == "building"
    log.finish_update(update, version=2, comparison={"records": []})
    built = log.update(update)
    assert built["state"] == "ready" and built["version"] == 2 and built["taught"] == [ids[0], ids[1]]
    failed = log.start_update("ben", 2, [ids[1]])
    log.finish_update(failed, error="an image of another size")
    assert log.update(failed)["state"] == "failed" and "another size" in log.update(failed)["error"]
    with pytest.raises(NotFound):
        log.update(999)
    assert [entry["action"] for entry in log.audit_log(action="update")] == ["update_failed", "update", "update_ready",
                                                                            "update"]


def test_an_update_left_building_by_a_stopped_service_is_failed_when_the_service_opens_its_store(store):
    ids = flagged(store, ["NG"])
    store.reviews.start_update("anna", 1, ids)
    reopened = RecordStore(store.folder, None if store.url.startswith("sqlite") else store.url, sweep=True)
    try:
        [update] = reopened.reviews.updates()
        assert update["state"] == "failed" and "stopped" in update["error"]
        reopened.reviews.start_update("anna", 1, ids)   # no longer blocked
    finally:
        reopened.close()
