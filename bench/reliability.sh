#!/usr/bin/env bash
# The long versions of the reliability tests; their figures go in
# docs/RELIABILITY.md. The test suite (`scripts/test`) runs the short
# versions. Everything runs on 127.0.0.1; every test stops
# the processes it started by their PID.
#
#   bench/reliability.sh [soak|chaos|slow|hostile|fuzz|all]   (default: all)
#
# Knobs: SOAK_REQUESTS (default 20000), CHAOS_RUNS (default 5),
# PROPTEST_CASES (default 100000).
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
export APIPROXY_SOAK_REQUESTS=${SOAK_REQUESTS:-20000}
chaos_runs=${CHAOS_RUNS:-5}
cases=${PROPTEST_CASES:-100000}

# The end-to-end tests drive the binaries of the test profile.
cargo build --workspace

e2e() { cargo test -q -p apiproxy-tests --test "$1" -- --nocapture; }

case $what in soak | all)
    echo "== leak soak: $APIPROXY_SOAK_REQUESTS requests"
    e2e soak ;;
esac
case $what in chaos | all)
    for i in $(seq "$chaos_runs"); do
        echo "== chaos under load: run $i of $chaos_runs"
        e2e chaos
    done ;;
esac
case $what in slow | all)
    echo "== slow and stalled clients"
    e2e slow_clients ;;
esac
case $what in hostile | all)
    echo "== hostile heads, HTTP/2 limits, rolling restart"
    e2e hostile
    e2e rolling ;;
esac
case $what in fuzz | all)
    echo "== property tests with $cases cases each (release build)"
    time PROPTEST_CASES=$cases cargo test -q --release \
        -p apiproxy-dataplane -p apiproxy-shared --lib --tests ;;
esac
