"""What people decide about the records, beside them in the same database: one review per record (a false alarm or
a confirmed defect), the model updates built from the reviewed false alarms, and the audit log of every review,
update, activation and rollback (who, when, what). An action and its audit entry are committed together.

    log = ReviewLog(store.engine)
    log.review(record_id, "false_alarm", "anna", note="glare")     # NotFound, Conflict (reviewed already)
    log.queue(limit=50)                                             # NG and REVIEW records, newest first
"""
from datetime import datetime, timezone

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from src.records.schema import AuditEntry, ModelUpdate, Record, Review, within

VERDICTS = ("false_alarm", "defect")
FLAGGED = ("NG", "REVIEW")
BUILDING, READY, FAILED = "building", "ready", "failed"


class NotFound(LookupError):
    """The record, update or version asked for does not exist."""


class Conflict(RuntimeError):
    """The action contradicts what is stored: a second review, a second update at once."""


def _now():
    return datetime.now(timezone.utc)


def _audit(session, actor, action, subject, details):
    session.add(AuditEntry(created_at=_now(), actor=actor, action=action, subject=str(subject),
                           details=dict(details)))


class ReviewLog:
    """Reviews, model updates and the audit log on the records' database (``engine``: the RecordStore's)."""

    def __init__(self, engine):
        self.engine = engine

    def review(self, record_id, verdict, reviewer, note=None, details=None):
        """Store a person's verdict on a flagged record, with its audit entry; returns the review as a dict.
        NotFound: no such record; Conflict: it is OK (nothing to review) or reviewed already."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        try:
            with Session(self.engine) as session, session.begin():
                record = session.get(Record, record_id)
                if record is None:
                    raise NotFound(f"no record {record_id!r}")
                if record.label not in FLAGGED:
                    raise Conflict(f"record {record_id!r} is {record.label}: only NG and REVIEW records are reviewed")
                if session.get(Review, record_id) is not None:
                    raise Conflict(f"record {record_id!r} is reviewed already")
                review = Review(record_id=record_id, created_at=_now(), verdict=verdict, reviewer=reviewer,
                                note=note or None)
                session.add(review)
                _audit(session, reviewer, "review", record_id, dict(details or {}, verdict=verdict, note=note,
                                                                    label=record.label))
                session.flush()
                return review.to_dict()
        except IntegrityError:   # the same record reviewed at the same moment by someone else
            raise Conflict(f"record {record_id!r} is reviewed already") from None

    def queue(self, label=None, since=None, until=None, model_version=None, reviewed=None, limit=50, offset=0):
        """{"total", "items"}: the flagged records (NG and REVIEW, or ``label``), newest first, each with its
        ``review`` (or None); ``reviewed``: True/False keeps only the reviewed/unreviewed ones."""
        statement = select(Record, Review).outerjoin(Review, Review.record_id == Record.id)
        statement = within(statement.where(Record.label.in_([label] if label else FLAGGED)), since, until,
                           model_version)
        if reviewed is not None:
            statement = statement.where(Review.record_id.is_not(None) if reviewed else Review.record_id.is_(None))
        with Session(self.engine) as session:
            total = session.scalar(select(func.count()).select_from(statement.subquery()))
            rows = session.execute(statement.order_by(Record.created_at.desc(), Record.id).limit(limit)
                                   .offset(offset))
            items = [dict(record.to_dict(), review=None if review is None else review.to_dict())
                     for record, review in rows]
        return {"total": int(total), "items": items}

    def reviewed(self):
        """[(record, review)] of every reviewed record whose image is kept, oldest record first (dicts)."""
        statement = select(Record, Review).join(Review, Review.record_id == Record.id).where(
            Record.image_file.is_not(None)).order_by(Record.created_at, Record.id)
        with Session(self.engine) as session:
            return [(record.to_dict(), review.to_dict()) for record, review in session.execute(statement)]

    def false_alarms_to_teach(self, taught_sha256):
        """The records reviewed as false alarms whose image is kept and not among ``taught_sha256`` (the active
        version's taught images), oldest first, one per image content."""
        chosen, seen = [], set(taught_sha256)
        for record, review in self.reviewed():
            if review["verdict"] == "false_alarm" and record["image_sha256"] not in seen:
                seen.add(record["image_sha256"])
                chosen.append(record)
        return chosen

    def start_update(self, requested_by, parent_version, record_ids):
        """A new update in state ``building`` (with its audit entry); returns its id. Conflict: one is building."""
        with Session(self.engine) as session, session.begin():
            running = session.scalar(select(ModelUpdate.id).where(ModelUpdate.state == BUILDING))
            if running is not None:
                raise Conflict(f"update {running} is being built; wait for it")
            update = ModelUpdate(created_at=_now(), requested_by=requested_by, state=BUILDING,
                                 parent_version=int(parent_version), taught=list(record_ids))
            session.add(update)
            session.flush()
            _audit(session, requested_by, "update", update.id, {"parent_version": int(parent_version),
                                                                "records": list(record_ids)})
            return update.id

    def finish_update(self, update_id, version=None, comparison=None, error=None):
        """The update built (``version`` and its ``comparison``) or failed (``error``), with its audit entry."""
        with Session(self.engine) as session, session.begin():
            update = session.get(ModelUpdate, update_id)
            update.finished_at = _now()
            update.state = FAILED if error is not None else READY
            update.version, update.comparison, update.error = version, comparison, error
            _audit(session, update.requested_by, "update_" + update.state, update_id,
                   {"version": version, "error": error})

    def abandon_unfinished(self):
        """Mark updates still ``building`` failed (the service that built them stopped); returns how many."""
        with Session(self.engine) as session, session.begin():
            running = list(session.scalars(select(ModelUpdate).where(ModelUpdate.state == BUILDING)))
            for update in running:
                update.state, update.finished_at = FAILED, _now()
                update.error = "the service stopped while this update was built"
            return len(running)

    def update(self, update_id):
        """The update as a dict; NotFound when there is none."""
        with Session(self.engine) as session:
            update = session.get(ModelUpdate, update_id)
            if update is None:
                raise NotFound(f"no model update {update_id}")
            return update.to_dict()

    def updates(self, limit=20):
        """The newest updates first."""
        with Session(self.engine) as session:
            return [update.to_dict() for update in session.scalars(
                select(ModelUpdate).order_by(ModelUpdate.id.desc()).limit(limit))]

    def audit(self, actor, action, subject, details=None):
        """One audit entry on its own (an activation, a rollback)."""
        with Session(self.engine) as session, session.begin():
            _audit(session, actor, action, subject, details or {})

    def audit_log(self, action=None, limit=100, offset=0):
        """The audit entries, newest first (``action``: only those)."""
        statement = select(AuditEntry)
        if action is not None:
            statement = statement.where(or_(AuditEntry.action == action, AuditEntry.action.like(f"{action}_%")))
        with Session(self.engine) as session:
            return [entry.to_dict() for entry in session.scalars(
                statement.order_by(AuditEntry.id.desc()).limit(limit).offset(offset))]
