"""Everything that talks to PostgreSQL: named SQL, connections, error translation, rows."""
