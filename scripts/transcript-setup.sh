# Sourced by operate-transcript.sh and ramps-transcript.sh: a throwaway home (its per-user
# data folder holds the embedded database; shown as ~), quiet logs, and `fs`, which prints a
# flag-scheduler command as typed, then its output.
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.venv/bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
unset DATABASE_URL
export POWERTOOLS_METRICS_DISABLED=true POWERTOOLS_LOG_LEVEL=ERROR
export HOME="$work"
unset XDG_DATA_HOME FLAG_SCHEDULER_DATA_DIR

run() {
    printf '$'; printf ' %q' "$@"; echo
    "$@" 2>&1 | sed "s#$work#~#g" || true
    echo
}
fs() { run flag-scheduler "$@"; }
flag-scheduler() { "$bin/flag-scheduler" "$@"; }
