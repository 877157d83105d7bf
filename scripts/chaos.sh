#!/usr/bin/env bash
# The long crash-safety run (issue 13): the same kill -9 rounds as the suite's
# crates/corral/tests/chaos.rs, for 1,000 rounds by default. Prints rounds run, faults injected
# and inconsistencies found; exits non-zero when any inconsistency or unexpected error was found.
# Usage: scripts/chaos.sh [--rounds N (1000)] [--seed S (random, printed)]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=1000 SEED=
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$SEED" ] || SEED=$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')
cd "$ROOT"
LOG=$(mktemp /tmp/corral-chaos-XXXXXX.log)
echo "chaos: $ROUNDS rounds, seed $SEED; full output in $LOG"
# About 1.5 s a round on two cores; the timeout leaves room for a slow machine.
status=0
CORRAL_CHAOS_ROUNDS=$ROUNDS CORRAL_CHAOS_SEED=$SEED timeout $((ROUNDS * 6 + 600)) \
    cargo test -p corral --test chaos -- --nocapture --test-threads=1 >"$LOG" 2>&1 || status=$?
grep -E '^chaos: (round|operations|[0-9]+ rounds)' "$LOG" || true
summary=$(grep -E '^chaos: [0-9]+ rounds' "$LOG" | tail -1 || true)
if [ -z "$summary" ]; then
    echo "chaos: the run ended before its summary (exit $status); see $LOG" >&2
    tail -30 "$LOG" >&2
    exit 1
fi
rounds=$(sed -E 's/^chaos: ([0-9]+) rounds.*/\1/' <<<"$summary")
faults=$(sed -E 's/.*: ([0-9]+) faults injected.*/\1/' <<<"$summary")
bad=$(sed -E 's/.* ([0-9]+) inconsistencies.*/\1/' <<<"$summary")
unexpected=$(sed -E 's/.* ([0-9]+) unexpected errors.*/\1/' <<<"$summary")
echo "rounds run: $rounds, faults injected: $faults, inconsistencies found: $bad, unexpected errors: $unexpected (seed $SEED)"
exit "$status"
