"""Inspection records: every decision the service makes, stored in a database (``store.py``)."""
