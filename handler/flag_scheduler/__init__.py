"""flag-scheduler: apply scheduled feature-flag changes stored in PostgreSQL, with retries."""

# The one place the version is written: pyproject.toml reads it (dynamic version).
__version__ = "0.1.0"
