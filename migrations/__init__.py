"""Alembic migrations for flag-scheduler's tables."""
