"""Alembic environment of the store (``service.store.db.Store.upgrade``)."""
