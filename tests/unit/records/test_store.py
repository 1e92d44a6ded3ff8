"""src/records/store.py on SQLite and on PostgreSQL (the same tests): records and their images written together,
read back, filtered, paginated, counted per day and label, exported; old OK images expired; a crash's leftovers
removed when the service's store opens."""
from datetime import datetime, timedelta, timezone

import pytest

from src.records.store import RecordStore
from src.utils.errors import InputError

START = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def url(records_url):
    """None (SQLite in the store's folder) or a new database on the test PostgreSQL cluster."""
    return records_url


def fields(label="NG", version=1, score=0.7):
    return {"image_sha256": "ab" * 32, "raw_score": score * 10, "image_score": score, "label": label,
            "regions": [{"bbox": [1, 2, 3, 4], "area": 12, "max_score": 0.9}],
            "model": {"name": "widget", "version": version, "sha256": "cd" * 32}, "latency_ms": 12.5}


def test_a_record_and_its_image_are_stored_and_read_back(tmp_path, url):
    store = RecordStore(tmp_path / "records", url)
    record_id = store.add(fields(), b"\x89PNG bytes", ".png", client={"line": "L1", "part_id": "P-7"},
                          map_png=b"map bytes")
    record = store.get(record_id)
    assert record["label"] == "NG" and record["model"] == {"name": "widget", "version": 1, "sha256": "cd" * 32}
    assert record["client"] == {"line": "L1", "part_id": "P-7"} and record["regions"][0]["bbox"] == [1, 2, 3, 4]
    assert store.file_path(record, "image").read_bytes() == b"\x89PNG bytes"
    assert store.file_path(record, "map").read_bytes() == b"map bytes"
    assert datetime.fromisoformat(record["created_at"]).tzinfo is not None
    assert store.get("0" * 32) is None
    store.close()
    again = RecordStore(tmp_path / "records", url)   # the schema is migrated once; reopening keeps everything
    assert again.get(record_id) == record and again.remove_orphans() == 0


def test_records_are_filtered_paginated_newest_first_and_counted_per_day_and_label(tmp_path, url):
    store = RecordStore(tmp_path / "records", url)
    ids = [store.add(fields(label, version), None, ".png", created_at=START + timedelta(hours=12 * k))
           for k, (label, version) in enumerate([("OK", 1), ("NG", 1), ("REVIEW", 2), ("NG", 2), ("NG", 2)])]
    page = store.query(limit=2)
    assert page["total"] == 5 and [item["id"] for item in page["items"]] == [ids[4], ids[3]]
    assert [item["id"] for item in store.query(limit=2, offset=4)["items"]] == [ids[0]]
    assert store.query(label="NG")["total"] == 3 and store.query(model_version=2)["total"] == 3
    window = store.query(since=START + timedelta(hours=12), until=START + timedelta(hours=36))
    assert [item["id"] for item in window["items"]] == [ids[2], ids[1]]
    assert store.counts() == [{"day": "2026-12-01", "label": "NG", "count": 1},
                              {"day": "2026-12-01", "label": "OK", "count": 1},
                              {"day": "2026-12-02", "label": "NG", "count": 1},
                              {"day": "2026-12-02", "label": "REVIEW", "count": 1},
                              {"day": "2026-12-03", "label": "NG", "count": 1}]
    with pytest.raises(InputError, match="must be one of OK, REVIEW, NG"):
        store.query(label="BAD")


def test_a_failed_commit_leaves_no_image_and_leftovers_of_a_crash_go_when_the_store_opens(tmp_path, url):
    store = RecordStore(tmp_path / "records", url)
    broken = fields()
    broken["model"] = {"name": "widget", "version": 1, "sha256": None}   # NOT NULL: the commit fails
    with pytest.raises(Exception):
        store.add(broken, b"image", ".png")
    assert list((tmp_path / "records" / "images").iterdir()) == []
    kept = store.add(fields(), b"image", ".png")
    (tmp_path / "records" / "images" / "0123.png").write_bytes(b"a file whose row never committed")
    (tmp_path / "records" / "images" / ".tmp-half").write_bytes(b"half written")
    store.close()
    reader = RecordStore(tmp_path / "records", url)   # a reader leaves the files alone
    assert len(list((tmp_path / "records" / "images").iterdir())) == 3
    reader.close()
    reopened = RecordStore(tmp_path / "records", url, sweep=True)
    assert sorted(path.name for path in (tmp_path / "records" / "images").iterdir()) == [f"{kept}.png"]
    assert reopened.query()["total"] == 1


def test_an_export_holds_every_matching_record_oldest_first_as_csv_or_json(tmp_path, url):
    import csv
    import io
    import json
    store = RecordStore(tmp_path / "records", url)
    ids = [store.add(fields(label), None, ".png", client={"line": "L2"}, created_at=START + timedelta(minutes=k))
           for k, label in enumerate(["NG", "OK", "NG"])]
    records = json.loads("".join(store.export("json", page=2)))
    assert [record["id"] for record in records] == ids and records[0]["client"] == {"line": "L2"}
    rows = list(csv.DictReader(io.StringIO("".join(store.export("csv", label="NG", page=1)))))
    assert [row["id"] for row in rows] == [ids[0], ids[2]] and json.loads(rows[0]["regions"])[0]["area"] == 12
    assert json.loads("".join(store.export("json", label="REVIEW"))) == []
    with pytest.raises(InputError, match="must be one of csv, json"):
        list(store.export("xml"))


def test_retention_removes_old_ok_images_and_keeps_their_records(tmp_path, url):
    store = RecordStore(tmp_path / "records", url)
    old_ok, old_ng, new_ok = (store.add(fields(label), b"image", ".png", created_at=START + timedelta(days=days),
                                        map_png=b"map") for label, days in (("OK", 0), ("NG", 0), ("OK", 9)))
    assert store.expire_ok_images(START + timedelta(days=7)) == 1
    assert store.get(old_ok)["image_file"] is None and store.file_path(store.get(old_ok), "map").is_file()
    assert store.get(old_ng)["image_file"] and store.get(new_ok)["image_file"]
    assert len(list(store.images.iterdir())) == 5 and store.remove_orphans() == 0
