"""Validation of a schedule's updates document."""

from __future__ import annotations

import pytest

from flag_scheduler.engine.records import FlagUpdates
from flag_scheduler.errors import InvalidUpdates


@pytest.mark.parametrize(
    ("document", "fields"),
    [
        ({"enabled": True}, {"enabled": True}),
        ({"rollout_percentage": 0}, {"rollout_percentage": 0}),
        (
            {"enabled": False, "rollout_percentage": 100},
            {"enabled": False, "rollout_percentage": 100},
        ),
    ],
)
def test_valid_documents(document: object, fields: dict[str, object]) -> None:
    assert FlagUpdates.from_document(document).fields() == fields


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "at least one of enabled, rollout_percentage"),  # empty
        ({"enabled": True, "colour": "red"}, "colour: unknown key"),  # unknown key
        ({"enabled": "yes"}, "enabled: Input should be a valid boolean"),  # wrong type
        ({"enabled": 1}, "enabled: Input should be a valid boolean"),  # 1 is not true
        ({"rollout_percentage": 101}, "less than or equal to 100"),  # out of range
        ({"rollout_percentage": -1}, "greater than or equal to 0"),
        ({"rollout_percentage": 50.5}, "rollout_percentage: Input should be a valid integer"),
        ({"rollout_percentage": True}, "rollout_percentage: Input should be a valid integer"),
        ({"rollout_percentage": "50"}, "rollout_percentage: Input should be a valid integer"),
        ({"enabled": None}, "enabled must not be null"),  # null is not "leave as is"
        ([{"enabled": True}], "updates must be a JSON object, got list"),
        ("enabled", "updates must be a JSON object, got str"),
    ],
)
def test_invalid_documents_are_refused_with_the_reason(document: object, message: str) -> None:
    with pytest.raises(InvalidUpdates, match=message.replace("(", r"\(")):
        FlagUpdates.from_document(document)
