"""The records table.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "records",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_file", sa.String(255), nullable=True),
        sa.Column("map_file", sa.String(255), nullable=True),
        sa.Column("raw_score", sa.Float, nullable=False),
        sa.Column("image_score", sa.Float, nullable=False),
        sa.Column("label", sa.String(8), nullable=False),
        sa.Column("regions", sa.JSON, nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("client", sa.JSON, nullable=False))
    op.create_index("ix_records_created_at", "records", ["created_at"])
    op.create_index("ix_records_label", "records", ["label"])
    op.create_index("ix_records_model_version", "records", ["model_version"])


def downgrade():
    op.drop_table("records")
