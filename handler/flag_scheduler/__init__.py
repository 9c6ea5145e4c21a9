"""flag-scheduler: apply scheduled feature-flag changes stored in PostgreSQL, with retries."""

__version__ = "0.1.0"
