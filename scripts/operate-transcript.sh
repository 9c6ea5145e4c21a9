#!/usr/bin/env bash
# Prints an operator session (commands and their output) on a throwaway embedded database:
# the transcript in the README's "Operate" section comes from this script.
set -euo pipefail
# shellcheck source=transcript-setup.sh
source "$(dirname "$0")/transcript-setup.sh"

fs flags create holiday-banner --description "Holiday banner on the home page"
fs schedules create --flag holiday-banner --at now --enable --rollout 100 --max-retries 1
id=$(flag-scheduler schedules list --json | "$bin/python" -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')

echo "# (a drill: make every update of holiday-banner fail with a serialization failure)"
"$bin/python" -W ignore::Warning - <<PY
from flag_scheduler.store import connection as db
from flag_scheduler_cli import fault_injection
from flag_scheduler_cli.local import start_embedded_server
from flag_scheduler_cli.local import data_folder
import os
conn = db.connect(start_embedded_server(data_folder(os.environ), throwaway=False).get_uri())
fault_injection.install(conn)
flag = conn.execute("SELECT id FROM feature_flags WHERE flag_key = 'holiday-banner'").fetchone()[0]
fault_injection.set_fault(conn, flag, "40001", "could not serialize access due to concurrent update")
PY
echo

fs invoke
fs schedules show "$id"
fs status

echo "# (skip the wait: make the retry due now, and let it fail again)"
"$bin/python" -W ignore::Warning - <<PY
from flag_scheduler.store import connection as db
from flag_scheduler_cli.local import start_embedded_server
from flag_scheduler_cli.local import data_folder
import os
conn = db.connect(start_embedded_server(data_folder(os.environ), throwaway=False).get_uri())
conn.execute("UPDATE feature_flag_schedules SET next_retry_at = now()")
PY
echo
fs invoke
fs schedules list --status failed

echo "# (the outage is over)"
"$bin/python" -W ignore::Warning - <<PY
from flag_scheduler.store import connection as db
from flag_scheduler_cli.local import start_embedded_server
from flag_scheduler_cli.local import data_folder
import os
conn = db.connect(start_embedded_server(data_folder(os.environ), throwaway=False).get_uri())
conn.execute("DELETE FROM fault_injection")
PY
echo
fs schedules retry "$id"
fs schedules preview "$id"
fs invoke
fs schedules show "$id"
fs flags show holiday-banner
