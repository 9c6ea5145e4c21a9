#!/usr/bin/env bash
# Prints an HTTP API session (curl commands against `flag-scheduler serve`, and the answers)
# on a throwaway embedded database: the transcript in the README's "HTTP API" section comes
# from this script, and with the argument `ramps` the one in its "Gradual rollouts" section.
# PORT (default 8080) is where serve listens.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.venv/bin"
work="$(mktemp -d)"
port="${PORT:-8080}"
serve_pid=""
cleanup() {
    if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
unset DATABASE_URL XDG_DATA_HOME FLAG_SCHEDULER_DATA_DIR
export HOME="$work" POWERTOOLS_METRICS_DISABLED=true POWERTOOLS_LOG_LEVEL=ERROR
export PATH="$bin:$PATH"

show() {  # print a command as typed, then run it (its JSON answer one field a line)
    printf '$ %s\n' "$1"
    eval "$1" 2>&1 | "$bin/python" -c "$layout" | sed "s#$work#~#g" || true
    echo
}
# The same JSON, laid out: top-level fields one a line, each element of a list on its own.
layout='
import json, sys
text = sys.stdin.read()
body, _, status = text.rpartition("\n(HTTP ")
try:
    document = json.loads(body)
except ValueError:
    print(text, end="")
    raise SystemExit
if isinstance(document, dict):
    fields = []
    for key, value in document.items():
        if isinstance(value, list) and value:
            items = ",\n".join(f"    {json.dumps(item)}" for item in value)
            fields.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            fields.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    print("{\n" + ",\n".join(fields) + "\n}")
else:
    print(json.dumps(document))
print("(HTTP " + status, end="")
'

api() {  # METHOD PATH [JSON]: one request with the development token
    curl -s -w '\n(HTTP %{http_code})\n' -X "$1" "http://127.0.0.1:$port$2" \
        -H "Authorization: Bearer $FLAG_SCHEDULER_DEV_TOKEN" -H 'Content-Type: application/json' \
        ${3:+-d "$3"}
}
sql() {  # a statement on the embedded database (the drill steps)
    "$bin/python" -W ignore::Warning - "$1" <<'PY'
import os, sys
from flag_scheduler.store import connection as db
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import data_folder, start_embedded_server
conn = db.connect(start_embedded_server(data_folder(os.environ), throwaway=False).get_uri())
fault_injection.install(conn)
conn.execute(sys.argv[1])
PY
}

export FLAG_SCHEDULER_DEV_TOKEN="dev-$("$bin/python" -c 'import secrets; print(secrets.token_hex(8))')"
echo '$ export FLAG_SCHEDULER_DEV_TOKEN=dev-$(openssl rand -hex 8)'
echo "\$ flag-scheduler serve --port $port &"
flag-scheduler serve --port "$port" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 1 100); do
    grep -q "serving the HTTP API" "$work/serve.log" 2>/dev/null && break
    sleep 0.2
done
grep -v '^{' "$work/serve.log" | sed "s#$work#~#g"
echo

ramp_id() {  # the id of the newest ramp
    curl -s "http://127.0.0.1:$port/ramps" -H "Authorization: Bearer $FLAG_SCHEDULER_DEV_TOKEN" \
        | "$bin/python" -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])'
}
if [ "${1:-}" = ramps ]; then
    show "api POST /flags '{\"flag_key\": \"checkout-v2\"}'"
    show "api POST /flags/checkout-v2/ramps '{\"starts_at\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"rollout\": [5, 150, 50], \"hold_seconds\": 30}'"
    show "api POST /flags/checkout-v2/ramps '{\"starts_at\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"rollout\": [5, 25, 50, 100], \"hold_seconds\": 1800, \"enable\": true}'"
    echo '$ flag-scheduler invoke >/dev/null   # a scheduler run applies stage 0'
    flag-scheduler invoke >/dev/null 2>&1
    echo
    id=$(ramp_id)
    show "api GET /ramps/$id"
    show "api POST /ramps/$id/pause"
    show "api POST /ramps/$id/resume"
    show "api POST /ramps/$id/abort '{\"rollback\": true}'"
    show "api POST /ramps/$id/abort"
    exit 0
fi

show "curl -s -w '\n(HTTP %{http_code})\n' http://127.0.0.1:$port/status"
show "api POST /flags '{\"flag_key\": \"holiday-banner\", \"description\": \"Holiday banner on the home page\"}'"
show "api POST /flags/holiday-banner/schedules '{\"scheduled_at\": {\"local\": \"2026-12-24T09:00\", \"time_zone\": \"Europe/Berlin\"}, \"updates\": {\"enabled\": true, \"rollout_percentage\": 100}}'"
show "api POST /flags/holiday-banner/schedules '{\"scheduled_at\": \"2026-12-27T00:00:00+01:00\", \"updates\": {\"rollout_percentage\": 0}}'"
show "api POST /flags/holiday-banner/schedules '{\"scheduled_at\": \"2026-12-24T08:00:00Z\", \"updates\": {\"rollout_percentage\": 50}}'"
show "api POST /flags/holiday-banner/schedules '{\"scheduled_at\": {\"local\": \"2026-03-29T02:30\", \"time_zone\": \"Europe/Berlin\"}, \"updates\": {\"enabled\": false}}'"
show "api GET /flags/holiday-banner/schedules"
show "api GET '/flags/holiday-banner/timeline?until=2026-12-31T00:00:00Z'"
last=$(curl -s "http://127.0.0.1:$port/flags/holiday-banner/schedules" \
    -H "Authorization: Bearer $FLAG_SCHEDULER_DEV_TOKEN" \
    | "$bin/python" -c 'import json,sys; print(json.load(sys.stdin)["items"][-1]["id"])')
show "api POST /schedules/$last/cancel"

echo "# (a drill: three flags get a change due a minute ago with max_retries 0, the database refuses"
echo "#  their updates with a lock timeout, and one scheduler run fails them permanently)"
for key in checkout-v2 search-v3 new-pricing; do
    api POST /flags "{\"flag_key\": \"$key\"}" >/dev/null
    api POST "/flags/$key/schedules" \
        "{\"scheduled_at\": \"$(date -u -d '-1 minute' +%Y-%m-%dT%H:%M:%SZ)\", \"updates\": {\"enabled\": true}, \"max_retries\": 0}" >/dev/null
    "$bin/python" -W ignore::Warning - "$key" <<'PY'
import os, sys
from flag_scheduler.store import connection as db
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import data_folder, start_embedded_server
conn = db.connect(start_embedded_server(data_folder(os.environ), throwaway=False).get_uri())
fault_injection.install(conn)
flag = conn.execute("SELECT id FROM feature_flags WHERE flag_key = %s", (sys.argv[1],)).fetchone()[0]
fault_injection.set_fault(conn, flag, "55P03", "lock timeout (injected)")
PY
done
flag-scheduler invoke >/dev/null 2>&1
echo
show "api GET '/schedules?status=failed_permanently&limit=10'"
sql "DELETE FROM fault_injection"
echo "# (the outage is over: requeue every schedule that failed permanently with a lock timeout)"
echo
show "api POST /schedules/retry '{\"filter\": {\"state\": \"failed_permanently\", \"error_class\": \"lock_timeout\"}, \"dry_run\": true}'"
show "api POST /schedules/retry '{\"filter\": {\"state\": \"failed_permanently\", \"error_class\": \"lock_timeout\"}}'"
