"""The HTTP API's throughput and latency through the in-process resolver, one client.

Each request is the API Gateway (payload 2.0) event `flag-scheduler serve` builds, handed to
`lambda_handler` in this process: what one warm Lambda container does, without the network.
Run by scripts/bench.py in its own process (so its imports do not count in the scheduler's
memory figures), or alone: `python scripts/bench_api.py DATABASE_URL [--requests N]`.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "handler"), str(ROOT / "tools")]

from flag_scheduler_cli import serve  # noqa: E402


def event(method: str, path: str, body: Any = None) -> dict[str, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    return serve.to_event(
        method,
        path,
        [("Host", "bench"), ("Content-Type", "application/json")],
        data,
        source_ip="127.0.0.1",
        authorizer=serve.dev_authorizer(),
        now=datetime.now(UTC),
    )


def timed(
    name: str,
    count: int,
    make: Callable[[int], dict[str, Any]],
    handler: Callable[[dict[str, Any], Any], dict[str, Any]],
    expected: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send `count` requests one after another; latencies in ms, results kept."""
    events = [make(i) for i in range(count)]  # built before the clock starts
    latencies, results = [], []
    began = time.perf_counter()
    for each in events:
        start = time.perf_counter()
        result = handler(each, None)
        latencies.append((time.perf_counter() - start) * 1000)
        if result["statusCode"] != expected:
            raise SystemExit(f"{name}: {result['statusCode']} {result.get('body')}")
        results.append(result)
    seconds = time.perf_counter() - began
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    figures = {
        "operation": name,
        "requests": count,
        "requests_per_second": round(count / seconds, 1),
        "p50_ms": round(quantiles[49], 2),
        "p99_ms": round(quantiles[98], 2),
    }
    return figures, results


def run(count: int) -> list[dict[str, Any]]:
    # Deferred: DATABASE_URL must be set first, and importing is not what is measured.
    from flag_scheduler.api.app import lambda_handler

    handler = lambda_handler
    rows = []
    flags, _ = timed(
        "create flag (POST /flags)",
        count,
        lambda i: event("POST", "/flags", {"flag_key": f"bench-{i:06d}", "enabled": False}),
        handler,
        201,
    )
    rows.append(flags)
    base = datetime.now(UTC) + timedelta(days=1)
    created, results = timed(
        "create schedule (POST /flags/{key}/schedules)",
        count,
        lambda i: event(
            "POST",
            f"/flags/bench-{i:06d}/schedules",
            {
                "scheduled_at": (base + timedelta(seconds=i)).isoformat(),
                "updates": {"enabled": True, "rollout_percentage": i % 101},
            },
        ),
        handler,
        201,
    )
    rows.append(created)
    ids = [json.loads(r["body"])["id"] for r in results]
    got, _ = timed(
        "get schedule (GET /schedules/{id})",
        count,
        lambda i: event("GET", f"/schedules/{ids[i]}"),
        handler,
        200,
    )
    rows.append(got)
    listed, _ = timed(
        "list schedules, 100 a page (GET /schedules)",
        max(1, count // 4),
        lambda i: event("GET", "/schedules?limit=100"),
        handler,
        200,
    )
    rows.append(listed)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("database_url")
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = args.database_url
    print(json.dumps(run(args.requests)))


if __name__ == "__main__":
    main()
