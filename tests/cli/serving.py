"""`flag-scheduler serve` in a subprocess, and plain HTTP requests to it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from tests.support import cli_env

DEV_TOKEN = "local-dev-token-123"
_LISTENING = re.compile(r"serving the HTTP API on (http://\S+)")


@dataclass
class Served:
    """A running `serve`: its base URL and what it has written to stderr so far."""

    url: str
    process: subprocess.Popen[str]
    stderr: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: Any


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flag_scheduler_cli.cli", "serve", *args]


@contextmanager
def serving(
    database_url: str, *, token: str | None = DEV_TOKEN, **extra_env: str
) -> Iterator[Served]:
    """`flag-scheduler serve --port 0` on `database_url`; stopped (SIGTERM) afterwards."""
    env = cli_env(DATABASE_URL=database_url, **extra_env)
    env.pop("FLAG_SCHEDULER_DEV_TOKEN", None)
    if token is not None:
        env["FLAG_SCHEDULER_DEV_TOKEN"] = token
    process = subprocess.Popen(
        serve_command("--port", "0"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader: threading.Thread | None = None
    try:
        served = Served(url=_wait_for_url(process), process=process)
        assert process.stderr is not None
        reader = threading.Thread(target=_drain, args=(process.stderr, served.stderr), daemon=True)
        reader.start()
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        if reader is not None:
            reader.join(timeout=20)  # the pipe ends with the process
        if process.stderr is not None:
            process.stderr.close()


def _wait_for_url(process: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """The URL `serve` announces on stderr once it listens."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break  # exited
        seen.append(line)
        found = _LISTENING.search(line)
        if found:
            return found.group(1)
    process.kill()
    raise AssertionError("serve did not start:\n" + "".join(seen))


def _drain(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line)


def request(
    served: Served,
    method: str,
    path: str,
    *,
    body: Any = None,
    token: str | None = DEV_TOKEN,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> HttpResponse:
    """One HTTP request (`body` as JSON, or `raw` bytes); the JSON answer decoded (None when
    empty)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(served.url + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            status, got, text = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, got, text = error.code, dict(error.headers), error.read()
    return HttpResponse(status, got, json.loads(text) if text else None)
