"""flag-scheduler benchmark: drain a due backlog with the real handler, against the SQL floor.

Every figure of one run is measured on the same server in the same minutes; speeds are
reported as ratios to the floor (a few set-based statements doing the same work), because
absolute times on a shared machine drift. A configuration whose correctness check fails
reports no speed. Usage: `make bench` or `python scripts/bench.py --help`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "handler"))

from flag_scheduler.store import sql  # noqa: E402
from flag_scheduler_cli.local import migrate, start_embedded_server  # noqa: E402

# Due schedules are seeded just before the run (the lateness limit would expire older ones).
SEED_TIME = datetime.now(UTC).replace(microsecond=0)

# N schedules on F flags, due before SEED_TIME, distinct scheduled_at, partial updates.
SEED_FLAGS = """
INSERT INTO feature_flags (flag_key, environment)
SELECT 'flag-' || lpad(g::text, 6, '0'), 'production' FROM generate_series(1, %(flags)s) AS g
"""
SEED_SCHEDULES = """
WITH f AS (SELECT array_agg(id ORDER BY flag_key) AS ids FROM feature_flags)
INSERT INTO feature_flag_schedules (flag_id, scheduled_at, updates, status, applied_at)
SELECT f.ids[1 + g %% %(flags)s],
       %(t)s - CASE WHEN %(same_instant)s THEN interval '0' ELSE make_interval(secs => g * 0.01) END
             - make_interval(secs => %(offset)s),
       CASE g %% 3
           WHEN 0 THEN jsonb_build_object('enabled', g %% 2 = 0)
           WHEN 1 THEN jsonb_build_object('rollout_percentage', (g * 13) %% 101)
           ELSE jsonb_build_object('enabled', g %% 4 < 2, 'rollout_percentage', (g * 17) %% 101)
       END,
       %(status)s, CASE WHEN %(status)s = 'applied' THEN %(t)s END
FROM generate_series(1, %(count)s) AS g, f
"""

# The floor: each flag written once with its latest-scheduled value per field, every due
# schedule marked applied, in one transaction.
FLOOR = [
    """
    WITH due AS (
        SELECT id, flag_id, scheduled_at, updates FROM feature_flag_schedules
        WHERE due_at <= %(now)s
    ), latest AS (
        SELECT DISTINCT ON (d.flag_id, k.key) d.flag_id, k.key, d.updates -> k.key AS value
        FROM due AS d, jsonb_object_keys(d.updates) AS k(key)
        ORDER BY d.flag_id, k.key, d.scheduled_at DESC, d.id DESC
    ), per_flag AS (
        SELECT flag_id,
               bool_or((value)::boolean) FILTER (WHERE key = 'enabled') AS enabled,
               max((value)::integer) FILTER (WHERE key = 'rollout_percentage') AS rollout
        FROM latest GROUP BY flag_id
    )
    UPDATE feature_flags AS f
    SET enabled = coalesce(p.enabled, f.enabled),
        rollout_percentage = coalesce(p.rollout, f.rollout_percentage), updated_at = %(now)s
    FROM per_flag AS p WHERE f.id = p.flag_id
    """,
    """
    UPDATE feature_flag_schedules SET status = 'applied', applied_at = %(now)s,
        updated_at = %(now)s
    WHERE due_at <= %(now)s
    """,
]

CHECK_STATUSES = """
SELECT count(*) FILTER (WHERE status IN ('applied', 'superseded')), count(*)
FROM feature_flag_schedules WHERE scheduled_at > %(t)s - interval '100 days'
  AND applied_at IS DISTINCT FROM %(t)s
