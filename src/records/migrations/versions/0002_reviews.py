"""Reviews, model updates and the audit log.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "reviews",
        sa.Column("record_id", sa.String(32), sa.ForeignKey("records.id"), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reviewer", sa.String(100), nullable=False),
        sa.Column("note", sa.Text, nullable=True))
    op.create_index("ix_reviews_created_at", "reviews", ["created_at"])
    op.create_index("ix_reviews_verdict", "reviews", ["verdict"])
    op.create_table(
        "model_updates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("parent_version", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("taught", sa.JSON, nullable=False),
        sa.Column("comparison", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True))
    op.create_index("ix_model_updates_state", "model_updates", ["state"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("details", sa.JSON, nullable=False))
    op.create_index("ix_audit_created_at", "audit", ["created_at"])
    op.create_index("ix_audit_action", "audit", ["action"])


def downgrade():
    op.drop_table("audit")
    op.drop_table("model_updates")
    op.drop_table("reviews")
