"""Inspection records: every decision the service makes, kept in a database through SQLAlchemy 2: SQLite by default
(``records.db`` in the store's folder, in WAL mode), PostgreSQL by URL. Alembic creates and upgrades the schema
(``migrations/``) when a store opens. Nothing is pickled: a record's regions and client metadata are JSON.

A record and its image never exist one without the other:
1. the image's bytes (as the client sent them) are written to ``images/<id><suffix>`` through a temporary name and
   fsync'd, then renamed;
2. the row is committed; a failure removes the file again.
A process killed between the two leaves a file without a row: the service, opening the store, removes such files
(and any temporary one), so after a restart every image file has its record and every answered request (answered only after
its commit) has its record and image.

    store = RecordStore("output/widget/records")                         # SQLite in that folder
    store = RecordStore("output/widget/records", "postgresql://u@127.0.0.1:5432/db")
    record_id = store.add(fields, image_bytes, ".png")
    page = store.query(label="NG", limit=50)                          # newest first
"""
import contextlib
import csv
import io
import itertools
import json
import os
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.orm import Session

from src.records.reviews import ReviewLog
from src.records.schema import Record, within
from src.utils.errors import InputError

MIGRATIONS = Path(__file__).with_name("migrations")
IMAGES = "images"
SQLITE_FILE = "records.db"
LABELS = ("OK", "REVIEW", "NG")
EXPORT_FORMATS = ("csv", "json")
CSV_COLUMNS = ("id", "created_at", "label", "raw_score", "image_score", "model", "image_sha256", "image_file",
               "latency_ms", "regions", "client")


