"""Alembic migrations: the only way genfarm's schema is made or changed (`genfarm db upgrade`)."""
