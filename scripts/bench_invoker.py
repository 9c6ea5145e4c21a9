"""One benchmark invoker: import the handler, wait for the start signal, run it once.

Prints one JSON line: the run summary plus timings and memory. The handler's logs and
EMF metrics are formatted as in Lambda but written to /dev/null.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def main() -> None:
    start_at = float(sys.argv[1])
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 900.0
    began = time.perf_counter()
    from flag_scheduler.aws import scheduler
    from flag_scheduler_cli.local import FakeLambdaContext

    import_seconds = time.perf_counter() - began
    rss_after_import = _rss_kib()
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    log_handler = scheduler.logger.registered_handler
    assert isinstance(log_handler, logging.StreamHandler)
    log_handler.setStream(sink)
    while time.time() < start_at:
        time.sleep(0.001)
    started = time.time()
    with contextlib.redirect_stdout(sink):
        result = scheduler.lambda_handler({}, FakeLambdaContext(timeout_seconds=timeout))
    finished = time.time()
    print(
        json.dumps(
            {
                **result,
                "started": started,
                "finished": finished,
                "import_seconds": import_seconds,
                "rss_after_import_kib": rss_after_import,
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


if __name__ == "__main__":
    main()
