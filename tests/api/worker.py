"""Runs API Gateway events through the function in a process of its own (concurrency tests).

`python -m tests.api.worker EVENTS_JSON` with DATABASE_URL set: resolves each event of the
JSON list in order and prints one JSON line per response: {"status", "body", "replayed"}.
"""

from __future__ import annotations

import json
import sys

from flag_scheduler.api.app import lambda_handler


def main(events_json: str) -> None:
    for event in json.loads(events_json):
        result = lambda_handler(event, None)
        headers = result.get("headers") or {}
        line = {
            "status": result["statusCode"],
            "body": json.loads(result["body"]) if result.get("body") else None,
            "replayed": headers.get("Idempotent-Replayed") == "true",
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
