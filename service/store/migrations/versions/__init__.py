"""The store's migrations, one linear chain (``alembic heads`` must print one revision)."""
