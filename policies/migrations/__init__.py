"""The audit database's Alembic migrations (run through :mod:`policies.db`; no alembic.ini needed)."""
