"""The store (issue 21): clients' episodes, sessions, outcomes and risk history in SQLite or
PostgreSQL, through SQLAlchemy Core, with the schema in Alembic migrations."""
