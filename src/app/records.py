"""records.py: the inspection records exported from their database (``src/records/store.py``), without the service."""
import os
import sys
from datetime import datetime, timezone

from src.records.store import SQLITE_FILE, RecordStore
from src.utils.errors import InputError
from src.utils.io import atomic_path


def moment(text, option):
    """An ISO 8601 time as an aware UTC datetime (a naive one is UTC)."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(option, f"not an ISO 8601 time: {text!r}") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def export(args):
    if args.db is None and not os.path.isfile(os.path.join(args.records, SQLITE_FILE)):
        raise InputError(args.records, f"no records here (no {SQLITE_FILE}; a PostgreSQL store needs --db)")
    store = RecordStore(args.records, args.db)
    chunks = store.export(args.format, args.label, moment(args.since, "--since"), moment(args.until, "--until"),
                          args.model_version)
    if args.output is None:
        for chunk in chunks:
            sys.stdout.write(chunk)
        return 0
    with atomic_path(args.output) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            for chunk in chunks:
                f.write(chunk)
    store.close()
    return 0
