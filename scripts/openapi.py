"""Write the HTTP API's OpenAPI document to docs/openapi.json (`make openapi`).

tests/api/test_openapi_document.py fails while the committed copy differs from what the
resolver generates; run this after changing a route or a model, and commit the result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from flag_scheduler.api.app import openapi_document

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def rendered() -> str:
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    DOCUMENT.write_text(rendered(), encoding="utf-8")
    print(f"wrote {DOCUMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
