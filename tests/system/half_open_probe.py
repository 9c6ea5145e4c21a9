"""Run inside a private network namespace (`unshare --net`): connect to the test server
through a TCP proxy, then take the namespace's loopback down so every packet is lost
without either end closing (a half-open connection, as in an RDS failover), and report
how long the scheduler's connection takes to fail. Prints one JSON line per case.

Usage: python -m tests.system.half_open_probe SOCKET_DIR PORT DBNAME
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg

from flag_scheduler.errors import DatabaseUnavailable
from flag_scheduler.store.connection import TcpLiveness, connect
from flag_scheduler.store.repository import ScheduleRepository

# Fails a dead connection in about 2-4 s (production uses the defaults, about 10-25 s).
LIVENESS = TcpLiveness(
    keepalives_idle=1, keepalives_interval=1, keepalives_count=2, tcp_user_timeout_ms=2_000
)
# A case still waiting this long is hanging: report it and stop.
HANG_SECONDS = 20


def _set_loopback(state: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", state], check=True)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass


def _proxy(unix_path: str) -> int:
    """A TCP port forwarding each connection to the server's Unix socket."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            client, _ = listener.accept()
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(unix_path)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


def _timed(case: str, action: Any) -> None:
    started = time.monotonic()
    try:
        action()
        outcome = "no error"
    except (DatabaseUnavailable, psycopg.OperationalError) as exc:
        outcome = f"{type(exc).__name__}: {str(exc).strip()[:160]}"
    print(
        json.dumps(
            {"case": case, "seconds": round(time.monotonic() - started, 2), "outcome": outcome}
        ),
        flush=True,
    )


def _hang_watchdog() -> None:
    print(
        json.dumps({"case": "watchdog", "seconds": HANG_SECONDS, "outcome": "hanging"}), flush=True
    )
    os._exit(3)


def main() -> None:
    socket_dir, port, dbname = sys.argv[1], sys.argv[2], sys.argv[3]
    unix_path = f"{socket_dir}/.s.PGSQL.{port}"
    direct = f"host={socket_dir} port={port} user=postgres dbname={dbname}"
    _set_loopback("up")
    through_proxy = f"host=127.0.0.1 port={_proxy(unix_path)} user=postgres dbname={dbname}"

    # Case 1: a query sent into the black hole (nothing acknowledges it): tcp_user_timeout.
    conn = connect(through_proxy, liveness=LIVENESS)
    ScheduleRepository(conn).ping()
    _set_loopback("down")
    watchdog = threading.Timer(HANG_SECONDS, _hang_watchdog)
    watchdog.start()
    _timed("query sent into a black hole", ScheduleRepository(conn).ping)
    watchdog.cancel()
    conn.close()
    _set_loopback("up")

    # Case 2: the query arrived and the client waits for an answer that will never come
    # (nothing in flight from the client): keepalives.
    conn = connect(through_proxy, liveness=LIVENESS)
    backend = conn.info.backend_pid
    waiting = threading.Thread(
        target=_timed, args=("waiting for an answer", lambda: conn.execute("SELECT pg_sleep(30)"))
    )
    with psycopg.connect(direct, autocommit=True) as observer:
        waiting.start()
        # The black hole opens only once the server is running the query.
        while not observer.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND query LIKE 'SELECT pg_sleep%%'",
            (backend,),
        ).fetchone():
            time.sleep(0.01)
        _set_loopback("down")
        watchdog = threading.Timer(HANG_SECONDS, _hang_watchdog)
        watchdog.start()
        waiting.join()
        watchdog.cancel()
        observer.execute("SELECT pg_cancel_backend(%s)", (backend,))


if __name__ == "__main__":
    main()
