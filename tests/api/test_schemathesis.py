"""Schemathesis against `flag-scheduler serve`: every operation of the OpenAPI document the
server publishes, generated requests over real HTTP, no 5xx and every response as documented."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.cli.serving import DEV_TOKEN, Served, serving
from tests.support import database_url_for

pytestmark = pytest.mark.slow

# Bounded so the whole suite stays well inside CI's time: examples per operation and mode.
MAX_EXAMPLES = 25
AUTH = {"Authorization": f"Bearer {DEV_TOKEN}"}
# tests/conftest.py prints this property at the end of the run (xdist workers' output is not shown).
SUMMARY_PROPERTY = "summary_line"
DOCUMENTED = [
    ("/status", "GET"),
    ("/flags", "GET"),
    ("/flags", "POST"),
    ("/flags/{flag_key}", "GET"),
    ("/flags/{flag_key}/schedules", "GET"),
    ("/flags/{flag_key}/schedules", "POST"),
    ("/flags/{flag_key}/timeline", "GET"),
    ("/schedules", "GET"),
    ("/schedules/retry", "POST"),
    ("/schedules/{schedule_id}", "GET"),
    ("/schedules/{schedule_id}/cancel", "POST"),
    ("/schedules/{schedule_id}/retry", "POST"),
    ("/schedules/{schedule_id}/preview", "GET"),
    ("/flags/{flag_key}/ramps", "POST"),
    ("/ramps", "GET"),
    ("/ramps/{ramp_id}", "GET"),
    ("/ramps/{ramp_id}/pause", "POST"),
    ("/ramps/{ramp_id}/resume", "POST"),
    ("/ramps/{ramp_id}/abort", "POST"),
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(server_url: str, template_database: str, worker_id: str) -> Iterator[Served]:
    """`serve` on a migrated database of its own for the module's run."""
    name = f"fs_schemathesis_{worker_id}_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    try:
        with serving(database_url_for(server_url, name)) as running:
            yield running
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _operations(schema: Any) -> list[tuple[str, str]]:
    """(path, method) of every operation the document describes."""
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return [
        (path, method.upper())
        for path, item in schema.raw_schema["paths"].items()
        for method in item
        if method in methods
    ]


def test_every_operation_answers_as_documented(
    served: Served, record_property: Callable[[str, object], None]
) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", headers=AUTH, timeout=30)
    operations = _operations(schema)
    # Every endpoint of the API and the ramps (GET /openapi.json itself is not described).
    assert sorted(operations) == sorted(DOCUMENTED)
    cases: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    # Positive: valid input must get the documented answer; negative: invalid input (hostile
    # strings, wrong types, bodies that are not UTF-8, bad tokens) must too, never a 5xx.
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for (path, method), mode in itertools.product(operations, modes):

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            # CI repeats one sequence (a red run is reproducible, never chance); elsewhere
            # each run explores new inputs.
            derandomize=bool(os.environ.get("CI")),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=schema[path][method].as_strategy(mode))
        def answers_as_documented(case: Any) -> None:
            response = case.call_and_validate(base_url=served.url, headers=AUTH, checks=CHECKS)
            cases[case.operation.label] += 1
            statuses[response.status_code] += 1

        answers_as_documented()
    by_status = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
    line = (
        f"schemathesis {schemathesis.__version__} against flag-scheduler serve:"
        f" {len(cases)} operations, {sum(cases.values())} generated requests (valid and invalid"
        " input), no failure"
        f" (no 5xx; status, content type and body as documented); responses by status"
        f" {{{by_status}}}"
    )
    print(line)
    record_property(SUMMARY_PROPERTY, line)
