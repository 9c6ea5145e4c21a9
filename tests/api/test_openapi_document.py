"""The committed OpenAPI document is the one the resolver generates."""

from __future__ import annotations

import json
from pathlib import Path

from flag_scheduler.api.app import openapi_document

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_document_matches_the_generated_one() -> None:
    committed = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert committed == openapi_document(), (
        "docs/openapi.json is stale: run `make openapi` and commit it"
    )


def test_every_operation_documents_its_problems() -> None:
    document = openapi_document()
    assert document["info"]["title"] == "flag-scheduler"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"401", "403", "422"} <= statuses, (method, path)
            success = {"200", "201"} & statuses
            assert len(success) == 1, (method, path)
            problem = operation["responses"]["403"]["content"]
            assert "application/problem+json" in problem, (method, path)
