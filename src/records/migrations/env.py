"""Alembic's environment for the records database: run on the connection the store hands over
(``config.attributes["connection"]``), never from an alembic.ini."""
from alembic import context

from src.records.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
