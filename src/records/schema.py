"""The records table, as SQLAlchemy 2 declares it; ``migrations/`` creates and evolves it (Alembic)."""
from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, Integer, String
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
                "image_file": self.image_file, "map_file": self.map_file, "raw_score": self.raw_score, "image_score": self.image_score,
                "label": self.label, "regions": self.regions,
                "model": {"name": self.model_name, "version": self.model_version, "sha256": self.model_sha256},
                "latency_ms": self.latency_ms, "client": self.client}
