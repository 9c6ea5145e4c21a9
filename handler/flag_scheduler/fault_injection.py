"""Injected database failures for demos and tests; migrations never install this."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg

# A row in fault_injection makes every UPDATE of that flag raise the given SQLSTATE, the
# way a real serialization failure, deadlock or lock timeout reaches the scheduler.
INSTALL = """
CREATE TABLE IF NOT EXISTS fault_injection (
    flag_id uuid PRIMARY KEY,
    sqlstate text NOT NULL,
    message text NOT NULL
);
CREATE OR REPLACE FUNCTION fault_injection_raise() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    fault record;
BEGIN
    SELECT sqlstate, message INTO fault FROM fault_injection WHERE flag_id = NEW.id;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = fault.sqlstate, MESSAGE = fault.message;
    END IF;
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS fault_injection ON feature_flags;
CREATE TRIGGER fault_injection BEFORE UPDATE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION fault_injection_raise();
"""

# Makes updates of one flag fail with a SQLSTATE until cleared.
SET_FAULT = """
INSERT INTO fault_injection (flag_id, sqlstate, message)
VALUES (%(flag_id)s, %(sqlstate)s, %(message)s)
ON CONFLICT (flag_id) DO UPDATE SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message
"""

# Lets updates of one flag succeed again.
CLEAR_FAULT = "DELETE FROM fault_injection WHERE flag_id = %(flag_id)s"


def install(conn: psycopg.Connection[Any]) -> None:
    conn.execute(INSTALL)


def set_fault(
    conn: psycopg.Connection[Any], flag_id: UUID, sqlstate: str, message: str = "injected fault"
) -> None:
    conn.execute(SET_FAULT, {"flag_id": flag_id, "sqlstate": sqlstate, "message": message})


def clear_fault(conn: psycopg.Connection[Any], flag_id: UUID) -> None:
    conn.execute(CLEAR_FAULT, {"flag_id": flag_id})
