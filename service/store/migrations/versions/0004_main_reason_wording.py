"""the caseload's main reason without " (raises the risk)": the suffix taken off stored rows

The main reason (``episodes.latest_top_driver``, ``risk_scores.top_driver``) is computed when a
score is stored, so rows stored before this release carry the suffix. They are rewritten once
here rather than stripped on every read: the text is served from three places (the JSON
caseload, the dashboard, a client's score history), and closed episodes are never rescored, so
their history would otherwise keep the old wording for good. ``clinic_state.version`` is bumped
for each clinic whose rows change, so its caseload ETag moves by this revision alone and a
poller does not keep the old text (in the release that brought this revision every caseload
ETag moves at upgrade anyway: the tag's format changed with the sealed cursors,
``service.store.caseload.FORMAT``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SUFFIX = " (raises the risk)"  # what service.store.repository.top_driver appended before

episodes = sa.table("episodes", sa.column("clinic_id", sa.String), sa.column("latest_top_driver"))
risk_scores = sa.table("risk_scores", sa.column("top_driver", sa.String))
clinic_state = sa.table("clinic_state", sa.column("clinic_id"), sa.column("version", sa.Integer))


def _stripped(column: sa.ColumnClause) -> sa.ColumnElement:
    return sa.func.substr(column, 1, sa.func.length(column) - len(SUFFIX))


def upgrade() -> None:
    latest, top = episodes.c.latest_top_driver, risk_scores.c.top_driver
    # The text has no LIKE wildcard ("%" or "_"), so the pattern matches the suffix only.
    changed = sa.select(episodes.c.clinic_id).where(latest.like(f"%{SUFFIX}"))
    op.execute(
        clinic_state.update()
        .where(clinic_state.c.clinic_id.in_(changed))
        .values(version=clinic_state.c.version + 1)
    )
    op.execute(
        episodes.update()
        .where(latest.like(f"%{SUFFIX}"))
        .values(latest_top_driver=_stripped(latest))
    )
    op.execute(risk_scores.update().where(top.like(f"%{SUFFIX}")).values(top_driver=_stripped(top)))


def downgrade() -> None:
    """Nothing to undo in the schema, and the suffix is not put back: rows stored before it
    existed (the largest driver, which may lower the risk) cannot be told apart from the rows
    upgraded here, and a "(raises the risk)" on a driver that lowers it would be false. The
    older code reads either text."""
