#!/usr/bin/env bash
# Prints a ramps session (commands and their output) on a throwaway embedded database: the
# transcript in the README's "Gradual rollouts" section comes from this script.
set -euo pipefail
# shellcheck source=transcript-setup.sh
source "$(dirname "$0")/transcript-setup.sh"
summary() {
    # invoke prints the whole run summary: the counts are enough here.
    printf '$ flag-scheduler invoke    # (of the JSON run summary, the counts)\n'
    flag-scheduler invoke 2>/dev/null | "$bin/python" -c 'import json,sys; s=json.load(sys.stdin); print(json.dumps({k: s[k] for k in ("claimed","applied","retried","failed_permanently")}))'
    echo
}

fs flags create checkout-v2 --enable
fs ramps preview --rollout 5,50,25,100 --hold 30m,1h,1h,1h --start 2026-12-24T09:00:00Z
fs ramps create --flag checkout-v2 --rollout 0,25,101 --hold 30s
fs ramps create --flag checkout-v2 --rollout 5,25,50,100 --hold 30m
id=$(flag-scheduler ramps list --json | "$bin/python" -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
summary
fs ramps show "$id"
fs ramps pause "$id"
fs ramps list
fs ramps resume "$id"
fs ramps preview "$id"
fs ramps abort "$id" --rollback
summary
fs ramps show "$id"
fs flags show checkout-v2
fs ramps resume "$id"
