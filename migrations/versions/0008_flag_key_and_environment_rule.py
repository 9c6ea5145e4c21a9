"""flag keys and environments follow one rule (new and renamed rows; older rows are kept)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The rule as of this revision (flag_scheduler/limits.py; a test compares the two). Written
# out, not imported: a migration must create what it created the day it was written.
FLAG_KEY_REGEX = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
ENVIRONMENT_REGEX = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def upgrade() -> None:
    # A trigger rather than a CHECK: a CHECK, even NOT VALID, is re-checked on every UPDATE of
    # the row, so a flag whose key predates the rule could no longer be changed by the
    # scheduler (its schedules would fail). The trigger checks inserted rows and rows whose
    # key or environment is rewritten, and leaves older rows and flag-value updates alone. It
    # raises check_violation (23514) naming the rule, as a CHECK would.
    op.execute(
        f"""
        CREATE FUNCTION feature_flags_names_valid() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.flag_key !~ '{FLAG_KEY_REGEX}' THEN
                RAISE EXCEPTION 'flag key % does not match {FLAG_KEY_REGEX}',
                    quote_literal(left(NEW.flag_key, 200))
                    USING ERRCODE = 'check_violation',
                          CONSTRAINT = 'ck_feature_flags_flag_key_valid',
                          TABLE = 'feature_flags', COLUMN = 'flag_key';
            END IF;
            IF NEW.environment !~ '{ENVIRONMENT_REGEX}' THEN
                RAISE EXCEPTION 'environment % does not match {ENVIRONMENT_REGEX}',
                    quote_literal(left(NEW.environment, 200))
                    USING ERRCODE = 'check_violation',
                          CONSTRAINT = 'ck_feature_flags_environment_valid',
                          TABLE = 'feature_flags', COLUMN = 'environment';
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER tr_feature_flags_names_valid"
        " BEFORE INSERT OR UPDATE OF flag_key, environment ON feature_flags"
        " FOR EACH ROW EXECUTE FUNCTION feature_flags_names_valid()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER tr_feature_flags_names_valid ON feature_flags")
    op.execute("DROP FUNCTION feature_flags_names_valid()")
