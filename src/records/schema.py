"""The records table, as SQLAlchemy 2 declares it; ``migrations/`` creates and evolves it (Alembic)."""
from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """A moment in UTC whatever the database keeps: SQLite has no time zones (stored naive, in UTC), PostgreSQL
    does; always read back as an aware UTC datetime, and aware ones compared."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a naive datetime: give its time zone")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Record(Base):
    """One decision: what was judged (the image's sha256 and stored file), by which model version, when, with which
    result, how fast, and what the client said about it (``client``: line, part id, ...)."""
    __tablename__ = "records"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_file: Mapped[str | None] = mapped_column(String(255))   # below the store's images/; None once removed
    map_file: Mapped[str | None] = mapped_column(String(255))     # the normalised map as a PNG, beside it
    raw_score: Mapped[float] = mapped_column(Float)
    image_score: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(8), index=True)
    regions: Mapped[list] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[int] = mapped_column(Integer, index=True)
    model_sha256: Mapped[str] = mapped_column(String(64))
    latency_ms: Mapped[float] = mapped_column(Float)
    client: Mapped[dict] = mapped_column(JSON)

    def to_dict(self):
        return {"id": self.id, "created_at": self.created_at.isoformat(), "image_sha256": self.image_sha256,
                "image_file": self.image_file, "map_file": self.map_file, "raw_score": self.raw_score,
                "image_score": self.image_score, "label": self.label, "regions": self.regions,
                "model": {"name": self.model_name, "version": self.model_version, "sha256": self.model_sha256},
                "latency_ms": self.latency_ms, "client": self.client}


class Review(Base):
    """A person's verdict on one record (at most one): ``false_alarm`` (the image is OK: a model update may teach
    it) or ``defect`` (confirmed); who gave it, when, with an optional note."""
    __tablename__ = "reviews"

    record_id: Mapped[str] = mapped_column(String(32), ForeignKey("records.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    verdict: Mapped[str] = mapped_column(String(16), index=True)
    reviewer: Mapped[str] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)

    def to_dict(self):
        return {"record_id": self.record_id, "created_at": self.created_at.isoformat(), "verdict": self.verdict,
                "reviewer": self.reviewer, "note": self.note}


class ModelUpdate(Base):
    """A model version built from reviewed false alarms: requested by whom and when, from which version, teaching
    which records; ``state`` building, ready (``version`` built, ``comparison``: what it decides on every reviewed
    record) or failed (``error``)."""
    __tablename__ = "model_updates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    requested_by: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), index=True)
    parent_version: Mapped[int] = mapped_column(Integer)
    version: Mapped[int | None] = mapped_column(Integer)
    taught: Mapped[list] = mapped_column(JSON)
    comparison: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)

    def to_dict(self):
        return {"id": self.id, "created_at": self.created_at.isoformat(), "requested_by": self.requested_by,
                "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
                "state": self.state, "parent_version": self.parent_version, "version": self.version,
                "taught": self.taught, "comparison": self.comparison, "error": self.error}


class AuditEntry(Base):
    """Who did what, when: a review, a model update (requested, built or failed), an activation, a rollback."""
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32), index=True)
    subject: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict] = mapped_column(JSON)

    def to_dict(self):
        return {"id": self.id, "created_at": self.created_at.isoformat(), "actor": self.actor,
                "action": self.action, "subject": self.subject, "details": self.details}


def within(statement, since=None, until=None, model_version=None):
    """``statement`` kept to the records made in [``since``, ``until``) by model version ``model_version`` (None:
    no bound)."""
    if since is not None:
        statement = statement.where(Record.created_at >= since)
    if until is not None:
        statement = statement.where(Record.created_at < until)
    if model_version is not None:
        statement = statement.where(Record.model_version == int(model_version))
    return statement