"""
CHECK_TWICE = """
SELECT count(*) FROM (
    SELECT schedule_id FROM feature_flag_schedule_attempts
    WHERE outcome IN ('applied', 'superseded') GROUP BY schedule_id HAVING count(*) > 1
) AS twice
"""
CHECK_ONCE = """
SELECT count(DISTINCT schedule_id) FROM feature_flag_schedule_attempts
WHERE outcome IN ('applied', 'superseded')
"""
CHECK_FLAGS = """
WITH latest AS (
    SELECT DISTINCT ON (s.flag_id, k.key) s.flag_id, k.key, s.updates -> k.key AS value
    FROM feature_flag_schedules AS s, jsonb_object_keys(s.updates) AS k(key)
    WHERE s.status IN ('applied', 'superseded')
    ORDER BY s.flag_id, k.key, s.scheduled_at DESC, s.id DESC
)
SELECT count(*) FROM latest AS l JOIN feature_flags AS f ON f.id = l.flag_id
WHERE (l.key = 'enabled' AND f.enabled <> (l.value)::boolean)
   OR (l.key = 'rollout_percentage' AND f.rollout_percentage <> (l.value)::integer)
"""
LAGS = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - %(start)s)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - %(start)s))
FROM feature_flag_schedules WHERE status = 'applied' AND applied_at <> %(t)s
"""


@dataclass
class Row:
    """One configuration's figures."""

    name: str
    schedules: int
    seconds: float | None = None
    per_second: float | None = None
    floor_ratio: float | None = None
    statements_per_schedule: float | None = None
    transactions_per_schedule: float | None = None
    lag_p50: float | None = None
    lag_p99: float | None = None
    peak_rss_mib: float | None = None
    rss_ratio: float | None = None
    check: str = "-"
    notes: list[str] = field(default_factory=list)


def database_url_for(server_url: str, database: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))