def _csv_line(values):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _sqlite_pragmas(connection, _):
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")      # readers never wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")    # WAL commits survive a killed process (not a power loss)
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class RecordStore:
    """The records of one service: ``folder`` holds the images (and the SQLite file when ``url`` is None).
    ``sweep``: remove a crash's leftovers now (:meth:`remove_orphans`, and updates left building): only the service
    that writes the records, when it starts; a reader beside a running service would take an image between its file
    and its commit for one. ``reviews``: what people decided about the records (``src/records/reviews.py``)."""

    def __init__(self, folder, url=None, sweep=False):
        self.folder = Path(folder)
        self.images = self.folder / IMAGES
        self.images.mkdir(parents=True, exist_ok=True)
        self.url = url or f"sqlite:///{self.folder / SQLITE_FILE}"
        try:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        except Exception as exc:  # noqa: BLE001 -- a bad URL is the user's input
            raise InputError("--db", f"cannot use {self.url!r}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.migrate()
        self.reviews = ReviewLog(self.engine)
        if sweep:
            self.remove_orphans()
            self.reviews.abandon_unfinished()

    def migrate(self):
        """Bring the schema to the newest migration (Alembic)."""
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def remove_orphans(self):
        """Remove image files without a record (a process killed between the file and its commit) and temporary
        ones. Returns how many were removed."""
        with Session(self.engine) as session:
            kept = {name for pair in session.execute(select(Record.image_file, Record.map_file)) for name in pair}
        removed = 0
        for path in self.images.iterdir():
            if path.name not in kept:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def add(self, fields, image_bytes, suffix, client=None, created_at=None, map_png=None):
        """Store one decision: ``fields`` as predict.py gives them (raw and normalised score, label, regions, model
        name, version and sha256), ``image_bytes`` (kept as ``images/<id><suffix>``; None: not kept), the latency
        in ``fields["latency_ms"]``, the client's metadata and the map as PNG bytes (``images/<id>.map.png``).
        Returns the record's id, once committed."""
        record_id = uuid.uuid4().hex
        files = {"image": None if image_bytes is None else (f"{record_id}{suffix}", image_bytes),
                 "map": None if map_png is None else (f"{record_id}.map.png", map_png)}
        written = []
        try:
            for entry in files.values():
                if entry is not None:
                    self._write_image(*entry)
                    written.append(entry[0])
            self._commit(record_id, fields, files, client, created_at)
        except BaseException:
            for name in written:
                (self.images / name).unlink(missing_ok=True)
            raise
        return record_id

    def _commit(self, record_id, fields, files, client, created_at):
        model = fields["model"]
        row = Record(id=record_id, created_at=created_at or datetime.now(timezone.utc),
                     image_sha256=fields["image_sha256"], image_file=files["image"] and files["image"][0],
                     map_file=files["map"] and files["map"][0], raw_score=float(fields["raw_score"]),
                     image_score=float(fields["image_score"]), label=fields["label"], regions=fields["regions"],
                     model_name=model["name"], model_version=int(model["version"]), model_sha256=model["sha256"],
                     latency_ms=float(fields["latency_ms"]), client=dict(client or {}))
        with Session(self.engine) as session, session.begin():
            session.add(row)

    def _write_image(self, name, data):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.images)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.images / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise

    def get(self, record_id):
        """The record as a dict, or None."""
        with Session(self.engine) as session:
            row = session.get(Record, record_id)
            return None if row is None else row.to_dict()

    def file_path(self, record, kind):
        """The stored ``kind`` ("image" or "map") file of a record (a dict), or None."""
        name = record[f"{kind}_file"]
        return None if name is None else self.images / name

    def expire_ok_images(self, before):
        """Remove the images of OK records made before ``before`` (a retention setting; their records and maps
        stay, ``image_file`` None). Returns how many were removed."""
        with Session(self.engine) as session, session.begin():
            rows = list(session.scalars(select(Record).where(Record.label == "OK", Record.created_at < before,
                                                             Record.image_file.is_not(None))))
            names = [row.image_file for row in rows]
            for row in rows:
                row.image_file = None
        for name in names:   # after the commit: a crash in between leaves files the next sweep removes
            (self.images / name).unlink(missing_ok=True)
        return len(names)

    def _filtered(self, statement, label, since, until, model_version):
        if label is not None:
            if label not in LABELS:
                raise InputError("label", f"must be one of {', '.join(LABELS)}, got {label!r}")
            statement = statement.where(Record.label == label)
        return within(statement, since, until, model_version)

    def query(self, label=None, since=None, until=None, model_version=None, limit=50, offset=0):
        """{"total", "items"}: the records that match, newest first, ``limit`` from ``offset``."""
        with Session(self.engine) as session:
            total = session.scalar(self._filtered(select(func.count()).select_from(Record), label, since, until,
                                                  model_version))
            rows = session.scalars(self._filtered(select(Record), label, since, until, model_version)
                                   .order_by(Record.created_at.desc(), Record.id).limit(limit).offset(offset))
            return {"total": int(total), "items": [row.to_dict() for row in rows]}

    def counts(self, since=None, until=None, model_version=None):
        """[{"day", "label", "count"}]: records per UTC day and label, oldest day first."""
        day = func.date(Record.created_at) if self.engine.dialect.name == "sqlite" else \
            func.to_char(func.timezone("UTC", Record.created_at), "YYYY-MM-DD")
        statement = self._filtered(select(day.label("day"), Record.label, func.count()), None, since, until,
                                   model_version).group_by(day, Record.label).order_by(day, Record.label)
        with Session(self.engine) as session:
            return [{"day": str(row[0]), "label": row[1], "count": int(row[2])} for row in session.execute(statement)]

    def export(self, fmt, label=None, since=None, until=None, model_version=None, page=1000):
        """Yield the matching records, oldest first, as text: ``csv`` (a header, then a row per record; regions,
        model and client as JSON) or ``json`` (one array), a page of records at a time."""
        if fmt not in EXPORT_FORMATS:
            raise InputError("format", f"must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
        statement = self._filtered(select(Record), label, since, until, model_version).order_by(
            Record.created_at, Record.id)
        if fmt == "csv":
            yield _csv_line(CSV_COLUMNS)
        else:
            yield "["
        first = True
        for offset in itertools.count(0, page):
            with Session(self.engine) as session:
                rows = [row.to_dict() for row in session.scalars(statement.limit(page).offset(offset))]
            for record in rows:
                if fmt == "csv":
                    yield _csv_line([json.dumps(record[key]) if isinstance(record[key], (dict, list)) else
                                     record[key] for key in CSV_COLUMNS])
                else:
                    yield ("" if first else ",") + "\n" + json.dumps(record)
                first = False
            if len(rows) < page:
                break
        if fmt == "json":
            yield "\n]\n"

    def close(self):
        self.engine.dispose()