class Bench:
    def __init__(self, server_url: str, batch_size: int | None) -> None:
        self.server_url = server_url
        self.batch_size = batch_size
        self.template = "bench_template"
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.template}"')
        migrate(database_url_for(server_url, self.template))
        self.counter = 0

    @contextmanager
    def database(self) -> Iterator[str]:
        self.counter += 1
        name = f"bench_{os.getpid()}_{self.counter}"
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        try:
            yield database_url_for(self.server_url, name)
        finally:
            with psycopg.connect(self.server_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def seed(
        self,
        url: str,
        flags: int,
        schedules: int,
        *,
        same_instant: bool = False,
        applied_rows: int = 0,
    ) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SEED_FLAGS, {"flags": flags})
            if applied_rows:
                conn.execute(
                    SEED_SCHEDULES,
                    {
                        "flags": flags,
                        "t": SEED_TIME,
                        "same_instant": False,
                        "count": applied_rows,
                        "status": "applied",
                        "offset": 86_400 * 30,
                    },
                )
            conn.execute(
                SEED_SCHEDULES,
                {
                    "flags": flags,
                    "t": SEED_TIME,
                    "same_instant": same_instant,
                    "count": schedules,
                    "status": "pending",
                    "offset": 0,
                },
            )
            conn.execute("VACUUM ANALYZE feature_flag_schedules")
            conn.execute("VACUUM ANALYZE feature_flags")

    def floor(self, url: str, schedules: int) -> Row:
        row = Row("floor (set-based SQL)", schedules)
        with psycopg.connect(url) as conn:
            now = datetime.now(UTC)
            began = time.perf_counter()
            for statement in FLOOR:
                conn.execute(statement, {"now": now})
            conn.commit()
            row.seconds = time.perf_counter() - began
        row.statements_per_schedule = len(FLOOR) / schedules
        row.transactions_per_schedule = 1 / schedules
        row.check = self.check(url, schedules, history=False)
        if row.check == "ok":
            row.per_second = schedules / row.seconds
            row.floor_ratio = 1.0
        return row

    def invoke(
        self, url: str, name: str, schedules: int, invokers: int
    ) -> tuple[Row, list[dict[str, Any]]]:
        row = Row(name, schedules)
        env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT / "handler")}
        env.pop("POWERTOOLS_METRICS_DISABLED", None)
        if self.batch_size:
            env["FLAG_SCHEDULE_BATCH_SIZE"] = str(self.batch_size)
        start_at = time.time() + 3.0  # after every invoker has imported
        processes = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "bench_invoker.py"), str(start_at)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(invokers)
        ]
        results = []
        for process in processes:
            out, err = process.communicate(timeout=3600)
            if process.returncode != 0:
                raise SystemExit(f"invoker failed ({name}):\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        started = min(r["started"] for r in results)
        finished = max(r["finished"] for r in results)
        row.seconds = finished - started
        row.statements_per_schedule = sum(r["statements"] for r in results) / schedules
        row.transactions_per_schedule = sum(r["transactions"] for r in results) / schedules
        row.peak_rss_mib = max(r["peak_rss_kib"] for r in results) / 1024
        row.rss_ratio = max(r["peak_rss_kib"] / r["rss_after_import_kib"] for r in results)
        row.check = self.check(url, schedules, history=True)
        with psycopg.connect(url) as conn:
            lags = conn.execute(
                LAGS, {"start": datetime.fromtimestamp(started, UTC), "t": SEED_TIME}
            ).fetchone()
        if lags and lags[0] is not None:
            row.lag_p50, row.lag_p99 = float(lags[0]), float(lags[1])
        if row.check == "ok":
            row.per_second = schedules / row.seconds
        row.notes.append(f"claimed per invoker {[r['claimed'] for r in results]}")
        return row, results

    def check(self, url: str, schedules: int, *, history: bool) -> str:
        with psycopg.connect(url) as conn:
            done, total = conn.execute(CHECK_STATUSES, {"t": SEED_TIME}).fetchone() or (0, 0)
            problems = []
            if done != schedules or total != schedules:
                problems.append(f"{total - done} of {total} not applied or superseded")
            if history:
                twice = conn.execute(CHECK_TWICE).fetchone()
                once = conn.execute(CHECK_ONCE).fetchone()
                if twice and twice[0]:
                    problems.append(f"{twice[0]} applied twice")
                if once and once[0] != schedules:
                    problems.append(f"{schedules - once[0]} without a final history row")
            wrong = conn.execute(CHECK_FLAGS).fetchone()
            if wrong and wrong[0]:
                problems.append(f"{wrong[0]} flag fields not at their latest value")
        return "ok" if not problems else "FAILED: " + "; ".join(problems)

    def claim_plan(self, url: str) -> str:
        # Imported here: pydantic in this process would raise every invoker's peak RSS figure
        # (Linux keeps the forking process's peak in a child's ru_maxrss across exec).
        from flag_scheduler.engine.limits import EARLIEST_TIME, END_OF_TIME, MAX_RETRY_COUNT
        from flag_scheduler.engine.records import MAX_UPDATES_BYTES

        with psycopg.connect(url) as conn:
            plan = conn.execute(
                "EXPLAIN (FORMAT JSON) " + sql.CLAIM_DUE_SCHEDULES,
                {
                    "now": datetime.now(UTC),
                    "limit": 500,
                    "skip": [],
                    "skip_flags": [],
                    "max_updates_bytes": MAX_UPDATES_BYTES,
                    "max_retry_count": MAX_RETRY_COUNT,
                    "earliest": EARLIEST_TIME,
                    "latest": END_OF_TIME,
                },
            ).fetchone()
        scans: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            if node.get("Relation Name") == "feature_flag_schedules":
                scans.append(f"{node['Node Type']} on {node.get('Index Name', '-')}")
            for child in node.get("Plans", []):
                walk(child)

        walk(plan[0][0]["Plan"])  # type: ignore[index]
        return ", ".join(scans)


_DEPENDENCIES = {
    # What each entry imports from third parties, imported the same way it does.
    "scheduler": (
        "import psycopg, pydantic;"
        " from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator;"
        " from psycopg.types.json import Jsonb;"
        " from aws_lambda_powertools import Logger, Metrics;"
        " from aws_lambda_powertools.logging import correlation_paths;"
        " from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers;"
        " from aws_lambda_powertools.metrics import MetricUnit;"
    ),
    "api": (
        "import psycopg, pydantic;"
        " from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator;"
        " from psycopg.types.json import Jsonb;"
        " from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response;"
        " from aws_lambda_powertools.event_handler.openapi.exceptions import"
        " RequestValidationError;"
    ),
}
_ENTRIES = {"scheduler": "flag_scheduler.aws.scheduler", "api": "flag_scheduler.api.app"}


def cold_start(repeats: int, entry: str = "scheduler") -> dict[str, Any]:
    """Median import time of an entry module vs its third-party dependencies, interleaved."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "handler")}
    handler_code = (
        f"import time,sys; t=time.perf_counter(); import {_ENTRIES[entry]};"
        " print(time.perf_counter()-t, 'boto3' in sys.modules)"
    )
    deps_code = (
        "import time; t=time.perf_counter(); "
        + _DEPENDENCIES[entry]
        + " print(time.perf_counter()-t, False)"
    )
    timings: dict[str, list[float]] = {"handler": [], "deps": []}
    boto3 = False
    for _ in range(repeats):
        for name, code in (("deps", deps_code), ("handler", handler_code)):
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout.split()
            timings[name].append(float(out[0]))
            boto3 = boto3 or out[1] == "True"
    handler_s = statistics.median(timings["handler"])
    deps_s = statistics.median(timings["deps"])
    return {
        "module": _ENTRIES[entry],
        "handler_import_ms": round(handler_s * 1000, 1),
        "dependencies_import_ms": round(deps_s * 1000, 1),
        "ratio": round(handler_s / deps_s, 3),
        "boto3_imported": boto3,
    }


def api_figures(url: str, requests: int) -> list[dict[str, Any]]:
    """scripts/bench_api.py on `url` in its own process (its imports stay out of this one)."""
    env = {**os.environ, "POWERTOOLS_METRICS_DISABLED": "true"}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_api.py"), url, "--requests", str(requests)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"API bench failed:\n{completed.stderr[-3000:]}{completed.stdout[-500:]}")
    rows: list[dict[str, Any]] = json.loads(completed.stdout.strip().splitlines()[-1])
    return rows


def api_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| operation | requests | requests/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['operation']} | {r['requests']:,} | {r['requests_per_second']:,.0f}"
            f" | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        )
    return "\n".join(lines)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[Row]) -> str:
    lines = [
        "| configuration | schedules | seconds | schedules/s | ratio to floor"
        " | statements/schedule | transactions/schedule | lag p50 s | lag p99 s"
        " | peak RSS MiB | peak RSS / after import | check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.schedules:,} | {fmt(r.seconds, '.3f')} | {fmt(r.per_second, ',.0f')}"
            f" | {fmt(r.floor_ratio, '.2f')} | {fmt(r.statements_per_schedule, '.4f')}"
            f" | {fmt(r.transactions_per_schedule, '.4f')} | {fmt(r.lag_p50, '.3f')}"
            f" | {fmt(r.lag_p99, '.3f')} | {fmt(r.peak_rss_mib, '.1f')} | {fmt(r.rss_ratio, '.2f')}"
            f" | {r.check} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flags", type=int, default=1000)
    parser.add_argument("--schedules", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--applied-rows", type=int, default=1_000_000)
    parser.add_argument("--memory-schedules", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, help="FLAG_SCHEDULE_BATCH_SIZE for invokers")
    parser.add_argument("--cold-start-repeats", type=int, default=9)
    parser.add_argument("--api-requests", type=int, default=1000, help="per API operation")
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "latest.json")
    parser.add_argument(
        "--only",
        nargs="*",
        help="run only these parts (floor, 1, 4, burst, big, memory, cold, api)",
    )
    args = parser.parse_args()
    parts = set(args.only or ["floor", "1", "4", "burst", "big", "memory", "cold", "api"])

    with tempfile.TemporaryDirectory(prefix="flag-scheduler-bench-") as folder:
        server = None
        server_url = os.environ.get("DATABASE_URL", "").strip()
        if not server_url:
            server = start_embedded_server(Path(folder) / "pgdata", throwaway=True)
            server_url = server.get_uri()
        bench = Bench(server_url, args.batch_size)
        rows: list[Row] = []
        extra: dict[str, Any] = {}
        floor_rate = None

        def ratio(row: Row) -> Row:
            if row.per_second and floor_rate:
                row.floor_ratio = row.per_second / floor_rate
            return row

        def progress(message: str) -> None:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

        if "floor" in parts:
            with bench.database() as url:
                bench.seed(url, args.flags, args.schedules)
                rows.append(bench.floor(url, args.schedules))
                floor_rate = rows[-1].per_second
                progress(f"floor: {fmt(floor_rate, ',.0f')} schedules/s")
        one_rate = None
        for invokers in (1, 4):
            if str(invokers) not in parts:
                continue
            with bench.database() as url:
                bench.seed(url, args.flags, args.schedules)
                row, _ = bench.invoke(
                    url,
                    f"handler, {invokers} invoker{'s' * (invokers > 1)}",
                    args.schedules,
                    invokers,
                )
                rows.append(ratio(row))
                if invokers == 1:
                    one_rate = row.per_second
                progress(f"{row.name}: {fmt(row.per_second, ',.0f')} schedules/s, {row.check}")
        if "burst" in parts:
            with bench.database() as url:
                bench.seed(url, args.flags, args.burst, same_instant=True)
                row, results = bench.invoke(
                    url, "burst, all due at one instant, 1 invoker", args.burst, 1
                )
                row.notes.append(f"handler duration {results[0]['duration_ms']} ms")
                extra["burst_handler_ms"] = results[0]["duration_ms"]
                rows.append(ratio(row))
                progress(f"burst: {results[0]['duration_ms']} ms, {row.check}")
        if "big" in parts:
            with bench.database() as url:
                bench.seed(url, args.flags, args.schedules, applied_rows=args.applied_rows)
                extra["claim_plan_with_applied_rows"] = bench.claim_plan(url)
                row, _ = bench.invoke(
                    url,
                    f"1 invoker, {args.applied_rows:,} applied rows in the table",
                    args.schedules,
                    1,
                )
                rows.append(ratio(row))
                if one_rate and row.per_second:
                    extra["big_table_vs_empty"] = round(row.per_second / one_rate, 3)
                plan = extra["claim_plan_with_applied_rows"]
                progress(f"big table: {fmt(row.per_second, ',.0f')} schedules/s, plan {plan}")
        if "memory" in parts:
            with bench.database() as url:
                bench.seed(url, max(args.flags, 2000), args.memory_schedules)
                row, results = bench.invoke(
                    url,
                    f"memory: drain {args.memory_schedules:,}, 1 invoker",
                    args.memory_schedules,
                    1,
                )
                rows.append(ratio(row))
                progress(f"memory: peak/after-import RSS {fmt(row.rss_ratio, '.2f')}")
        if "cold" in parts:
            extra["cold_start"] = cold_start(args.cold_start_repeats)
            progress(f"cold start: {extra['cold_start']}")
            extra["api_cold_start"] = cold_start(args.cold_start_repeats, "api")
            progress(f"API cold start: {extra['api_cold_start']}")
        api_rows: list[dict[str, Any]] = []
        if "api" in parts:
            with bench.database() as url:
                api_rows = api_figures(url, args.api_requests)
            for r in api_rows:
                progress(f"API {r['operation']}: {r['requests_per_second']} requests/s")
        if server is not None:
            server.cleanup()

    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
        " embedded PostgreSQL 18"
    )
    print(f"flag-scheduler benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine}")
    print(f"{args.flags:,} flags; batch size {args.batch_size or 'default'}\n")
    if rows:
        print(markdown(rows))
        print()
    if api_rows:
        print("HTTP API through the in-process resolver (payload-2.0 events, one client):\n")
        print(api_markdown(api_rows))
        print()
    for key, value in extra.items():
        print(f"- {key}: {value}")
    for row in rows:
        for note in row.notes:
            print(f"- {row.name}: {note}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"machine": machine, "rows": [asdict(r) for r in rows], "api": api_rows, **extra},
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
